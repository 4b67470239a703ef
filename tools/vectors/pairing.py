"""The pairing vectors: the real initiator and joiner machines run against each other through bytes."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

from spake2.ed25519_basic import L as ED25519_ORDER
from spake2.parameters.ed25519 import ParamsEd25519

from quicpair.protocol import keys as ks
from quicpair.protocol import messages as m
from quicpair.protocol import pairing as pm
from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import WORDS, PairingCode
from quicpair.protocol.framing import encode_body
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.pake import spake2_for
from quicpair.protocol.seal import CONTEXT_PAIR
from quicpair.tools.vectors.base import (
    BOXES,
    EXPANDED,
    INITIATOR_INFO,
    JOINER_INFO,
    NOW,
    TYPED_CODE,
    WRONG_CODE,
    Json,
    Machine,
    check,
    fields_of,
    frame_entry,
    hexed,
    identities,
    label,
    seeded_rand,
)

# -- running the pairing machines ----------------------------------------------------------

__all__ = ["pairing", "party", "resolve", "sas_refused", "sas_verified", "wrong_code"]


class _Log:
    """One ordered record of a scenario: frames, events, actor calls, codebook changes."""

    def __init__(self) -> None:
        self.entries: list[Json] = []
        self.events: list[pm.PairingEvent] = []

    def frames(self, sender: str, data: bytes) -> None:
        while data:
            end = 4 + int.from_bytes(data[:4], "big")
            self.entries.append(frame_entry(sender, data[:end]))
            data = data[end:]

    def note(self, at: str, kind: str, text: str) -> None:
        self.entries.append({"at": at, kind: text})

    def event(self, at: str, event: pm.PairingEvent) -> None:
        self.events.append(event)
        shown = [f for f in ("code", "remote", "pending_must_be_deleted", "committed") if hasattr(event, f)]
        args = ", ".join(f"{f}={getattr(getattr(event, f), 'name', getattr(event, f))}" for f in shown)
        self.note(at, "event", type(event).__name__ + (f"({args})" if args else ""))


def _codebook() -> Codebook:
    """A real codebook holding the one open code; its ``rand`` is chosen to yield that code."""
    code = PairingCode.parse(TYPED_CODE)
    bits = sum(WORDS.index(word) << 11 * (2 - i) for i, word in enumerate(code.words))
    draws = iter([(code.nameplate - 1).to_bytes(8, "big"), (bits << 7).to_bytes(5, "big")])
    book = Codebook()
    check((book.open(NOW, lambda _size: next(draws)), code, "the code the codebook opened"))
    return book


def _exchange(
    log: _Log,
    joiner: Machine,
    book: Codebook,
    resolve: tuple[bool, bytes] | None = None,
    *,
    verify: bool = False,
    answers: Mapping[str, bool] | None = None,
) -> None:
    """Run ``joiner`` against a fresh initiator through bytes until neither has more to say.

    Durable writes are instant here; ``resolve`` is the registry's answer to a PairResolve;
    ``verify``: the initiator asks to confirm the SAS; ``answers``: each person's answer.
    """
    ini, joi = (identity.node_id for identity in identities())
    info, rand = INITIATOR_INFO, seeded_rand("initiator")
    initiator = pm.Initiator(
        local=ini, peer=joi, codebook=book, device_info=info, now=NOW, rand=rand, verify=lambda _: verify
    )
    nameplate, shown = PairingCode.parse(TYPED_CODE).nameplate, [""]

    def drain(name: str, machine: Machine) -> None:
        while (event := machine.next_event()) is not None:
            log.event(name, event)
            if isinstance(event, pm.ResolveRequested) and isinstance(machine, pm.Initiator) and resolve:
                log.note(name, "call", f"answer_resolve(committed={resolve[0]}, pairing_secret)")
                machine.answer_resolve(resolve[0], resolve[1], NOW)
            elif (
                isinstance(machine, pm.Initiator | pm.Joiner)
                and isinstance(event, pm.SasCheckRequested)
                and not machine.is_finished
            ):
                yes = (answers or {}).get(name, True)
                log.note(name, "call", "sas_confirmed()" if yes else "sas_refused()")
                machine.sas_confirmed(NOW) if yes else machine.sas_refused(NOW)
            elif isinstance(machine, pm.Initiator | pm.Joiner) and isinstance(event, pm.PeerVerified):
                machine.pending_stored(NOW)
            elif isinstance(machine, pm.Initiator | pm.Joiner) and isinstance(event, pm.CommitRequested):
                machine.committed(NOW)
        status = book.describe(nameplate, NOW)
        if status is None or not status.attempts:
            return
        text = f"{status.state.value}, attempts {status.attempts}, wrong {status.wrong_attempts}"
        if text != shown[0]:
            log.note("initiator", "codebook", f"code {nameplate} {text}")
            shown[0] = text

    sides: list[tuple[str, Machine]] = [("joiner", joiner), ("initiator", initiator)]
    for _ in range(32):
        moved = False
        for (src_name, src), (dst_name, dst) in (sides, sides[::-1]):
            drain(src_name, src)
            if data := src.data_to_send():
                log.frames(src_name, data)
                dst.receive_data(data, NOW)
                moved = True
            drain(dst_name, dst)
        if not moved:
            return
    raise AssertionError("the exchange did not settle")


def _joiner(code: str) -> pm.Joiner:
    ini, joi = (identity.node_id for identity in identities())
    parsed, info, rand = PairingCode.parse(code), JOINER_INFO, seeded_rand("joiner")
    return pm.Joiner(local=joi, peer=ini, code=parsed, device_info=info, now=NOW, rand=rand)


def party(identity: Identity, seed: bytes, info: m.DeviceInfo) -> Json:
    node, body = identity.node_id, encode_body(info)
    out: Json = {"ed25519_seed": seed.hex(), "node_id": node.raw.hex(), "node_id_text": node.text}
    out |= {"fingerprint": node.fingerprint, "device_info": fields_of(info)}
    return out | {"device_info_body": body.hex()}


def _spake2(code: PairingCode, ini: NodeId, joi: NodeId, pake_i: bytes, pake_j: bytes) -> tuple[Json, bytes]:
    """SPAKE2 (python-spake2 0.9, Ed25519) step by step, from fresh copies of both rand streams."""
    group, big_m, big_n = ParamsEd25519.group, ParamsEd25519.M, ParamsEd25519.N
    w = int(group.password_to_scalar(code.secret))
    draw_i, draw_j = seeded_rand("initiator")(64), seeded_rand("joiner")(64)
    x, y = (int.from_bytes(d, "big") % ED25519_ORDER for d in (draw_i, draw_j))
    k_a = group.bytes_to_element(pake_j[1:]).add(big_n.scalarmult(-w)).scalarmult(x)
    k_b = group.bytes_to_element(pake_i[1:]).add(big_m.scalarmult(-w)).scalarmult(y)
    k_bytes = bytes(k_a.to_bytes())
    digests = [hashlib.sha256(v).digest() for v in (code.secret, ini.raw, joi.raw)]
    key = hashlib.sha256(b"".join([*digests, pake_i[1:], pake_j[1:], k_bytes])).digest()
    pake_a = spake2_for(ks.Role.INITIATOR, code.secret, ini, joi, seeded_rand("initiator"))
    pake_b = spake2_for(ks.Role.JOINER, code.secret, ini, joi, seeded_rand("joiner"))
    check(
        (b"A" + bytes(group.Base.scalarmult(x).add(big_m.scalarmult(w)).to_bytes()), pake_i, "X = x*B + w*M"),
        (b"B" + bytes(group.Base.scalarmult(y).add(big_n.scalarmult(w)).to_bytes()), pake_j, "Y = y*B + w*N"),
        (bytes(k_b.to_bytes()), k_bytes, "K_bytes on both sides"),
        ((pake_a.start(), pake_b.start()), (pake_i, pake_j), "the PAKE messages"),
        ((pake_a.finish(pake_j), pake_b.finish(pake_i)), (key, key), "the PAKE key K"),
    )
    scalars = {"password_scalar_w": w, "initiator_scalar_x": x, "joiner_scalar_y": y}
    points = {"M": bytes(big_m.to_bytes()), "N": bytes(big_n.to_bytes())}
    values = {"initiator_entropy": draw_i, "joiner_entropy": draw_j, "pake_initiator": pake_i}
    values |= {"pake_joiner": pake_j, "K_bytes": k_bytes, "K": key}
    little = {name: (v % ED25519_ORDER).to_bytes(32, "little") for name, v in scalars.items()}
    return {"password": code.secret.hex(), **hexed(little), **hexed(points), **hexed(values)}, key


def pairing() -> tuple[Json, bytes, bytes]:
    """The successful pairing; returns its record, the pairing id and the pairing secret."""
    ini, joi = (identity.node_id for identity in identities())
    code, log = PairingCode.parse(TYPED_CODE), _Log()
    _exchange(log, _joiner(TYPED_CODE), _codebook())
    sent = {entry["message"]: entry["fields"] for entry in log.entries if "frame" in entry}
    pake_i, pake_j = (bytes.fromhex(sent[name]["pake"]) for name in ("PairChallenge", "PairRequest"))
    spake, key = _spake2(code, ini, joi, pake_i, pake_j)

    nameplate = code.nameplate.to_bytes(2, "big")
    fields = [label("transcript"), b"\x01", nameplate, ini.raw, joi.raw, pake_i, pake_j]
    th_input = b"".join(len(f).to_bytes(2, "big") + f for f in fields)
    th = hashlib.sha256(th_input).digest()
    k = {"PRK": ks.hkdf_extract(th, key)}
    for name in (*EXPANDED, "pairing secret"):
        k["k_" + name.replace(" ", "_")] = ks.hkdf_expand(k["PRK"], label(name), 32)
    k["sas_bytes"] = ks.hkdf_expand(k["PRK"], label("sas"), 8)
    for role in ("initiator", "joiner"):
        k[f"confirm_{role}"] = ks.hmac_sha256(k[f"k_confirm_{role}"], th)
    for name in ("done", "commit"):
        k[f"k_{name}"] = ks.hkdf_expand(k["k_pairing_secret"], label(name), 32)
        k[f"{name}_mac"] = ks.hmac_sha256(k[f"k_{name}"], th)
    sas = int.from_bytes(k["sas_bytes"], "big") >> (64 - 44)
    indices = [(sas >> 11 * (3 - i)) & 0x7FF for i in range(4)]
    names = ("confirm_initiator", "confirm_joiner", "k_initiator_to_joiner", "k_joiner_to_initiator")
    words = tuple(WORDS[i] for i in indices)
    expected = (th, *(k[n] for n in names), k["k_pairing_secret"], words)
    secret = k["k_pairing_secret"]
    verified = [dataclasses.astuple(e.keys) for e in log.events if isinstance(e, pm.PeerVerified)]
    check(
        (verified, [expected, expected], "both sides' keys"),
        ((ks.done_mac(secret, th), ks.commit_mac(secret, th)), (k["done_mac"], k["commit_mac"]), "MACs"),
    )
    boxes = {}
    for role, msg, info, key_name in BOXES:
        values = {"key": k[key_name], "nonce": bytes(12), "aad": CONTEXT_PAIR + bytes(8)}
        values["plaintext"] = encode_body(info)
        boxes[role] = {"seq": 0, **hexed(values), "box": sent[msg]["sealed"]}
    fingerprints = ("k_pairing_secret", "k_initiator_to_joiner", "k_joiner_to_initiator")
    record = {
        "spake2": spake,
        "transcript": {"fields": [f.hex() for f in fields], "input": th_input.hex(), "pairing_id": th.hex()},
        "keys": hexed(k),
        "sas": {"bits_44": f"{sas:011x}", "indices": indices, "words": list(words)},
        "key_fingerprints": {name: ks.key_fingerprint(k[name]) for name in fingerprints},
        "device_info_boxes": boxes,
        "log": log.entries,
    }
    return record, th, secret


def resolve(pairing_id: bytes, secret: bytes, committed: bool) -> Json:
    """A joiner in doubt asks the initiator, on a new pairing connection, with PairResolve."""
    ini, joi = (identity.node_id for identity in identities())
    resolver = pm.Resolver(local=joi, peer=ini, pairing_id=pairing_id, pairing_secret=secret, now=NOW)
    _exchange(log := _Log(), resolver, Codebook(), resolve=(committed, secret))
    return {"initiator_registry_committed": committed, "log": log.entries}


def wrong_code() -> Json:
    _exchange(log := _Log(), _joiner(WRONG_CODE), _codebook())
    return {"joiner_code": WRONG_CODE, "log": log.entries}


def sas_verified(pairing_id: bytes, secret: bytes) -> Json:
    """The same pairing, the initiator asking both people to confirm the SAS; both do."""
    _exchange(log := _Log(), _joiner(TYPED_CODE), _codebook(), verify=True)
    macs = {}
    for role in ks.Role:
        key = ks.hkdf_expand(secret, label(f"sas confirmed {role.value}"), 32)
        macs[f"k_sas_confirmed_{role.value}"] = key
        macs[f"sas_confirmed_{role.value}"] = ks.hmac_sha256(key, pairing_id)
        check((ks.sas_confirmed_mac(secret, pairing_id, role), macs[f"sas_confirmed_{role.value}"], "MAC"))
    return {"initiator_asks": True, "keys": hexed(macs), "log": log.entries}


def sas_refused() -> Json:
    """The initiator asks to confirm the SAS; the joiner's person refuses the words."""
    answers = {"joiner": False}
    _exchange(log := _Log(), _joiner(TYPED_CODE), _codebook(), verify=True, answers=answers)
    return {"initiator_asks": True, "joiner_answer": "refused", "log": log.entries}
