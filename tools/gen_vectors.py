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
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type stubs
from cryptography.hazmat.primitives.serialization import Encoding
from spake2.ed25519_basic import L as ED25519_ORDER
from spake2.parameters.ed25519 import ParamsEd25519

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.links.choice import LinkConns
from quicpair.actors.links.conn import LinkConn
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import keys as ks
from quicpair.protocol import messages as m
from quicpair.protocol import pairing as pm
from quicpair.protocol.addresses import announced_addresses
from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import WORDS, PairingCode, PairingUri
from quicpair.protocol.dialrule import dialer_of
from quicpair.protocol.errors import ErrorCode, FrameError
from quicpair.protocol.framing import FrameDecoder, encode_body, encode_frame
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.link import AddressesReceived, LinkChannel, LinkEstablished
from quicpair.protocol.notice import make_notice
from quicpair.protocol.pake import spake2_for
from quicpair.protocol.seal import CONTEXT_LINK, CONTEXT_PAIR

__all__ = ["CounterRand", "build", "main", "render_blocks", "render_json", "schema", "update_document"]

ROOT = Path(__file__).resolve().parent.parent
VECTORS_PATH, SPEC_PATH = Path("docs/vectors.json"), Path("docs/PROTOCOL.md")
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
#: RFC 8032 section 7.1, TEST 1 and TEST 2 secret keys: anyone can check the NodeIds.
INITIATOR_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
JOINER_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
#: ``4207-museum-ginger-oxygen`` as a person might type it: case, separators, a 4-letter prefix.
TYPED_CODE = " 4207  Muse_GINGER.oxyg "
WRONG_CODE = "4207-museum-ginger-orbit"
INITIATOR_INFO = m.DeviceInfo(name="alice-laptop", addresses=["192.0.2.1:47470", "[2001:db8::1]:47470"])
JOINER_INFO = m.DeviceInfo(name="bob-phone", addresses=["198.51.100.7:47470"])
ROLES = ("initiator", "joiner", "dialer", "listener", "certificate", "notice", "reset")
#: The retirement trace's connections: A dialed by the lower NodeId, B by the higher.
TRACE_ROLES = ("A dialer", "A listener", "B dialer", "B listener")
RAND_SEEDS = {role: f"quicpair/1 vectors {role}".encode() for role in ROLES + TRACE_ROLES}
#: What the PRK expands to (32 bytes each), in the spec's order; "sas" (8 bytes) follows.
EXPANDED = ("confirm initiator", "confirm joiner", "initiator to joiner", "joiner to initiator")
#: The DeviceInfo boxes: (sender, message, plaintext, key name).
BOXES = (
    ("joiner", "PairResponse", JOINER_INFO, "k_joiner_to_initiator"),
    ("initiator", "PairComplete", INITIATOR_INFO, "k_initiator_to_joiner"),
)
_BEGIN, _END = "<!-- generated:{} begin -->", "<!-- generated:{} end -->"

Json = dict[str, Any]
Machine = pm.PairingMachine[Any]


class CounterRand:
    """``rand(n)``: the next ``n`` bytes of SHA-256(seed || uint64_be(i)) for i = 0, 1, 2, ..."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self._buffer, self._counter = seed, b"", 0

    def __call__(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += hashlib.sha256(self.seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _rand(role: str) -> CounterRand:
    return CounterRand(RAND_SEEDS[role])


def _check(*triples: tuple[object, object, str]) -> None:
    """Each (what the code did, what the spec's formula gives, name) must agree."""
    for got, expected, what in triples:
        if got != expected:
            raise AssertionError(f"{what}: the code gives {got!r}, the spec's formula {expected!r}")


def _label(name: str) -> bytes:
    return ks.LABEL_PREFIX + name.encode("ascii")


def _hex(values: Mapping[str, bytes]) -> dict[str, str]:
    return {name: value.hex() for name, value in values.items()}


# -- messages as JSON ----------------------------------------------------------------------


def schema() -> list[Json]:
    """Every message type: tag, fields, msgpack types and limits, read from protocol/messages.py."""
    types: dict[object, str] = {int: "uint", bytes: "bin", str: "str"}
    out = []
    for tag, cls in sorted(m.MESSAGE_TYPES.items()):
        hints = typing.get_type_hints(cls)
        kinds = {f.name: types.get(hints[f.name], "array of str") for f in dataclasses.fields(cls)}
        fields = [{"name": f.name, "type": kinds[f.name], **f.metadata} for f in dataclasses.fields(cls)]
        out.append({"name": cls.__name__, "tag": tag, "fields": fields})
    return out


def _fields(msg: m.Message) -> Json:
    values = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    return {
        k: v.hex() if isinstance(v, bytes) else int(v) if isinstance(v, int) else v for k, v in values.items()
    }


def _decode(frame: bytes) -> m.Message:
    decoder = FrameDecoder()
    decoder.feed(frame)
    msg = decoder.next_message()
    if msg is None or decoder.next_message() is not None or encode_frame(msg) != frame:
        raise AssertionError(f"{frame.hex()} is not exactly one canonically encoded frame")
    return msg


def _frame_entry(sender: str, frame: bytes) -> Json:
    msg = _decode(frame)
    return {"from": sender, "message": type(msg).__name__, "fields": _fields(msg), "frame": frame.hex()}


# -- running the pairing machines ----------------------------------------------------------


class _Log:
    """One ordered record of a scenario: frames, events, actor calls, codebook changes."""

    def __init__(self) -> None:
        self.entries: list[Json] = []
        self.events: list[pm.PairingEvent] = []

    def frames(self, sender: str, data: bytes) -> None:
        while data:
            end = 4 + int.from_bytes(data[:4], "big")
            self.entries.append(_frame_entry(sender, data[:end]))
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
    _check((book.open(NOW, lambda _size: next(draws)), code, "the code the codebook opened"))
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
    ini, joi = (identity.node_id for identity in _ids())
    info, rand = INITIATOR_INFO, _rand("initiator")
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


def _ids() -> tuple[Identity, Identity]:
    return Identity.from_seed(INITIATOR_SEED), Identity.from_seed(JOINER_SEED)


def _joiner(code: str) -> pm.Joiner:
    ini, joi = (identity.node_id for identity in _ids())
    parsed, info, rand = PairingCode.parse(code), JOINER_INFO, _rand("joiner")
    return pm.Joiner(local=joi, peer=ini, code=parsed, device_info=info, now=NOW, rand=rand)


def _party(identity: Identity, seed: bytes, info: m.DeviceInfo) -> Json:
    node, body = identity.node_id, encode_body(info)
    out: Json = {"ed25519_seed": seed.hex(), "node_id": node.raw.hex(), "node_id_text": node.text}
    out |= {"fingerprint": node.fingerprint, "device_info": _fields(info)}
    return out | {"device_info_body": body.hex()}


def _spake2(code: PairingCode, ini: NodeId, joi: NodeId, pake_i: bytes, pake_j: bytes) -> tuple[Json, bytes]:
    """SPAKE2 (python-spake2 0.9, Ed25519) step by step, from fresh copies of both rand streams."""
    group, big_m, big_n = ParamsEd25519.group, ParamsEd25519.M, ParamsEd25519.N
    w = int(group.password_to_scalar(code.secret))
    draw_i, draw_j = _rand("initiator")(64), _rand("joiner")(64)
    x, y = (int.from_bytes(d, "big") % ED25519_ORDER for d in (draw_i, draw_j))
    k_a = group.bytes_to_element(pake_j[1:]).add(big_n.scalarmult(-w)).scalarmult(x)
    k_b = group.bytes_to_element(pake_i[1:]).add(big_m.scalarmult(-w)).scalarmult(y)
    k_bytes = bytes(k_a.to_bytes())
    digests = [hashlib.sha256(v).digest() for v in (code.secret, ini.raw, joi.raw)]
    key = hashlib.sha256(b"".join([*digests, pake_i[1:], pake_j[1:], k_bytes])).digest()
    pake_a = spake2_for(ks.Role.INITIATOR, code.secret, ini, joi, _rand("initiator"))
    pake_b = spake2_for(ks.Role.JOINER, code.secret, ini, joi, _rand("joiner"))
    _check(
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
    return {"password": code.secret.hex(), **_hex(little), **_hex(points), **_hex(values)}, key


def _pairing() -> tuple[Json, bytes, bytes]:
    """The successful pairing; returns its record, the pairing id and the pairing secret."""
    ini, joi = (identity.node_id for identity in _ids())
    code, log = PairingCode.parse(TYPED_CODE), _Log()
    _exchange(log, _joiner(TYPED_CODE), _codebook())
    sent = {entry["message"]: entry["fields"] for entry in log.entries if "frame" in entry}
    pake_i, pake_j = (bytes.fromhex(sent[name]["pake"]) for name in ("PairChallenge", "PairRequest"))
    spake, key = _spake2(code, ini, joi, pake_i, pake_j)

    nameplate = code.nameplate.to_bytes(2, "big")
    fields = [_label("transcript"), b"\x01", nameplate, ini.raw, joi.raw, pake_i, pake_j]
    th_input = b"".join(len(f).to_bytes(2, "big") + f for f in fields)
    th = hashlib.sha256(th_input).digest()
    k = {"PRK": ks.hkdf_extract(th, key)}
    for name in (*EXPANDED, "pairing secret"):
        k["k_" + name.replace(" ", "_")] = ks.hkdf_expand(k["PRK"], _label(name), 32)
    k["sas_bytes"] = ks.hkdf_expand(k["PRK"], _label("sas"), 8)
    for role in ("initiator", "joiner"):
        k[f"confirm_{role}"] = ks.hmac_sha256(k[f"k_confirm_{role}"], th)
    for name in ("done", "commit"):
        k[f"k_{name}"] = ks.hkdf_expand(k["k_pairing_secret"], _label(name), 32)
        k[f"{name}_mac"] = ks.hmac_sha256(k[f"k_{name}"], th)
    sas = int.from_bytes(k["sas_bytes"], "big") >> (64 - 44)
    indices = [(sas >> 11 * (3 - i)) & 0x7FF for i in range(4)]
    names = ("confirm_initiator", "confirm_joiner", "k_initiator_to_joiner", "k_joiner_to_initiator")
    words = tuple(WORDS[i] for i in indices)
    expected = (th, *(k[n] for n in names), k["k_pairing_secret"], words)
    secret = k["k_pairing_secret"]
    verified = [dataclasses.astuple(e.keys) for e in log.events if isinstance(e, pm.PeerVerified)]
    _check(
        (verified, [expected, expected], "both sides' keys"),
        ((ks.done_mac(secret, th), ks.commit_mac(secret, th)), (k["done_mac"], k["commit_mac"]), "MACs"),
    )
    boxes = {}
    for role, msg, info, key_name in BOXES:
        values = {"key": k[key_name], "nonce": bytes(12), "aad": CONTEXT_PAIR + bytes(8)}
        values["plaintext"] = encode_body(info)
        boxes[role] = {"seq": 0, **_hex(values), "box": sent[msg]["sealed"]}
    fingerprints = ("k_pairing_secret", "k_initiator_to_joiner", "k_joiner_to_initiator")
    record = {
        "spake2": spake,
        "transcript": {"fields": [f.hex() for f in fields], "input": th_input.hex(), "pairing_id": th.hex()},
        "keys": _hex(k),
        "sas": {"bits_44": f"{sas:011x}", "indices": indices, "words": list(words)},
        "key_fingerprints": {name: ks.key_fingerprint(k[name]) for name in fingerprints},
        "device_info_boxes": boxes,
        "log": log.entries,
    }
    return record, th, secret


def _resolve(pairing_id: bytes, secret: bytes, committed: bool) -> Json:
    """A joiner in doubt asks the initiator, on a new pairing connection, with PairResolve."""
    ini, joi = (identity.node_id for identity in _ids())
    resolver = pm.Resolver(local=joi, peer=ini, pairing_id=pairing_id, pairing_secret=secret, now=NOW)
    _exchange(log := _Log(), resolver, Codebook(), resolve=(committed, secret))
    return {"initiator_registry_committed": committed, "log": log.entries}


def _wrong_code() -> Json:
    _exchange(log := _Log(), _joiner(WRONG_CODE), _codebook())
    return {"joiner_code": WRONG_CODE, "log": log.entries}


def _sas_verified(pairing_id: bytes, secret: bytes) -> Json:
    """The same pairing, the initiator asking both people to confirm the SAS; both do."""
    _exchange(log := _Log(), _joiner(TYPED_CODE), _codebook(), verify=True)
    macs = {}
    for role in ks.Role:
        key = ks.hkdf_expand(secret, _label(f"sas confirmed {role.value}"), 32)
        macs[f"k_sas_confirmed_{role.value}"] = key
        macs[f"sas_confirmed_{role.value}"] = ks.hmac_sha256(key, pairing_id)
        _check((ks.sas_confirmed_mac(secret, pairing_id, role), macs[f"sas_confirmed_{role.value}"], "MAC"))
    return {"initiator_asks": True, "keys": _hex(macs), "log": log.entries}


def _sas_refused() -> Json:
    """The initiator asks to confirm the SAS; the joiner's person refuses the words."""
    answers = {"joiner": False}
    _exchange(log := _Log(), _joiner(TYPED_CODE), _codebook(), verify=True, answers=answers)
    return {"initiator_asks": True, "joiner_answer": "refused", "log": log.entries}


# -- link ----------------------------------------------------------------------------------

_WAYS = ("dialer to listener", "listener to dialer")
#: The first delivery number of a node's first run (protocol/delivery.py: epoch 1).
_FIRST = 1 << 32
#: Each side's first sealed message is its LinkAddresses (section 11.2); then a payload each
#: way, each acknowledged, and an unpair.
_LINK_PLAN: list[tuple[str, str, m.LinkInner]] = [
    ("dialer", "listener", m.LinkAddresses(addresses=["198.51.100.8:47470"])),
    ("listener", "dialer", m.LinkAddresses(addresses=["203.0.113.9:47470"])),
    ("dialer", "listener", m.LinkAppData(seq=_FIRST, data=b"ping")),
    ("listener", "dialer", m.LinkAck(upto=_FIRST)),
    ("listener", "dialer", m.LinkAppData(seq=_FIRST, data=b"pong")),
    ("dialer", "listener", m.LinkAck(upto=_FIRST)),
    ("listener", "dialer", m.LinkUnpair()),
]


def _channel(name: str, me: NodeId, peer: NodeId, secret: bytes, kid: bytes) -> LinkChannel:
    addr = INITIATOR_INFO.addresses if me == _ids()[0].node_id else JOINER_INFO.addresses
    d, r = name == "dialer", _rand(name)
    return LinkChannel(
        local=me, peer=peer, local_is_dialer=d, pairing_secret=secret, key_id=kid, addresses=addr, rand=r
    )


def _link(secret: bytes, pairing_id: bytes) -> Json:
    """A link connection after the pairing: the hellos, then the sealed inner messages of _LINK_PLAN."""
    ini, joi = (identity.node_id for identity in _ids())
    dialer = dialer_of(ini, joi)
    listener = joi if dialer == ini else ini
    pairs = (("dialer", dialer, listener), ("listener", listener, dialer))
    kid = ks.key_id(pairing_id)
    side = {name: _channel(name, me, peer, secret, kid) for name, me, peer in pairs}
    hello_d = side["dialer"].hello()
    side["listener"].receive_data(hello_d)
    _check((side["listener"].next_event(), None, "the listener's event before its own hello"))
    hello_l = side["listener"].hello()
    side["dialer"].receive_data(hello_l)
    up_d, up_l = side["dialer"].next_event(), side["listener"].next_event()
    assert isinstance(up_d, LinkEstablished) and isinstance(up_l, LinkEstablished)
    nonce_d, nonce_l = (_fields(_decode(hello))["nonce"] for hello in (hello_d, hello_l))
    salt = bytes.fromhex(nonce_d + nonce_l)
    info = {way: _label(f"link {way}") + dialer.raw + listener.raw for way in _WAYS}
    prk = ks.hkdf_extract(salt, secret)
    d2l, l2d = (ks.hkdf_expand(prk, info[way], 32) for way in _WAYS)
    both = (up_d.keys.send, up_d.keys.receive, up_l.keys.send, up_l.keys.receive)
    _check((both, (d2l, l2d, l2d, d2l), "the link keys"))

    sealed = []
    for sender, receiver, inner in _LINK_PLAN:
        if isinstance(inner, m.LinkAppData):
            frame = side[sender].send_app(inner.seq, inner.data)
        elif isinstance(inner, m.LinkAck):
            frame = side[sender].send_ack(inner.upto)
        elif isinstance(inner, m.LinkAddresses):
            frame = side[sender].send_addresses(inner.addresses)
        else:
            frame = side[sender].send_unpair()
        side[receiver].receive_data(frame)
        event = side[receiver].next_event()
        entry = _frame_entry(sender, frame)
        seq = entry["fields"]["seq"].to_bytes(8, "big")
        key = d2l if sender == "dialer" else l2d
        values = {"key": key, "nonce": bytes(4) + seq, "aad": CONTEXT_LINK + seq}
        entry |= {"inner": type(inner).__name__, "inner_fields": _fields(inner), **_hex(values)}
        sealed.append(entry | {"plaintext": encode_body(inner).hex(), "receiver_event": type(event).__name__})
    derived = {"salt": salt, "PRK_L": prk, "info_dialer_to_listener": info[_WAYS[0]]}
    derived |= {"info_listener_to_dialer": info[_WAYS[1]], "dialer_to_listener": d2l}
    derived["listener_to_dialer"] = l2d
    out: Json = {"dialer": dialer.raw.hex(), "listener": listener.raw.hex(), "key_id": kid.hex()}
    out["dialer_nonce"] = nonce_d
    out["listener_nonce"] = nonce_l
    out["hellos"] = [_frame_entry("dialer", hello_d), _frame_entry("listener", hello_l)]
    return out | _hex(derived) | {"sealed": sealed}


# -- retiring a duplicate connection (section 12.2) ------------------------------------------


class _WireLink:
    """Stands in for the QuicLink under a real LinkConn: what it is told to send goes on the wire."""

    def __init__(self, wire: _Wire, conn: str, sender: str) -> None:
        self.connection_id, self.remote_address, self.is_closed = conn, ("192.0.2.1", 47470), False
        self._wire, self._sender = wire, sender

    def set_handler(self, _handler: object) -> None:
        pass

    def open_stream(self) -> int:
        return 0

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        assert stream_id == 0 and not self.is_closed
        if data:
            self._wire.put(self.connection_id, self._sender, {"frame": data})
        if end_stream:
            self._wire.put(self.connection_id, self._sender, {"fin": True})

    def close(self, code: ErrorCode, _reason: str) -> None:
        if not self.is_closed:
            self.is_closed = True
            self._wire.put(self.connection_id, self._sender, {"connection_close": code})


class _Wire:
    """Both connections' streams, in order per connection and direction; what was sent in this step."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], list[Json]] = {}
        self.sent: list[Json] = []
        #: The inner message of the LinkSealed frame being sent (the wire cannot open it).
        self.inner = ""

    def put(self, conn: str, sender: str, item: Json) -> None:
        self.queues.setdefault((conn, sender), []).append(item)
        if "frame" in item and self.inner:
            item = item | {"inner": self.inner}
        self.inner = ""
        self.sent.append({"conn": conn, "from": sender, **item})


class _Node:
    """One node's connections with its peer: the real LinkConns (actors/links/choice.py) and LinkConn,
    driven as actors/links/worker.py drives them (LinkAddresses first, then resolve)."""

    def __init__(self, name: str, me: NodeId, peer: NodeId, secret: bytes, kid: bytes, wire: _Wire) -> None:
        self.name, self.me, self.peer, self.secret, self.kid, self.wire = name, me, peer, secret, kid, wire
        self.conns = LinkConns(me, peer, self._call_later, lambda *_: None)
        self.by_name: dict[str, LinkConn] = {}
        self.events: list[str] = []
        self.addresses = ["192.0.2.1:47470"] if me == _ids()[0].node_id else ["198.51.100.7:47470"]

    @staticmethod
    def _call_later(_delay: float, _func: object, _key: int) -> ActorTimer:
        return ActorTimer(set())  # never runs here: every FIN arrives in time

    def connect(self, name: str, dialed: bool) -> LinkConn:
        role = f"{name} {'dialer' if dialed else 'listener'}"

        def channel(is_dialer: bool) -> LinkChannel:
            return LinkChannel(
                local=self.me,
                peer=self.peer,
                local_is_dialer=is_dialer,
                pairing_secret=self.secret,
                key_id=self.kid,
                addresses=self.addresses,
                rand=_rand(role),
            )

        link = typing.cast(QuicLink, _WireLink(self.wire, name, self.name))
        conn = LinkConn(link, dialed=dialed, address="", source="", tell=lambda _: None, make_channel=channel)
        self.conns.add(conn)
        self.by_name[name] = conn
        return conn

    def deliver(self, name: str, item: Json) -> None:
        conn = self.by_name.get(name) or self.connect(name, dialed=False)
        if "frame" in item:
            conn.adopt_stream(0)
            conn.feed(item["frame"])
            while (event := conn.next_event()) is not None:
                self.events.append(f"{name}: {type(event).__name__}")
                if isinstance(event, LinkEstablished):
                    assert conn.channel is not None
                    self.wire.inner = "LinkAddresses"
                    conn.send(conn.channel.send_addresses(self.addresses))
                    self.conns.resolve()
                elif isinstance(event, AddressesReceived):
                    conn.authenticated = True
        elif "fin" in item:
            self.events.append(f"{name}: FIN")
            self.conns.peer_finished(conn)
        else:
            self.events.append(f"{name}: CONNECTION_CLOSE {item['connection_close'].name}")
            typing.cast(_WireLink, conn.link).is_closed = True
        self.forget_closed()

    def forget_closed(self) -> None:
        for name, conn in list(self.by_name.items()):
            if not conn.is_open:  # the ConnClosed that follows a close: the worker forgets it
                self.conns.remove(conn.key)
                del self.by_name[name]

    def state(self) -> dict[str, str]:
        out = {}
        for name, conn in sorted(self.by_name.items()):
            facts = ["kept" if conn is self.conns.primary else "retiring" if conn.retiring else "open"]
            facts += ["dialed" if conn.dialed else "accepted"]
            facts += [
                fact
                for fact, on in (
                    ("hellos done", conn.established),
                    ("peer authenticated", conn.authenticated),
                    ("FIN sent", conn.fin_sent),
                    ("FIN received", conn.peer_fin),
                    ("retire timer (2 s) running", conn.timer is not None),
                )
                if on
            ]
            out[name] = ", ".join(facts)
        primary = self.conns.primary
        out["link"] = "up" if primary is not None and primary.authenticated else "down"
        return out


def _retirement(secret: bytes, pairing_id: bytes) -> Json:
    """Section 12.2, worked: a link is up on A (dialed by the lower NodeId); the higher NodeId dials B."""
    ini, joi = (identity.node_id for identity in _ids())
    low = dialer_of(ini, joi)
    high = joi if low == ini else ini
    wire, kid = _Wire(), ks.key_id(pairing_id)
    nodes = {
        "low": _Node("low", low, high, secret, kid, wire),
        "high": _Node("high", high, low, secret, kid, wire),
    }
    steps: list[Json] = []

    def step(at: str, action: str, run: typing.Callable[[], object]) -> None:
        wire.sent, nodes[at].events = [], []
        run()
        sends = []
        for item in wire.sent:
            if "frame" in item:
                msg = _decode(item["frame"])
                sent: Json = {"conn": item["conn"], "message": type(msg).__name__, "fields": _fields(msg)}
                if isinstance(msg, m.LinkSealed):
                    sent["inner"] = item["inner"]
                sends.append(sent | {"frame": item["frame"].hex()})
            elif "fin" in item:
                sends.append({"conn": item["conn"], "stream": "FIN (empty STREAM frame, FIN bit set)"})
            else:
                code = item["connection_close"]
                sends.append({"conn": item["conn"], "connection_close": f"{code.name} (0x{code.value:02x})"})
        entry: Json = {"step": len(steps) + 1, "at": at, "action": action, "received": nodes[at].events}
        steps.append(entry | {"sends": sends, "state": {name: node.state() for name, node in nodes.items()}})

    def deliver(conn: str, sender: str) -> None:
        receiver = "high" if sender == "low" else "low"
        queue = wire.queues.pop((conn, sender), [])
        for item in queue:
            nodes[receiver].deliver(conn, item)

    def arrival(conn: str, sender: str) -> tuple[str, str, typing.Callable[[], object]]:
        receiver = "high" if sender == "low" else "low"
        return receiver, f"receives what {sender} sent on {conn}", lambda: deliver(conn, sender)

    step(
        "low",
        "dials A (the dial rule), opens the stream, sends its hello",
        lambda: nodes["low"].connect("A", dialed=True).start_as_dialer(),
    )
    step(*arrival("A", "low"))
    step(*arrival("A", "high"))
    step(*arrival("A", "low"))
    step(
        "high",
        "dials B (both dial: the test-only setting of 12.1, or a restart race)",
        lambda: nodes["high"].connect("B", dialed=True).start_as_dialer(),
    )
    for sender in ("high", "low", "high", "low", "high"):
        step(*arrival("B", sender))
    _check(
        (wire.queues, {}, "nothing left on the wire"),
        ([sorted(node.by_name) for node in nodes.values()], [["A"], ["A"]], "both keep A only"),
    )
    out: Json = {"low": low.raw.hex(), "high": high.raw.hex(), "key_id": kid.hex()}
    return out | {"rand_seeds": {r: RAND_SEEDS[r].decode() for r in TRACE_ROLES}, "steps": steps}


# -- framing, the URI, certificates ----------------------------------------------------------

_SAMPLES: list[m.Message] = [
    m.PairRequest(nameplate=4207, pake=b"B" + bytes(range(32))),
    m.PairChallenge(pake=b"A" + bytes(range(32)), confirm=bytes(range(32, 64)), flags=1),
    m.PairResponse(confirm=bytes(32), sealed=bytes(range(40)), flags=0),
    m.PairComplete(sealed=bytes(range(40))),
    m.PairDone(mac=b"\xdd" * 32),
    m.PairCommit(mac=b"\xcc" * 32),
    m.PairReject(code=ErrorCode.WRONG_CODE, reason="wrong code"),
    m.DeviceInfo(name="ünïcode-name", addresses=["192.0.2.1:47470", "[::1]:47470"]),
    m.PairResolve(pairing_id=b"\x1d" * 32, mac=b"\xdd" * 32),
    m.PairSasConfirmed(mac=b"\x5a" * 32),
    m.LinkHello(nonce=b"\x4e" * 32, pairing=b"\x6b" * 8, addresses=[]),
    m.LinkSealed(seq=2**32, box=bytes(16)),
    m.LinkAppData(seq=2**32 + 1, data=b""),
    m.LinkAck(upto=2**64 - 1),
    m.LinkAddresses(addresses=["example.net:1"]),
    m.LinkUnpair(),
]


def _frame(items: object = None, *, raw: bytes = b"", trailing: bytes = b"", bin_type: bool = True) -> bytes:
    body = (raw or bytes(msgpack.packb(items, use_bin_type=bin_type))) + trailing
    return len(body).to_bytes(4, "big") + body


def _verdict(frame: bytes) -> str:
    """What the strict decoder makes of ``frame``: the message's name or the error code's."""
    decoder = FrameDecoder()
    decoder.feed(frame)
    try:
        return type(decoder.next_message()).__name__
    except FrameError as exc:
        return exc.code.name


def _framing() -> Json:
    pake, mac_pair = b"B" + bytes(32), b"\xa3mac\xc4\x20" + bytes(32)
    invalid = [
        ("length 0", bytes(4)),
        ("length 65537 (refused from the prefix alone)", (65537).to_bytes(4, "big")),
        ("version 2", _frame([2, 1, {"nameplate": 1, "pake": pake}])),
        ("unknown tag 99", _frame([1, 99, {}])),
        ("missing field", _frame([1, 1, {"nameplate": 1}])),
        ("extra field", _frame([1, 5, {"mac": bytes(32), "x": 0}])),
        ("repeated field", _frame(raw=b"\x93\x01\x05\x82" + mac_pair * 2)),
        ("boolean where an integer belongs", _frame([1, 7, {"code": True, "reason": ""}])),
        ("negative integer", _frame([1, 7, {"code": -1, "reason": ""}])),
        ("bin of the wrong size", _frame([1, 1, {"nameplate": 1, "pake": bytes(32)}])),
        ("str where bin belongs", _frame([1, 5, {"mac": "x" * 32}], bin_type=False)),
        ("a byte after the msgpack object", _frame([1, 20, {}], trailing=b"\xc0")),
        ("body is a map, not an array", _frame({"v": 1})),
        ("array of 4 items", _frame([1, 20, {}, 0])),
        ("fields in another order (accepted)", _frame([1, 7, {"reason": "", "code": 0}])),
    ]
    results = [{"case": case, "frame": frame.hex(), "result": _verdict(frame)} for case, frame in invalid]
    valid = [
        {"message": type(s).__name__, "fields": _fields(s), "frame": encode_frame(s).hex()} for s in _SAMPLES
    ]
    return {"valid": valid, "invalid": results}


def _uri() -> Json:
    ini = _ids()[0].node_id
    uri = PairingUri(PairingCode.parse(TYPED_CODE), ini, ("192.0.2.1:47470", "[2001:DB8::1]:47470"))
    _check((PairingUri.parse(uri.text), uri, "the URI round trip"))
    return {"code": uri.code.text, "node": ini.text, "addresses": list(uri.addresses), "text": uri.text}


def _certificates() -> Json:
    rand, names = _rand("certificate"), ("initiator", "joiner")
    pairs = zip(names, _ids(), strict=True)
    return {name: ident.certificate(NOW, rand).public_bytes(Encoding.DER).hex() for name, ident in pairs}


def _certificate_serials() -> Json:
    """Section 3.2: how the 16 ``rand`` bytes of each certificate become its serial number."""
    rand, out = _rand("certificate"), {}
    for name in ("initiator", "joiner"):
        drawn = rand(16)
        serial = int.from_bytes(drawn, "big") >> 1 or 1
        out[name] = {"rand_16": drawn.hex(), "serial_hex": f"{serial:x}", "serial_decimal": str(serial)}
    # The same stream, through the real Identity.certificate: the serials must be the ones above.
    rand = _rand("certificate")
    for name, ident in zip(("initiator", "joiner"), _ids(), strict=True):
        got = ident.certificate(NOW, rand).serial_number
        _check((f"{got:x}", out[name]["serial_hex"], f"the {name} certificate's serial"))
    return out


def _fixed_schedule() -> Json:
    """Section 14's key schedule from fixed inputs (no PAKE run): every value from the formulas."""
    ini, joi = NodeId(b"\x11" * 32), NodeId(b"\x22" * 32)
    pake_i, pake_j, key = b"A" + b"\x33" * 32, b"B" + b"\x44" * 32, b"\x55" * 32
    nonce_d, nonce_l, nameplate = b"\x66" * 32, b"\x77" * 32, 4242
    th = ks.transcript_hash(
        version=1, nameplate=nameplate, initiator=ini, joiner=joi, pake_initiator=pake_i, pake_joiner=pake_j
    )
    keys = ks.derive_pairing_keys(key, th)
    link = ks.link_keys(
        keys.pairing_secret,
        dialer=ini,
        listener=joi,
        dialer_nonce=nonce_d,
        listener_nonce=nonce_l,
        local_is_dialer=True,
    )
    inputs = {"initiator": ini.raw, "joiner": joi.raw, "pake_initiator": pake_i, "pake_joiner": pake_j}
    inputs |= {"K": key, "dialer_nonce": nonce_d, "listener_nonce": nonce_l}
    values = {f.name: getattr(keys, f.name) for f in dataclasses.fields(keys) if f.name != "sas"}
    values["done_mac"] = ks.done_mac(keys.pairing_secret, th)
    values["commit_mac"] = ks.commit_mac(keys.pairing_secret, th)
    values["link_dialer_to_listener"], values["link_listener_to_dialer"] = link.send, link.receive
    out: Json = {"inputs": {"nameplate": nameplate, "dialer": "initiator", **_hex(inputs)}}
    outputs: Json = dict(_hex(values))
    outputs |= {"sas": " ".join(keys.sas), "key_fingerprint(K)": ks.key_fingerprint(key)}
    return out | {"outputs": outputs}


def _restart_notice(secret: bytes) -> Json:
    """Section 11.6: the notice the waiting side (the higher NodeId) sends its dialer."""
    ini, joi = (identity.node_id for identity in _ids())
    sender = joi if dialer_of(ini, joi) == ini else ini
    receiver = ini if sender == joi else joi
    boot = _rand("notice")(8)
    key = ks.hkdf_expand(secret, _label("restart notice"), 32)
    signed = b"\x00qpRN\x01" + sender.raw + receiver.raw + boot
    tag = ks.hmac_sha256(key, signed)[:16]
    datagram = b"\x00qpRN\x01" + sender.raw + boot + tag
    _check(
        (ks.restart_notice_key(secret), key, "notice_key"),
        (make_notice(secret, sender, receiver, boot), datagram, "the notice"),
    )
    values = {"pairing_secret": secret, "sender": sender.raw, "receiver": receiver.raw, "boot": boot}
    return _hex(values | {"notice_key": key, "tag_input": signed, "tag": tag, "datagram": datagram})


def _stateless_reset() -> Json:
    """Section 3.4/8.5: each node's reset key from its Ed25519 seed, a token for a connection id."""
    out: Json = {}
    rand = _rand("reset")
    for name, seed in (("initiator", INITIATOR_SEED), ("joiner", JOINER_SEED)):
        reset_key = ks.hkdf_expand(ks.hkdf_extract(b"", seed), _label("stateless reset"), 32)
        cid = rand(8)
        token = ks.hmac_sha256(reset_key, cid)[:16]
        _check(
            (ks.stateless_reset_key(seed), reset_key, "reset_key"),
            (ks.stateless_reset_token(reset_key, cid), token, "reset_token"),
        )
        out[name] = _hex({"ed25519_seed": seed, "reset_key": reset_key, "connection_id": cid, "token": token})
    return out


#: Section 7.4, "How a receiver treats them": (what a peer announced, where it was seen).
_ANNOUNCED: list[tuple[str, list[str], str | None]] = [
    (
        "a remote peer: names, bad ports, loopback, unspecified, multicast, reserved dropped",
        [
            "192.0.2.1:47470",
            "[2001:DB8:0:0::1]:47470",
            "example.net:47470",
            "192.0.2.1:047470",
            "192.0.2.1",
            "2001:db8::2:47470",
            "127.0.0.1:47470",
            "[::1]:47470",
            "0.0.0.0:47470",
            "224.0.0.251:5353",
            "240.0.0.1:47470",
            "not an address",
            "[fe80::7%eth0]:47470",
            "[::ffff:198.51.100.9]:47470",
            "192.0.2.1:47470",
            "10.0.0.2:47470",
        ],
        "198.51.100.7:50123",
    ),
    (
        "a peer on loopback: loopback kept",
        ["127.0.0.1:47471", "[::1]:47471", "localhost:47471"],
        "127.0.0.1:5",
    ),
    (
        "nothing usable: nothing kept, the stored addresses stay",
        ["example.org:1", "::1:2"],
        "192.0.2.9:50125",
    ),
]


def _addresses() -> Json:
    cases = []
    for case, announced, seen in _ANNOUNCED:
        kept = list(announced_addresses(announced, peer=seen))
        hello = m.LinkHello(nonce=bytes(32), pairing=bytes(8), addresses=announced)
        _check((_verdict(encode_frame(hello)), "LinkHello", "a hello with such addresses decodes"))
        cases.append({"case": case, "peer_seen_at": seen, "announced": announced, "kept": kept})
    return {"cases": cases}


def build() -> Json:
    """Every vector, in a stable order: the content of docs/vectors.json."""
    ini, joi = _ids()
    code = PairingCode.parse(TYPED_CODE)
    pairing, pairing_id, secret = _pairing()
    rand = "rand(n) returns the next n bytes of SHA-256(seed || uint64_be(i)) for i = 0, 1, 2, ..."
    seeds = {name: s.decode("ascii") for name, s in RAND_SEEDS.items()}
    inputs: Json = {"now": NOW, "rand": rand, "rand_seeds": seeds}
    inputs["initiator"] = _party(ini, INITIATOR_SEED, INITIATOR_INFO)
    inputs["joiner"] = _party(joi, JOINER_SEED, JOINER_INFO)
    inputs["code"] = {"typed": TYPED_CODE, "text": code.text, "nameplate": code.nameplate}
    inputs["code"] |= {"words": list(code.words), "secret": code.secret.hex()}
    return {
        "about": "quicpair protocol version 1 test vectors by tools/gen_vectors.py; see docs/PROTOCOL.md",
        "protocol_version": m.PROTOCOL_VERSION,
        "inputs": inputs,
        "schema": {"messages": schema(), "error_codes": {c.name: c.value for c in ErrorCode}},
        "pairing": pairing,
        "resolve_committed": _resolve(pairing_id, secret, committed=True),
        "resolve_aborted": _resolve(pairing_id, secret, committed=False),
        "wrong_code": _wrong_code(),
        "sas_verified": _sas_verified(pairing_id, secret),
        "sas_refused": _sas_refused(),
        "link": _link(secret, pairing_id),
        "retirement": _retirement(secret, pairing_id),
        "framing": _framing(),
        "uri": _uri(),
        "certificates": _certificates(),
        "certificate_serials": _certificate_serials(),
        "key_schedule_fixed": _fixed_schedule(),
        "restart_notice": _restart_notice(secret),
        "stateless_reset": _stateless_reset(),
        "addresses": _addresses(),
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


# -- Markdown ------------------------------------------------------------------------------


def _log_md(title: str, log: list[Json]) -> list[str]:
    lines = []
    for entry in log:
        kind = "frame" if "frame" in entry else next(k for k in entry if k != "at")
        who, what = (entry["from"], f"sends {entry['message']}") if "frame" in entry else (entry["at"], kind)
        lines.append(f"{who:>9} {what}: {entry[kind]}")
    return [title, "", "```", *lines, "```", ""]


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| value | hex (or text) |", "|---|---|", *(f"| {name} | `{val}` |" for name, val in rows), ""]


def _vectors_md(v: Json) -> str:
    ins, p, link = v["inputs"], v["pairing"], v["link"]
    rows: list[tuple[str, object]] = [("now", ins["now"])]
    for role, test in (("initiator", 1), ("joiner", 2)):
        party = ins[role]
        rows += [(f"{role} Ed25519 seed (RFC 8032 TEST {test})", party["ed25519_seed"])]
        rows += [(f"{role} NodeId", party["node_id"])]
        rows += [(f"{role} NodeId text, fingerprint", f"{party['node_id_text']}, {party['fingerprint']}")]
    rows += [("code typed, canonical", f"{json.dumps(ins['code']['typed'])}, {ins['code']['text']}")]
    rows += [(f"SPAKE2 {k}", val) for k, val in p["spake2"].items()]
    rows += [
        ("transcript input", p["transcript"]["input"]),
        ("TH = pairing_id", p["transcript"]["pairing_id"]),
    ]
    rows += [
        *p["keys"].items(),
        ("SAS: 44 bits, words", f"{p['sas']['bits_44']}, {' '.join(p['sas']['words'])}"),
    ]
    rows += [(f"key_fingerprint({k})", val) for k, val in p["key_fingerprints"].items()]
    names = (
        "dialer",
        "key_id",
        "dialer_nonce",
        "listener_nonce",
        "PRK_L",
        "dialer_to_listener",
        "listener_to_dialer",
    )
    rows += [(f"link {k}", link[k]) for k in names]
    for role, serial in v["certificate_serials"].items():
        rows += [
            (
                f"{role} certificate: 16 rand bytes, serial (hex)",
                f"{serial['rand_16']}, {serial['serial_hex']}",
            )
        ]
    notice = v["restart_notice"]
    rows += [(f"restart notice {k}", notice[k]) for k in ("boot", "notice_key", "tag", "datagram")]
    for role, reset in v["stateless_reset"].items():
        rows += [(f"{role} reset_key", reset["reset_key"])]
        rows += [(f"{role} reset_token(cid {reset['connection_id']})", reset["token"])]
    out = _table(rows)
    out += _log_md("The successful pairing, frame by frame (whole frames, length prefix included):", p["log"])
    link_log = link["hellos"] + [{k: e[k] for k in ("from", "message", "frame")} for e in link["sealed"]]
    title = "The link: the hellos, then LinkAddresses each way, a payload and its ack each way, LinkUnpair:"
    out += _log_md(title, link_log)
    wrong = v["wrong_code"]
    out += _log_md(f"A wrong code (the joiner typed `{wrong['joiner_code']}`):", wrong["log"])
    out += _log_md("A joiner in doubt resolves; the initiator had committed:", v["resolve_committed"]["log"])
    verified = v["sas_verified"]
    out += _table([(name, value) for name, value in verified["keys"].items()])
    out += _log_md(
        "The initiator asks both people to confirm the SAS (FLAG_VERIFY_SAS); both confirm:", verified["log"]
    )
    out += _log_md("The same, but the joiner's person refuses the words:", v["sas_refused"]["log"])
    out += ["Frames a receiver must refuse (hex in `framing.invalid`):", "", "| case | result |", "|---|---|"]
    out += [*(f"| {e['case']} | {e['result']} |" for e in v["framing"]["invalid"]), ""]
    out += ["Announced addresses and what a receiver keeps (section 7.4; `addresses.cases`):", ""]
    out += ["| peer seen at | announced | kept |", "|---|---|---|"]
    for case in v["addresses"]["cases"]:
        announced = ", ".join(f"`{a}`" for a in case["announced"])
        kept = ", ".join(f"`{a}`" for a in case["kept"]) or "nothing"
        out.append(f"| `{case['peer_seen_at']}` | {announced} | {kept} |")
    out.append("")
    return "\n".join(out)


def _fixed_md(v: Json) -> str:
    rows = [(name, value) for name, value in v["key_schedule_fixed"]["outputs"].items()]
    return "\n".join(_table(rows))


def _state_md(state: dict[str, str]) -> str:
    parts = [f"{conn}: {facts}" for conn, facts in state.items() if conn != "link"]
    return "; ".join([*parts, f"link {state['link']}"])


def _retirement_md(v: Json) -> str:
    r = v["retirement"]
    out = [
        "| # | who | what happens | sends | low NodeId holds after | high NodeId holds after |",
        "|---|---|---|---|---|---|",
    ]
    for st in r["steps"]:
        got = ", ".join(st["received"]) or "-"
        what = st["action"] + ("" if got == "-" else f" ({got})")
        sends = []
        for item in st["sends"]:
            shown = (
                item.get("message") or item.get("stream") or f"CONNECTION_CLOSE {item['connection_close']}"
            )
            if "inner" in item:
                shown += f"(seq {item['fields']['seq']}: {item['inner']})"
            sends.append(f"{item['conn']}: {shown}")
        state = st["state"]
        row = [str(st["step"]), st["at"], what, "<br>".join(sends) or "-"]
        out.append("| " + " | ".join([*row, _state_md(state["low"]), _state_md(state["high"])]) + " |")
    return "\n".join(out) + "\n"


def render_blocks(vectors: Json) -> dict[str, str]:
    """The generated parts of docs/PROTOCOL.md, by marker name."""
    return {
        "vectors": _vectors_md(vectors),
        "fixed": _fixed_md(vectors),
        "retirement": _retirement_md(vectors),
    }


def update_document(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with each generated block replaced; ValueError if its markers are missing."""
    for name, content in blocks.items():
        begin, end = _BEGIN.format(name), _END.format(name)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"{SPEC_PATH}: the markers of the generated block {name!r} are missing")
        text = text[: start + len(begin)] + "\n" + content.rstrip("\n") + "\n" + text[stop:]
    return text


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
        sys.stdout.write(_vectors_md(vectors) + "\n")
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
