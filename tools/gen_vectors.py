"""Deterministic test vectors for docs/PROTOCOL.md, produced by running the real machines.

    python -m quicpair.tools.gen_vectors             write docs/vectors.json and PROTOCOL.md's vectors
    python -m quicpair.tools.gen_vectors --check     exit 1 if either differs from what the code produces
    python -m quicpair.tools.gen_vectors --markdown  print the "Test vectors" excerpt

Everything is fixed: the identities are the RFC 8032 (section 7.1) TEST 1 and
TEST 2 keys, the code is typed by a person in a sloppy form, ``now`` is a
constant and every ``rand`` is a SHA-256 counter stream from a named seed
(:class:`CounterRand`). The real initiator (with a real codebook) and joiner
machines run against each other through bytes only; every frame, the
transcript, each derived key and MAC, the SAS and the DeviceInfo boxes are
recorded, then a link hello exchange with sealed frames, framing vectors
for every message type, the certificates and their serials, the fixed-input key
schedule, a restart notice, stateless reset tokens, the addresses a receiver
keeps, and section 12.2's retirement of a duplicate connection (the real
LinkConns of actors/links/choice.py, driven over an in-memory wire). Values the
machines do not expose (PRK, HKDF outputs, SPAKE2 scalars) are recomputed from
the spec's formulas and checked against what the machines did, so the generator
fails when code and spec part ways.

The spec's "Test vectors" excerpt sits between ``<!-- generated:vectors begin -->``
and ``<!-- generated:vectors end -->``; tests/protocol/test_vectors.py fails when it or
docs/vectors.json is stale, and checks the spec's hand-written tables against the code.
The parts live in tools/vectors/, one module each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quicpair.protocol import messages as m
from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.tools.vectors.base import (
    INITIATOR_INFO,
    INITIATOR_SEED,
    JOINER_INFO,
    JOINER_SEED,
    NOW,
    RAND_SEEDS,
    ROOT,
    SPEC_PATH,
    TYPED_CODE,
    VECTORS_PATH,
    CounterRand,
    Json,
    identities,
    schema,
)
from quicpair.tools.vectors.framing import addresses, framing, uri
from quicpair.tools.vectors.keys import (
    certificate_serials,
    certificates,
    fixed_schedule,
    restart_notice,
    stateless_reset,
)
from quicpair.tools.vectors.link import link
from quicpair.tools.vectors.markdown import render_blocks, update_document, vectors_md
from quicpair.tools.vectors.pairing import pairing, party, resolve, sas_refused, sas_verified, wrong_code
from quicpair.tools.vectors.retirement import retirement

__all__ = ["CounterRand", "build", "main", "render_blocks", "render_json", "schema", "update_document"]


def build() -> Json:
    """Every vector, in a stable order: the content of docs/vectors.json."""
    ini, joi = identities()
    code = PairingCode.parse(TYPED_CODE)
    paired, pairing_id, secret = pairing()
    rand = "rand(n) returns the next n bytes of SHA-256(seed || uint64_be(i)) for i = 0, 1, 2, ..."
    seeds = {name: s.decode("ascii") for name, s in RAND_SEEDS.items()}
    inputs: Json = {"now": NOW, "rand": rand, "rand_seeds": seeds}
    inputs["initiator"] = party(ini, INITIATOR_SEED, INITIATOR_INFO)
    inputs["joiner"] = party(joi, JOINER_SEED, JOINER_INFO)
    inputs["code"] = {"typed": TYPED_CODE, "text": code.text, "nameplate": code.nameplate}
    inputs["code"] |= {"words": list(code.words), "secret": code.secret.hex()}
    return {
        "about": "quicpair protocol version 1 test vectors by tools/gen_vectors.py; see docs/PROTOCOL.md",
        "protocol_version": m.PROTOCOL_VERSION,
        "inputs": inputs,
        "schema": {"messages": schema(), "error_codes": {c.name: c.value for c in ErrorCode}},
        "pairing": paired,
        "resolve_committed": resolve(pairing_id, secret, committed=True),
        "resolve_aborted": resolve(pairing_id, secret, committed=False),
        "wrong_code": wrong_code(),
        "sas_verified": sas_verified(pairing_id, secret),
        "sas_refused": sas_refused(),
        "link": link(secret, pairing_id),
        "retirement": retirement(secret, pairing_id),
        "framing": framing(),
        "uri": uri(),
        "certificates": certificates(),
        "certificate_serials": certificate_serials(),
        "key_schedule_fixed": fixed_schedule(),
        "restart_notice": restart_notice(secret),
        "stateless_reset": stateless_reset(),
        "addresses": addresses(),
        "spake2_encodings": {
            "scalars": "password_scalar_w, initiator_scalar_x, joiner_scalar_y: the integer mod L, "
            "32 bytes little-endian (as RFC 8032 5.1.2 encodes scalars)",
            "entropy": "initiator_entropy, joiner_entropy: the 64 rand bytes, read as a big-endian "
            "integer, then mod L",
            "K_bytes": "enc(Z): the shared element Z of section 8.1 step 5, encoded as RFC 8032 5.1.2",
        },
    }


def render_json(vectors: Json) -> str:
    """docs/vectors.json's exact text: indented, keys in the order :func:`build` gives them."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.gen_vectors", description=__doc__.split("\n\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is stale; change nothing")
    mode.add_argument("--markdown", action="store_true", help="print the test-vector excerpt")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    vectors = build()
    if args.markdown:
        sys.stdout.write(vectors_md(vectors) + "\n")
        return 0
    spec = (args.root / SPEC_PATH).read_text(encoding="utf-8")
    wanted = {VECTORS_PATH: render_json(vectors), SPEC_PATH: update_document(spec, render_blocks(vectors))}
    files = {path: args.root / path for path in wanted}
    stale = [p for p, text in wanted.items() if not files[p].exists() or files[p].read_text("utf-8") != text]
    for path in stale:
        if args.check:
            print(f"{path} is stale: run python -m quicpair.tools.gen_vectors", file=sys.stderr)
        else:
            files[path].write_text(wanted[path], encoding="utf-8")
            print(f"wrote {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
