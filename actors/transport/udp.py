"""The UDP socket under every QUIC endpoint, and what dialing and listening share.

:class:`UdpSocket` is an asyncio datagram protocol whose datagrams and errors
go to callbacks set after creation (the QuicLink or the Listener that owns
it); :func:`check_timers` validates the timers both endpoints take.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from quicpair.actors.transport.quic_link import Address
from quicpair.protocol.errors import ConfigError

__all__ = ["UdpSocket", "check_timers", "consume", "sockaddr"]


def sockaddr(sockaddr: Any) -> Address:
    """``(host, port)`` of a socket address (IPv6 ones have two more fields)."""
    return (str(sockaddr[0]), int(sockaddr[1]))


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
