"""A QuicLink's events as messages to the actor that owns it: the one adapter, for sessions and links.

A :class:`~quicpair.actors.transport.quic_link.QuicLink` calls its handler
directly, on the loop. The actor that owns the link (a pairing session, a
link worker) wants them as messages instead, like every other input: then
ordering, failure handling and supervision are pykka's, and an error while
handling one fails that actor, not the loop. :class:`ToActor` is that
handler; each event becomes one of :class:`ConnData`, :class:`ConnReset` or
:class:`ConnClosed`, tagged with the ``key`` the owner gave the connection,
so an owner holding several connections (a link worker during a duplicate,
a joiner that re-dials to resolve a pairing) knows which one spoke.

A link outlives its owner by design: an actor that stops (or crashes) closes
its links, and their ``closed`` events arrive from a later loop callback,
when the actor is gone. Such late events are moot and dropped, instead of
raising ActorDeadError into the link.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pykka import ActorDeadError

from quicpair.protocol.errors import ErrorCode

__all__ = ["ConnClosed", "ConnData", "ConnEvent", "ConnReset", "ToActor"]


@dataclass(frozen=True, slots=True)
class ConnData:
    """Bytes arrived on a stream of the connection."""

    #: The owner's key for the connection.
    key: int
    #: The QUIC stream they arrived on.
    stream_id: int
    #: The bytes (empty when only the FIN arrived).
    data: bytes
    #: The peer ended its sending side of the stream (FIN).
    ended: bool


@dataclass(frozen=True, slots=True)
class ConnReset:
    """The peer reset a stream (RESET_STREAM), or asked us to stop sending on it (STOP_SENDING)."""

    #: The owner's key for the connection.
    key: int
    #: The stream.
    stream_id: int
    #: The code the peer gave.
    code: ErrorCode


@dataclass(frozen=True, slots=True)
class ConnClosed:
    """The connection ended, however it ended: the last event of a connection, exactly once."""

    #: The owner's key for the connection.
    key: int
    #: The close code (ours or the peer's; TIMEOUT for the QUIC idle timeout).
    code: ErrorCode
    #: A reason for people.
    reason: str
    #: True when the peer closed it.
    by_peer: bool


ConnEvent = ConnData | ConnReset | ConnClosed


class ToActor:
    """A QuicLink handler that tells each event to an actor (``tell``: e.g. ``actor_ref.tell``)."""

    __slots__ = ("_key", "_tell")

    def __init__(self, key: int, tell: Callable[[Any], None]) -> None:
        self._key = key
        self._tell = tell

    def _send(self, message: ConnEvent) -> None:
        with contextlib.suppress(ActorDeadError):  # the owner is gone: the event is moot
            self._tell(message)

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        self._send(ConnData(self._key, stream_id, data, ended))

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        self._send(ConnReset(self._key, stream_id, code))

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        self._send(ConnClosed(self._key, code, reason, by_peer))
