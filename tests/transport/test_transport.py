"""The QUIC transport over real loopback sockets: identity, admission, streams, loss.

Every scenario runs on its own event loop (``@scenario``), and every wait is bounded.
Raw aioquic endpoints play the misbehaving peers (no certificate, ECDSA
certificate, a session ticket from elsewhere).
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import QuicErrorCode, pull_quic_header
from aioquic.tls import SessionTicket
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quicpair.actors.transport import dial as dial_module
from quicpair.actors.transport import listener as listener_module
from quicpair.actors.transport import quic_link, tls, udp
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.listener import Listener, listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.actors.transport.tls import PinnedQuicConnection, quic_configuration
from quicpair.protocol.errors import (
    ConfigError,
    ErrorCode,
    LocalProtocolError,
    PeerUnreachable,
    RemoteProtocolError,
)
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.messages import ALPN_LINK, ALPN_PAIR

HOST = "127.0.0.1"
ALICE = Identity.from_seed(bytes([1]) * 32)  # listens
BOB = Identity.from_seed(bytes([2]) * 32)  # dials
CAROL = Identity.from_seed(bytes([3]) * 32)


def scenario(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop, bounded as a whole."""

    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 15.0))

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


@dataclass
class Recorder:
    """A LinkHandler that writes down what it is told."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        self.events.append(("data", stream_id, data, ended))

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        self.events.append(("reset", stream_id, code))

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        self.events.append(("closed", code, reason, by_peer))

    def data(self, stream_id: int) -> bytes:
        return b"".join(e[2] for e in self.events if e[0] == "data" and e[1] == stream_id)

    def closes(self) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == "closed"]

    async def until_closed(self, timeout: float = 3.0) -> tuple[Any, ...]:
        await wait_until(lambda: bool(self.closes()), timeout)
        return self.closes()[0]


@dataclass
class Server:
    """A listener whose accepted links are recorded (handler set on arrival)."""

    listener: Listener
    links: list[QuicLink]
    recorder: Recorder
    admitted: list[tuple[NodeId, str]]

    @property
    def port(self) -> int:
        return self.listener.address[1]

    async def first_link(self) -> QuicLink:
        await wait_until(lambda: bool(self.links))
        return self.links[0]


async def start_server(
    *,
    admit: Callable[[NodeId, str], ErrorCode | None] | None = None,
    set_handler: bool = True,
    **options: Any,
) -> Server:
    links: list[QuicLink] = []
    recorder = Recorder()
    admitted: list[tuple[NodeId, str]] = []

    def do_admit(peer: NodeId, alpn: str) -> ErrorCode | None:
        admitted.append((peer, alpn))
        return admit(peer, alpn) if admit else None

    def on_connection(link: QuicLink) -> None:
        links.append(link)
        if set_handler:
            link.set_handler(recorder)

    options.setdefault("idle_timeout", 5.0)
    listener = await listen(
        HOST,
        0,
        ALICE,
        alpns=[ALPN_PAIR, ALPN_LINK],
        admit=do_admit,
        on_connection=on_connection,
        **options,
    )
    return Server(listener, links, recorder, admitted)


async def plain_listener(
    host: str = HOST, port: int = 0, on_connection: Callable[[QuicLink], None] = lambda link: None
) -> Listener:
    return await listen(
        host, port, ALICE, alpns=[ALPN_LINK], admit=lambda p, a: None, on_connection=on_connection
    )


async def bob_dials(server: Server, **options: Any) -> QuicLink:
    options.setdefault("alpn", ALPN_LINK)
    options.setdefault("timeout", 3.0)
    options.setdefault("idle_timeout", 5.0)
    return await dial(HOST, server.port, BOB, **options)


async def shutdown(server: Server, *links: QuicLink) -> None:
    for link in links:
        link.close(ErrorCode.GOING_AWAY, "test over")
        await asyncio.wait_for(link.wait_closed(), 2.0)
    server.listener.close()
    await asyncio.wait_for(server.listener.wait_closed(), 2.0)


# -- raw aioquic peers ----------------------------------------------------------


def ecdsa_certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a quicpair node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


class RawClient(QuicConnectionProtocol):
    """An aioquic client protocol that remembers how its connection ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completed: HandshakeCompleted | None = None
        self.terminated: asyncio.Future[ConnectionTerminated] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.completed = event
        if isinstance(event, ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)


async def raw_server(identity_cert: Any, key: Any, **kwargs: Any) -> tuple[asyncio.DatagramTransport, int]:
    """An ordinary aioquic server (no client certificates, whatever ``kwargs`` enable)."""
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN_LINK], certificate=identity_cert, private_key=key
    )
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(
        lambda: QuicServer(configuration=config, **kwargs), local_addr=(HOST, 0)
    )
    return udp, udp.get_extra_info("sockname")[1]


def raw_config(**kwargs: Any) -> QuicConfiguration:
    return QuicConfiguration(is_client=True, alpn_protocols=[ALPN_LINK], verify_mode=ssl.CERT_NONE, **kwargs)


async def raw_client_refused(port: int, configuration: QuicConfiguration) -> ConnectionTerminated:
    """Connect a raw aioquic client and return how the listener ended it."""
    async with connect(
        HOST, port, configuration=configuration, create_protocol=RawClient, wait_connected=False
    ) as proto:
        assert isinstance(proto, RawClient)
        proto.transmit()  # connect() leaves the first flight to us when not waiting
        return await asyncio.wait_for(proto.terminated, 5.0)


# -- identity -----------------------------------------------------------------


@scenario
async def test_mutual_handshake_both_learn_each_others_node_id() -> None:
    server = await start_server()
    link = await bob_dials(server, expect=ALICE.node_id)
    accepted = await server.first_link()
    assert link.peer == ALICE.node_id and accepted.peer == BOB.node_id
    assert link.is_dialer and not accepted.is_dialer
    assert link.alpn == accepted.alpn == ALPN_LINK
    assert link.connection_id == accepted.connection_id and len(link.connection_id) == 8
    assert link.remote_address == (HOST, server.port) == accepted.local_address
    assert accepted.remote_address[1] == link.local_address[1]
    assert server.admitted == [(BOB.node_id, ALPN_LINK)]
    assert server.listener.accepted == 1
    await shutdown(server, link)


@scenario
async def test_unpinned_dial_learns_the_listeners_identity() -> None:
    server = await start_server()
    link = await bob_dials(server, expect=None)
    assert link.peer == ALICE.node_id
    await shutdown(server, link)


@scenario
async def test_wrong_pinned_node_id_is_refused_and_nothing_is_delivered() -> None:
    server = await start_server()
    with pytest.raises(RemoteProtocolError) as caught:
        await bob_dials(server, expect=CAROL.node_id)
    assert caught.value.code is ErrorCode.IDENTITY_MISMATCH
    assert CAROL.node_id.fingerprint in str(caught.value)
    # The listener sees the TLS alert and drops its half-open connection.
    await wait_until(lambda: server.listener.refused == 1 and server.listener.connections == 0)
    assert server.links == [] and server.admitted == [] and server.recorder.events == []
    await shutdown(server)


@scenario
async def test_client_without_certificate_is_refused() -> None:
    server = await start_server()
    ended = await raw_client_refused(server.port, raw_config())
    assert (ended.error_code, ended.frame_type) == (ErrorCode.IDENTITY_MISMATCH, None)
    assert server.links == [] and server.admitted == []
    await wait_until(lambda: server.listener.refused == 1)
    await shutdown(server)


@scenario
async def test_ecdsa_client_certificate_is_refused_by_the_listener() -> None:
    server = await start_server()
    cert, key = ecdsa_certificate()
    ended = await raw_client_refused(server.port, raw_config(certificate=cert, private_key=key))
    # The listener accepts only Ed25519 CertificateVerify signatures (tls.py): the client's
    # ECDSA one is refused at the handshake's end, as an identity problem.
    assert ended.error_code == ErrorCode.IDENTITY_MISMATCH
    assert server.links == [] and server.admitted == []
    await shutdown(server)


@scenario
async def test_ecdsa_listener_is_refused_by_the_dialer() -> None:
    udp, port = await raw_server(*ecdsa_certificate())
    try:
        for expect in (None, ALICE.node_id):
            with pytest.raises(RemoteProtocolError) as caught:
                await dial(HOST, port, BOB, alpn=ALPN_LINK, expect=expect, timeout=3.0)
            assert caught.value.code is ErrorCode.IDENTITY_MISMATCH
            # Offered only Ed25519, a server with another key cannot sign the handshake.
            assert "handshake_failure" in str(caught.value)
    finally:
        udp.close()


@scenario
async def test_no_session_ticket_is_issued_and_a_foreign_ticket_buys_no_resumption() -> None:
    # A ticket from an ordinary aioquic server that does issue them...
    store: dict[bytes, SessionTicket] = {}
    udp, port = await raw_server(
        CAROL.certificate(0.0, bytes),
        CAROL.private_key,
        session_ticket_fetcher=store.pop,
        session_ticket_handler=lambda t: store.update({t.ticket: t}),
    )
    foreign: list[SessionTicket] = []
    bob_cert = BOB.certificate(0.0, bytes)
    config = raw_config(certificate=bob_cert, private_key=BOB.private_key, server_name="localhost")
    async with connect(HOST, port, configuration=config, session_ticket_handler=foreign.append) as proto:
        await asyncio.wait_for(proto.ping(), 2.0)
    udp.close()
    assert foreign, "the reference server should have issued a ticket"

    # ...is worthless at our listener, which issues none of its own.
    server = await start_server()
    ours: list[SessionTicket] = []
    config = raw_config(
        certificate=bob_cert,
        private_key=BOB.private_key,
        server_name="localhost",
        session_ticket=foreign[0],
    )
    async with connect(
        HOST,
        server.port,
        configuration=config,
        create_protocol=RawClient,
        session_ticket_handler=ours.append,
    ) as proto:
        assert isinstance(proto, RawClient)
        await asyncio.wait_for(proto.ping(), 2.0)
        assert proto.completed is not None and not proto.completed.session_resumed
        assert not proto.completed.early_data_accepted
    assert ours == []
    assert [peer for peer, _ in server.admitted] == [BOB.node_id]
    await shutdown(server)


# -- admission and routing ------------------------------------------------------


@scenario
async def test_admit_refusal_closes_with_its_code_and_the_dialer_sees_it() -> None:
    server = await start_server(admit=lambda peer, alpn: ErrorCode.UNKNOWN_PEER)
    with pytest.raises(RemoteProtocolError) as caught:
        await bob_dials(server, expect=ALICE.node_id)
    assert caught.value.code is ErrorCode.UNKNOWN_PEER
    assert server.admitted == [(BOB.node_id, ALPN_LINK)] and server.links == []
    assert server.listener.refused == 1
    await shutdown(server)


@scenario
async def test_alpn_routes_and_a_foreign_version_is_refused() -> None:
    server = await start_server()
    pair = await bob_dials(server, alpn=ALPN_PAIR)
    assert pair.alpn == ALPN_PAIR and (await server.first_link()).alpn == ALPN_PAIR
    with pytest.raises(RemoteProtocolError) as caught:
        await bob_dials(server, alpn="quicpair/link/99")
    assert caught.value.code is ErrorCode.UNSUPPORTED_VERSION
    await shutdown(server, pair)


# -- streams and closing ------------------------------------------------------------


@scenario
async def test_stream_data_flows_both_ways_and_streams_are_counted() -> None:
    server = await start_server()
    link = await bob_dials(server)
    mine = Recorder()
    link.set_handler(mine)
    sid = link.open_stream()
    assert link.open_stream() != sid  # ids advance even before any data
    link.send(sid, b"hello ")
    link.send(sid, b"alice", end_stream=True)
    await wait_until(lambda: server.recorder.data(sid) == b"hello alice")
    accepted = server.links[0]
    accepted.send(sid, b"hi bob", end_stream=True)
    await wait_until(lambda: mine.data(sid) == b"hi bob")
    assert mine.events[-1][:2] == ("data", sid) and mine.events[-1][3] is True  # FIN delivered
    assert (link.streams_opened, link.streams_accepted) == (2, 0)
    assert (accepted.streams_opened, accepted.streams_accepted) == (0, 1)
    with pytest.raises(LocalProtocolError):
        link.send(sid, b"after the end")
    with pytest.raises(LocalProtocolError):
        link.send(99, b"never opened")
    await shutdown(server, link)


@scenario
async def test_events_before_set_handler_are_buffered_in_order() -> None:
    server = await start_server(set_handler=False)
    link = await bob_dials(server)
    sid = link.open_stream()
    for part in (b"one ", b"two ", b"three"):
        link.send(sid, part)
    accepted = await server.first_link()
    await wait_until(lambda: bool(accepted._pending))  # arrived, with nobody listening yet
    late = Recorder()
    accepted.set_handler(late)
    await wait_until(lambda: late.data(sid) == b"one two three")
    await shutdown(server, link)


@scenario
async def test_data_the_listener_sends_on_arrival_waits_for_the_dialers_handler() -> None:
    class Greeter:
        def __init__(self, link: QuicLink) -> None:
            self.link = link
            link.set_handler(self)

        def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
            self.link.send(stream_id, b"welcome", end_stream=True)  # answers at once

        def stream_reset(self, stream_id: int, code: int) -> None:
            pass

        def closed(self, code: Any, reason: str, by_peer: bool) -> None:
            pass

    listener = await plain_listener(on_connection=Greeter)
    link = await dial(HOST, listener.address[1], BOB, alpn=ALPN_LINK, timeout=3.0)
    sid = link.open_stream()
    link.send(sid, b"hello")  # the answer arrives before the dialer has a handler
    await asyncio.sleep(0.2)
    mine = Recorder()
    link.set_handler(mine)
    await wait_until(lambda: mine.data(sid) == b"welcome")
    link.close()
    listener.close()
    await asyncio.wait_for(listener.wait_closed(), 2.0)


@scenario
async def test_ipv6_loopback_works() -> None:
    listener = await plain_listener("::1")
    link = await dial("::1", listener.address[1], BOB, alpn=ALPN_LINK, expect=ALICE.node_id, timeout=3.0)
    assert link.remote_address == ("::1", listener.address[1])
    link.close()
    listener.close()
    await asyncio.wait_for(listener.wait_closed(), 2.0)


class Exploding(Recorder):
    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        raise RuntimeError("handler bug")


@scenario
async def test_failing_callbacks_close_with_internal_error_and_spare_the_listener() -> None:
    def admit(peer: NodeId, alpn: str) -> ErrorCode | None:
        if alpn == ALPN_PAIR:
            raise RuntimeError("admit bug")
        return None

    server = await start_server(admit=admit, set_handler=False)
    with pytest.raises(RemoteProtocolError) as caught:
        await bob_dials(server, alpn=ALPN_PAIR)
    assert caught.value.code is ErrorCode.INTERNAL_ERROR
    link = await bob_dials(server)
    mine = Recorder()
    link.set_handler(mine)
    accepted = await server.first_link()
    exploding = Exploding()
    accepted.set_handler(exploding)
    link.send(link.open_stream(), b"boom")
    assert (await mine.until_closed())[1:] == (ErrorCode.INTERNAL_ERROR, "internal error", True)
    assert exploding.closes() == [("closed", ErrorCode.INTERNAL_ERROR, "internal error", False)]
    again = await bob_dials(server)  # the listener itself is unharmed
    await shutdown(server, again)


@scenario
async def test_stream_reset_surfaces_once_with_its_code() -> None:
    server = await start_server()
    link = await bob_dials(server)
    sid = link.open_stream()
    link.send(sid, b"partial")
    await wait_until(lambda: server.recorder.data(sid) == b"partial")
    link.reset_stream(sid, ErrorCode.ABORTED)
    await wait_until(lambda: ("reset", sid, ErrorCode.ABORTED) in server.recorder.events)
    link.send(sid, b"dropped silently after a reset")
    await asyncio.sleep(0.05)
    assert [e for e in server.recorder.events if e[0] == "reset"] == [("reset", sid, ErrorCode.ABORTED)]
    await shutdown(server, link)


@scenario
async def test_peer_close_surfaces_with_code_and_by_peer_exactly_once() -> None:
    server = await start_server()
    link = await bob_dials(server)
    mine = Recorder()
    link.set_handler(mine)
    accepted = await server.first_link()
    accepted.close(ErrorCode.UNPAIRED, "bob was unpaired")
    assert await mine.until_closed() == ("closed", ErrorCode.UNPAIRED, "bob was unpaired", True)
    assert (await server.recorder.until_closed())[1:] == (ErrorCode.UNPAIRED, "bob was unpaired", False)
    accepted.close(ErrorCode.INTERNAL_ERROR, "second close is a no-op")
    with pytest.raises(LocalProtocolError) as caught:
        link.send(0, b"too late")
    assert caught.value.code is ErrorCode.UNPAIRED and "closed" in str(caught.value)
    await asyncio.wait_for(link.wait_closed(), 2.0)
    await asyncio.sleep(0.05)
    assert len(mine.closes()) == 1 and len(server.recorder.closes()) == 1
    await shutdown(server)


@scenario
async def test_listener_close_tells_peers_going_away_and_releases_the_port() -> None:
    server = await start_server()
    assert server.port != 0
    link = await bob_dials(server)
    mine = Recorder()
    link.set_handler(mine)
    await server.first_link()
    server.listener.close()
    await asyncio.wait_for(server.listener.wait_closed(), 2.0)
    code, _, by_peer = (await mine.until_closed())[1:]
    assert (code, by_peer) == (ErrorCode.GOING_AWAY, True)
    assert server.recorder.closes()[0][1:] == (ErrorCode.GOING_AWAY, "listener closed", False)
    # The port is free again: bind a new listener on exactly that port.
    again = await plain_listener(port=server.port)
    assert again.address == (HOST, server.port)
    again.close()
    await asyncio.wait_for(again.wait_closed(), 2.0)


# -- liveness -------------------------------------------------------------------------


@scenario
async def test_idle_timeout_is_detected_on_both_sides() -> None:
    server = await start_server(idle_timeout=0.5)
    link = await bob_dials(server, idle_timeout=0.5)
    mine = Recorder()
    link.set_handler(mine)
    await server.first_link()
    code, _, by_peer = (await mine.until_closed(timeout=4.0))[1:]
    assert (code, by_peer) == (ErrorCode.TIMEOUT, False)
    assert (await server.recorder.until_closed(timeout=4.0))[1] is ErrorCode.TIMEOUT
    await shutdown(server)


@scenario
async def test_keepalive_pings_keep_a_quiet_link_up_past_the_idle_timeout() -> None:
    server = await start_server(idle_timeout=0.5)
    link = await bob_dials(server, idle_timeout=0.5, keepalive_interval=0.15)
    mine = Recorder()
    link.set_handler(mine)
    accepted = await server.first_link()
    await asyncio.sleep(1.6)  # more than three idle timeouts without a byte of stream data
    assert mine.events == [] and server.recorder.events == []
    assert not link.is_closed and not accepted.is_closed
    assert link.streams_opened == accepted.streams_accepted == 0  # PINGs, never streams
    await shutdown(server, link)


# -- unreachable peers and settings -------------------------------------------------------


@scenario
async def test_dialing_a_closed_port_is_unreachable() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(PeerUnreachable, match="refused") as unreachable:
        await dial(HOST, port, BOB, alpn=ALPN_LINK, timeout=3.0)
    assert unreachable.value.refused, "ICMP port unreachable: said as such, so a dialer need not wait"


@scenario
async def test_dialing_a_silent_port_times_out_as_unreachable() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    try:
        with pytest.raises(PeerUnreachable, match=r"within 0\.3 s"):
            await dial(HOST, silent.getsockname()[1], BOB, alpn=ALPN_LINK, timeout=0.3)
    finally:
        silent.close()


@scenario
async def test_a_half_open_handshake_is_dropped_by_the_listener() -> None:
    server = await start_server(handshake_timeout=0.3)
    config = quic_configuration(BOB, is_client=True, alpns=[ALPN_LINK], idle_timeout=5.0, now=0.0)
    client = PinnedQuicConnection(configuration=config)
    client.connect((HOST, server.port), now=0.0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for data, addr in client.datagrams_to_send(now=0.0):
            udp.sendto(data, addr)  # the first flight, then silence
        await wait_until(lambda: server.listener.connections == 1)
        await wait_until(lambda: server.listener.connections == 0, timeout=3.0)
    assert server.listener.refused == 1 and server.links == []
    await shutdown(server)


# -- floods of Initials: Retry and the per-source cap ---------------------------------------


class InitialSender:
    """Throwaway aioquic clients on one UDP socket: each sends its first Initial, then whatever we tell it."""

    def __init__(self, port: int, host: str = HOST) -> None:
        self.target = (HOST, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)

    def initial(self, token: bytes = b"") -> QuicConnection:
        """A new client whose full-size first Initial is sent; it is never driven further unless asked."""
        config = quic_configuration(BOB, is_client=True, alpns=[ALPN_LINK], idle_timeout=5.0, now=0.0)
        config.token = token
        client = QuicConnection(configuration=config)
        client.connect(self.target, now=0.0)
        self.flush(client)
        return client

    def flush(self, client: QuicConnection) -> None:
        for data, _ in client.datagrams_to_send(now=0.0):
            assert len(data) >= 1200  # full size: the listener may create state for it
            self.sock.sendto(data, self.target)

    async def answer(self, client: QuicConnection) -> None:
        """Feed the listener's next datagram to ``client`` and send what it answers (the token echo)."""
        loop = asyncio.get_running_loop()
        while True:  # skip what the listener sends to this socket's other clients
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 2048), 2.0)
            if pull_quic_header(Buffer(data=data), host_cid_length=8).destination_cid == client.host_cid:
                break
        client.receive_datagram(data, self.target, now=0.0)
        self.flush(client)

    def close(self) -> None:
        self.sock.close()


@scenario
async def test_a_flood_of_initials_from_one_host_leaves_room_for_a_genuine_dial() -> None:
    server = await start_server(max_connections=64, handshake_timeout=5.0)  # Retry only at 32 handshakes
    listener = server.listener
    flood = InitialSender(server.port)
    try:
        for _ in range(40):
            flood.initial()  # never completes: each would hold a slot for handshake_timeout
        await wait_until(lambda: listener.retries == 40 - listener_module.MAX_HANDSHAKES_PER_SOURCE)
        assert listener.handshakes == listener.connections == listener_module.MAX_HANDSHAKES_PER_SOURCE
        # Same IP as the flood: its first Initial gets a Retry, the echoed token gets it in.
        link = await bob_dials(server, expect=ALICE.node_id)
        assert link.peer == ALICE.node_id
        await wait_until(lambda: listener.accepted == 1)
        assert listener.throttled == 0 and listener.handshakes == listener_module.MAX_HANDSHAKES_PER_SOURCE
    finally:
        flood.close()
    await shutdown(server, link)


@scenario
async def test_spoofed_sources_cannot_fill_the_table() -> None:
    # Many source addresses that never answer (a spoofer never sees our Retry), on 127.0.0.0/8.
    server = await start_server(max_connections=8, handshake_timeout=5.0)  # Retry from 4 handshakes on
    listener = server.listener
    floods = [InitialSender(server.port, host=f"127.0.0.{n}") for n in range(2, 32)]
    try:
        for flood in floods:
            flood.initial()
        await wait_until(lambda: listener.retries == 30 - 4)
        assert listener.handshakes == listener.connections == 4
        link = await bob_dials(server)
        assert link.peer == ALICE.node_id and listener.retries == 30 - 4 + 1
        await wait_until(lambda: listener.accepted == 1)
        assert listener.connections == 5 and listener.handshakes == 4
    finally:
        for flood in floods:
            flood.close()
    await shutdown(server, link)


@scenario
async def test_with_retry_always_no_state_is_kept_for_a_source_that_never_echoes() -> None:
    server = await start_server(retry_threshold=0)
    listener = server.listener
    flood = InitialSender(server.port)
    try:
        for _ in range(10):
            flood.initial()
        await wait_until(lambda: listener.retries == 10)
        assert listener.connections == listener.handshakes == 0 and listener.refused == 0
        link = await bob_dials(server, expect=ALICE.node_id)  # aioquic's client answers the Retry
        accepted = await server.first_link()
        assert accepted.peer == BOB.node_id and listener.retries == 11
        assert listener.connections == 1 and listener.handshakes == 0
        # Both sides still agree on the connection id (the client's first DCID, RFC 9000 7.3).
        assert accepted.connection_id == link.connection_id
    finally:
        flood.close()
    await shutdown(server, link)


@scenario
async def test_validated_handshakes_beyond_the_per_source_cap_are_dropped() -> None:
    server = await start_server(
        retry_threshold=0, max_handshakes_per_source=2, max_validated_per_source=2, handshake_timeout=5.0
    )
    listener = server.listener
    host = InitialSender(server.port)
    try:
        for expected in (1, 2):
            client = host.initial()
            await host.answer(client)  # the Retry; the client sends its Initial again with the token
            await wait_until(lambda: listener.handshakes == expected)  # noqa: B023 (awaited here)
        client = host.initial()
        await host.answer(client)
        await wait_until(lambda: listener.throttled == 1)
        assert listener.handshakes == listener.connections == 2 and listener.retries == 3
    finally:
        host.close()
    await shutdown(server)


@scenario
async def test_a_validated_flood_from_one_host_holds_its_share_and_other_hosts_still_get_in() -> None:
    # Many real devices behind one address (they answer the Retry) may hold a quarter of the
    # table in handshake, not more: the rest stays for other addresses and link redials.
    server = await start_server(retry_threshold=0, max_connections=64, handshake_timeout=5.0)
    listener = server.listener
    share = 64 // listener_module.VALIDATED_SHARE
    assert share > listener_module.MAX_HANDSHAKES_PER_SOURCE  # more than an unvalidated source
    host = InitialSender(server.port, host="127.0.0.2")
    try:
        for _ in range(share + 4):
            await host.answer(host.initial())  # the Retry; the echo comes back with the token
        await wait_until(lambda: listener.throttled == 4)
        assert listener.handshakes == share
        link = await bob_dials(server, expect=ALICE.node_id)  # from 127.0.0.1
        assert link.peer == ALICE.node_id
        await wait_until(lambda: listener.accepted == 1)
        assert listener.handshakes == share
    finally:
        host.close()
    await shutdown(server, link)


@scenario
async def test_a_forged_token_is_refused_with_invalid_token_and_no_state() -> None:
    server = await start_server()
    forger = InitialSender(server.port)
    try:
        client = forger.initial(token=bytes(40))
        await forger.answer(client)
        client.handle_timer(now=client.get_timer() or 0.0)  # the end of draining (RFC 9000 10.2)
        events = []
        while (event := client.next_event()) is not None:
            events.append(event)
        closes = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert closes and closes[0].error_code == QuicErrorCode.INVALID_TOKEN
        assert server.listener.connections == 0 and server.listener.retries == 0
    finally:
        forger.close()
    await shutdown(server)


@scenario
async def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="keepalive_interval"):
        await dial(HOST, 1, BOB, alpn=ALPN_LINK, idle_timeout=1.0, keepalive_interval=1.0)
    with pytest.raises(ConfigError, match="ALPN"):
        await listen(HOST, 0, ALICE, alpns=[], admit=lambda p, a: None, on_connection=lambda link: None)


def test_public_api_is_listed() -> None:
    for module in (dial_module, listener_module, udp, quic_link, tls):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ lists a missing {name}"
