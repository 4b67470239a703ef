"""The spec's test vectors are current, and an implementation can be written from the spec.

Three groups:

* **Current.** docs/vectors.json and the generated excerpt of docs/PROTOCOL.md are
  exactly what tools/gen_vectors.py produces from the code today, so a protocol
  change that does not update the spec fails here.
* **Implementable.** The values in docs/vectors.json are re-derived from the
  spec's formulas with nothing but hashlib, hmac, msgpack, ipaddress, cryptography
  and plain integers: HKDF, the transcript, the key schedule, the SAS, the frames, the
  boxes, even SPAKE2 on edwards25519 and its M and N, the certificates byte for byte,
  restart notices, reset tokens, the addresses a receiver keeps and the frames of the
  retirement trace. Nothing here imports protocol/ for these checks.
* **Hand-written tables.** The message, state-machine, error-code and label tables
  that PROTOCOL.md writes out by hand are checked against the code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import urllib.parse
from dataclasses import fields
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from quicpair.tools import gen_vectors
from support.edwards import IDENTITY, L, P, Point, add, enc, mul, neg, x_even

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
V: dict[str, Any] = json.loads((ROOT / "docs" / "vectors.json").read_text(encoding="utf-8"))
WORDS = (ROOT / "protocol" / "wordlist_bip39_en.txt").read_text(encoding="ascii").split()


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- the files are current -----------------------------------------------------------


def test_vectors_json_is_what_the_code_produces() -> None:
    produced = gen_vectors.render_json(gen_vectors.build())
    assert produced == (ROOT / "docs" / "vectors.json").read_text(encoding="utf-8"), (
        "docs/vectors.json is stale: the protocol changed. Run `python -m quicpair.tools.gen_vectors`, "
        "then review the diff of docs/vectors.json and docs/PROTOCOL.md"
    )


def test_the_spec_quotes_the_current_vectors() -> None:
    blocks = gen_vectors.render_blocks(gen_vectors.build())
    assert gen_vectors.update_document(SPEC, blocks) == SPEC, (
        "docs/PROTOCOL.md's generated test vectors are stale: run `python -m quicpair.tools.gen_vectors`"
    )


def test_check_mode_reports_a_stale_file_and_the_writer_fixes_it(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for name in ("vectors.json", "PROTOCOL.md"):
        shutil.copy(ROOT / "docs" / name, tmp_path / "docs" / name)
    assert gen_vectors.main(["--check", "--root", str(tmp_path)]) == 0
    stale = tmp_path / "docs" / "vectors.json"
    stale.write_text(stale.read_text(encoding="utf-8").replace("museum", "muse", 1), encoding="utf-8")
    assert gen_vectors.main(["--check", "--root", str(tmp_path)]) == 1
    assert gen_vectors.main(["--root", str(tmp_path)]) == 0
    assert gen_vectors.main(["--check", "--root", str(tmp_path)]) == 0
    assert stale.read_text(encoding="utf-8") == (ROOT / "docs" / "vectors.json").read_text(encoding="utf-8")


# -- primitives, written from the spec ---------------------------------------------------


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac256(salt or bytes(32), ikm)


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac256(prk, block + info + bytes([counter]))
        out, counter = out + block, counter + 1
    return out[:length]


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def rand_stream(seed: str, size: int) -> bytes:
    blocks = (hashlib.sha256(seed.encode() + i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def test_the_hand_written_hkdf_is_rfc_5869() -> None:
    # RFC 5869 appendix A.1 (test case 1)
    prk = extract(h("000102030405060708090a0b0c"), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = expand(prk, h("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_rand_is_the_documented_counter_stream() -> None:
    seeds = V["inputs"]["rand_seeds"]
    assert V["pairing"]["spake2"]["initiator_entropy"] == rand_stream(seeds["initiator"], 64).hex()
    assert V["pairing"]["spake2"]["joiner_entropy"] == rand_stream(seeds["joiner"], 64).hex()
    assert V["link"]["dialer_nonce"] == rand_stream(seeds["dialer"], 32).hex()
    assert V["link"]["listener_nonce"] == rand_stream(seeds["listener"], 32).hex()


# -- identities ----------------------------------------------------------------------------


def test_node_ids_text_and_fingerprints() -> None:
    for role in ("initiator", "joiner"):
        party = V["inputs"][role]
        key = Ed25519PrivateKey.from_private_bytes(h(party["ed25519_seed"]))
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert raw.hex() == party["node_id"]
        assert party["node_id_text"] == b32(raw) and len(b32(raw)) == 52
        digest = b32(hashlib.sha256(b"quicpair fingerprint\x00" + raw).digest())
        assert party["fingerprint"] == f"{digest[:4]}-{digest[4:8]}"
    # RFC 8032 section 7.1, TEST 1 and TEST 2 public keys
    assert V["inputs"]["initiator"]["node_id"].startswith("d75a980182b10ab7d54bfed3c964073a")
    assert V["inputs"]["joiner"]["node_id"].startswith("3d4017c3e843895a92b70aa74d1b7ebc")


def test_certificates_are_self_signed_ed25519_carrying_the_node_ids() -> None:
    for role, der in V["certificates"].items():
        cert = x509.load_der_x509_certificate(h(der))
        public = cert.public_key()
        assert isinstance(public, Ed25519PublicKey)
        public.verify(cert.signature, cert.tbs_certificate_bytes)  # raises if not self-signed
        assert public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == V["inputs"][role]["node_id"]


# -- SPAKE2 on edwards25519, from section 8.1 alone ------------------------------------------

# The curve arithmetic is tests/support/edwards.py: plain integers, RFC 8032 5.1.


def dec(data: bytes) -> Point:
    value = int.from_bytes(data, "little")
    y = value & ((1 << 255) - 1)
    x = x_even(y)
    assert x is not None and y < P
    return (P - x) % P if value >> 255 else x, y


def hkdf48(ikm: bytes, info: bytes) -> int:
    return int.from_bytes(expand(extract(b"", ikm), info, 48), "big")


def arbitrary_element(seed: bytes) -> Point:
    y0 = hkdf48(seed, b"SPAKE2 arbitrary element") % P
    for plus in range(1000):
        y = (y0 + plus) % P
        x = x_even(y)
        if x is None:
            continue
        point = mul(8, (x, y))
        if point != IDENTITY:
            return point
    raise AssertionError("no element found")


def test_spake2_from_the_spec() -> None:
    s, pw = V["pairing"]["spake2"], h(V["inputs"]["code"]["secret"])
    base = (x_even(4 * pow(5, P - 2, P) % P) or 0, 4 * pow(5, P - 2, P) % P)
    big_m, big_n = arbitrary_element(b"M"), arbitrary_element(b"N")
    assert (enc(big_m).hex(), enc(big_n).hex()) == (s["M"], s["N"])
    w = hkdf48(pw, b"SPAKE2 pw") % L
    x = int.from_bytes(h(s["initiator_entropy"]), "big") % L
    y = int.from_bytes(h(s["joiner_entropy"]), "big") % L
    for name, scalar in (("password_scalar_w", w), ("initiator_scalar_x", x), ("joiner_scalar_y", y)):
        assert s[name] == scalar.to_bytes(32, "little").hex()
    big_x, big_y = add(mul(x, base), mul(w, big_m)), add(mul(y, base), mul(w, big_n))
    assert (b"A" + enc(big_x)).hex() == s["pake_initiator"]
    assert (b"B" + enc(big_y)).hex() == s["pake_joiner"]
    assert dec(enc(big_y)) == big_y and mul(L, big_y) == IDENTITY  # the receiver's checks
    z_initiator = mul(x, add(dec(h(s["pake_joiner"])[1:]), neg(mul(w, big_n))))
    z_joiner = mul(y, add(dec(h(s["pake_initiator"])[1:]), neg(mul(w, big_m))))
    assert enc(z_initiator) == enc(z_joiner) == h(s["K_bytes"])
    ids = (h(V["inputs"]["initiator"]["node_id"]), h(V["inputs"]["joiner"]["node_id"]))
    parts = [hashlib.sha256(v).digest() for v in (pw, *ids)]
    assert hashlib.sha256(b"".join([*parts, enc(big_x), enc(big_y), enc(z_initiator)])).hexdigest() == s["K"]


# -- transcript, key schedule, SAS -----------------------------------------------------------


def test_transcript_hash_from_the_spec() -> None:
    s, ins = V["pairing"]["spake2"], V["inputs"]
    parts = [
        b"quicpair/1 transcript",
        b"\x01",
        ins["code"]["nameplate"].to_bytes(2, "big"),
        h(ins["initiator"]["node_id"]),
        h(ins["joiner"]["node_id"]),
        h(s["pake_initiator"]),
        h(s["pake_joiner"]),
    ]
    th_input = b"".join(lp(p) for p in parts)
    assert th_input.hex() == V["pairing"]["transcript"]["input"]
    assert hashlib.sha256(th_input).hexdigest() == V["pairing"]["transcript"]["pairing_id"]


def test_pairing_key_schedule_from_the_spec() -> None:
    k, th = V["pairing"]["keys"], h(V["pairing"]["transcript"]["pairing_id"])
    prk = extract(th, h(V["pairing"]["spake2"]["K"]))
    assert prk.hex() == k["PRK"]
    for name in ("confirm initiator", "confirm joiner", "initiator to joiner", "joiner to initiator"):
        assert expand(prk, b"quicpair/1 " + name.encode(), 32).hex() == k["k_" + name.replace(" ", "_")]
    secret = expand(prk, b"quicpair/1 pairing secret", 32)
    assert secret.hex() == k["k_pairing_secret"]
    assert hmac256(h(k["k_confirm_initiator"]), th).hex() == k["confirm_initiator"]
    assert hmac256(h(k["k_confirm_joiner"]), th).hex() == k["confirm_joiner"]
    assert hmac256(expand(secret, b"quicpair/1 done", 32), th).hex() == k["done_mac"]
    assert hmac256(expand(secret, b"quicpair/1 commit", 32), th).hex() == k["commit_mac"]
    assert h(k["k_initiator_to_joiner"]) != h(k["k_joiner_to_initiator"])
    sas_bytes = expand(prk, b"quicpair/1 sas", 8)
    v = int.from_bytes(sas_bytes, "big") >> 20
    words = [WORDS[(v >> shift) & 0x7FF] for shift in (33, 22, 11, 0)]
    assert (sas_bytes.hex(), words) == (k["sas_bytes"], V["pairing"]["sas"]["words"])
    for name, fingerprint in V["pairing"]["key_fingerprints"].items():
        digest = hashlib.sha256(b"quicpair/1 key fingerprint" + h(k[name])).digest()
        assert fingerprint == b32(digest)[:16]


def test_the_frames_carry_the_derived_values() -> None:
    sent = {e["message"]: e["fields"] for e in V["pairing"]["log"] if "frame" in e}
    k, s = V["pairing"]["keys"], V["pairing"]["spake2"]
    ins = V["inputs"]
    assert sent["PairRequest"] == {"nameplate": ins["code"]["nameplate"], "pake": s["pake_joiner"]}
    challenge = {"pake": s["pake_initiator"], "confirm": k["confirm_initiator"], "flags": 0}
    assert sent["PairChallenge"] == challenge
    assert sent["PairResponse"]["confirm"] == k["confirm_joiner"] and sent["PairResponse"]["flags"] == 0
    assert sent["PairDone"]["mac"] == k["done_mac"] and sent["PairCommit"]["mac"] == k["commit_mac"]
    resolve = next(e for e in V["resolve_committed"]["log"] if e.get("message") == "PairResolve")
    assert resolve["fields"] == {"pairing_id": V["pairing"]["transcript"]["pairing_id"], "mac": k["done_mac"]}
    code = ins["code"]
    assert code["secret"] == "-".join(code["words"]).encode().hex() and code["text"].startswith("4207-")


def test_sas_verification_from_the_spec() -> None:
    """Section 10.8: VERIFY_SAS set, one PairSasConfirmed each way (MACs of 8.4), then 10.1."""
    th, secret = h(V["pairing"]["transcript"]["pairing_id"]), h(V["pairing"]["keys"]["k_pairing_secret"])
    verified = V["sas_verified"]
    frames = [(e["from"], e["message"], e["fields"]) for e in verified["log"] if "frame" in e]
    challenge = next(f for who, name, f in frames if name == "PairChallenge")
    assert challenge["flags"] & 1 == 1
    macs = {}
    for role in ("initiator", "joiner"):
        key = expand(secret, f"quicpair/1 sas confirmed {role}".encode(), 32)
        macs[role] = hmac256(key, th).hex()
        assert verified["keys"][f"k_sas_confirmed_{role}"] == key.hex()
        assert verified["keys"][f"sas_confirmed_{role}"] == macs[role]
    confirmations = [(who, f["mac"]) for who, name, f in frames if name == "PairSasConfirmed"]
    assert sorted(confirmations) == sorted(macs.items())
    names = [name for who, name, _ in frames if who == "initiator"]
    assert names.index("PairSasConfirmed") < names.index("PairComplete")
    refused = [(e["from"], e["fields"]) for e in V["sas_refused"]["log"] if e.get("message") == "PairReject"]
    assert refused == [("joiner", {"code": 0x25, "reason": refused[0][1]["reason"]})]
    assert not any(e.get("message") == "PairComplete" for e in V["sas_refused"]["log"])


def test_device_info_boxes_open_with_the_spec_nonce_and_aad() -> None:
    sent = {e["message"]: e["fields"] for e in V["pairing"]["log"] if "frame" in e}
    k = V["pairing"]["keys"]
    for sender, message, key in (
        ("joiner", "PairResponse", k["k_joiner_to_initiator"]),
        ("initiator", "PairComplete", k["k_initiator_to_joiner"]),
    ):
        box = V["pairing"]["device_info_boxes"][sender]
        nonce, aad = bytes(4) + bytes(8), b"quicpair/1 pair" + bytes(8)
        assert (box["key"], box["nonce"], box["aad"]) == (key, nonce.hex(), aad.hex())
        plaintext = ChaCha20Poly1305(h(key)).decrypt(nonce, h(sent[message]["sealed"]), aad)
        info = V["inputs"][sender]["device_info"]
        assert plaintext == msgpack.packb([1, 8, info], use_bin_type=True)
        assert plaintext.hex() == V["inputs"][sender]["device_info_body"] == box["plaintext"]


def test_link_keys_and_sealed_frames_from_the_spec() -> None:
    link = V["link"]
    ins = V["inputs"]
    ids = sorted(h(ins[r]["node_id"]) for r in ("initiator", "joiner"))
    assert (link["dialer"], link["listener"]) == (ids[0].hex(), ids[1].hex())  # the lower NodeId dials
    salt = h(link["dialer_nonce"]) + h(link["listener_nonce"])
    prk = extract(salt, h(V["pairing"]["keys"]["k_pairing_secret"]))
    assert prk.hex() == link["PRK_L"]
    keys = {}
    for way in ("dialer to listener", "listener to dialer"):
        info = b"quicpair/1 link " + way.encode() + ids[0] + ids[1]
        keys[way.split()[0]] = expand(prk, info, 32)
    assert (keys["dialer"].hex(), keys["listener"].hex()) == (
        link["dialer_to_listener"],
        link["listener_to_dialer"],
    )
    pairing_id = h(V["pairing"]["transcript"]["pairing_id"])
    assert link["key_id"] == hashlib.sha256(b"quicpair/1 key id" + pairing_id).digest()[:8].hex()
    for hello in link["hellos"]:
        assert hello["fields"]["pairing"] == link["key_id"]
    firsts = {}
    next_seq = {"dialer": 0, "listener": 0}
    for entry in link["sealed"]:
        firsts.setdefault(entry["from"], entry["inner"])
        seq = entry["fields"]["seq"]
        assert seq == next_seq[entry["from"]]
        next_seq[entry["from"]] += 1
        nonce, aad = bytes(4) + seq.to_bytes(8, "big"), b"quicpair/1 link" + seq.to_bytes(8, "big")
        plaintext = ChaCha20Poly1305(keys[entry["from"]]).decrypt(nonce, h(entry["fields"]["box"]), aad)
        tag = {"LinkAppData": 18, "LinkAddresses": 19, "LinkUnpair": 20, "LinkAck": 21}[entry["inner"]]
        inner = {k: h(v) if k == "data" else v for k, v in entry["inner_fields"].items()}
        assert plaintext == msgpack.packb([1, tag, inner], use_bin_type=True)
    assert firsts == {"dialer": "LinkAddresses", "listener": "LinkAddresses"}  # section 11.2: MUST


def test_the_uri_from_the_spec() -> None:
    uri = V["uri"]
    params = [("code", uri["code"]), ("node", uri["node"])] + [("addr", a) for a in uri["addresses"]]
    expected = "&".join(f"{name}={urllib.parse.quote(value, safe=':')}" for name, value in params)
    assert uri["text"] == "quicpair:pair?" + expected
    assert uri["node"] == V["inputs"]["initiator"]["node_id_text"]


# -- frames, encoded and refused by hand -----------------------------------------------------

SCHEMA = {m["name"]: m for m in V["schema"]["messages"]}
BY_TAG = {m["tag"]: m for m in V["schema"]["messages"]}


def all_frames() -> list[dict[str, Any]]:
    names = ("pairing", "resolve_committed", "resolve_aborted", "wrong_code", "sas_verified", "sas_refused")
    logs = [V[name]["log"] for name in names]
    found: list[dict[str, Any]] = [e for log in logs for e in log if "frame" in e]
    for more in (V["link"]["hellos"], V["link"]["sealed"], V["framing"]["valid"]):
        found.extend(more)
    return found


def encode(name: str, values: dict[str, Any]) -> bytes:
    """Section 4: canonical body (keys in table order, bin for bytes) behind a 4-byte length."""
    schema = SCHEMA[name]
    body_fields = {
        f["name"]: h(values[f["name"]]) if f["type"] == "bin" else values[f["name"]] for f in schema["fields"]
    }
    body = bytes(msgpack.packb([1, schema["tag"], body_fields], use_bin_type=True))
    return len(body).to_bytes(4, "big") + body


def test_every_frame_is_the_canonical_encoding_of_its_fields() -> None:
    frames = all_frames()
    assert len(frames) >= 30
    assert {f["message"] for f in V["framing"]["valid"]} == set(SCHEMA)
    for entry in frames:
        assert encode(entry["message"], entry["fields"]).hex() == entry["frame"], entry["message"]


class Pairs(list[tuple[Any, Any]]):
    """A msgpack map as decoded, repeats kept."""


def valid_value(spec: dict[str, Any], value: object) -> bool:
    kind = spec["type"]
    if kind == "uint":
        return type(value) is int and 0 <= value < 2**64
    if kind == "bin":
        size = len(value) if type(value) is bytes else -1
        return bool(size == spec["size"] if "size" in spec else 0 <= size <= spec["max"])
    if kind == "str":
        return type(value) is str and len(value.encode()) <= spec["max"]
    items = value if type(value) is list else None
    return (
        items is not None
        and len(items) <= spec["max"]
        and all(type(i) is str and len(i.encode()) <= spec["item_max"] for i in items)
    )


def verdict(frame: bytes) -> str:
    """A strict decoder written from section 4: the message's name, or the error code's."""
    length = int.from_bytes(frame[:4], "big")
    if length > 65536:
        return "FRAME_TOO_LARGE"
    try:
        top = msgpack.unpackb(frame[4:], raw=False, object_pairs_hook=Pairs, strict_map_key=False)
    except Exception:  # any msgpack failure, including trailing bytes (ExtraData)
        return "MALFORMED_MESSAGE"
    if length == 0 or type(top) is not list or not top or type(top[0]) is not int:
        return "MALFORMED_MESSAGE"
    if top[0] != 1:
        return "UNSUPPORTED_VERSION"
    if len(top) != 3 or type(top[1]) is not int:
        return "MALFORMED_MESSAGE"
    if top[1] not in BY_TAG:
        return "UNKNOWN_MESSAGE"
    schema, pairs = BY_TAG[top[1]], top[2]
    specs = {f["name"]: f for f in schema["fields"]}
    if type(pairs) is not Pairs:
        return "MALFORMED_MESSAGE"
    keys = [key for key, _ in pairs]
    if sorted(keys, key=str) != sorted(specs) or not all(type(key) is str for key in keys):
        return "MALFORMED_MESSAGE"
    if not all(valid_value(specs[key], value) for key, value in pairs):
        return "MALFORMED_MESSAGE"
    return str(schema["name"])


def test_a_decoder_written_from_the_spec_agrees_with_the_reference() -> None:
    for entry in V["framing"]["invalid"]:
        assert verdict(h(entry["frame"])) == entry["result"], entry["case"]
    for entry in all_frames():
        assert verdict(h(entry["frame"])) == entry["message"]


# -- the hand-written tables of PROTOCOL.md match the code --------------------------------------


def section(number: str) -> str:
    start = SPEC.index(f"\n## {number}. " if "." not in number else f"\n### {number} ")
    following = re.compile(r"\n#{2,3} \d").search(SPEC, start + 1)
    return SPEC[start : following.start() if following else len(SPEC)]


def limit(spec: dict[str, Any]) -> str:
    if spec["type"] == "uint":
        return "0 to 2^64-1"
    if "size" in spec:
        return f"exactly {spec['size']} bytes"
    if spec["type"] == "array of str":
        return f"at most {spec['max']} items, each at most {spec['item_max']} bytes of UTF-8"
    return f"at most {spec['max']} bytes" + (" of UTF-8" if spec["type"] == "str" else "")


def test_message_tables_match_protocol_messages() -> None:
    from quicpair.protocol.messages import MESSAGE_TYPES

    assert [m["name"] for m in V["schema"]["messages"]] == [
        c.__name__ for _, c in sorted(MESSAGE_TYPES.items())
    ]
    text = section("5")
    written = re.findall(r"^#### (\w+) \(tag (\d+)\)$", text, flags=re.M)
    assert written == [(m["name"], str(m["tag"])) for m in V["schema"]["messages"]]
    for message in V["schema"]["messages"]:
        body = text.split(f"#### {message['name']} (tag")[1].split("####")[0]
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        expected = [f"| `{f['name']}` | {f['type']} | {limit(f)} | " for f in message["fields"]]
        assert len(rows) == len(expected), message["name"]
        for row, prefix in zip(rows, expected, strict=True):
            assert row.startswith(prefix), f"{message['name']}: {row!r} should start with {prefix!r}"


def test_state_tables_match_the_machines() -> None:
    from quicpair.protocol import pairing as pm

    yes = {True: "yes", False: "no"}
    expected = []
    for moves, endings in (
        (pm.INITIATOR_MOVES, pm.INITIATOR_ENDINGS),
        (pm.JOINER_MOVES, pm.JOINER_ENDINGS),
        (pm.RESOLVER_MOVES, pm.RESOLVER_ENDINGS),
    ):
        for (state, trigger), target in moves.items():
            shown = f"receive {trigger.__name__}" if isinstance(trigger, type) else f"`{trigger.value}()`"
            shown_target = " or ".join(t.name for t in target) if isinstance(target, tuple) else target.name
            expected.append(f"| {state.name} | {shown} | {shown_target} |")
        for state, e in endings.items():
            flags = (e.pending, e.in_doubt, e.reads, e.ends_on_peer_close, e.may_reset)
            code = e.timeout_reject.name if e.tell_peer else "-"
            expected.append(
                f"| {state.name} | {yes[e.tell_peer]} | {code} | " + " | ".join(yes[f] for f in flags) + " |"
            )
    written = [line for line in section("10.4").splitlines() if re.match(r"\| [SR]\d?_?\w* \|", line)]
    assert sorted(written) == sorted(expected), "update the tables of PROTOCOL.md section 10.4"


def test_error_code_table_matches_protocol_errors() -> None:
    from quicpair.protocol.errors import ErrorCode

    rows = re.findall(r"^\| ([A-Z_]+) \| 0x([0-9a-f]{2}) \| (yes|no) \|", section("6"), flags=re.M)
    assert rows == [(c.name, f"{c.value:02x}", "yes" if c.is_fault else "no") for c in ErrorCode]
    assert V["schema"]["error_codes"] == {c.name: c.value for c in ErrorCode}


def test_every_label_and_constant_is_in_the_spec() -> None:
    from quicpair.protocol import keys, seal
    from quicpair.protocol.framing import MAX_FRAME_SIZE
    from quicpair.protocol.messages import ALPN_LINK, ALPN_PAIR
    from quicpair.protocol.pairing import DEFAULT_STEP_TIMEOUT

    labels = [v for v in vars(keys).values() if isinstance(v, bytes) and v.startswith(keys.LABEL_PREFIX)]
    labels += [seal.CONTEXT_PAIR, seal.CONTEXT_LINK]
    assert len(labels) >= 14
    for label in labels:
        assert f"`{label.decode()}`" in section("8.6"), label
    for text in (f"`{ALPN_PAIR}`", f"`{ALPN_LINK}`", f"N ≤ {MAX_FRAME_SIZE}", f"{DEFAULT_STEP_TIMEOUT:g} s"):
        assert text in SPEC, text


def fixed_schedule() -> dict[str, str]:
    """Section 14's fixed-input key schedule, computed from the spec."""
    i, j, k = b"\x11" * 32, b"\x22" * 32, b"\x55" * 32
    pake_i, pake_j = b"A" + b"\x33" * 32, b"B" + b"\x44" * 32
    th = hashlib.sha256(
        b"".join(
            lp(p)
            for p in (b"quicpair/1 transcript", b"\x01", (4242).to_bytes(2, "big"), i, j, pake_i, pake_j)
        )
    ).digest()
    prk = extract(th, k)
    out = {"pairing_id": th}
    for name in ("initiator", "joiner"):
        out[f"confirm_{name}"] = hmac256(expand(prk, f"quicpair/1 confirm {name}".encode(), 32), th)
    out["initiator_to_joiner"] = expand(prk, b"quicpair/1 initiator to joiner", 32)
    out["joiner_to_initiator"] = expand(prk, b"quicpair/1 joiner to initiator", 32)
    secret = out["pairing_secret"] = expand(prk, b"quicpair/1 pairing secret", 32)
    out["done_mac"] = hmac256(expand(secret, b"quicpair/1 done", 32), th)
    out["commit_mac"] = hmac256(expand(secret, b"quicpair/1 commit", 32), th)
    link_prk = extract(b"\x66" * 32 + b"\x77" * 32, secret)
    for way in ("dialer to listener", "listener to dialer"):
        out[f"link_{way.replace(' ', '_')}"] = expand(link_prk, f"quicpair/1 link {way}".encode() + i + j, 32)
    values = {name: value.hex() for name, value in out.items()}
    v = int.from_bytes(expand(prk, b"quicpair/1 sas", 8), "big") >> 20
    values["sas"] = " ".join(WORDS[(v >> s) & 0x7FF] for s in (33, 22, 11, 0))
    values["key_fingerprint(K)"] = b32(hashlib.sha256(b"quicpair/1 key fingerprint" + k).digest())[:16]
    return values


def test_the_fixed_key_schedule_in_the_spec() -> None:
    from quicpair.protocol import keys
    from quicpair.protocol.identity import NodeId

    values = fixed_schedule()
    for name, value in values.items():
        assert f"| {name} | `{value}` |" in section("14"), name
    i, j = NodeId(b"\x11" * 32), NodeId(b"\x22" * 32)
    th = keys.transcript_hash(
        version=1,
        nameplate=4242,
        initiator=i,
        joiner=j,
        pake_initiator=b"A" + b"\x33" * 32,
        pake_joiner=b"B" + b"\x44" * 32,
    )
    derived = keys.derive_pairing_keys(b"\x55" * 32, th)
    assert " ".join(derived.sas) == values["sas"]
    for f in fields(derived):
        if f.name != "sas":
            assert getattr(derived, f.name).hex() == values[f.name]


ENDINGS = ("PairingSucceeded", "PairingFailed", "ResolveAnswered", "PairingResolved")
EXPECTED_ENDINGS = {
    "pairing": ("PairingSucceeded", "PairingSucceeded"),
    "wrong_code": (
        "PairingFailed(code=WRONG_CODE, remote=False",
        "PairingFailed(code=WRONG_CODE, remote=True",
    ),
    "resolve_committed": ("ResolveAnswered(pending_must_be_deleted=False", "PairingResolved(committed=True)"),
    "resolve_aborted": ("ResolveAnswered(pending_must_be_deleted=True", "PairingResolved(committed=False)"),
    "sas_verified": ("PairingSucceeded", "PairingSucceeded"),
    "sas_refused": (
        "PairingFailed(code=SAS_REFUSED, remote=False",
        "PairingFailed(code=SAS_REFUSED, remote=True",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ENDINGS))
def test_scenario_logs_end_as_the_spec_says(name: str) -> None:
    ends = [e["event"] for e in V[name]["log"] if e.get("event", "").startswith(ENDINGS)]
    first, second = EXPECTED_ENDINGS[name]
    assert len(ends) == 2 and ends[0].startswith(first) and ends[1].startswith(second), ends


# -- the entries added for an outside implementer (issue 11) ----------------------------------


def test_spake2_byte_orders_and_k_bytes_are_stated_and_hold() -> None:
    text = section("8.1")
    assert "**little-endian**" in text and "`K_bytes`" in text and "is `enc(Z)`" in text
    s, enc_notes = V["pairing"]["spake2"], V["spake2_encodings"]
    assert set(enc_notes) == {"scalars", "entropy", "K_bytes"}
    assert "little-endian" in enc_notes["scalars"] and "big-endian" in enc_notes["entropy"]
    # Read the other way round, the scalars are not the values of section 8.1.
    x = int.from_bytes(h(s["initiator_entropy"]), "big") % L
    assert int.from_bytes(h(s["initiator_scalar_x"]), "little") == x
    assert int.from_bytes(h(s["initiator_scalar_x"]), "big") != x


def test_certificate_serials_and_certificates_rebuilt_byte_exact_from_the_spec() -> None:
    import datetime

    from cryptography.x509.oid import NameOID

    stream = rand_stream(V["inputs"]["rand_seeds"]["certificate"], 32)
    now = datetime.datetime.fromtimestamp(V["inputs"]["now"], tz=datetime.UTC)
    for index, role in enumerate(("initiator", "joiner")):
        drawn = stream[16 * index : 16 * (index + 1)]
        serial = int.from_bytes(drawn, "big") >> 1 or 1
        entry = V["certificate_serials"][role]
        assert (entry["rand_16"], entry["serial_hex"], entry["serial_decimal"]) == (
            drawn.hex(),
            f"{serial:x}",
            str(serial),
        )
        assert 0 < serial < 2**127
        key = Ed25519PrivateKey.from_private_bytes(h(V["inputs"][role]["ed25519_seed"]))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, V["inputs"][role]["node_id_text"])])
        rebuilt = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(seconds=86400))
            .not_valid_after(now + datetime.timedelta(seconds=3650 * 86400))
            .sign(key, algorithm=None)
        )
        assert rebuilt.public_bytes(Encoding.DER).hex() == V["certificates"][role]
        assert rebuilt.version is x509.Version.v3 and len(rebuilt.extensions) == 0


def test_the_fixed_key_schedule_is_in_vectors_json() -> None:
    fixed = V["key_schedule_fixed"]
    inputs = fixed["inputs"]
    assert (inputs["nameplate"], inputs["dialer"]) == (4242, "initiator")
    for name, byte, size in (
        ("initiator", "11", 32),
        ("joiner", "22", 32),
        ("K", "55", 32),
        ("dialer_nonce", "66", 32),
        ("listener_nonce", "77", 32),
    ):
        assert inputs[name] == byte * size
    assert (inputs["pake_initiator"], inputs["pake_joiner"]) == ("41" + "33" * 32, "42" + "44" * 32)
    assert fixed["outputs"] == fixed_schedule()


def test_restart_notice_from_the_spec() -> None:
    n, link = V["restart_notice"], V["link"]
    secret = h(V["pairing"]["keys"]["k_pairing_secret"])
    assert n["pairing_secret"] == secret.hex()
    assert (n["sender"], n["receiver"]) == (link["listener"], link["dialer"])  # the waiting side sends
    assert n["boot"] == rand_stream(V["inputs"]["rand_seeds"]["notice"], 8).hex()
    key = expand(secret, b"quicpair/1 restart notice", 32)
    head = b"\x00qpRN\x01"
    signed = head + h(n["sender"]) + h(n["receiver"]) + h(n["boot"])
    tag = hmac256(key, signed)[:16]
    datagram = head + h(n["sender"]) + h(n["boot"]) + tag
    assert (n["notice_key"], n["tag_input"], n["tag"], n["datagram"]) == (
        key.hex(),
        signed.hex(),
        tag.hex(),
        datagram.hex(),
    )
    assert len(datagram) == 62 and not datagram[0] & 0x40  # section 11.6: not a QUIC packet


def test_stateless_reset_tokens_from_the_spec() -> None:
    stream = rand_stream(V["inputs"]["rand_seeds"]["reset"], 16)
    for index, role in enumerate(("initiator", "joiner")):
        r = V["stateless_reset"][role]
        assert r["ed25519_seed"] == V["inputs"][role]["ed25519_seed"]
        reset_key = expand(extract(b"", h(r["ed25519_seed"])), b"quicpair/1 stateless reset", 32)
        cid = stream[8 * index : 8 * (index + 1)]
        assert (r["reset_key"], r["connection_id"]) == (reset_key.hex(), cid.hex())
        assert r["token"] == hmac256(reset_key, cid)[:16].hex()


def kept_addresses(announced: list[str], seen: str) -> list[str]:
    """Section 7.4, "How a receiver treats them", written from the text with ipaddress alone."""
    import ipaddress

    def split(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
            host = host.partition("%")[0]
        else:
            host, _, port = text.rpartition(":")
            if ":" in host:
                return None
        if not port.isdigit() or port != str(int(port)) or not 1 <= int(port) <= 65535:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None  # a host name, or nothing
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip, int(port)

    peer = split(seen)
    peer_on_loopback = peer is not None and peer[0].is_loopback
    kept: list[str] = []
    for text in announced:
        parsed = split(text)
        if parsed is None:
            continue
        ip, port = parsed
        if ip.is_unspecified or ip.is_multicast or (ip.is_loopback and not peer_on_loopback):
            continue
        if isinstance(ip, ipaddress.IPv4Address) and (
            ip in ipaddress.IPv4Network("0.0.0.0/8") or ip.is_reserved
        ):
            continue
        normal = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
        if normal not in kept:
            kept.append(normal)
    return kept[:16]


def test_announced_addresses_from_the_spec() -> None:
    cases = V["addresses"]["cases"]
    assert any(not case["kept"] for case in cases) and any(len(case["kept"]) > 2 for case in cases)
    for case in cases:
        assert kept_addresses(case["announced"], case["peer_seen_at"]) == case["kept"], case["case"]
        # Section 5: within the limits, a list of anything is a valid message.
        body = msgpack.packb(
            [1, 16, {"nonce": bytes(32), "pairing": bytes(8), "addresses": case["announced"]}],
            use_bin_type=True,
        )
        assert verdict(len(body).to_bytes(4, "big") + body) == "LinkHello"


def test_a_hello_whose_addresses_break_section_7_4_establishes_the_link() -> None:
    """The reference channel: bad entries are not a protocol error (PROTOCOL.md 5, 7.4)."""
    from quicpair.protocol.identity import NodeId
    from quicpair.protocol.link import LinkChannel, LinkEstablished

    low, high = (NodeId(h(V["link"][role])) for role in ("dialer", "listener"))
    secret, kid = h(V["pairing"]["keys"]["k_pairing_secret"]), h(V["link"]["key_id"])
    bad = next(case["announced"] for case in V["addresses"]["cases"] if len(case["announced"]) == 16)
    sides = [
        LinkChannel(
            local=me,
            peer=peer,
            local_is_dialer=me == low,
            pairing_secret=secret,
            key_id=kid,
            addresses=addresses,
            rand=lambda n: bytes(n),
        )
        for me, peer, addresses in ((low, high, bad), (high, low, ["192.0.2.1:47470"]))
    ]
    dialer, listener = sides
    listener.receive_data(dialer.hello())
    dialer.receive_data(listener.hello())
    for side in (dialer, listener):
        event = side.next_event()
        assert isinstance(event, LinkEstablished)
    assert dialer.next_event() is None and listener.next_event() is None  # nothing failed


# -- section 12.2's worked trace ----------------------------------------------------------------


def test_the_retirement_trace_follows_section_12_2() -> None:
    r, ins = V["retirement"], V["inputs"]
    low, high = sorted(h(ins[role]["node_id"]) for role in ("initiator", "joiner"))
    assert (r["low"], r["high"], r["key_id"]) == (low.hex(), high.hex(), V["link"]["key_id"])
    secret = h(V["pairing"]["keys"]["k_pairing_secret"])
    dialers = {"A": "low", "B": "high"}
    nonces: dict[tuple[str, str], bytes] = {}
    opened: dict[tuple[str, str], list[str]] = {}
    after_fin: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[int, str, str, str]] = []  # (step, conn, sender, what)
    for st in r["steps"]:
        for item in st["sends"]:
            conn, sender = item["conn"], st["at"]
            way = (conn, sender)
            if way in after_fin:  # after its FIN a node sends nothing but the close
                assert "connection_close" in item, item
            if "frame" in item:
                frame = h(item["frame"])
                assert verdict(frame) == item["message"]
                if item["message"] == "LinkHello":
                    role = "dialer" if dialers[conn] == sender else "listener"
                    seed = r["rand_seeds"][f"{conn} {role}"]
                    assert item["fields"]["nonce"] == rand_stream(seed, 32).hex()
                    assert item["fields"]["pairing"] == r["key_id"]
                    nonces[(conn, role)] = h(item["fields"]["nonce"])
                    order.append((st["step"], conn, sender, "hello"))
                    continue
                salt = nonces[(conn, "dialer")] + nonces[(conn, "listener")]
                ids = (low if dialers[conn] == "low" else high) + (high if dialers[conn] == "low" else low)
                way_name = "dialer to listener" if dialers[conn] == sender else "listener to dialer"
                key = expand(extract(salt, secret), b"quicpair/1 link " + way_name.encode() + ids, 32)
                seq = item["fields"]["seq"]
                nonce, aad = bytes(4) + seq.to_bytes(8, "big"), b"quicpair/1 link" + seq.to_bytes(8, "big")
                plaintext = ChaCha20Poly1305(key).decrypt(nonce, h(item["fields"]["box"]), aad)
                top = msgpack.unpackb(plaintext)
                assert BY_TAG[top[1]]["name"] == item["inner"]
                opened.setdefault(way, []).append(item["inner"])
                order.append((st["step"], conn, sender, "sealed"))
            elif "stream" in item:
                after_fin[way] = []
                order.append((st["step"], conn, sender, "FIN"))
            else:
                assert item["connection_close"] == "DUPLICATE_CONNECTION (0x02)"
                order.append((st["step"], conn, sender, "close"))
    # 11.2: every connection's first sealed message each way is LinkAddresses, even the loser's.
    assert {way: inner[0] for way, inner in opened.items()} == {
        (conn, side): "LinkAddresses" for conn in "AB" for side in ("low", "high")
    }
    # 12.2: A (dialed by the lower NodeId) is kept; on B the dialer FINs first, the listener
    # answers, then the dialer closes with DUPLICATE_CONNECTION.
    retire = [(conn, sender, what) for _, conn, sender, what in order if what in ("FIN", "close")]
    assert retire == [("B", "high", "FIN"), ("B", "low", "FIN"), ("B", "high", "close")]
    last = r["steps"][-1]["state"]
    for side in ("low", "high"):
        assert set(last[side]) == {"A", "link"} and last[side]["A"].startswith("kept")
        assert last[side]["link"] == "up"
