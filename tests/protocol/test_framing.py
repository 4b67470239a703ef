"""The frame codec: every message round-trips, and anything else is a FrameError with the right code."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import random
import struct
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicpair.protocol import framing
from quicpair.protocol.errors import ErrorCode, FrameError, LocalProtocolError
from quicpair.protocol.framing import (
    LENGTH_PREFIX_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    decode_body,
    encode_body,
    encode_frame,
)
from quicpair.protocol.messages import (
    MAX_APP_PAYLOAD,
    MESSAGE_TYPES,
    DeviceInfo,
    LinkAck,
    LinkAddresses,
    LinkAppData,
    LinkHello,
    LinkSealed,
    LinkUnpair,
    Message,
    PairChallenge,
    PairCommit,
    PairComplete,
    PairDone,
    PairReject,
    PairRequest,
    PairResolve,
    PairResponse,
    PairSasConfirmed,
)

FUZZ = settings(max_examples=1500, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))

SAMPLES: list[Message] = [
    PairRequest(nameplate=42, pake=bytes(range(33))),
    PairChallenge(pake=b"\x01" * 33, confirm=b"\x02" * 32, flags=0),
    PairResponse(confirm=b"\x03" * 32, sealed=b"sealed device info", flags=1),
    PairComplete(sealed=b""),
    PairDone(mac=b"\x04" * 32),
    PairCommit(mac=b"\x05" * 32),
    PairReject(code=ErrorCode.WRONG_CODE, reason="wrong code"),
    PairResolve(pairing_id=b"\x06" * 32, mac=b"\x07" * 32),
    PairSasConfirmed(mac=b"\x0a" * 32),
    DeviceInfo(name="alice-laptop", addresses=["192.0.2.7:4433", "[::1]:4433"]),
    LinkHello(nonce=b"\x08" * 32, pairing=bytes(8), addresses=[]),
    LinkSealed(seq=2**64 - 1, box=b"\x09" * 100),
    LinkAppData(seq=1, data=b"hello"),
    LinkAddresses(addresses=["alice-laptop.local:4433"]),
    LinkUnpair(),
    LinkAck(upto=2**32),
]

# The biggest value every field allows, to prove the limits themselves encode and fit a frame.
LARGEST: list[Message] = [
    PairResponse(confirm=b"\x00" * 32, sealed=b"\xff" * 65_000, flags=2**64 - 1),
    PairComplete(sealed=b"\xff" * 65_000),
    PairReject(code=2**64 - 1, reason="é" * 128),  # 256 UTF-8 bytes
    DeviceInfo(name="x" * 128, addresses=["a" * 64] * 16),
    LinkHello(nonce=b"\x00" * 32, pairing=b"\xff" * 8, addresses=["[fe80::1%eth0]:4433".ljust(64, "0")] * 16),
    LinkAck(upto=2**64 - 1),
    LinkSealed(seq=2**64 - 1, box=b"\x00" * 65_000),
    LinkAppData(seq=2**64 - 1, data=b"\x00" * MAX_APP_PAYLOAD),
]


def pack(obj: object) -> bytes:
    return typing.cast(bytes, msgpack.packb(obj, use_bin_type=True))


def body(tag: Any, fields: Any, version: Any = 1) -> bytes:
    return pack([version, tag, fields])


def expect(code: ErrorCode, data: bytes, fragment: str = "") -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_body(data)
    assert info.value.code is code, str(info.value)
    assert fragment in str(info.value)
    return info.value


# -- round trips ---------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", SAMPLES + LARGEST, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert decode_body(encode_body(msg)) == msg
    frame = encode_frame(msg)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - LENGTH_PREFIX_SIZE <= MAX_FRAME_SIZE
    decoder = FrameDecoder()
    decoder.feed(frame)
    assert list(decoder) == [msg]
    assert decoder.next_message() is None


def test_encoding_is_canonical_msgpack_in_field_order() -> None:
    """A test vector for docs/PROTOCOL.md: [1, 1, {"nameplate": 42, "pake": bin(00..20)}]."""
    frame = encode_frame(PairRequest(nameplate=42, pake=bytes(range(33))))
    expected = (
        "00000037"  # length 55
        "93"  # array of 3
        "01"  # version 1
        "01"  # tag 1 (PairRequest)
        "82"  # map of 2
        "a96e616d65706c617465" + "2a"  # "nameplate": 42
        "a470616b65" + "c421" + bytes(range(33)).hex()  # "pake": bin8 of 33 bytes
    )
    assert frame.hex() == expected


def test_decoded_values_are_plain_types() -> None:
    decoded = decode_body(encode_body(PairReject(code=ErrorCode.BUSY, reason="busy")))
    assert isinstance(decoded, PairReject)
    assert type(decoded.code) is int and decoded.code == ErrorCode.BUSY


def test_keys_may_come_in_any_order() -> None:
    reordered = body(PairRequest.TAG, {"pake": b"p" * 33, "nameplate": 7})
    assert decode_body(reordered) == PairRequest(nameplate=7, pake=b"p" * 33)


# -- hypothesis round trips, strategies read from the dataclasses --------------


def _text_within(limit: int | None) -> st.SearchStrategy[str]:
    text = st.text(max_size=limit if limit is not None else 200)
    if limit is None:
        return text
    return text.filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= limit).filter(
        lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
    )


def _strategy_for(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    args: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        limits = f.metadata
        hint = hints[f.name]
        if hint is int:
            args[f.name] = st.integers(0, 2**64 - 1)
        elif hint is bytes:
            size = limits.get("size")
            if size is not None:
                args[f.name] = st.binary(min_size=size, max_size=size)
            else:
                args[f.name] = st.binary(max_size=min(limits.get("max", 300), 300))
        elif hint is str:
            args[f.name] = _text_within(limits.get("max"))
        else:
            args[f.name] = st.lists(_text_within(limits.get("item_max")), max_size=limits.get("max", 5))
    return st.builds(cls, **args)


ANY_MESSAGE = st.one_of([_strategy_for(cls) for cls in MESSAGE_TYPES.values()])


@settings(max_examples=600, derandomize=True, deadline=None)
@given(ANY_MESSAGE)
def test_any_valid_message_round_trips(msg: Message) -> None:
    assert decode_body(encode_body(msg)) == msg


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(ANY_MESSAGE, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_a_stream_of_messages_survives_any_chunking(msgs: list[Message], rnd: random.Random) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    received: list[Message] = []
    position = 0
    while position < len(stream):
        step = rnd.randint(1, 64)
        decoder.feed(stream[position : position + step])
        position += step
        received.extend(decoder)
    decoder.end_of_stream()
    assert received == msgs
    assert decoder.buffered == 0


# -- malformed bodies ----------------------------------------------------------

PAKE = b"\x00" * 33
GOOD_REQUEST = {"nameplate": 1, "pake": PAKE}
BAD = ErrorCode.MALFORMED_MESSAGE

MALFORMED: list[tuple[str, bytes, ErrorCode, str]] = [
    ("empty body", b"", BAD, "empty"),
    ("not msgpack", b"\xc1", BAD, "not valid msgpack"),
    ("truncated body", body(1, GOOD_REQUEST)[:-1], BAD, "not valid msgpack"),
    ("trailing bytes", body(1, GOOD_REQUEST) + b"\x00\x00", BAD, "2 trailing bytes"),
    ("trailing object", body(1, GOOD_REQUEST) + body(1, GOOD_REQUEST), BAD, "trailing"),
    ("map body", pack({"version": 1}), BAD, "must be an array"),
    ("int body", pack(1), BAD, "got integer"),
    ("empty array", pack([]), BAD, "integer version, got nil"),
    ("two items", pack([1, 1]), BAD, "3 items"),
    ("four items", pack([1, 1, GOOD_REQUEST, 0]), BAD, "3 items"),
    ("version 2", body(1, GOOD_REQUEST, version=2), ErrorCode.UNSUPPORTED_VERSION, "version 2"),
    ("version 0", body(1, GOOD_REQUEST, version=0), ErrorCode.UNSUPPORTED_VERSION, "version 0"),
    ("version 2, other shape", pack([2, "anything", 3, 4]), ErrorCode.UNSUPPORTED_VERSION, "version 2"),
    ("version as bool", body(1, GOOD_REQUEST, version=True), BAD, "got boolean"),
    ("version as str", body(1, GOOD_REQUEST, version="1"), BAD, "got string"),
    ("unknown tag", body(99, {}), ErrorCode.UNKNOWN_MESSAGE, "tag 99"),
    ("unknown tag in a gap", body(11, {}), ErrorCode.UNKNOWN_MESSAGE, "tag 11"),
    ("negative tag", body(-1, {}), ErrorCode.UNKNOWN_MESSAGE, "tag -1"),
    ("tag as bool", body(True, GOOD_REQUEST), BAD, "tag must be an integer"),
    ("tag as str", body("PairRequest", GOOD_REQUEST), BAD, "got string"),
    ("fields as array", body(1, [1, PAKE]), BAD, "fields must be a map, got array"),
    ("fields as nil", body(1, None), BAD, "got nil"),
    ("missing field", body(1, {"pake": PAKE}), BAD, "missing field 'nameplate'"),
    ("extra field", body(1, {**GOOD_REQUEST, "x": 1}), BAD, "unexpected field 'x'"),
    ("fields on LinkUnpair", body(20, {"x": 1}), BAD, "unexpected field"),
    ("bytes key", body(1, {b"nameplate": 1, "pake": PAKE}), BAD, "must be strings"),
    ("int key", body(1, {1: 1}), BAD, "not valid msgpack"),
    ("bool for int", body(1, {"nameplate": True, "pake": PAKE}), BAD, "got boolean"),
    ("float for int", body(1, {"nameplate": 1.0, "pake": PAKE}), BAD, "got float"),
    ("str for int", body(1, {"nameplate": "1", "pake": PAKE}), BAD, "got string"),
    ("negative int", body(1, {"nameplate": -1, "pake": PAKE}), BAD, "0..2**64-1"),
    ("nil for int", body(1, {"nameplate": None, "pake": PAKE}), BAD, "got nil"),
    ("str for bytes", body(1, {"nameplate": 1, "pake": "x" * 33}), BAD, "got string"),
    ("int for bytes", body(1, {"nameplate": 1, "pake": 0}), BAD, "binary, got integer"),
    ("bytes for str", body(7, {"code": 1, "reason": b"x"}), BAD, "got binary"),
    ("bytes too short", body(1, {"nameplate": 1, "pake": b"\x00" * 32}), BAD, "33"),
    ("bytes too long", body(1, {"nameplate": 1, "pake": b"\x00" * 34}), BAD, "got 34"),
    ("bytes over max", body(18, {"seq": 1, "data": b"\x00" * 60_001}), BAD, "at most 60000"),
    ("str over max", body(7, {"code": 1, "reason": "x" * 257}), BAD, "at most 256"),
    ("str over max in UTF-8", body(7, {"code": 1, "reason": "é" * 129}), BAD, "258"),
    ("str for list", body(19, {"addresses": "a:1"}), BAD, "array of strings"),
    ("list of ints", body(19, {"addresses": [1]}), BAD, "item 0 must be a string"),
    ("list of bytes", body(19, {"addresses": ["a:1", b"b:2"]}), BAD, "item 1"),
    ("list too long", body(19, {"addresses": ["a:1"] * 17}), BAD, "17 items"),
    ("list item too long", body(19, {"addresses": ["a" * 65]}), BAD, "at most 64"),
    ("map in a list", body(19, {"addresses": [{}]}), BAD, "got map"),
    ("empty map for a list", body(19, {"addresses": {}}), BAD, "got map"),
    ("nested garbage", body(19, {"addresses": [[[[["x"]]]]]}), BAD, "got array"),
    ("bad UTF-8", b"\x93\x01\x07\x82\xa4code\x01\xa6reason\xa2\xc3\x28", BAD, "UTF-8"),
    ("UTF-8 surrogate", b"\x93\x01\x07\x82\xa4code\x01\xa6reason\xa3\xed\xa0\x80", BAD, ""),
    ("extension type", body(18, {"seq": 1, "data": msgpack.ExtType(5, b"x")}), BAD, ""),
    ("timestamp", b"\x93\x01\x12\x82\xa3seq\x01\xa4data\xd6\xff\x00\x00\x00\x01", BAD, ""),
    ("empty extension", b"\x93\x01\x12\x82\xa3seq\x01\xa4data\xc7\x00\x05", BAD, "extension"),
    ("deep nesting", b"\x91" * 5000, BAD, "nested too deeply"),
    ("huge array header", b"\xdd\xff\xff\xff\xff", BAD, "not valid msgpack"),
    ("nested huge headers", b"\xdd\x00\x00\xff\xff" * 1000, BAD, "not valid msgpack"),
    ("huge map header", b"\x93\x01\x01\xdf\xff\xff\xff\xff", BAD, "not valid msgpack"),
    ("huge bin header", b"\x93\x01\x12\x82\xa3seq\x01\xa4data\xc6\xff\xff\xff\xff", BAD, ""),
    ("body above the maximum", b"\x00" * (MAX_FRAME_SIZE + 1), ErrorCode.FRAME_TOO_LARGE, "65537"),
]


@pytest.mark.parametrize(
    ("data", "code", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_body_is_a_frame_error(data: bytes, code: ErrorCode, fragment: str) -> None:
    expect(code, data, fragment)


def test_a_repeated_field_is_malformed() -> None:
    # msgpack would silently keep the last value of a repeated key; the codec refuses it.
    data = b"\x93\x01\x05\x82\xa3mac\xc4\x20" + b"\x00" * 32 + b"\xa3mac\xc4\x20" + b"\x01" * 32
    expect(ErrorCode.MALFORMED_MESSAGE, data, "field 'mac' appears twice")


def test_error_text_names_the_message_and_never_echoes_huge_values() -> None:
    name = "n" * 5000
    error = expect(ErrorCode.MALFORMED_MESSAGE, body(1, {**GOOD_REQUEST, name: 1}), "PairRequest: unexpected")
    assert len(str(error)) < 200


def test_every_bad_msgpack_exception_is_converted() -> None:
    error = expect(ErrorCode.MALFORMED_MESSAGE, b"\x91" * 5000)
    assert isinstance(error.__cause__, ValueError)  # msgpack's StackError, chained for debugging
    assert error.code.is_fault


# -- frames and the incremental decoder ---------------------------------------


def test_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(m) for m in SAMPLES)
    decoder = FrameDecoder()
    received: list[Message] = []
    for byte in stream:
        decoder.feed(bytes([byte]))
        received.extend(decoder)
        assert decoder.buffered <= LENGTH_PREFIX_SIZE + MAX_FRAME_SIZE
    assert received == SAMPLES


@pytest.mark.parametrize("seed", range(5))
def test_random_chunks(seed: int) -> None:
    rnd = random.Random(seed)
    msgs = [rnd.choice(SAMPLES + LARGEST) for _ in range(40)]
    stream = b"".join(encode_frame(m) for m in msgs)
    decoder = FrameDecoder()
    received: list[Message] = []
    position = 0
    while position < len(stream):
        step = rnd.choice([1, 3, 17, 1000, 70_000, 300_000])
        decoder.feed(stream[position : position + step])
        position += step
        assert decoder.buffered <= LENGTH_PREFIX_SIZE + MAX_FRAME_SIZE
        received.extend(decoder)
    assert received == msgs


def test_one_large_feed_never_buffers_more_than_one_frame() -> None:
    stream = encode_frame(LARGEST[0]) * 10 + encode_frame(SAMPLES[0])[:10]
    decoder = FrameDecoder()
    decoder.feed(stream)
    assert decoder.buffered == 10
    assert len(list(decoder)) == 10


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))
    assert decoder.failed
    with pytest.raises(FrameError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_the_maximum_length_itself_is_allowed() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", MAX_FRAME_SIZE) + b"\x00" * (MAX_FRAME_SIZE - 1))
    assert not decoder.failed and decoder.next_message() is None
    decoder.feed(b"\x00")  # the body completes: garbage, so malformed, not too large
    with pytest.raises(FrameError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.MALFORMED_MESSAGE


def test_a_zero_length_frame_is_malformed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(FrameError) as info:
        decoder.next_message()
    assert info.value.code is ErrorCode.MALFORMED_MESSAGE
    assert "length 0" in str(info.value)


def test_messages_before_a_bad_frame_are_delivered_then_it_stays_failed() -> None:
    good = encode_frame(SAMPLES[0])
    bad = struct.pack(">I", 3) + b"\xc1\xc1\xc1"
    decoder = FrameDecoder()
    decoder.feed(good + bad + good)
    assert decoder.next_message() == SAMPLES[0]
    with pytest.raises(FrameError) as first:
        decoder.next_message()
    with pytest.raises(FrameError) as again:
        decoder.next_message()
    assert again.value is first.value
    with pytest.raises(FrameError) as on_feed:
        decoder.feed(good)
    assert on_feed.value is first.value
    assert decoder.failed and decoder.buffered == 0


def test_iterating_raises_after_the_good_messages() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(SAMPLES[1]) + struct.pack(">I", 1) + b"\x01")
    seen: list[Message] = []
    with pytest.raises(FrameError):
        for msg in decoder:
            seen.append(msg)
    assert seen == [SAMPLES[1]]


def test_end_of_stream_inside_a_frame_is_truncation() -> None:
    frame = encode_frame(SAMPLES[0])
    for cut in (1, LENGTH_PREFIX_SIZE, len(frame) - 1):
        decoder = FrameDecoder()
        decoder.feed(frame + frame[:cut])
        decoder.end_of_stream()
        assert decoder.next_message() == SAMPLES[0]
        with pytest.raises(FrameError) as info:
            decoder.next_message()
        assert info.value.code is ErrorCode.MALFORMED_MESSAGE
        assert "ended inside a frame" in str(info.value)


def test_end_of_stream_between_frames_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(SAMPLES[0]))
    decoder.end_of_stream()
    assert list(decoder) == [SAMPLES[0]]
    assert not decoder.failed


def test_feeding_nothing_is_harmless() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    assert decoder.next_message() is None and decoder.buffered == 0


# -- encoding checks its own messages -------------------------------------------


class Color(enum.IntEnum):
    RED = 3


BAD_TO_ENCODE: list[tuple[str, Any, ErrorCode]] = [
    ("bytes too short", PairRequest(nameplate=1, pake=b"\x00"), ErrorCode.MALFORMED_MESSAGE),
    ("bytes too long", PairDone(mac=b"\x00" * 33), ErrorCode.MALFORMED_MESSAGE),
    ("bytes over max", LinkAppData(seq=0, data=bytes(MAX_APP_PAYLOAD + 1)), ErrorCode.MALFORMED_MESSAGE),
    ("negative int", PairRequest(nameplate=-1, pake=PAKE), ErrorCode.MALFORMED_MESSAGE),
    ("int above uint64", LinkSealed(seq=2**64, box=b""), ErrorCode.MALFORMED_MESSAGE),
    ("bool for int", PairRequest(nameplate=True, pake=PAKE), ErrorCode.MALFORMED_MESSAGE),
    ("str for bytes", PairDone(mac="x" * 32), ErrorCode.MALFORMED_MESSAGE),  # type: ignore[arg-type]
    ("bytearray for bytes", PairDone(mac=bytearray(32)), ErrorCode.MALFORMED_MESSAGE),  # type: ignore[arg-type]
    ("str over max", PairReject(code=1, reason="é" * 129), ErrorCode.MALFORMED_MESSAGE),
    ("lone surrogate", PairReject(code=1, reason="\ud800"), ErrorCode.MALFORMED_MESSAGE),
    ("too many items", LinkAddresses(addresses=["a:1"] * 17), ErrorCode.MALFORMED_MESSAGE),
    ("item too long", LinkAddresses(addresses=["a" * 65]), ErrorCode.MALFORMED_MESSAGE),
    ("non-str item", LinkAddresses(addresses=[b"a:1"]), ErrorCode.MALFORMED_MESSAGE),  # type: ignore[list-item]
    ("str for list", LinkAddresses(addresses="a:1"), ErrorCode.MALFORMED_MESSAGE),  # type: ignore[arg-type]
    ("not a message", object(), ErrorCode.UNKNOWN_MESSAGE),
    ("a message subclass", type("Sub", (LinkAppData,), {"__slots__": ()})(1, b""), ErrorCode.UNKNOWN_MESSAGE),
]


@pytest.mark.parametrize(("msg", "code"), [b[1:] for b in BAD_TO_ENCODE], ids=[b[0] for b in BAD_TO_ENCODE])
def test_encoding_refuses_a_message_that_breaks_its_limits(msg: Any, code: ErrorCode) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_body(msg)
    assert info.value.code is code
    with pytest.raises(LocalProtocolError):
        encode_frame(msg)


def test_encoding_accepts_int_enums_and_tuples_and_sends_plain_values() -> None:
    msg = PairReject(code=Color.RED, reason="x")
    assert encode_body(msg) == encode_body(PairReject(code=3, reason="x"))
    as_tuple = LinkAddresses(addresses=("a:1", "b:2"))  # type: ignore[arg-type]
    assert decode_body(encode_body(as_tuple)) == LinkAddresses(addresses=["a:1", "b:2"])


def test_schema_reader_refuses_what_it_cannot_encode() -> None:
    @dataclass(frozen=True)
    class Floaty:
        TAG: ClassVar[int] = 99
        value: float

    @dataclass(frozen=True)
    class TwoLimits:
        TAG: ClassVar[int] = 98
        data: bytes = dataclasses.field(metadata={"size": 1, "max": 2})

    @dataclass(frozen=True)
    class LimitedInt:
        TAG: ClassVar[int] = 97
        n: int = dataclasses.field(metadata={"max": 2})

    class NoDataclass:
        TAG = 96

    for cls in (Floaty, TwoLimits, LimitedInt, NoDataclass):
        with pytest.raises(TypeError):
            framing._schema_of(cls)


def test_message_limits_leave_every_message_inside_one_frame() -> None:
    for msg in LARGEST:
        assert len(encode_body(msg)) <= MAX_FRAME_SIZE


# -- fuzzing: whatever the peer sends, a message or a FrameError ---------------


def _only_frame_errors(action: Callable[[], object]) -> None:
    with contextlib.suppress(FrameError):
        action()


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_decode_body_with_any_bytes(data: bytes) -> None:
    _only_frame_errors(lambda: decode_body(data))


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_fuzz_frame_decoder_with_any_chunks(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()

    def run() -> None:
        for chunk in chunks:
            decoder.feed(chunk)
            list(decoder)
        decoder.end_of_stream()
        list(decoder)

    _only_frame_errors(run)
    assert decoder.buffered <= LENGTH_PREFIX_SIZE + MAX_FRAME_SIZE


@FUZZ
@given(ANY_MESSAGE, st.data())
def test_fuzz_mutated_valid_bodies(msg: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_body(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(encoded) - 1, 0)))
        if kind == "flip" and encoded:
            encoded[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del encoded[at:]
        elif kind == "insert":
            encoded[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif encoded:
            del encoded[at]
    _only_frame_errors(lambda: decode_body(bytes(encoded)))


_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=70)
    | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=18) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_FIELD_NAMES = sorted({f.name for cls in MESSAGE_TYPES.values() for f in dataclasses.fields(cls)})


@st.composite
def near_miss_bodies(draw: st.DrawFn) -> bytes:
    """A valid message's fields with some values swapped, removed or added: the validator's deep paths."""
    msg = draw(ANY_MESSAGE)
    fields: dict[Any, Any] = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    names = st.sampled_from([*fields, "extra"]) if fields else st.just("extra")
    for name in draw(st.lists(names | st.sampled_from(_FIELD_NAMES), max_size=2)):
        if draw(st.booleans()):
            fields.pop(name, None)
        else:
            fields[name] = draw(_MSGPACK_VALUES)
    version = draw(st.sampled_from([1] * 8 + [2, "other"]))
    if version == "other":
        version = draw(_MSGPACK_VALUES)
    return body(type(msg).TAG, fields, version=version)


@settings(FUZZ, max_examples=500)
@given(
    st.integers(0, 2) | _MSGPACK_VALUES,
    st.sampled_from(sorted(MESSAGE_TYPES)) | st.integers(-5, 40),
    st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=5), _MSGPACK_VALUES, max_size=4),
)
def test_fuzz_structured_bodies(version: Any, tag: Any, fields: dict[str, Any]) -> None:
    """Bodies shaped like messages, with any field names and values."""
    _only_frame_errors(lambda: decode_body(body(tag, fields, version=version)))


@settings(FUZZ, max_examples=800)
@given(near_miss_bodies())
def test_fuzz_near_miss_bodies(data: bytes) -> None:
    _only_frame_errors(lambda: decode_body(data))
