"""The UDP socket under every QUIC endpoint, and what dialing and listening share.

:class:`UdpSocket` is an asyncio datagram protocol whose datagrams and errors
go to callbacks set after creation (the QuicLink or the Listener that owns
it); :func:`check_timers` validates the timers both endpoints take.

Addresses leave this module as ``(host, port)`` in the form peers and the
registry use (:func:`sockaddr`): an IPv4 peer of a dual-stack socket as
plain IPv4, a link-local IPv6 host with its zone (``fe80::1%eth0``).
:func:`listen_socket` opens the listening socket, dual-stack for ``::``;
:func:`route_source` asks the kernel which of our addresses it would send
from to a host (RFC 6724 source selection), without sending anything.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any, cast

from quicpair.actors.transport.quic_link import Address
from quicpair.protocol.addresses import unmapped
from quicpair.protocol.errors import AddressInUse, ConfigError

__all__ = ["UdpSocket", "check_timers", "consume", "listen_socket", "route_source", "sockaddr"]

#: What socket() says when this kernel has no IPv6 at all (booted with ipv6.disable=1, no module).
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)


def sockaddr(sockaddr: Any) -> Address:
    """``(host, port)`` of a socket address: IPv4-mapped as IPv4, a scoped IPv6 host with its zone.

    Python gives an IPv6 socket address as ``(host, port, flowinfo,
    scope_id)`` without the zone in ``host``; a link-local address is only
    dialable with it, so it is added as the interface name (its index when
    the interface has no name any more).
    """
    host = unmapped(str(sockaddr[0]))
    if len(sockaddr) >= 4 and sockaddr[3] and "%" not in host:
        try:
            zone = socket.if_indextoname(int(sockaddr[3]))
        except OSError:
            zone = str(int(sockaddr[3]))
        host = f"{host}%{zone}"
    return (host, int(sockaddr[1]))


def listen_socket(host: str, port: int) -> tuple[socket.socket, str | None]:
    """A UDP socket bound to ``host:port``, and why it is not what was asked for (None if it is).

    ``::`` is dual-stack: one IPv6 socket with IPV6_V6ONLY off also receives
    IPv4 (as ``::ffff:a.b.c.d``, which :func:`sockaddr` turns back into IPv4).
    Where this kernel has no IPv6, it falls back to ``0.0.0.0`` and says so.
    ConfigError if the port cannot be bound.
    """
    fallback: str | None = None
    if host == "::":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise ConfigError(f"cannot listen on [::]:{port}: {exc.strerror or exc}") from exc
            fallback = f"IPv6 is not available here ({exc.strerror or exc}): listening on IPv4 only"
            host = "0.0.0.0"
        else:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError as exc:  # a kernel that refuses dual-stack sockets
                sock.close()
                fallback = (
                    f"dual-stack sockets are refused here ({exc.strerror or exc}): listening on IPv4 only"
                )
                host = "0.0.0.0"
            else:
                return _bind(sock, ("::", port), f"[::]:{port}"), None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return _bind(sock, address, shown), fallback


def _bind(sock: socket.socket, address: Any, shown: str) -> socket.socket:
    try:
        sock.bind(address)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(
                f"UDP port {address[1]} on {shown.rpartition(':')[0]} is already in use by another "
                "program; stop it, or listen elsewhere (--listen HOST:PORT, or [node] listen_port)"
            ) from exc
        raise ConfigError(f"cannot listen on {shown}: {exc.strerror or exc}") from exc
    return sock


def route_source(host: str) -> str | None:
    """Our address the kernel would send from to ``host`` (None if it has no route there).

    A connected UDP socket sends nothing: this is the kernel's source address
    selection (RFC 6724 5 for IPv6), the same it applies to the replies of a
    socket bound to a wildcard, i.e. the address a peer reached us on.
    """
    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(address)
            return sockaddr(probe.getsockname())[0]
    except OSError:
        return None


def consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a failed dial nobody awaits any more is no loop warning


class UdpSocket(asyncio.DatagramProtocol):
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


def check_timers(idle_timeout: float, keepalive_interval: float | None, handshake_timeout: float) -> None:
    if not idle_timeout > 0 or not handshake_timeout > 0:
        raise ConfigError("idle_timeout and the handshake timeout must be positive")
    if keepalive_interval is not None and not 0 < keepalive_interval < idle_timeout:
        raise ConfigError(
            f"keepalive_interval ({keepalive_interval}) must be positive and below "
            f"idle_timeout ({idle_timeout})"
        )
