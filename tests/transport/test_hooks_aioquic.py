"""aioquic's private hooks that actors/transport/tls.py relies on, one test each.

aioquic is pinned to exactly 1.7.2 (setup.cfg). These tests drive two
PinnedQuicConnections sans-I/O (datagrams handed over in memory, no socket)
and fail LOUDLY, naming the hook, when an aioquic release changes one of
them: read actors/transport/tls.py's docstring before bumping the pin. The
last tests cover the checks tls_pinning builds on them (no sockets either);
tests/transport/test_transport.py covers the same over real loopback sockets.
"""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import aioquic
import pytest
from aioquic import tls
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from quicpair.actors.transport.tls import (
    IDLE_TIMEOUT_REASON,
    PeerClose,
    PinnedQuicConnection,
    check_handshake,
    code_from_peer_close,
    code_from_transport,
    quic_configuration,
)
from quicpair.protocol.errors import ErrorCode, RemoteProtocolError
from quicpair.protocol.identity import Identity
from quicpair.protocol.keys import stateless_reset_token

PINNED = "1.7.2"
ALPN = "quicpair/link/1"
CLIENT_ADDR = ("127.0.0.1", 50001)
SERVER_ADDR = ("127.0.0.1", 50002)
ALICE = Identity.from_seed(bytes([1]) * 32)  # server
BOB = Identity.from_seed(bytes([2]) * 32)  # client
NOW = 1_000.0


@contextmanager
def hook(name: str) -> Iterator[None]:
    """Turn any failure inside into one loud message naming the hook."""
    try:
        yield
    except Exception as exc:  # AssertionError included
        pytest.fail(
            f"aioquic private hook {name} is not what actors/transport/tls.py was written "
            f"against (aioquic {PINNED}; installed {aioquic.__version__}): {type(exc).__name__}: {exc}. "
            "Re-read the hook in aioquic's source and fix actors/transport/tls.py before bumping the pin.",
            pytrace=False,
        )


def make_pair(
    client_cls: type[PinnedQuicConnection] = PinnedQuicConnection,
    server_cls: type[PinnedQuicConnection] = PinnedQuicConnection,
) -> tuple[PinnedQuicConnection, PinnedQuicConnection]:
    client = client_cls(
        configuration=quic_configuration(BOB, is_client=True, alpns=[ALPN], idle_timeout=5.0, now=NOW)
    )
    server = server_cls(
        configuration=quic_configuration(ALICE, is_client=False, alpns=[ALPN], idle_timeout=5.0, now=NOW),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    return client, server


def transfer(sender: QuicConnection, receiver: QuicConnection, from_addr: tuple[str, int]) -> int:
    count = 0
    for data, _ in sender.datagrams_to_send(now=NOW):
        receiver.receive_datagram(data, from_addr, now=NOW)
        count += 1
    return count


def handshake(client: QuicConnection, server: QuicConnection) -> None:
    client.connect(SERVER_ADDR, now=NOW)
    for _ in range(20):
        moved = transfer(client, server, CLIENT_ADDR) + transfer(server, client, SERVER_ADDR)
        if not moved:
            return


def drain(conn: QuicConnection) -> list[events.QuicEvent]:
    found = []
    while (event := conn.next_event()) is not None:
        found.append(event)
    return found


def params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_aioquic_is_the_pinned_version() -> None:
    assert aioquic.__version__ == PINNED, (
        f"aioquic {aioquic.__version__} is installed but quicpair's private hooks were checked "
        f"against {PINNED} only (setup.cfg pins it): run tests/transport/test_hooks_aioquic.py and review "
        "actors/transport/tls.py before changing the pin"
    )


def test_hook_initialize_creates_the_tls_context_we_patch() -> None:
    with hook("QuicConnection._initialize(peer_cid)"):
        assert params(QuicConnection._initialize) == ["self", "peer_cid"]
        client, server = make_pair()
        client.connect(SERVER_ADDR, now=NOW)  # the client initializes in connect()
        assert isinstance(client.tls, tls.Context)
        assert "_check_certificate_verify_signature" in vars(client.tls), "client hook not installed"
        transfer(client, server, CLIENT_ADDR)  # the server initializes on the first Initial
        assert isinstance(server.tls, tls.Context)
        assert "_check_certificate_verify_signature" in vars(server.tls), "server hook not installed"
        assert server.tls._request_client_certificate is True


def test_hook_request_client_certificate_makes_the_client_authenticate() -> None:
    class NoRequest(PinnedQuicConnection):
        def _initialize(self, peer_cid: bytes) -> None:
            super()._initialize(peer_cid)
            self.tls._request_client_certificate = False

    with hook("tls.Context._request_client_certificate"):
        assert tls.Context(is_client=False)._request_client_certificate is False
        client, server = make_pair()
        handshake(client, server)
        assert server.peer_certificate() is not None, "setting it True no longer requests a certificate"
        client, server = make_pair(server_cls=NoRequest)
        handshake(client, server)
        assert server.peer_certificate() is None, "the client authenticated without being asked"


def test_hook_check_certificate_verify_signature_runs_on_both_sides() -> None:
    with hook("tls.Context._check_certificate_verify_signature(verify)"):
        assert params(tls.Context._check_certificate_verify_signature) == ["self", "verify"]
        client, server = make_pair()
        handshake(client, server)
        assert client.verified_peer == ALICE.node_id, "not called on the client"
        assert server.verified_peer == BOB.node_id, "not called on the server"
        assert any(isinstance(e, events.HandshakeCompleted) for e in drain(client))
        # A refusal raised from it must stop the handshake with a TLS alert.
        client, server = make_pair()
        client.expect = server.expect = BOB.node_id  # the client expects the wrong node
        handshake(client, server)
        assert client.refusal is not None and client.refusal.code is ErrorCode.IDENTITY_MISMATCH
        assert not any(isinstance(e, events.HandshakeCompleted) for e in drain(client))
        assert server.peer_close is not None
        assert server.peer_close.error_code == QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.access_denied


def test_a_forged_certificate_verify_is_alert_51_read_as_identity_mismatch() -> None:
    """An impersonator presents ALICE's certificate but signs with another key (PROTOCOL.md 3.2)."""
    carol = Identity.from_seed(bytes([3]) * 32)
    with hook("tls.Context._check_certificate_verify_signature (the original check runs first)"):
        client, server = make_pair()
        server.configuration.private_key = carol.private_key  # ALICE's certificate, CAROL's key
        client.expect = ALICE.node_id
        handshake(client, server)
        # aioquic's own check refuses before ours runs: our hook never saw the certificate.
        assert client.verified_peer is None and client.refusal is None
        assert not any(isinstance(e, events.HandshakeCompleted) for e in drain(client))
        assert server.peer_close is not None
        assert server.peer_close.error_code == QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.decrypt_error
        assert code_from_peer_close(server.peer_close)[0] is ErrorCode.IDENTITY_MISMATCH


def test_hook_peer_certificate_holds_the_presented_certificate() -> None:
    with hook("tls.Context._peer_certificate"):
        assert tls.Context(is_client=True)._peer_certificate is None
        client, server = make_pair()
        handshake(client, server)
        assert isinstance(client.tls._peer_certificate, x509.Certificate)
        assert client.peer_certificate() == server.configuration.certificate
        assert server.peer_certificate() == client.configuration.certificate


def test_hook_peer_certificate_refuses_a_non_ed25519_server() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecdsa")])
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    with hook("tls.Context._peer_certificate (non-Ed25519 refusal)"):
        client, server = make_pair()
        server.configuration.certificate, server.configuration.private_key = cert, key
        # Our connections offer only Ed25519 signatures (tls.Context._signature_algorithms), so
        # such a server could not even sign; widen the client's offer to reach the hook's check.
        initialize = client._initialize

        def offering_ecdsa_too(peer_cid: bytes) -> None:
            initialize(peer_cid)
            client.tls._signature_algorithms = [0x0807, 0x0403]

        client._initialize = offering_ecdsa_too  # type: ignore[method-assign]
        handshake(client, server)
        assert client.refusal is not None and "not Ed25519" in str(client.refusal)


def test_hook_signature_algorithms_offer_only_ed25519() -> None:
    with hook("tls.Context._signature_algorithms"):
        client, server = make_pair()
        handshake(client, server)
        assert client.tls._signature_algorithms == server.tls._signature_algorithms == [0x0807]


def test_hook_stream_limits_let_the_peer_open_one_bidirectional_stream_only() -> None:
    with hook("QuicConnection._local_max_streams_bidi/_uni"):
        client, server = make_pair()
        handshake(client, server)
        assert (server._local_max_streams_bidi.value, server._local_max_streams_uni.value) == (1, 0)
        assert (client._local_max_streams_bidi.value, client._local_max_streams_uni.value) == (0, 0)
        assert client._remote_max_streams_bidi == 1 and client._remote_max_streams_uni == 0
        server._local_max_streams_bidi.value += 1  # what aioquic does when a stream closes
        assert server._local_max_streams_bidi.value == 1


def test_hook_handshake_confirmed_waits_for_handshake_done() -> None:
    with hook("QuicConnection._handshake_confirmed"):
        client, server = make_pair()
        assert client._handshake_confirmed is False
        client.connect(SERVER_ADDR, now=NOW)
        transfer(client, server, CLIENT_ADDR)  # Initial
        transfer(server, client, SERVER_ADDR)  # server flight up to Finished
        assert any(isinstance(e, events.HandshakeCompleted) for e in drain(client))
        assert client.handshake_confirmed is False, "confirmed before the server's HANDSHAKE_DONE"
        transfer(client, server, CLIENT_ADDR)  # client Certificate, CertificateVerify, Finished
        assert server.handshake_confirmed is True
        transfer(server, client, SERVER_ADDR)  # HANDSHAKE_DONE
        assert client.handshake_confirmed is True


def test_hook_connection_close_frame_is_seen_when_it_arrives() -> None:
    with hook("QuicConnection._handle_connection_close_frame(context, frame_type, buf)"):
        assert params(QuicConnection._handle_connection_close_frame) == [
            "self",
            "context",
            "frame_type",
            "buf",
        ]
        client, server = make_pair()
        handshake(client, server)
        server.close(error_code=ErrorCode.UNPAIRED, reason_phrase="unpaired")
        transfer(server, client, SERVER_ADDR)
        assert client.peer_close == PeerClose(ErrorCode.UNPAIRED, None, "unpaired")
        client, server = make_pair()
        handshake(client, server)
        server.close(error_code=QuicErrorCode.PROTOCOL_VIOLATION, frame_type=QuicFrameType.STREAM_BASE)
        transfer(server, client, SERVER_ADDR)
        assert client.peer_close == PeerClose(QuicErrorCode.PROTOCOL_VIOLATION, QuicFrameType.STREAM_BASE, "")


def test_idle_timeout_ends_with_its_known_reason_phrase() -> None:
    with hook("ConnectionTerminated reason for an idle timeout"):
        client, server = make_pair()
        handshake(client, server)
        drain(client)
        client.handle_timer(now=NOW + 60.0)
        terminated = [e for e in drain(client) if isinstance(e, events.ConnectionTerminated)]
        assert [e.reason_phrase for e in terminated] == [IDLE_TIMEOUT_REASON]


def test_no_session_ticket_machinery_is_ever_armed() -> None:
    with hook("tls.Context.session_ticket / get_session_ticket_cb / new_session_ticket_cb"):
        client, server = make_pair()
        handshake(client, server)
        for conn in (client, server):
            assert conn.tls.session_ticket is None
            assert conn.tls.get_session_ticket_cb is None
            assert conn.tls.new_session_ticket_cb is None
            assert conn.tls.session_resumed is False


# -- the checks tls_pinning builds on these hooks -------------------------------


def test_a_resumed_handshake_is_refused_at_completion() -> None:
    config = quic_configuration(ALICE, is_client=False, alpns=[ALPN], idle_timeout=5.0, now=0.0)
    conn = PinnedQuicConnection(configuration=config, original_destination_connection_id=bytes(8))
    resumed = events.HandshakeCompleted(alpn_protocol=ALPN, early_data_accepted=False, session_resumed=True)
    with pytest.raises(RemoteProtocolError) as caught:
        check_handshake(conn, resumed, [ALPN])
    assert caught.value.code is ErrorCode.PROTOCOL_VIOLATION
    early = events.HandshakeCompleted(alpn_protocol=ALPN, early_data_accepted=True, session_resumed=False)
    with pytest.raises(RemoteProtocolError):
        check_handshake(conn, early, [ALPN])
    client = quic_configuration(BOB, is_client=True, alpns=[ALPN], idle_timeout=5.0, now=0.0)
    client.session_ticket = object()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="session resumption"):
        PinnedQuicConnection(configuration=client)


def test_close_codes_map_to_quicpair_codes() -> None:
    alert = tls.AlertDescription

    def code(error_code: int) -> ErrorCode:
        return code_from_transport(error_code, "")[0]

    crypto = QuicErrorCode.CRYPTO_ERROR  # + the TLS alert, RFC 9001 4.8
    assert code(crypto + alert.bad_certificate) is ErrorCode.IDENTITY_MISMATCH
    assert code(crypto + alert.certificate_required) is ErrorCode.IDENTITY_MISMATCH
    assert code(crypto + alert.no_application_protocol) is ErrorCode.UNSUPPORTED_VERSION
    assert "no_application_protocol" in code_from_transport(crypto + alert.no_application_protocol, "")[1]
    assert code(crypto + alert.decrypt_error) is ErrorCode.IDENTITY_MISMATCH  # a forged CertificateVerify
    assert code(crypto + alert.illegal_parameter) is ErrorCode.PROTOCOL_VIOLATION
    assert code(QuicErrorCode.APPLICATION_ERROR) is ErrorCode.GOING_AWAY  # code hidden in the handshake
    assert code(QuicErrorCode.CONNECTION_REFUSED) is ErrorCode.BUSY
    assert code_from_transport(0x0A, "bad frame") == (
        ErrorCode.PROTOCOL_VIOLATION,
        "QUIC transport error 0xa: bad frame",
    )
    assert code_from_peer_close(PeerClose(0x03, None, "bye")) == (ErrorCode.UNPAIRED, "bye")
    unknown = code_from_peer_close(PeerClose(0x99, None, "from the future"))
    assert unknown == (ErrorCode.PROTOCOL_VIOLATION, "unknown code 0x99: from the future")


# -- stateless reset and the dead-peer rule ----------------------------------------------------

CLIENT_KEY, SERVER_KEY = bytes([0x0C]) * 32, bytes([0x05]) * 32


def keyed_pair() -> tuple[PinnedQuicConnection, PinnedQuicConnection]:
    client = PinnedQuicConnection(
        configuration=quic_configuration(BOB, is_client=True, alpns=[ALPN], idle_timeout=5.0, now=NOW),
        reset_key=CLIENT_KEY,
    )
    server = PinnedQuicConnection(
        configuration=quic_configuration(ALICE, is_client=False, alpns=[ALPN], idle_timeout=5.0, now=NOW),
        original_destination_connection_id=client.original_destination_connection_id,
        reset_key=SERVER_KEY,
    )
    return client, server


def test_hook_host_cids_carry_tokens_derived_from_the_static_key() -> None:
    with hook("QuicConnection._host_cids[].stateless_reset_token and _replenish_connection_ids()"):
        assert params(QuicConnection._replenish_connection_ids) == ["self"]
        client, server = keyed_pair()
        handshake(client, server)
        for conn, key in ((server, SERVER_KEY), (client, CLIENT_KEY)):
            derived = [c for c in conn._host_cids if c.stateless_reset_token is not None]
            assert len(derived) >= 2, "NEW_CONNECTION_ID ids were issued"
            assert all(c.stateless_reset_token == stateless_reset_token(key, c.cid) for c in derived)
        # A client's first id has no token (RFC 9000 18.2); the server's is in its transport parameters.
        assert client._host_cids[0].stateless_reset_token is None
        # What the peers learnt: the tokens we derived, on their side of the connection.
        first = client._peer_cid
        assert first.stateless_reset_token == stateless_reset_token(SERVER_KEY, first.cid)
        # aioquic issues fresh ids as the peer retires old ones: they are derived too.
        before = {c.cid for c in server._host_cids}
        server._host_cids = server._host_cids[:1]  # as if the peer had retired the others
        server._replenish_connection_ids()
        fresh = [c for c in server._host_cids if c.cid not in before]
        assert fresh
        assert all(c.stateless_reset_token == stateless_reset_token(SERVER_KEY, c.cid) for c in fresh)


def test_hook_peer_cids_recognise_the_peers_stateless_reset() -> None:
    with hook("QuicConnection._peer_cid / _peer_cid_available"):
        client, server = keyed_pair()
        handshake(client, server)
        assert client._peer_cid_available, "the server issued more ids (NEW_CONNECTION_ID)"
        for cid in (client._peer_cid, *client._peer_cid_available):
            reset = bytes([0x5A]) * 27 + stateless_reset_token(SERVER_KEY, cid.cid)
            assert client.is_stateless_reset(reset), "a reset for any id the peer gave us"
        token = stateless_reset_token(SERVER_KEY, client._peer_cid.cid)
        assert not client.is_stateless_reset(bytes([0x5A]) * 27 + bytes(16)), "another token"
        assert not client.is_stateless_reset(bytes([0xC0]) + bytes(26) + token), "a long header"
        assert not client.is_stateless_reset(bytes([0x40]) + bytes(3) + token), "shorter than 21 bytes"


def test_hook_loss_pto_count_counts_unanswered_probe_timeouts() -> None:
    with hook("QuicConnection._loss._pto_count"):
        client, server = keyed_pair()
        handshake(client, server)
        drain(client)
        assert client.probe_timeouts == 0
        client.send_ping(1)
        now, seen = NOW, [0]
        for _ in range(200):  # the peer is gone: nothing sent is ever delivered or acknowledged
            client.datagrams_to_send(now=now)
            timer = client.get_timer()
            assert timer is not None
            now = max(now, timer)
            client.handle_timer(now=now)
            if client.probe_timeouts != seen[-1]:
                seen.append(client.probe_timeouts)
            if len(seen) > 3:
                break
        assert seen == [0, 1, 2, 3], "one more at each unanswered probe timeout"


def test_the_spec_lists_exactly_the_alerts_read_as_identity_mismatch() -> None:
    """PROTOCOL.md 3.2, 3.4 and Appendix A.2 name the same alerts as actors/transport/tls.py."""
    import re
    from pathlib import Path

    from quicpair.actors.transport import tls as tls_module

    spec = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    lists = re.findall(r"alerts?\s+((?:\d+,\s+)+\d+,?\s+or\s+\d+)", spec)
    assert len(lists) >= 3, lists
    expected = sorted(int(a) for a in tls_module._IDENTITY_ALERTS)
    for found in lists:
        assert sorted(int(n) for n in re.findall(r"\d+", found)) == expected, found
    for alert in expected:
        assert code_from_transport(QuicErrorCode.CRYPTO_ERROR + alert, "")[0] is ErrorCode.IDENTITY_MISMATCH


def test_hooks_of_the_conformance_kit_read_the_peers_transport_parameters_and_certificate_request() -> None:
    """tools/conformance reads the node's choices and widens a certificate request through these."""
    with hook("QuicConnection._remote_max_idle_timeout, tls.Context._client_handle_certificate_request"):
        client, server = make_pair()
        seen: list[object] = []
        client.connect(SERVER_ADDR, now=NOW)  # creates client.tls
        original = client.tls._client_handle_certificate_request
        assert params(original) == ["input_buf"]

        def spy(input_buf: object) -> None:
            original(input_buf)
            seen.append(client.tls._certificate_request)

        client.tls._client_handle_certificate_request = spy  # type: ignore[method-assign]
        for _ in range(20):
            if not transfer(client, server, CLIENT_ADDR) + transfer(server, client, SERVER_ADDR):
                break
        assert client.handshake_confirmed
        assert client._remote_max_idle_timeout == 5.0, "the server's idle timeout in seconds"
        assert len(seen) == 1 and seen[0] is not None
        assert list(seen[0].signature_algorithms or []) == [0x0807]  # type: ignore[attr-defined]
