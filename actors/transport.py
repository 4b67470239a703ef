"""QUIC endpoints for the actors: :func:`listen` and :func:`dial`.

Plain asyncio, usable from any running loop; everything belongs to the loop
that created it (aioquic's ``QuicConnection`` is not thread-safe). Both give
:class:`~actors.quic_link.QuicLink` objects whose peer is already verified::

    async def main(identity: Identity, peer: NodeId) -> None:
        link = await dial("127.0.0.1", 4433, identity, alpn=ALPN_LINK, expect=peer,
                          timeout=5.0, idle_timeout=30.0, keepalive_interval=10.0)
        link.set_handler(handler)          # stream_data / stream_reset / closed
        stream = link.open_stream()
        link.send(stream, b"hello")
        link.close(ErrorCode.GOING_AWAY, "shutting down")

    listener = await listen("0.0.0.0", 0, identity, alpns=[ALPN_PAIR, ALPN_LINK],
                            admit=lambda peer, alpn: None, on_connection=route_by_alpn)
    listener.address                       # the port actually bound
    listener.close(); await listener.wait_closed()

Failures are ours, never aioquic's: ``PeerUnreachable`` (no answer, port
closed, timeout), ``RemoteProtocolError`` with IDENTITY_MISMATCH (the peer is
not the pinned node, not a quicpair node, or refused our certificate) or with
the listener's own code when ``admit`` refused us, ``ConfigError`` for bad
settings or a port that cannot be bound.

The version of the protocol lives in the ALPN (DESIGN.md "Identity and
transport"): a peer with no ALPN in common fails the TLS handshake
(UNSUPPORTED_VERSION).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from protocol.errors import ConfigError, ErrorCode, PeerUnreachable, QuicpairError
from protocol.identity import Identity, NodeId

from .logs import get_logger
from .quic_link import Address, LinkHandler, QuicLink
from .tls_pinning import PinnedQuicConnection, quic_configuration

__all__ = [
    "ALPN_LINK",
    "ALPN_PAIR",
    "Admit",
    "LinkHandler",
    "Listener",
    "QuicLink",
    "dial",
    "listen",
]

#: ALPN of a pairing connection (one stream, SPAKE2 exchange).
ALPN_PAIR = "quicpair/pair/1"
#: ALPN of the long-lived link between two paired nodes.
ALPN_LINK = "quicpair/link/1"

#: ``admit(peer, alpn)``: None lets the connection in, an ErrorCode refuses it with that code.
Admit = Callable[[NodeId, str], ErrorCode | None]


def _addr(sockaddr: Any) -> Address:
    return (str(sockaddr[0]), int(sockaddr[1]))


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a failed dial nobody awaits any more is no loop warning


class _Socket(asyncio.DatagramProtocol):
    """A UDP socket whose datagrams go to a target set after creation."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.on_datagram: Callable[[bytes, Any], None] = lambda data, addr: None
        self.on_error: Callable[[Exception], None] = lambda exc: None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def _check_timers(idle_timeout: float, keepalive_interval: float | None, handshake_timeout: float) -> None:
    if not idle_timeout > 0 or not handshake_timeout > 0:
        raise ConfigError("idle_timeout and the handshake timeout must be positive")
    if keepalive_interval is not None and not 0 < keepalive_interval < idle_timeout:
        raise ConfigError(
            f"keepalive_interval ({keepalive_interval}) must be positive and below "
            f"idle_timeout ({idle_timeout})"
        )


# -- dialing ------------------------------------------------------------------


class _Dial:
    """The owner of one dialed link: its own connected UDP socket."""

    def __init__(self, socket: _Socket) -> None:
        assert socket.transport is not None
        self._socket = socket
        self._transport = socket.transport
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(_consume)

    def send_datagram(self, data: bytes, addr: Any) -> None:
        self._transport.sendto(data)  # connected: ICMP errors come back as error_received

    def admit(self, link: QuicLink, peer: NodeId, alpn: str) -> ErrorCode | None:
        return None  # the pin was checked in the TLS handshake

    def link_open(self, link: QuicLink) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def link_failed(self, link: QuicLink, error: QuicpairError) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)

    def link_released(self, link: QuicLink) -> None:
        self._transport.close()
        self._socket.lost.add_done_callback(lambda _: link._mark_done())

    def cid_changed(self, link: QuicLink, cid: bytes, issued: bool) -> None:
        pass


async def dial(
    host: str,
    port: int,
    identity: Identity,
    *,
    alpn: str,
    expect: NodeId | None = None,
    timeout: float = 10.0,
    idle_timeout: float = 30.0,
    keepalive_interval: float | None = None,
) -> QuicLink:
    """Connect to ``host:port`` as ``identity``; return the link once the listener admitted us.

    ``expect`` pins the peer's NodeId. Raises PeerUnreachable (no answer
    within ``timeout``, port closed, bad address), RemoteProtocolError with
    IDENTITY_MISMATCH (the peer is not ``expect``, or not a quicpair node, or
    refused our certificate), or RemoteProtocolError with the listener's code
    when it did not admit us.
    """
    _check_timers(idle_timeout, keepalive_interval, timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:  # bounded too: a name lookup can hang
        _, socket = await asyncio.wait_for(
            loop.create_datagram_endpoint(_Socket, remote_addr=(host, port)), timeout
        )
    except TimeoutError as exc:
        raise PeerUnreachable(f"cannot resolve {host} within {timeout:g} s") from exc
    except OSError as exc:
        raise PeerUnreachable(f"cannot reach {host}:{port}: {exc.strerror or exc}") from exc
    assert socket.transport is not None
    remote = socket.transport.get_extra_info("peername")
    local = socket.transport.get_extra_info("sockname")
    config = quic_configuration(
        identity, is_client=True, alpns=[alpn], idle_timeout=idle_timeout, now=time.time()
    )
    owner = _Dial(socket)
    link = QuicLink(
        PinnedQuicConnection(configuration=config, expect=expect),
        owner,
        is_dialer=True,
        local_address=_addr(local),
        remote_address=_addr(remote),
        handshake_timeout=max(deadline - loop.time(), 0.001),
        keepalive_interval=keepalive_interval,
    )
    socket.on_datagram = link._datagram_received
    socket.on_error = link._socket_error
    try:
        link._connect(remote)
        await owner.ready
    except BaseException:
        if not link.is_closed:
            link.close(ErrorCode.GOING_AWAY, "dial abandoned")
        raise
    return link


# -- listening ----------------------------------------------------------------


class Listener:
    """A UDP port accepting quicpair connections; see :func:`listen`."""

    def __init__(
        self,
        socket: _Socket,
        configuration: QuicConfiguration,
        *,
        admit: Admit,
        on_connection: Callable[[QuicLink], None],
        handshake_timeout: float,
        keepalive_interval: float | None,
        max_connections: int,
    ) -> None:
        assert socket.transport is not None
        self._socket = socket
        self._transport = socket.transport
        self._config = configuration
        self._admit = admit
        self._on_connection = on_connection
        self._handshake_timeout = handshake_timeout
        self._keepalive_interval = keepalive_interval
        self._max_connections = max_connections
        self._links: set[QuicLink] = set()
        self._by_cid: dict[bytes, QuicLink] = {}
        self._closed = False
        #: The (host, port) actually bound (port 0 asks the system for a free one).
        self.address = _addr(self._transport.get_extra_info("sockname"))
        #: Handshakes that produced a link / that were refused or timed out.
        self.accepted = 0
        self.refused = 0
        self._log = get_logger(listener=f"{self.address[0]}:{self.address[1]}")
        socket.on_datagram = self._datagram_received

    @property
    def connections(self) -> int:
        """Connections currently held (handshaking or open)."""
        return len(self._links)

    def close(self, code: ErrorCode = ErrorCode.GOING_AWAY, reason: str = "listener closed") -> None:
        """Close every connection with ``code`` and release the port."""
        if self._closed:
            return
        self._closed = True
        for link in list(self._links):
            link.close(code, reason)
        self._transport.close()
        self._log.debug("quic.listener_closed")

    async def wait_closed(self) -> None:
        """Wait until the port is released."""
        await asyncio.shield(self._socket.lost)

    # -- the LinkOwner interface, for the links on this port ---------------------

    def send_datagram(self, data: bytes, addr: Any) -> None:
        self._transport.sendto(data, addr)

    def admit(self, link: QuicLink, peer: NodeId, alpn: str) -> ErrorCode | None:
        return self._admit(peer, alpn)

    def link_open(self, link: QuicLink) -> None:
        self.accepted += 1
        try:
            self._on_connection(link)
        except Exception:
            self._log.exception("quic.on_connection_failed")
            link.close(ErrorCode.INTERNAL_ERROR, "internal error")

    def link_failed(self, link: QuicLink, error: QuicpairError) -> None:
        self.refused += 1

    def link_released(self, link: QuicLink) -> None:
        self._links.discard(link)
        for cid in [cid for cid, owner in self._by_cid.items() if owner is link]:
            del self._by_cid[cid]
        link._mark_done()

    def cid_changed(self, link: QuicLink, cid: bytes, issued: bool) -> None:
        if issued:
            self._by_cid[cid] = link
        elif self._by_cid.get(cid) is link:
            del self._by_cid[cid]

    # -- demultiplexing -------------------------------------------------------

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._config.connection_id_length)
        except ValueError:
            return
        versions = self._config.supported_versions
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in versions
        ):
            # RFC 9000 6.1, only for full-size datagrams (5.2.2: no amplification)
            # and never in answer to a VN packet (no reflection loops).
            if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
                return
            packet = encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=versions,
            )
            self._transport.sendto(packet, addr)
            return
        link = self._by_cid.get(header.destination_cid)
        if link is None:
            # Only a full-size Initial may create state (RFC 9000 14.1: anti-amplification).
            if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
                return
            if self._closed or len(self._links) >= self._max_connections:
                return
            quic = PinnedQuicConnection(
                configuration=self._config, original_destination_connection_id=header.destination_cid
            )
            link = QuicLink(
                quic,
                self,
                is_dialer=False,
                local_address=self.address,
                remote_address=_addr(addr),
                handshake_timeout=self._handshake_timeout,
                keepalive_interval=self._keepalive_interval,
            )
            self._links.add(link)
            self._by_cid[header.destination_cid] = link
            self._by_cid[quic.host_cid] = link
        link._datagram_received(data, addr)


async def listen(
    host: str,
    port: int,
    identity: Identity,
    *,
    alpns: list[str],
    admit: Admit,
    on_connection: Callable[[QuicLink], None],
    idle_timeout: float = 30.0,
    keepalive_interval: float | None = None,
    handshake_timeout: float = 10.0,
    max_connections: int = 256,
) -> Listener:
    """Accept connections on ``host:port`` (port 0: any free port, see ``Listener.address``).

    Each connection must present an Ed25519 node certificate; ``admit(peer,
    alpn)`` then decides (None admits, a code refuses with that code), and
    ``on_connection(link)`` receives every admitted link, its ``.alpn``
    telling which protocol it speaks.
    """
    _check_timers(idle_timeout, keepalive_interval, handshake_timeout)
    if not alpns:
        raise ConfigError("a listener needs at least one ALPN")
    loop = asyncio.get_running_loop()
    try:
        _, socket = await loop.create_datagram_endpoint(_Socket, local_addr=(host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    config = quic_configuration(
        identity, is_client=False, alpns=alpns, idle_timeout=idle_timeout, now=time.time()
    )
    listener = Listener(
        socket,
        config,
        admit=admit,
        on_connection=on_connection,
        handshake_timeout=handshake_timeout,
        keepalive_interval=keepalive_interval,
        max_connections=max_connections,
    )
    listener._log.debug("quic.listening", alpns=alpns)
    return listener
