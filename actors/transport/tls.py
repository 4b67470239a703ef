"""Mutual TLS pinned to node identities, built on private hooks of aioquic 1.7.2.

Both ends of every quicpair connection present a self-signed Ed25519
certificate made from their node key (``Identity.certificate``); each learns
the other's NodeId from the handshake itself. aioquic has no public switch to
ask a client for a certificate and no certificate verification callback, so
:class:`PinnedQuicConnection` reaches into the following PRIVATE attributes.
aioquic is pinned to exactly 1.7.2 (setup.cfg) and tests/transport/test_hooks_aioquic.py
fails loudly, naming the hook, if any of them changes:

``QuicConnection._initialize(peer_cid)``  (overridden, calls the original first)
    The one place where a connection creates its ``tls.Context`` (client: in
    ``connect``; server: on the first Initial; both again after a Version
    Negotiation). We install the hooks below right after it.
``tls.Context._request_client_certificate``  (set to True on the server)
    Makes the server send a CertificateRequest, so the client authenticates.
``tls.Context._check_certificate_verify_signature(verify)``  (wrapped)
    Runs on both sides once the peer has proved, with its CertificateVerify
    signature over the transcript, that it holds the certificate's key, and
    before the handshake can finish. Our check runs right after the original:
    the key must be Ed25519 and the certificate self-signed by it
    (``node_id_from_certificate``) and, when the dialer pinned a NodeId, equal
    to it. A refusal raises a TLS alert: the handshake never completes.
``tls.Context._peer_certificate``  (read)
    The certificate the peer presented, checked again at HandshakeCompleted,
    where an absent one (a client that answered the CertificateRequest with an
    empty Certificate, which RFC 8446 4.4.2.4 lets a server accept) is refused.
``QuicConnection._handshake_confirmed``  (read)
    Becomes True on the client when HANDSHAKE_DONE arrives (RFC 9001 4.1.2),
    i.e. once the listener has checked our certificate and admitted us; a dial
    is only reported successful then.
``QuicConnection._handle_connection_close_frame(context, frame_type, buf)``
    (overridden, calls the original first) Records what the peer's
    CONNECTION_CLOSE said the moment it arrives; aioquic only reports it as
    ``ConnectionTerminated`` after the 3-PTO draining period (RFC 9000 10.2)
    and does not say who closed.

Stateless reset (RFC 9000 10.3), which aioquic 1.7.2 neither sends nor
recognises, goes through three more:

``QuicConnection._host_cids`` (its ``QuicConnectionId.stateless_reset_token``
set) and ``_replenish_connection_ids()`` (overridden, calls the original first)
    Every connection id we issue gets the token ``HMAC(reset_key, cid)[:16]``
    from the node's static key (protocol/keys.py), instead of aioquic's random
    one, so a restarted node can still make the token of a connection id its
    previous incarnation issued: the listener answers a packet for an unknown
    connection with a stateless reset (actors/transport/listener.py).
``QuicConnection._peer_cid`` and ``_peer_cid_available`` (read)
    The peer's tokens for the connection ids it gave us: a datagram ending in
    one of them is the peer's stateless reset (:meth:`PinnedQuicConnection.is_stateless_reset`).
``QuicConnection._loss._pto_count`` (read)
    How many probe timeouts in a row went unanswered: a peer silent through
    several is gone (actors/transport/quic_link.py's dead-peer rule).

What a peer may open, and sign with, goes through two more:

``QuicConnection._local_max_streams_bidi`` / ``_local_max_streams_uni``  (replaced)
    The streams the peer may open, sent in the transport parameters and raised
    by aioquic as streams close. Both ALPNs use exactly one bidirectional
    stream opened by the client (PROTOCOL.md 3.1), so a server lets its peer
    open 1 bidirectional and 0 unidirectional streams, a client 0 and 0, and
    the limits never grow (:class:`_FixedLimit`): a second stream is a QUIC
    STREAM_LIMIT_ERROR, not a stream the node has to refuse.
``tls.Context._signature_algorithms``  (set to Ed25519 only)
    What the ClientHello and the CertificateRequest offer, and what a
    CertificateVerify may use: only what a node certificate can carry.

Also relied on (behaviour, pinned by the same tests): an idle timeout ends a
connection with ``ConnectionTerminated(reason_phrase="Idle timeout")``.

Session resumption and 0-RTT are never enabled: no session ticket handler or
fetcher is ever given to aioquic, so no ticket is issued, stored or offered,
and a HandshakeCompleted that reports a resumed session or accepted early
data is refused anyway (:func:`check_handshake`).
"""

from __future__ import annotations

import hmac
import os
import ssl
from dataclasses import dataclass
from typing import NoReturn, TextIO

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported from _buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import Limit, QuicConnection, QuicReceiveContext
from aioquic.quic.events import HandshakeCompleted
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from cryptography import x509

from quicpair.protocol.errors import ErrorCode, IdentityError, RemoteProtocolError
from quicpair.protocol.identity import Identity, NodeId, node_id_from_certificate
from quicpair.protocol.keys import RESET_TOKEN_SIZE, stateless_reset_token

__all__ = [
    "IDLE_TIMEOUT_REASON",
    "MIN_STATELESS_RESET",
    "PEER_STREAMS_TO_CLIENT",
    "PEER_STREAMS_TO_SERVER",
    "PeerClose",
    "PinnedQuicConnection",
    "check_handshake",
    "code_from_peer_close",
    "code_from_transport",
    "enable_key_log",
    "quic_configuration",
]

#: ``ConnectionTerminated.reason_phrase`` aioquic 1.7.2 uses for an idle timeout.
IDLE_TIMEOUT_REASON = "Idle timeout"
#: RFC 9000 10.3: the smallest datagram that can be a stateless reset (1 + 4 + 16 bytes).
MIN_STATELESS_RESET = 21

# TLS alerts (RFC 8446 6.2) that mean "your certificate is not acceptable here".
_IDENTITY_ALERTS = frozenset(
    {
        tls.AlertDescription.bad_certificate,
        tls.AlertDescription.unsupported_certificate,
        tls.AlertDescription.certificate_revoked,
        tls.AlertDescription.certificate_expired,
        tls.AlertDescription.certificate_unknown,
        tls.AlertDescription.unknown_ca,
        tls.AlertDescription.access_denied,
        tls.AlertDescription.certificate_required,
        # Only Ed25519 is offered (_initialize): a peer whose key is not Ed25519 cannot sign.
        tls.AlertDescription.handshake_failure,
        # A CertificateVerify that does not verify under the certificate's key: the peer
        # presented a certificate whose private key it does not hold (an impersonator).
        # aioquic's own check (_check_certificate_verify_signature) raises it before ours runs.
        tls.AlertDescription.decrypt_error,
    }
)
# The protocol version lives in the ALPN: no common ALPN means no common version.
_VERSION_ALERTS = frozenset(
    {tls.AlertDescription.no_application_protocol, tls.AlertDescription.protocol_version}
)


class _AlertAccessDenied(tls.Alert):
    """A valid certificate of a node other than the pinned one (RFC 8446 6.2)."""

    description = tls.AlertDescription.access_denied


@dataclass(frozen=True, slots=True)
class PeerClose:
    """What the peer's CONNECTION_CLOSE frame said (RFC 9000 19.19)."""

    #: The error code: an application code, or a QUIC transport code.
    error_code: int
    #: The frame type for a transport close; None for an application close.
    frame_type: int | None
    #: The peer's reason phrase (may be empty; not trusted for anything).
    reason: str


#: Where TLS secrets go when a person turned the key log on (enable_key_log); process-wide,
#: like OpenSSL's SSLKEYLOGFILE.
_key_log: TextIO | None = None


def enable_key_log(path: str) -> None:
    """Append every connection's TLS secrets to ``path`` (NSS key log format) from now on.

    Opened owner-only, append, never through a symlink. OSError if it cannot be.
    """
    global _key_log
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    _key_log = os.fdopen(fd, "a", buffering=1, encoding="ascii")


def quic_configuration(
    identity: Identity, *, is_client: bool, alpns: list[str], idle_timeout: float, now: float
) -> QuicConfiguration:
    """An aioquic configuration presenting ``identity``'s certificate.

    aioquic's own chain check is off (CERT_NONE): certificates are
    self-signed, and the key is checked by our hook instead. No server name is
    sent (SNI would reveal whom we dial), no session ticket is set.
    """
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=list(alpns),
        idle_timeout=idle_timeout,
        verify_mode=ssl.CERT_NONE,
        certificate=identity.certificate(now, os.urandom),
        private_key=identity.private_key,
        server_name=None,
        session_ticket=None,
        secrets_log_file=_key_log,
    )


#: Streams the peer may open: (bidirectional, unidirectional), by our side's role.
PEER_STREAMS_TO_SERVER = (1, 0)
PEER_STREAMS_TO_CLIENT = (0, 0)


class _FixedLimit(Limit):
    """A stream limit that stays where it was set (aioquic raises it as streams close)."""

    def __init__(self, old: Limit, value: int) -> None:
        self._cap = value
        super().__init__(frame_type=old.frame_type, name=old.name, value=value)

    @property
    def value(self) -> int:
        return self._cap

    @value.setter
    def value(self, _new: int) -> None:
        pass  # never raised: one stream per connection, for the connection's life


class PinnedQuicConnection(QuicConnection):
    """A QuicConnection whose peer must present an Ed25519 node certificate.

    ``expect`` pins the peer's NodeId (dialers that know whom they dial).
    ``reset_key`` is the node's static stateless-reset key: the connection ids
    we issue carry tokens derived from it (module docstring). After a refusal
    by our hook, :attr:`refusal` says why; after the peer closed,
    :attr:`peer_close` says how.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        expect: NodeId | None = None,
        reset_key: bytes | None = None,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> None:
        if configuration.session_ticket is not None:
            raise ValueError("session resumption is never used by quicpair")
        self._reset_key = reset_key
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self._derive_reset_tokens()
        self.expect = expect
        bidi, uni = PEER_STREAMS_TO_CLIENT if configuration.is_client else PEER_STREAMS_TO_SERVER
        self._local_max_streams_bidi = _FixedLimit(self._local_max_streams_bidi, bidi)
        self._local_max_streams_uni = _FixedLimit(self._local_max_streams_uni, uni)
        #: The NodeId our hook verified during the handshake (None until then).
        self.verified_peer: NodeId | None = None
        #: Why our hook refused the peer's certificate (None if it did not).
        self.refusal: RemoteProtocolError | None = None
        #: The peer's CONNECTION_CLOSE, recorded when it arrives.
        self.peer_close: PeerClose | None = None

    @property
    def handshake_confirmed(self) -> bool:
        """True once the handshake is confirmed (RFC 9001 4.1.2)."""
        return bool(self._handshake_confirmed)

    def peer_certificate(self) -> x509.Certificate | None:
        """The leaf certificate the peer presented, if any."""
        return self.tls._peer_certificate

    @property
    def probe_timeouts(self) -> int:
        """Probe timeouts in a row without an acknowledgement from the peer (RFC 9002 6.2)."""
        return int(self._loss._pto_count)

    def is_stateless_reset(self, datagram: bytes) -> bool:
        """True when ``datagram`` is the peer's stateless reset for this connection (RFC 9000 10.3.1).

        A short-header-shaped datagram whose last 16 bytes equal a token the peer
        issued for one of its connection ids, compared in constant time. A genuine
        packet ends with an AEAD tag: matching a 128-bit token by chance is 2^-128.
        """
        if len(datagram) < MIN_STATELESS_RESET or datagram[0] & 0x80:
            return False
        tail = datagram[-RESET_TOKEN_SIZE:]
        tokens = [cid.stateless_reset_token for cid in (self._peer_cid, *self._peer_cid_available)]
        return any(token and hmac.compare_digest(tail, token) for token in tokens)

    # -- private hooks (see the module docstring) -------------------------

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        # No tickets, ever: without these callbacks aioquic neither issues,
        # stores nor offers one (tls.Context._client_send_hello, _server_handle_finished).
        context.session_ticket = None
        context.get_session_ticket_cb = None
        context.new_session_ticket_cb = None
        if not self.configuration.is_client:
            context._request_client_certificate = True
        # Offer and accept only the signature a node certificate can make (RFC 8446 4.2.3).
        context._signature_algorithms = [tls.SignatureAlgorithm.ED25519]
        original = context._check_certificate_verify_signature

        def check_then_vet(verify: tls.CertificateVerify) -> None:
            original(verify)
            self._vet_peer_certificate()

        context._check_certificate_verify_signature = check_then_vet  # type: ignore[method-assign]

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self._derive_reset_tokens()

    def _derive_reset_tokens(self) -> None:
        # Before any is sent: aioquic issues new ids (NEW_CONNECTION_ID) and the
        # server's first one (transport parameters) only after these calls.
        if self._reset_key is not None:
            for cid in self._host_cids:
                # A client's first id has none (RFC 9000 18.2: only a server sends one
                # in its transport parameters); every later id of either side has one.
                if cid.stateless_reset_token is not None:
                    cid.stateless_reset_token = stateless_reset_token(self._reset_key, cid.cid)

    def _vet_peer_certificate(self) -> None:
        cert = self.tls._peer_certificate
        if cert is None:  # aioquic only verifies after parsing one; be strict anyway
            self._refuse("the peer presented no certificate", tls.AlertBadCertificate)
        try:
            node = node_id_from_certificate(cert)
        except IdentityError as exc:
            self._refuse(f"the peer's certificate is refused: {exc}", tls.AlertUnsupportedCertificate)
        if self.expect is not None and node != self.expect:
            self._refuse(
                f"the peer is {node.fingerprint}, not the pinned {self.expect.fingerprint}",
                _AlertAccessDenied,
            )
        self.verified_peer = node

    def _refuse(self, message: str, alert: type[tls.Alert]) -> NoReturn:
        self.refusal = RemoteProtocolError(ErrorCode.IDENTITY_MISMATCH, message)
        # The reason phrase goes on the wire: keep NodeIds out of it.
        raise alert("certificate refused: not an acceptable quicpair node identity")

    def _handle_connection_close_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        start = buf.tell()
        super()._handle_connection_close_frame(context, frame_type, buf)
        if self.peer_close is None:
            self.peer_close = _parse_close(frame_type, buf.data_slice(start, buf.tell()))


def _parse_close(frame_type: int, body: bytes) -> PeerClose:
    """Decode a CONNECTION_CLOSE body again (RFC 9000 19.19); aioquic already validated it."""
    buf = Buffer(data=body)
    error_code = buf.pull_uint_var()
    offending: int | None = None
    if frame_type == QuicFrameType.TRANSPORT_CLOSE:
        offending = buf.pull_uint_var()
    length = buf.pull_uint_var()
    reason = buf.pull_bytes(length).decode("utf-8", errors="replace")
    return PeerClose(error_code=error_code, frame_type=offending, reason=reason)


def check_handshake(conn: PinnedQuicConnection, event: HandshakeCompleted, alpns: list[str]) -> NodeId:
    """The second check, at HandshakeCompleted: who the peer is, or a refusal.

    Raises RemoteProtocolError (IDENTITY_MISMATCH for anything about the
    certificate, PROTOCOL_VIOLATION for resumption / 0-RTT, UNSUPPORTED_VERSION
    for a foreign ALPN).
    """
    if event.session_resumed or event.early_data_accepted:
        raise RemoteProtocolError(
            ErrorCode.PROTOCOL_VIOLATION, "a resumed session or 0-RTT handshake is never accepted"
        )
    if event.alpn_protocol is None or event.alpn_protocol not in alpns:
        raise RemoteProtocolError(
            ErrorCode.UNSUPPORTED_VERSION, f"unexpected application protocol {event.alpn_protocol!r}"
        )
    cert = conn.peer_certificate()
    if cert is None:
        raise RemoteProtocolError(ErrorCode.IDENTITY_MISMATCH, "the peer presented no certificate")
    try:
        node = node_id_from_certificate(cert)
    except IdentityError as exc:
        raise RemoteProtocolError(ErrorCode.IDENTITY_MISMATCH, str(exc)) from exc
    if conn.verified_peer is None or node != conn.verified_peer:
        raise RemoteProtocolError(
            ErrorCode.IDENTITY_MISMATCH, "the peer's certificate was not verified during the handshake"
        )
    if conn.expect is not None and node != conn.expect:
        raise RemoteProtocolError(
            ErrorCode.IDENTITY_MISMATCH,
            f"the peer is {node.fingerprint}, not the pinned {conn.expect.fingerprint}",
        )
    return node


def code_from_peer_close(close: PeerClose) -> tuple[ErrorCode, str]:
    """Our ErrorCode and a reason for people, from what the peer's close said."""
    if close.frame_type is None:
        try:
            return ErrorCode(close.error_code), close.reason
        except ValueError:
            return ErrorCode.PROTOCOL_VIOLATION, f"unknown code 0x{close.error_code:x}: {close.reason}"
    return code_from_transport(close.error_code, close.reason)


def code_from_transport(error_code: int, reason: str) -> tuple[ErrorCode, str]:
    """Map a QUIC transport error code (RFC 9000 20.1) to ours."""
    if QuicErrorCode.CRYPTO_ERROR <= error_code <= QuicErrorCode.CRYPTO_ERROR + 0xFF:
        alert = error_code - QuicErrorCode.CRYPTO_ERROR
        try:
            name = tls.AlertDescription(alert).name
        except ValueError:
            name = f"alert {alert}"
        text = f"TLS handshake refused ({name})" + (f": {reason}" if reason else "")
        if alert in _IDENTITY_ALERTS:
            return ErrorCode.IDENTITY_MISMATCH, text
        if alert in _VERSION_ALERTS:
            return ErrorCode.UNSUPPORTED_VERSION, text
        return ErrorCode.PROTOCOL_VIOLATION, text
    if error_code == QuicErrorCode.NO_ERROR:
        return ErrorCode.NO_ERROR, reason
    if error_code == QuicErrorCode.APPLICATION_ERROR:
        # An application close sent before 1-RTT keys hides its code (RFC 9000
        # 10.2.3): the peer gave up or shut down during the handshake.
        return ErrorCode.GOING_AWAY, "the peer closed the connection during the handshake"
    if error_code == QuicErrorCode.CONNECTION_REFUSED:
        return ErrorCode.BUSY, "the peer refused new connections"
    text = f"QUIC transport error 0x{error_code:x}" + (f": {reason}" if reason else "")
    return ErrorCode.PROTOCOL_VIOLATION, text
