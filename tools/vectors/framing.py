"""Framing vectors (valid and invalid frames), the pairing URI, the addresses a receiver keeps."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type stubs

from quicpair.protocol import messages as m
from quicpair.protocol.addresses import announced_addresses
from quicpair.protocol.codes import PairingCode, PairingUri
from quicpair.protocol.errors import ErrorCode, FrameError
from quicpair.protocol.framing import FrameDecoder, encode_frame
from quicpair.tools.vectors.base import (
    TYPED_CODE,
    Json,
    check,
    fields_of,
    identities,
)

__all__ = ["addresses", "framing", "uri"]


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


def framing() -> Json:
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
        {"message": type(s).__name__, "fields": fields_of(s), "frame": encode_frame(s).hex()}
        for s in _SAMPLES
    ]
    return {"valid": valid, "invalid": results}


def uri() -> Json:
    ini = identities()[0].node_id
    uri = PairingUri(PairingCode.parse(TYPED_CODE), ini, ("192.0.2.1:47470", "[2001:DB8::1]:47470"))
    check((PairingUri.parse(uri.text), uri, "the URI round trip"))
    return {"code": uri.code.text, "node": ini.text, "addresses": list(uri.addresses), "text": uri.text}


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


def addresses() -> Json:
    cases = []
    for case, announced, seen in _ANNOUNCED:
        kept = list(announced_addresses(announced, peer=seen))
        hello = m.LinkHello(nonce=bytes(32), pairing=bytes(8), addresses=announced)
        check((_verdict(encode_frame(hello)), "LinkHello", "a hello with such addresses decodes"))
        cases.append({"case": case, "peer_seen_at": seen, "announced": announced, "kept": kept})
    return {"cases": cases}
