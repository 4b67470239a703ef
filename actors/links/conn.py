"""One link connection as its worker holds it: the QUIC connection, its one stream, its channel.

A :class:`LinkConn` is plumbing between a :class:`~quicpair.actors.transport.quic_link.QuicLink`
(ALPN ``quicpair/link/1``, peer identity already pinned) and a
:class:`~protocol.link.LinkChannel` (hellos, per-connection keys, sealed
messages). It makes no decisions: the worker (actors/links/worker.py) decides
which connection to keep, when to retire one, what to persist. It only
knows the mechanics:

* the **dialer** opens the one bidirectional stream and sends its hello at
  once; the **listener** learns the stream from the dialer's first bytes and
  answers with its own hello. A second stream from the peer is a protocol
  violation (DESIGN.md failure #1's rule, on links too: one stream);
* :meth:`feed` and :meth:`next_event` turn stream bytes into channel events,
  one at a time: the worker acts on each (say, answers a hello) before the
  next is decoded;
* **retiring** (the loser of two connections, see the worker): a FIN on the
  stream says "I send nothing more here". Because both ends keep reading
  until the other's FIN, every message sent before the decision is delivered;
  only then is the connection closed with DUPLICATE_CONNECTION.

QuicLink events reach the worker as actor messages tagged with :attr:`LinkConn.key`
(actors/transport/events.py: ConnData, ConnReset, ConnClosed), like every other
input of an actor, so an error in handling them fails the worker, not the loop.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.transport.events import ToActor
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.codes import format_address
from quicpair.protocol.dialrule import ConnInfo
from quicpair.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.link import LinkChannel, LinkEstablished, LinkEvent

__all__ = ["LinkConn"]

_keys = itertools.count(1)


class LinkConn:
    """One link connection with the worker's peer; see the module docstring."""

    def __init__(
        self,
        link: QuicLink,
        *,
        dialed: bool,
        address: str,
        source: str,
        tell: Callable[[Any], None],
        make_channel: Callable[[bool], LinkChannel],
    ) -> None:
        #: Worker-local name of this connection (messages carry it, not the object).
        self.key = next(_keys)
        self.link = link
        #: True when this node dialed it (the QUIC client).
        self.dialed = dialed
        #: The peer's ``host:port`` on this connection: where we dialed, or where it came from.
        self.address = address
        #: Where the dialed address came from (stored, hint, mdns), "accepted" otherwise.
        self.source = source
        self.stream_id: int | None = None
        self.channel: LinkChannel | None = None
        self._make_channel = make_channel
        #: Set once both hellos were exchanged.
        self.info: ConnInfo | None = None
        #: The addresses the peer's hello announced (persisted only once authenticated).
        self.hello_addresses: tuple[str, ...] = ()
        #: A sealed message from the peer opened: it holds the pairing secret.
        self.authenticated = False
        #: We stopped using it (duplicate / superseded / the peer retired it).
        self.retiring = False
        self.fin_sent = False
        self.peer_fin = False
        #: The hello deadline, then the retire linger; one timer at a time.
        self.timer: ActorTimer | None = None
        link.set_handler(ToActor(self.key, tell))

    def __repr__(self) -> str:
        state = "retiring" if self.retiring else "established" if self.established else "hello"
        return f"LinkConn({self.id}, {'dialed' if self.dialed else 'accepted'}, {state})"

    @classmethod
    def remote_of(cls, link: QuicLink) -> str:
        host, port = link.remote_address
        return format_address(host, port)

    # -- facts ----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The connection id, the same on both ends (logs, ``links``, tests)."""
        return self.link.connection_id

    @property
    def established(self) -> bool:
        return self.info is not None

    @property
    def is_open(self) -> bool:
        return not self.link.is_closed

    @property
    def dialer(self) -> NodeId | None:
        return None if self.info is None else self.info.dialer

    # -- mechanics ------------------------------------------------------------------

    def start_as_dialer(self) -> None:
        """Open the one stream and send our hello (a dialed connection, right after the handshake)."""
        self.stream_id = self.link.open_stream()
        self.channel = self._make_channel(True)
        self.link.send(self.stream_id, self.channel.hello())

    def adopt_stream(self, stream_id: int) -> bool:
        """The peer's first bytes on ``stream_id``: answer with our hello. False for a second stream."""
        if self.stream_id is not None:
            return stream_id == self.stream_id
        if self.dialed:
            return False  # the dialer opens the stream; the listener never does
        self.stream_id = stream_id
        self.channel = self._make_channel(False)
        self.link.send(stream_id, self.channel.hello())
        return True

    def feed(self, data: bytes) -> None:
        """Bytes from the stream; then take the events with :meth:`next_event` one by one."""
        assert self.channel is not None
        self.channel.receive_data(data)

    def next_event(self) -> LinkEvent | None:
        """The next event, handled before the next is decoded (an unpair may follow the hello).

        Raises the channel's ProtocolError (FrameError, SealError...) at the bad message.
        """
        assert self.channel is not None
        event = self.channel.next_event()
        if isinstance(event, LinkEstablished):
            self.info = ConnInfo(dialer=self.channel.dialer, dialer_nonce=event.dialer_nonce)
            self.hello_addresses = event.peer_addresses
        return event

    def send(self, data: bytes) -> bool:
        """Write bytes on the stream; False if the connection is already gone."""
        if self.stream_id is None or self.fin_sent or not self.is_open:
            return False
        try:
            self.link.send(self.stream_id, data)
        except LocalProtocolError:
            return False  # closed under us; its ConnClosed is on the way
        return True

    def finish(self) -> None:
        """Send our FIN: nothing more from us on this connection."""
        if self.fin_sent or self.stream_id is None or not self.is_open:
            self.fin_sent = True
            return
        self.fin_sent = True
        with contextlib.suppress(LocalProtocolError):  # closed under us; its ConnClosed is coming
            self.link.send(self.stream_id, b"", end_stream=True)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self, code: ErrorCode, reason: str) -> None:
        """Close the QUIC connection with ``code`` (idempotent); ConnClosed follows."""
        self.cancel_timer()
        if self.channel is not None:
            with contextlib.suppress(ProtocolError):  # a failed channel stays failed
                self.channel.close()
        self.link.close(code, reason)
