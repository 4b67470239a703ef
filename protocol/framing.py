"""The frame codec: messages to bytes and back, strictly.

A frame is a 4-byte big-endian length ``N`` followed by ``N`` bytes of body,
``0 < N <= MAX_FRAME_SIZE``. The body is one msgpack array
``[version, tag, {field: value}]`` and nothing after it. The fields of each
message, their types and limits are read from the dataclasses in
:mod:`protocol.messages` (``dataclasses.fields`` and their ``meta``), so the
encoder, the decoder and the spec cannot drift apart:

==============  ===============================================================
field type      on the wire
==============  ===============================================================
``int``         msgpack int, 0 <= value < 2**64 (a boolean is not an integer)
``bytes``       msgpack bin; ``size`` is exact, ``max`` a bound, in bytes
``str``         msgpack str, valid UTF-8; ``max`` counts UTF-8 bytes
``list[str]``   msgpack array of str; ``max`` items, ``item_max`` UTF-8 bytes each
==============  ===============================================================

Decoding is strict: a wrong version is ``UNSUPPORTED_VERSION``, an unknown tag
``UNKNOWN_MESSAGE``, a length above the maximum ``FRAME_TOO_LARGE``; anything
else that is not exactly a message (bad msgpack, a missing, extra, repeated or
mistyped field, a limit exceeded, trailing bytes) is ``MALFORMED_MESSAGE``.
Every problem raises :class:`~protocol.errors.FrameError` and nothing else:
msgpack's own exceptions are converted here, at the boundary. Keys may come
in any order; the encoder writes them in field order (``use_bin_type=True``),
so our own encoding is canonical.

Encoding checks the same rules and raises
:class:`~protocol.errors.LocalProtocolError`: a message that breaks its own
limits is a bug on this side and must not reach the peer.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import struct
import typing
from collections.abc import Iterator
from typing import Any, Final, cast

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type stubs

from .errors import ErrorCode, FrameError, LocalProtocolError
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, Message

__all__ = [
    "LENGTH_PREFIX_SIZE",
    "MAX_FRAME_SIZE",
    "FrameDecoder",
    "decode_body",
    "encode_body",
    "encode_frame",
]

#: Hard upper bound of a frame body. 64 KiB keeps one frame within QUIC's
#: default stream flow-control windows and bounds what a peer can make us buffer.
MAX_FRAME_SIZE: Final = 65536
#: The big-endian unsigned length in front of every body.
LENGTH_PREFIX_SIZE: Final = 4

_LENGTH = struct.Struct(">I")
_UINT64_LIMIT: Final = 1 << 64
# No message has more than 16 list items or more than a few fields. A small
# bound matters: msgpack preallocates a container from its header, and 1000
# nested "array32 of 65535 items" headers (5 KB of input) cost 68 MB and
# 50 ms per decode when measured with the default limit.
_MAX_CONTAINER: Final = 32


# -- message schemas, read once from protocol.messages ------------------------


class _Kind(enum.Enum):
    INT = "unsigned integer"
    BYTES = "binary"
    STR = "string"
    STR_LIST = "array of strings"


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: _Kind
    size: int | None
    max: int | None
    item_max: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    cls: type[Any]
    tag: int
    fields: tuple[_Field, ...]
    names: frozenset[str]


_ALLOWED_META: Final = {
    _Kind.INT: frozenset(),
    _Kind.BYTES: frozenset({"size", "max"}),
    _Kind.STR: frozenset({"max"}),
    _Kind.STR_LIST: frozenset({"max", "item_max"}),
}


def _kind_of(hint: Any) -> _Kind | None:
    if hint is int:
        return _Kind.INT
    if hint is bytes:
        return _Kind.BYTES
    if hint is str:
        return _Kind.STR
    if typing.get_origin(hint) is list and typing.get_args(hint) == (str,):
        return _Kind.STR_LIST
    return None


def _schema_of(cls: type[Any]) -> _Schema:
    """Read a message class's wire schema; TypeError if the class cannot be encoded."""
    tag = getattr(cls, "TAG", None)
    if not dataclasses.is_dataclass(cls) or type(tag) is not int:
        raise TypeError(f"{cls.__name__} is not a message dataclass with an integer TAG")
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        kind = _kind_of(hints[f.name])
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: type {hints[f.name]!r} has no wire encoding")
        info = dict(f.metadata)
        unknown = set(info) - _ALLOWED_META[kind]
        if unknown or ("size" in info and "max" in info):
            raise TypeError(f"{cls.__name__}.{f.name}: limits {info} do not fit a {kind.value} field")
        if kind is _Kind.STR_LIST and info.get("max", 0) > _MAX_CONTAINER:
            raise TypeError(f"{cls.__name__}.{f.name}: lists are limited to {_MAX_CONTAINER} items")
        specs.append(_Field(f.name, kind, info.get("size"), info.get("max"), info.get("item_max")))
    if len(specs) > _MAX_CONTAINER:
        raise TypeError(f"{cls.__name__}: more than {_MAX_CONTAINER} fields")
    return _Schema(cls, tag, tuple(specs), frozenset(s.name for s in specs))


_SCHEMAS: Final[dict[int, _Schema]] = {tag: _schema_of(cls) for tag, cls in MESSAGE_TYPES.items()}


# -- value checks shared by the encoder and the decoder ----------------------


class _Map:
    """A msgpack map as decoded: its (key, value) pairs, repeats kept, so none hides another."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs


_WIRE_NAMES: Final[dict[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    type(None): "nil",
    str: "string",
    bytes: "binary",
    list: "array",
    _Map: "map",
    msgpack.ExtType: "extension",
}


def _wire_type(value: object) -> str:
    # Never repr() a peer's value: it may be huge or nested 1000 levels deep.
    return _WIRE_NAMES.get(type(value), type(value).__name__)


def _show(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "...")


def _utf8_len(text: str) -> int | None:
    """Length in UTF-8 bytes, or None if the text cannot be UTF-8 (lone surrogates)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _check_str(text: str, limit: int | None, what: str) -> str | None:
    length = _utf8_len(text)
    if length is None:
        return f"{what} is not valid Unicode (lone surrogate)"
    if limit is not None and length > limit:
        return f"{what} is {length} bytes long in UTF-8, at most {limit} allowed"
    return None


def _check_value(spec: _Field, value: object, *, exact: bool) -> str | None:
    """What is wrong with ``value`` for ``spec``, or None.

    ``exact`` (decoding) demands exactly the types msgpack produces; the
    encoder also accepts subclasses such as an IntEnum ErrorCode, and tuples.
    """
    what = f"field {spec.name!r}"
    if spec.kind is _Kind.INT:
        ok = type(value) is int if exact else isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            return f"{what} must be an unsigned integer, got {_wire_type(value)}"
        number = cast(int, value)
        if not 0 <= number < _UINT64_LIMIT:
            return f"{what} must be in 0..2**64-1, got {number}"
        return None
    if spec.kind is _Kind.BYTES:
        if not (type(value) is bytes if exact else isinstance(value, bytes)):
            return f"{what} must be binary, got {_wire_type(value)}"
        length = len(cast(bytes, value))
        if spec.size is not None and length != spec.size:
            return f"{what} must be exactly {spec.size} bytes, got {length}"
        if spec.max is not None and length > spec.max:
            return f"{what} is {length} bytes long, at most {spec.max} allowed"
        return None
    if spec.kind is _Kind.STR:
        if not (type(value) is str if exact else isinstance(value, str)):
            return f"{what} must be a string, got {_wire_type(value)}"
        return _check_str(cast(str, value), spec.max, what)
    # _Kind.STR_LIST
    if not (type(value) is list if exact else isinstance(value, list | tuple)):
        return f"{what} must be an array of strings, got {_wire_type(value)}"
    items = cast("list[object]", value)
    if spec.max is not None and len(items) > spec.max:
        return f"{what} has {len(items)} items, at most {spec.max} allowed"
    for index, item in enumerate(items):
        if not (type(item) is str if exact else isinstance(item, str)):
            return f"{what} item {index} must be a string, got {_wire_type(item)}"
        problem = _check_str(cast(str, item), spec.item_max, f"{what} item {index}")
        if problem:
            return problem
    return None


# -- encoding ----------------------------------------------------------------


def _schema_for_message(msg: object) -> _Schema:
    tag = getattr(type(msg), "TAG", None)
    schema = _SCHEMAS.get(tag) if type(tag) is int else None
    if schema is None or schema.cls is not type(msg):
        raise LocalProtocolError(
            ErrorCode.UNKNOWN_MESSAGE, f"{type(msg).__name__} is not a quicpair wire message"
        )
    return schema


def encode_body(msg: Message) -> bytes:
    """The msgpack body of ``msg``; LocalProtocolError if it breaks its own field limits."""
    schema = _schema_for_message(msg)
    fields: dict[str, object] = {}
    for spec in schema.fields:
        value = getattr(msg, spec.name)
        problem = _check_value(spec, value, exact=False)
        if problem:
            raise LocalProtocolError(
                ErrorCode.MALFORMED_MESSAGE, f"cannot encode {schema.cls.__name__}: {problem}"
            )
        if spec.kind is _Kind.INT:
            value = int(value)  # an IntEnum goes out as a plain integer
        elif spec.kind is _Kind.STR_LIST:
            value = [str(item) for item in value]
        fields[spec.name] = value
    try:
        body = msgpack.packb([PROTOCOL_VERSION, schema.tag, fields], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # the checks above should make this unreachable
        raise LocalProtocolError(
            ErrorCode.MALFORMED_MESSAGE, f"cannot encode {schema.cls.__name__}: {exc}"
        ) from exc
    if len(body) > MAX_FRAME_SIZE:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"{schema.cls.__name__} encodes to {len(body)} bytes, above the {MAX_FRAME_SIZE}-byte maximum",
        )
    return cast(bytes, body)


def encode_frame(msg: Message) -> bytes:
    """``msg`` as one frame: 4-byte big-endian length, then the body."""
    body = encode_body(msg)
    return _LENGTH.pack(len(body)) + body


# -- decoding ----------------------------------------------------------------


def _malformed(text: str) -> FrameError:
    return FrameError(ErrorCode.MALFORMED_MESSAGE, text)


def _unpack(body: bytes) -> object:
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            object_pairs_hook=_Map,
            max_str_len=MAX_FRAME_SIZE,
            max_bin_len=MAX_FRAME_SIZE,
            max_array_len=_MAX_CONTAINER,
            max_map_len=_MAX_CONTAINER,
            max_ext_len=0,  # no extension types (timestamps included) in quicpair
        )
    except msgpack.ExtraData as exc:
        raise _malformed(f"{len(exc.extra)} trailing bytes after the message") from exc
    except msgpack.StackError as exc:
        raise _malformed("the body is nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise _malformed("a string is not valid UTF-8") from exc
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _malformed(f"the body is not valid msgpack ({exc or type(exc).__name__})") from exc


def decode_body(body: bytes) -> Message:
    """The message in one frame body; FrameError (and nothing else) if it is not exactly one."""
    if len(body) > MAX_FRAME_SIZE:
        raise FrameError(
            ErrorCode.FRAME_TOO_LARGE,
            f"a body of {len(body)} bytes is above the {MAX_FRAME_SIZE}-byte maximum",
        )
    if not body:
        raise _malformed("the body is empty")
    top = _unpack(body)
    if type(top) is not list:
        raise _malformed(f"the body must be an array [version, tag, fields], got {_wire_type(top)}")
    items = cast("list[object]", top)
    # The version is checked before the shape, so a later version may change
    # everything after it and still be refused with the right code.
    version = items[0] if items else None
    if type(version) is not int:
        raise _malformed(f"the body must start with an integer version, got {_wire_type(version)}")
    if version != PROTOCOL_VERSION:
        raise FrameError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported (this node speaks version {PROTOCOL_VERSION})",
        )
    if len(items) != 3:
        raise _malformed(f"the body must be an array of 3 items [version, tag, fields], got {len(items)}")
    tag, fields = items[1], items[2]
    if type(tag) is not int:
        raise _malformed(f"the message tag must be an integer, got {_wire_type(tag)}")
    schema = _SCHEMAS.get(tag)
    if schema is None:
        raise FrameError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message tag {tag}")
    return cast(Message, _build(schema, fields))


def _build(schema: _Schema, fields: object) -> object:
    name = schema.cls.__name__
    if type(fields) is not _Map:
        raise _malformed(f"{name}: the fields must be a map, got {_wire_type(fields)}")
    values: dict[str, object] = {}
    for key, value in fields.pairs:
        if type(key) is not str:
            raise _malformed(f"{name}: field names must be strings, got {_wire_type(key)}")
        if key not in schema.names:
            raise _malformed(f"{name}: unexpected field {_show(key)}")
        if key in values:
            raise _malformed(f"{name}: field {key!r} appears twice")
        values[key] = value
    for spec in schema.fields:
        if spec.name not in values:
            raise _malformed(f"{name}: missing field {spec.name!r}")
        problem = _check_value(spec, values[spec.name], exact=True)
        if problem:
            raise _malformed(f"{name}: {problem}")
    return schema.cls(**values)


class FrameDecoder:
    """Incremental frame decoder for one byte stream.

    ``feed`` whatever arrived, then drain ``next_message()`` until it returns
    None (or iterate the decoder). Complete frames are decoded as soon as they
    arrive, so at most one incomplete frame (prefix plus at most
    ``MAX_FRAME_SIZE`` bytes) is ever buffered, and an oversized length is
    refused as soon as its 4 bytes are in.

    The first bad frame fails the decoder: the messages before it are still
    delivered, then ``next_message`` raises that FrameError, and keeps raising
    it, as does any later ``feed``. A stream is over after a bad frame.
    """

    __slots__ = ("_buffer", "_error", "_length", "_messages")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._length: int | None = None  # the current frame's body length, once its prefix is in
        self._messages: collections.deque[Message] = collections.deque()
        self._error: FrameError | None = None

    @property
    def failed(self) -> bool:
        """True once a bad frame was seen; the decoder then accepts nothing more."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (its prefix included)."""
        return len(self._buffer) + (LENGTH_PREFIX_SIZE if self._length is not None else 0)

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream; decode every frame they complete."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        try:
            while view:
                if self._length is None:
                    view = self._take(view, LENGTH_PREFIX_SIZE)
                    if len(self._buffer) == LENGTH_PREFIX_SIZE:
                        self._length = self._check_length(_LENGTH.unpack(self._buffer)[0])
                        self._buffer.clear()
                elif not self._buffer and len(view) >= self._length:
                    # The common case, a whole frame in this chunk: decode it without copying twice.
                    self._messages.append(decode_body(bytes(view[: self._length])))
                    view = view[self._length :]
                    self._length = None
                else:
                    view = self._take(view, self._length)
                    if len(self._buffer) == self._length:
                        self._messages.append(decode_body(bytes(self._buffer)))
                        self._buffer.clear()
                        self._length = None
        except FrameError as exc:
            self._fail(exc)

    def next_message(self) -> Message | None:
        """The next decoded message, None if none is complete yet; FrameError once failed."""
        if self._messages:
            return self._messages.popleft()
        if self._error is not None:
            raise self._error
        return None

    def __iter__(self) -> Iterator[Message]:
        """The messages decoded so far (FrameError at the end if the stream went bad)."""
        while (msg := self.next_message()) is not None:
            yield msg

    def end_of_stream(self) -> None:
        """The peer finished the stream. Stopping inside a frame fails the decoder.

        Like a bad frame, this does not raise here: the messages before it are
        still delivered, then ``next_message`` raises.
        """
        if self._error is None and self.buffered:
            self._fail(_malformed(f"the stream ended inside a frame ({self.buffered} bytes of it arrived)"))

    # -- internals ---------------------------------------------------------

    def _take(self, view: memoryview, target: int) -> memoryview:
        """Move bytes from ``view`` into the buffer until it holds ``target``; return the rest."""
        count = min(target - len(self._buffer), len(view))
        self._buffer += view[:count]
        return view[count:]

    @staticmethod
    def _check_length(length: int) -> int:
        if length > MAX_FRAME_SIZE:
            raise FrameError(
                ErrorCode.FRAME_TOO_LARGE,
                f"a frame of {length} bytes is announced, above the {MAX_FRAME_SIZE}-byte maximum",
            )
        if length == 0:
            raise _malformed("an empty frame (length 0) carries no message")
        return length

    def _fail(self, error: FrameError) -> None:
        self._error = error
        self._buffer = bytearray()
        self._length = None
