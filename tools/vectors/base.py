"""What every vector shares: the fixed inputs, the seeded ``rand`` streams, messages as JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quicpair.protocol import keys as ks
from quicpair.protocol import messages as m
from quicpair.protocol import pairing as pm
from quicpair.protocol.framing import FrameDecoder, encode_frame
from quicpair.protocol.identity import Identity

ROOT = Path(__file__).resolve().parents[2]
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

__all__ = [
    "BEGIN_MARK",
    "BOXES",
    "END_MARK",
    "EXPANDED",
    "INITIATOR_INFO",
    "INITIATOR_SEED",
    "JOINER_INFO",
    "JOINER_SEED",
    "NOW",
    "RAND_SEEDS",
    "ROLES",
    "ROOT",
    "SPEC_PATH",
    "TRACE_ROLES",
    "TYPED_CODE",
    "VECTORS_PATH",
    "WRONG_CODE",
    "CounterRand",
    "Json",
    "Machine",
    "check",
    "decode_frame",
    "fields_of",
    "frame_entry",
    "hexed",
    "identities",
    "label",
    "schema",
    "seeded_rand",
]

BEGIN_MARK, END_MARK = "<!-- generated:{} begin -->", "<!-- generated:{} end -->"

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


def seeded_rand(role: str) -> CounterRand:
    return CounterRand(RAND_SEEDS[role])


def check(*triples: tuple[object, object, str]) -> None:
    """Each (what the code did, what the spec's formula gives, name) must agree."""
    for got, expected, what in triples:
        if got != expected:
            raise AssertionError(f"{what}: the code gives {got!r}, the spec's formula {expected!r}")


def label(name: str) -> bytes:
    return ks.LABEL_PREFIX + name.encode("ascii")


def hexed(values: Mapping[str, bytes]) -> dict[str, str]:
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


def fields_of(msg: m.Message) -> Json:
    values = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    return {
        k: v.hex() if isinstance(v, bytes) else int(v) if isinstance(v, int) else v for k, v in values.items()
    }


def decode_frame(frame: bytes) -> m.Message:
    decoder = FrameDecoder()
    decoder.feed(frame)
    msg = decoder.next_message()
    if msg is None or decoder.next_message() is not None or encode_frame(msg) != frame:
        raise AssertionError(f"{frame.hex()} is not exactly one canonically encoded frame")
    return msg


def frame_entry(sender: str, frame: bytes) -> Json:
    msg = decode_frame(frame)
    return {"from": sender, "message": type(msg).__name__, "fields": fields_of(msg), "frame": frame.hex()}


def identities() -> tuple[Identity, Identity]:
    return Identity.from_seed(INITIATOR_SEED), Identity.from_seed(JOINER_SEED)
