"""Accepting QUIC connections on the node's UDP port: :class:`Listener` and :func:`listen`.

Plain asyncio, usable from any running loop; everything belongs to the loop
that created it::

    listener = await listen("0.0.0.0", 0, identity, alpns=[ALPN_PAIR, ALPN_LINK],
                            admit=lambda peer, alpn: None, on_connection=route_by_alpn)
    listener.address                       # the port actually bound
    listener.close(); await listener.wait_closed()

Each connection must present an Ed25519 node certificate (actors/transport/tls.py);
``admit(peer, alpn)`` then decides, in the middle of the handshake, and
``on_connection`` receives every admitted link. A port that cannot be bound is
a ``ConfigError``.

A listener defends its connection table (``max_connections`` slots, a
handshake holds one for up to ``handshake_timeout``) against floods of
Initial packets:

- Address validation (RFC 9000 8.1.2): while ``retry_threshold`` or more
  handshakes are in progress (default: half of ``max_connections``; 0: always),
  an Initial without a token gets a stateless Retry carrying an encrypted token
  bound to the source address and connection IDs, and only an Initial that
  echoes a valid token creates state. A spoofed source never sees the Retry,
  so it cannot hold a slot; a genuine dialer (aioquic's client) answers it
  within one round trip. A bad or expired token is answered with INVALID_TOKEN
  (RFC 9000 8.1.3), statelessly.
- Per-source limit: one IP address holds at most ``max_handshakes_per_source``
  handshakes whose address is not validated; beyond that its Initials need a
  Retry too (so a spoofer cannot lock out a real host by forging its address),
  and beyond that many *validated* handshakes its Initials are dropped
  (``Listener.throttled`` counts them). One host alone therefore cannot fill
  the table, spoofing or not.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.actors.transport.tls import PinnedQuicConnection, quic_configuration
from quicpair.actors.transport.udp import UdpSocket, check_timers, sockaddr
from quicpair.protocol.errors import AddressInUse, ConfigError, ErrorCode, QuicpairError
from quicpair.protocol.identity import Identity, NodeId

__all__ = ["MAX_HANDSHAKES_PER_SOURCE", "Admit", "Listener", "listen"]

#: ``admit(peer, alpn)``: None lets the connection in, an ErrorCode refuses it with that code.
Admit = Callable[[NodeId, str], ErrorCode | None]

#: Handshakes one IP address may hold without a validated address, and again with one.
#: A dialer runs one handshake per peer at a time (a redial follows a failure),
#: so 8 leaves room for a NAT with a few nodes behind it (DESIGN.md "Links").
MAX_HANDSHAKES_PER_SOURCE = 8


def _invalid_token_close(version: int, source_cid: bytes, destination_cid: bytes) -> bytes:
    """A server Initial closing with INVALID_TOKEN (RFC 9000 8.1.3), built statelessly.

    Its Initial keys come from the client's chosen destination CID, as the
    client expects; it is smaller than the full-size Initial it answers.
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=source_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=source_cid,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
        peer_cid=destination_cid,
        version=version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY)
    buf.push_uint_var(QuicErrorCode.INVALID_TOKEN)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(0)
    datagrams, _ = builder.flush()
    return datagrams[0]


class Listener:
    """A UDP port accepting quicpair connections; see :func:`listen`."""

    def __init__(
        self,
        socket: UdpSocket,
        configuration: QuicConfiguration,
        *,
        admit: Admit,
        on_connection: Callable[[QuicLink], None],
        handshake_timeout: float,
        keepalive_interval: float | None,
        max_connections: int,
        retry_threshold: int | None = None,
        max_handshakes_per_source: int = MAX_HANDSHAKES_PER_SOURCE,
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
        self._retry_threshold = max_connections // 2 if retry_threshold is None else retry_threshold
        self._per_source = max_handshakes_per_source
        self._retry = QuicRetryTokenHandler()  # a fresh AES-GCM key: tokens die with the listener
        # Handshakes in progress: link -> (source IP, address validated), and their counts.
        self._handshakes: dict[QuicLink, tuple[str, bool]] = {}
        self._per_source_count: Counter[tuple[str, bool]] = Counter()
        self._links: set[QuicLink] = set()
        self._by_cid: dict[bytes, QuicLink] = {}
        self._closed = False
        #: The (host, port) actually bound (port 0 asks the system for a free one).
        self.address = sockaddr(self._transport.get_extra_info("sockname"))
        #: Handshakes that produced a link / that were refused or timed out.
        self.accepted = 0
        self.refused = 0
        #: Retry packets sent (address validation asked for, no state kept).
        self.retries = 0
        #: Initials dropped because their source already holds its share of handshakes.
        self.throttled = 0
        self._log = get_logger(listener=f"{self.address[0]}:{self.address[1]}")
        socket.on_datagram = self._datagram_received

    @property
    def connections(self) -> int:
        """Connections currently held (handshaking or open)."""
        return len(self._links)

    @property
    def handshakes(self) -> int:
        """Connections still in their handshake (each holds a slot until done or timed out)."""
        return len(self._handshakes)

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
        self._handshake_done(link)
        self.accepted += 1
        try:
            self._on_connection(link)
        except Exception:
            self._log.exception("quic.on_connection_failed")
            link.close(ErrorCode.INTERNAL_ERROR, "internal error")

    def link_failed(self, link: QuicLink, error: QuicpairError) -> None:
        self._handshake_done(link)
        self.refused += 1

    def link_released(self, link: QuicLink) -> None:
        self._handshake_done(link)
        self._links.discard(link)
        for cid in [cid for cid, owner in self._by_cid.items() if owner is link]:
            del self._by_cid[cid]
        link._mark_done()

    def cid_changed(self, link: QuicLink, cid: bytes, issued: bool) -> None:
        if issued:
            self._by_cid[cid] = link
        elif self._by_cid.get(cid) is link:
            del self._by_cid[cid]

    def _handshake_done(self, link: QuicLink) -> None:
        key = self._handshakes.pop(link, None)
        if key is not None:
            self._per_source_count[key] -= 1
            if self._per_source_count[key] <= 0:
                del self._per_source_count[key]

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
            if self._closed:
                return
            link = self._new_connection(header, addr)
            if link is None:
                return
        link._datagram_received(data, addr)

    def _new_connection(self, header: QuicHeader, addr: Any) -> QuicLink | None:
        """The link for a full-size Initial without state, or None (Retry sent, or dropped)."""
        source = str(addr[0])
        assert header.version is not None  # a long header
        original_cid = header.destination_cid
        retry_cid: bytes | None = None
        if header.token:
            # RFC 9000 8.1.2: the token says we sent a Retry to this address,
            # for this connection; the client's DCID is the Retry's SCID.
            try:
                original_cid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=self._loop_time(),
                )
            except ValueError as exc:
                self._log.debug("quic.invalid_token", source=source, error=str(exc))
                close = _invalid_token_close(header.version, header.destination_cid, header.source_cid)
                self._transport.sendto(close, addr)
                return None
            retry_cid = header.destination_cid
        elif (
            len(self._handshakes) >= self._retry_threshold
            or self._per_source_count[(source, False)] >= self._per_source
        ):
            self._send_retry(header, addr)
            return None
        validated = retry_cid is not None
        if self._per_source_count[(source, validated)] >= self._per_source:
            self.throttled += 1
            self._log.debug("quic.initial_throttled", source=source, handshakes=self._per_source)
            return None
        if len(self._links) >= self._max_connections:
            return None
        quic = PinnedQuicConnection(
            configuration=self._config,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        link = QuicLink(
            quic,
            self,
            is_dialer=False,
            local_address=self.address,
            remote_address=sockaddr(addr),
            handshake_timeout=self._handshake_timeout,
            keepalive_interval=self._keepalive_interval,
        )
        self._links.add(link)
        self._handshakes[link] = (source, validated)
        self._per_source_count[(source, validated)] += 1
        self._by_cid[header.destination_cid] = link
        self._by_cid[quic.host_cid] = link
        return link

    def _send_retry(self, header: QuicHeader, addr: Any) -> None:
        assert header.version is not None
        retry_cid = os.urandom(self._config.connection_id_length)
        token = self._retry.create_token(
            address=addr,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=retry_cid,
            now=self._loop_time(),
        )
        # No amplification: a Retry is far smaller than the full-size Initial it answers.
        packet = encode_quic_retry(
            version=header.version,
            source_cid=retry_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        self._transport.sendto(packet, addr)
        self.retries += 1

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()


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
    retry_threshold: int | None = None,
    max_handshakes_per_source: int = MAX_HANDSHAKES_PER_SOURCE,
) -> Listener:
    """Accept connections on ``host:port`` (port 0: any free port, see ``Listener.address``).

    Each connection must present an Ed25519 node certificate; ``admit(peer,
    alpn)`` then decides (None admits, a code refuses with that code), and
    ``on_connection(link)`` receives every admitted link, its ``.alpn``
    telling which protocol it speaks.

    Floods of Initials are contained (see the module docstring): Retry is
    required while ``retry_threshold`` handshakes are in progress (None: half
    of ``max_connections``; 0: always), and one IP address holds at most
    ``max_handshakes_per_source`` handshakes.
    """
    check_timers(idle_timeout, keepalive_interval, handshake_timeout)
    if not alpns:
        raise ConfigError("a listener needs at least one ALPN")
    if max_connections < 1 or max_handshakes_per_source < 1:
        raise ConfigError("max_connections and max_handshakes_per_source must be at least 1")
    if retry_threshold is not None and retry_threshold < 0:
        raise ConfigError(f"retry_threshold ({retry_threshold}) must not be negative")
    loop = asyncio.get_running_loop()
    try:
        _, socket = await loop.create_datagram_endpoint(UdpSocket, local_addr=(host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(
                f"UDP port {port} on {host} is already in use by another program; stop it, or "
                "listen elsewhere (--listen HOST:PORT, or [node] listen_port)"
            ) from exc
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
        retry_threshold=retry_threshold,
        max_handshakes_per_source=max_handshakes_per_source,
    )
    listener._log.debug("quic.listening", alpns=alpns)
    return listener
