"""Dialing a QUIC connection to a node: :func:`dial`.

Plain asyncio, usable from any running loop; everything belongs to the loop
that created it (aioquic's ``QuicConnection`` is not thread-safe). A dial gives
a :class:`~quicpair.actors.transport.quic_link.QuicLink` whose peer is
already verified, once the listener admitted us::

    async def main(identity: Identity, peer: NodeId) -> None:
        link = await dial("127.0.0.1", 4433, identity, alpn=ALPN_LINK, expect=peer,
                          timeout=5.0, idle_timeout=30.0, keepalive_interval=10.0)
        link.set_handler(handler)          # stream_data / stream_reset / closed
        stream = link.open_stream()
        link.send(stream, b"hello")
        link.close(ErrorCode.GOING_AWAY, "shutting down")

Each dial has its own connected UDP socket, so an ICMP "port unreachable"
comes back to it at once (a refused dial fails fast instead of timing out).

Failures are ours, never aioquic's: ``PeerUnreachable`` (no answer, port
closed, timeout), ``RemoteProtocolError`` with IDENTITY_MISMATCH (the peer is
not the pinned node, not a quicpair node, or refused our certificate) or with
the listener's own code when its ``admit`` refused us, ``ConfigError`` for bad
settings. The version of the protocol lives in the ALPN (DESIGN.md "Identity
and transport"): a peer with no ALPN in common fails the TLS handshake
(UNSUPPORTED_VERSION).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from quicpair.actors.transport.quic_link import QuicLink
from quicpair.actors.transport.tls import PinnedQuicConnection, quic_configuration
from quicpair.actors.transport.udp import UdpSocket, check_timers, consume, sockaddr
from quicpair.protocol.errors import ErrorCode, PeerUnreachable, QuicpairError
from quicpair.protocol.identity import Identity, NodeId

__all__ = ["dial"]


class _Dial:
    """The owner of one dialed link: its own connected UDP socket."""

    def __init__(self, socket: UdpSocket) -> None:
        assert socket.transport is not None
        self._socket = socket
        self._transport = socket.transport
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(consume)

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
    dead_after_ptos: int | None = None,
    reset_key: bytes | None = None,
    source: str | None = None,
) -> QuicLink:
    """Connect to ``host:port`` as ``identity``; return the link once the listener admitted us.

    ``expect`` pins the peer's NodeId; ``keepalive_interval`` and
    ``dead_after_ptos`` are the QuicLink's; ``reset_key`` derives the stateless
    reset tokens of our connection ids. ``source`` is the local address the
    connection leaves from (a node bound to one address dials from it, so
    that the peer sees the address it knows us by); None lets the kernel
    choose. Raises PeerUnreachable (no answer within ``timeout``, port
    closed, bad address, a ``source`` of the other family),
    RemoteProtocolError with IDENTITY_MISMATCH (the peer is not ``expect``,
    or not a quicpair node, or refused our certificate), or
    RemoteProtocolError with the listener's code when it did not admit us.
    """
    check_timers(idle_timeout, keepalive_interval, timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:  # bounded too: a name lookup can hang
        _, socket = await asyncio.wait_for(
            loop.create_datagram_endpoint(
                UdpSocket, remote_addr=(host, port), local_addr=None if source is None else (source, 0)
            ),
            timeout,
        )
    except TimeoutError as exc:
        raise PeerUnreachable(f"cannot resolve {host} within {timeout:g} s") from exc
    except OSError as exc:
        raise PeerUnreachable(f"cannot reach {shown}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # asyncio: no (source, destination) pair of one family
        raise PeerUnreachable(f"cannot reach {shown} from {source}: {exc}") from exc
    assert socket.transport is not None
    remote = socket.transport.get_extra_info("peername")
    local = socket.transport.get_extra_info("sockname")
    config = quic_configuration(
        identity, is_client=True, alpns=[alpn], idle_timeout=idle_timeout, now=time.time()
    )
    owner = _Dial(socket)
    link = QuicLink(
        PinnedQuicConnection(configuration=config, expect=expect, reset_key=reset_key),
        owner,
        is_dialer=True,
        local_address=sockaddr(local),
        remote_address=sockaddr(remote),
        handshake_timeout=max(deadline - loop.time(), 0.001),
        handshake_budget=timeout,
        keepalive_interval=keepalive_interval,
        dead_after_ptos=dead_after_ptos,
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
