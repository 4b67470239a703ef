"""The kit's QUIC client: connections to the node under test, shaped exactly as a check needs.

Every connection is an aioquic client the kit drives itself (plain asyncio, one
loop), built on quicpair's :class:`~quicpair.actors.transport.tls.PinnedQuicConnection`
so that an ordinary connection is exactly what PROTOCOL.md section 3 asks for
(Ed25519 certificate, mutual TLS, the node pinned) and a deviant one differs in
one point only: no client certificate, a key that is not Ed25519, a certificate
that is not self-signed, a foreign ALPN. The kit sees what the node said, raw:
the CONNECTION_CLOSE it sent (application code, or TLS alert as CRYPTO_ERROR),
the frames and the FIN or RESET_STREAM on the one stream.

Every wait takes a timeout and raises :class:`Timeout` past it: a check never hangs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from quicpair.actors.transport.tls import PeerClose, PinnedQuicConnection, quic_configuration
from quicpair.protocol.errors import ErrorCode, FrameError
from quicpair.protocol.framing import FrameDecoder
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.messages import Message

__all__ = [
    "CRYPTO_ERROR",
    "IDENTITY_ALERTS",
    "Conn",
    "Ending",
    "Timeout",
    "client_quic",
    "connect",
    "foreign_key_quic",
    "forged_verify_quic",
    "no_certificate_quic",
    "not_self_signed_quic",
    "resolve",
]

#: RFC 9001 4.8: a TLS alert travels as the transport error 0x0100 + alert.
CRYPTO_ERROR = 0x100
#: Section 3.2 / Appendix A.2: the TLS alerts that refuse a certificate (all read as IDENTITY_MISMATCH).
IDENTITY_ALERTS = frozenset({40, 42, 43, 44, 45, 46, 48, 49, 51, 116})
#: The idle timeout the kit asks for: longer than any check.
_IDLE = 30.0


class Timeout(Exception):
    """A wait of the kit ran out: the node did not do what the check waited for."""


@dataclass(frozen=True, slots=True)
class Ending:
    """How the node ended a connection, from its CONNECTION_CLOSE (None: it sent none)."""

    close: PeerClose | None

    @property
    def application_code(self) -> int | None:
        """The code of an application CONNECTION_CLOSE (0x1d), else None."""
        if self.close is None or self.close.frame_type is not None:
            return None
        return self.close.error_code

    @property
    def alert(self) -> int | None:
        """The TLS alert of a CRYPTO_ERROR transport close, else None."""
        if self.close is None or self.close.frame_type is None:
            return None
        code = self.close.error_code
        return code - CRYPTO_ERROR if CRYPTO_ERROR <= code <= CRYPTO_ERROR + 0xFF else None

    def means(self, code: ErrorCode) -> bool:
        """Whether the close says ``code`` in one of the forms Appendix A.2 makes equivalent."""
        close = self.close
        if close is None:
            return False
        if self.application_code == code:
            return True
        if close.frame_type is None:
            return False
        alert = self.alert
        if code is ErrorCode.IDENTITY_MISMATCH:
            return alert in IDENTITY_ALERTS
        if code is ErrorCode.UNSUPPORTED_VERSION:
            return alert in (70, 120)
        transport = {ErrorCode.BUSY: 0x2, ErrorCode.NO_ERROR: 0x0, ErrorCode.PROTOCOL_VIOLATION: 0x4}
        return code in transport and close.error_code == transport[code]

    def describe(self) -> str:
        close = self.close
        if close is None:
            return "no CONNECTION_CLOSE from the node"
        if close.frame_type is None:
            return f"application close {code_text(close.error_code)}"
        alert = self.alert
        if alert is not None:
            try:
                name = tls.AlertDescription(alert).name
            except ValueError:
                name = "?"
            return f"TLS alert {alert} ({name})"
        return f"QUIC transport error 0x{close.error_code:x}"


def code_text(code: int) -> str:
    """``0x30 UNKNOWN_PEER``, or the bare number of a code section 6 does not have."""
    try:
        return f"0x{code:02x} {ErrorCode(code).name}"
    except ValueError:
        return f"0x{code:x} (not a code of section 6)"


class _Protocol(QuicConnectionProtocol):
    """One client connection; it records everything the node did on it."""

    def __init__(self, quic: PinnedQuicConnection) -> None:
        super().__init__(quic)
        self.pinned = quic
        self.changed = asyncio.Event()
        self.terminated = False
        self.handshake_completed = False
        self.data = bytearray()
        self.fin = False
        self.reset_code: int | None = None
        self.stop_sending_code: int | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self.handshake_completed = True
        elif isinstance(event, events.StreamDataReceived):
            self.data += event.data
            self.fin = self.fin or event.end_stream
        elif isinstance(event, events.StreamReset):
            self.reset_code = event.error_code
        elif isinstance(event, events.StopSendingReceived):
            self.stop_sending_code = event.error_code
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = True
        self.changed.set()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        # Some changes raise no event: HANDSHAKE_DONE (handshake_confirmed) alone in a packet,
        # a CONNECTION_CLOSE still draining. Every datagram wakes the waiters to look again.
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.terminated = True
        self.changed.set()


class Conn:
    """A connection the kit opened, and the one stream it uses (the client's stream 0)."""

    def __init__(self, protocol: _Protocol, transport: asyncio.DatagramTransport) -> None:
        self._protocol = protocol
        self._transport = transport
        self._decoder = FrameDecoder()
        self._messages: collections.deque[Message] = collections.deque()
        self._bad: FrameError | None = None
        self._fed = 0
        self._stream: int | None = None

    @property
    def quic(self) -> PinnedQuicConnection:
        return self._protocol.pinned

    @property
    def established(self) -> bool:
        """HANDSHAKE_DONE arrived (the node admitted us) and the node did not close."""
        return (
            self.quic.handshake_confirmed and self.quic.peer_close is None and not self._protocol.terminated
        )

    @property
    def peer(self) -> NodeId | None:
        return self.quic.verified_peer

    @property
    def ending(self) -> Ending:
        return Ending(self.quic.peer_close)

    @property
    def peer_closed(self) -> bool:
        return self.quic.peer_close is not None

    @property
    def stream_finished(self) -> bool:
        return self._protocol.fin

    @property
    def reset_code(self) -> int | None:
        return self._protocol.reset_code

    async def until(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        """Wait until ``ready()``; Timeout after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Timeout(f"{what}: not within {timeout:g} s")
            self._protocol.changed.clear()
            if ready():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._protocol.changed.wait(), remaining)

    def send(self, data: bytes, end: bool = False) -> None:
        """Send ``data`` on the one stream (opened by the first send)."""
        if self._protocol.terminated or self.quic.peer_close is not None:
            return
        if self._stream is None:
            self._stream = self.quic.get_next_available_stream_id()
        self.quic.send_stream_data(self._stream, data, end_stream=end)
        self._protocol.transmit()

    def close(self, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close with an application CONNECTION_CLOSE and release the socket."""
        if not self._protocol.terminated and self.quic.peer_close is None:
            self.quic.close(error_code=int(code), reason_phrase=reason)
            self._protocol.transmit()
        self._transport.close()

    def _feed(self) -> None:
        data = self._protocol.data
        if len(data) > self._fed and self._bad is None:
            chunk = bytes(data[self._fed :])
            self._fed = len(data)
            try:
                self._decoder.feed(chunk)
                while (message := self._decoder.next_message()) is not None:
                    self._messages.append(message)
            except FrameError as exc:
                self._bad = exc

    async def message(self, timeout: float) -> Message:
        """The node's next message on the stream.

        Raises Timeout, FrameError (the node sent a bad frame), or EOFError when the
        stream ended, was reset or the connection closed first (``stream_state()`` says how).
        """

        def ready() -> bool:
            self._feed()
            return bool(self._messages) or self._bad is not None or self._stream_over()

        await self.until("the node's next message", ready, timeout)
        if self._messages:
            return self._messages.popleft()
        if self._bad is not None:
            raise self._bad
        raise EOFError(self.stream_state())

    def _stream_over(self) -> bool:
        return (
            self._protocol.fin
            or self._protocol.reset_code is not None
            or self._protocol.terminated
            or self.quic.peer_close is not None
        )

    def stream_state(self) -> str:
        """What ended the stream, for a check's detail."""
        if self._protocol.reset_code is not None:
            return f"the node reset the stream with {code_text(self._protocol.reset_code)}"
        if self._protocol.fin:
            return "the node finished the stream (FIN)"
        if self.quic.peer_close is not None:
            return f"the node closed the connection: {self.ending.describe()}"
        if self._protocol.terminated:
            return "the connection ended without a CONNECTION_CLOSE from the node"
        return "the stream is open"

    async def closed(self, timeout: float) -> Ending:
        """Wait for the node's CONNECTION_CLOSE (or the end of the connection); how it ended."""
        await self.until(
            "the node's CONNECTION_CLOSE",
            lambda: self.quic.peer_close is not None or self._protocol.terminated,
            timeout,
        )
        return self.ending


def resolve(host: str, port: int) -> tuple[Any, ...]:
    """The socket address of ``host:port`` (an IP literal, or a name looked up once)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"no address for {host}")
    return tuple(infos[0][4])


async def connect(
    address: tuple[Any, ...], quic: PinnedQuicConnection, timeout: float, source: str | None = None
) -> Conn:
    """Start a connection and wait until the node admitted it (HANDSHAKE_DONE) or ended it.

    ``source`` is the local address to send from (None: any). Always returns the
    Conn: the check reads ``established`` and ``ending``. Raises Timeout when
    neither happened within ``timeout``.
    """
    loop = asyncio.get_running_loop()
    local = (source or "::", 0) if len(address) == 4 else (source or "0.0.0.0", 0)
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(quic), local_addr=local)
    conn = Conn(protocol, transport)
    protocol.connect(address)
    try:
        await conn.until(
            "the handshake",
            lambda: quic.handshake_confirmed or conn.peer_closed or protocol.terminated,
            timeout,
        )
    except Timeout:
        conn.close(ErrorCode.GOING_AWAY, "kit: handshake timeout")
        raise
    return conn


# -- the connections a check can open -----------------------------------------------------


def client_quic(identity: Identity, alpn: str, expect: NodeId | None) -> PinnedQuicConnection:
    """An ordinary quicpair client connection (section 3.2), the node pinned when ``expect``."""
    config = quic_configuration(identity, is_client=True, alpns=[alpn], idle_timeout=_IDLE, now=time.time())
    return PinnedQuicConnection(configuration=config, expect=expect)


def _raw_config(alpn: str, certificate: x509.Certificate | None, key: Any) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        idle_timeout=_IDLE,
        verify_mode=ssl.CERT_NONE,
        certificate=certificate,
        private_key=key,
        server_name=None,
    )


def no_certificate_quic(alpn: str, expect: NodeId) -> PinnedQuicConnection:
    """A client that answers the CertificateRequest with an empty Certificate."""
    return PinnedQuicConnection(configuration=_raw_config(alpn, None, None), expect=expect)


_OFFERED = [
    tls.SignatureAlgorithm.ED25519,
    tls.SignatureAlgorithm.ECDSA_SECP256R1_SHA256,
    tls.SignatureAlgorithm.RSA_PSS_RSAE_SHA256,
]


class _ForeignKeyConnection(PinnedQuicConnection):
    """Presents its certificate and signs with its key even though the node offered Ed25519 only.

    A well-behaved TLS client would send an empty Certificate instead; this one
    forces the node's own check of the key type (section 3.2 item 1).
    """

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        context._signature_algorithms = list(_OFFERED)
        original = context._client_handle_certificate_request

        def widen(input_buf: Any) -> None:
            original(input_buf)
            request = context._certificate_request
            if request is not None:
                request.signature_algorithms = [*(request.signature_algorithms or []), *_OFFERED]

        context._client_handle_certificate_request = widen  # type: ignore[method-assign]


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(public: Any, signer: Any, algorithm: Any) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name("quicpair conformance kit"))
        .issuer_name(_name("quicpair conformance kit"))
        .public_key(public)
        .serial_number(int.from_bytes(os.urandom(15), "big") + 1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(signer, algorithm)
    )


def foreign_key_quic(kind: str, alpn: str, expect: NodeId) -> PinnedQuicConnection:
    """A client with a self-signed ``"p256"`` or ``"rsa"`` certificate that it insists on using."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(kind)
    cert = _certificate(key.public_key(), key, hashes.SHA256())
    return _ForeignKeyConnection(configuration=_raw_config(alpn, cert, key), expect=expect)


def forged_verify_quic(alpn: str, expect: NodeId) -> PinnedQuicConnection:
    """A client presenting a valid self-signed node certificate without its key (an impersonator):
    its CertificateVerify is signed by another Ed25519 key."""
    owner = Identity.generate()
    impostor = ed25519.Ed25519PrivateKey.generate()
    cert = owner.certificate(time.time(), os.urandom)
    return PinnedQuicConnection(configuration=_raw_config(alpn, cert, impostor), expect=expect)


def not_self_signed_quic(alpn: str, expect: NodeId) -> PinnedQuicConnection:
    """A client whose Ed25519 certificate is signed by another Ed25519 key (not self-signed)."""
    key = ed25519.Ed25519PrivateKey.generate()
    other = ed25519.Ed25519PrivateKey.generate()
    cert = _certificate(key.public_key(), other, None)
    return PinnedQuicConnection(configuration=_raw_config(alpn, cert, key), expect=expect)
