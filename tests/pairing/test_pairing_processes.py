"""Pairing between real node processes over real QUIC on loopback.

Alice and Bob are separate OS processes (tools/nodehost.py), each with its
own home, driven through the control protocol (tests/support/nodeproc.py). Every
scenario asserts what a person would check (the API's replies: devices,
counters, errors with their codes) AND what the node wrote in its JSON log
(pairing.completed, pairing.failed, ...). Every wait is bounded.

Scenarios that need a timeout use ``pairing.step_timeout=2`` so the file
stays fast; faults come from the ``[testing]`` switches (config/defaults.toml).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.codes import PairingCode, PairingUri, parse_code_or_uri, split_address
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import FrameDecoder
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.messages import ALPN_PAIR, Message, PairReject
from support.nodeproc import REPLY_TIMEOUT, STOP_TIMEOUT, NodeFactory, NodeProcess, RelayProcess, poll
from support.nodeproc import nodes_fixture as nodes_fixture  # the ``nodes`` fixture

pytestmark = pytest.mark.integration

#: A short step timeout for scenarios that wait for one (the default is 10 s).
STEP = 2.0
SHORT = f"pairing.step_timeout={STEP:g}"
#: What a pairing writes into a device record once and for all.
PAIRING_FIELDS = ("node_id", "name", "role", "state", "send_key_fingerprint", "receive_key_fingerprint")


# -- helpers -----------------------------------------------------------------------


def only_device(node: NodeProcess, *, include_pending: bool = False) -> dict[str, Any]:
    devices = node.devices(include_pending=include_pending)
    assert len(devices) == 1, f"{node.name} should hold exactly one device, holds {devices}"
    return devices[0]


def holds_nothing(node: NodeProcess) -> bool:
    return not node.devices(include_pending=True)


def assert_nothing_stored(*nodes_: NodeProcess) -> None:
    for node in nodes_:
        assert node.devices(include_pending=True) == [], f"{node.name} kept a device"


def wrong_code(code: str) -> str:
    """The same nameplate with a different last word."""
    parsed = PairingCode.parse(code)
    last = "zoo" if parsed.words[2] != "zoo" else "abandon"
    return PairingCode(parsed.nameplate, (*parsed.words[:2], last)).text


def assert_paired(alice: NodeProcess, bob: NodeProcess) -> None:
    """Both registries hold the other, confirmed, under the NodeId each saw in TLS."""
    a_sees, b_sees = only_device(alice), only_device(bob)
    assert a_sees["node_id"] == bob.node_id and a_sees["state"] == "confirmed"
    assert b_sees["node_id"] == alice.node_id and b_sees["state"] == "confirmed"
    assert (a_sees["role"], b_sees["role"]) == ("initiator", "joiner")


# -- a peer that is not a node -----------------------------------------------------


class RawPairClient:
    """A bare QUIC client in this process, on its own event loop in a thread.

    It dials a node on the pairing ALPN with a fresh identity and then sends
    whatever the test wants (nothing, garbage...), recording what comes back::

        with RawPairClient() as raw:
            raw.dial(alice.address)
            raw.send(b"\\x00\\x00\\x00\\x00")
            raw.wait_for(lambda: raw.reset_code() or raw.frames(), what="an answer")
    """

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-pair-client", daemon=True)
        self._thread.start()
        self.link: QuicLink | None = None
        self.stream_id: int | None = None
        self._events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> RawPairClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # handler interface (called on the client's loop)
    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        with self._lock:
            self._events.append(("data", stream_id, data, ended))

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        with self._lock:
            self._events.append(("reset", stream_id, code))

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        with self._lock:
            self._events.append(("closed", code, reason, by_peer))

    def _on_loop(self, fn: Callable[..., Any], *args: Any, timeout: float = REPLY_TIMEOUT) -> Any:
        async def call() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        return future.result(timeout=timeout)

    def dial(self, address: str, *, timeout: float = 5.0) -> None:
        """Connect (pairing ALPN); raises what the transport's dial raises (e.g. BUSY refused)."""
        host, port = split_address(address)

        async def connect() -> None:
            link = await dial(host, port, self.identity, alpn=ALPN_PAIR, timeout=timeout)
            link.set_handler(self)
            self.link = link

        self._on_loop(connect, timeout=timeout + 5.0)

    def open_stream(self) -> int:
        assert self.link is not None, "dial first"
        stream_id: int = self._on_loop(self.link.open_stream)
        self.stream_id = stream_id
        return stream_id

    def send(self, data: bytes, *, end: bool = False) -> None:
        """Send on the client's one stream (opened on first use)."""
        stream_id = self.stream_id if self.stream_id is not None else self.open_stream()
        assert self.link is not None
        self._on_loop(self.link.send, stream_id, data, end)

    def events(self) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._events)

    def received(self) -> bytes:
        return b"".join(e[2] for e in self.events() if e[0] == "data")

    def frames(self) -> list[Message]:
        """The messages received so far on the stream (strictly decoded)."""
        decoder = FrameDecoder()
        decoder.feed(self.received())
        return list(decoder)

    def reset_code(self) -> ErrorCode | None:
        """The code of the stream reset the node sent, or None."""
        return next((e[2] for e in self.events() if e[0] == "reset"), None)

    def close_info(self) -> tuple[Any, ...] | None:
        return next((e[1:] for e in self.events() if e[0] == "closed"), None)

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float = REPLY_TIMEOUT, what: str) -> None:
        def fail(message: str) -> None:
            pytest.fail(f"raw client: {message}; got {self.events()}", pytrace=False)

        poll(predicate, timeout=timeout, what=what, fail=fail)

    def close(self) -> None:
        """Close the connection (if any), stop the loop, join the thread."""
        if self.loop.is_closed():
            return
        link = self.link
        if link is not None:

            async def shut() -> None:
                link.close(ErrorCode.GOING_AWAY, "raw client done")
                await asyncio.wait_for(link.wait_closed(), 5.0)

            with contextlib.suppress(Exception):
                self._on_loop(shut)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=STOP_TIMEOUT)
        self.loop.close()


# -- 1. success ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["uri", "code+address"])
def test_pairing_succeeds_with_one_connection_one_stream_and_directional_keys(
    nodes: NodeFactory, form: str
) -> None:
    alice, bob = nodes.start("alice", "bob")
    offer = alice.pair()
    waiting = alice.request("wait_offer", nameplate=offer["nameplate"], timeout=10)

    # The URI pins Alice's NodeId; a typed code needs her address.
    reply = bob.join(offer["uri"]) if form == "uri" else bob.join(offer["code"], address=alice.address)
    assert reply.ok, reply.error
    offered = alice.await_reply(waiting)
    assert offered.ok, offered.error

    # Each side holds the other, confirmed, with the NodeId it saw in TLS.
    assert_paired(alice, bob)
    a_sees, b_sees = only_device(alice), only_device(bob)
    # The API's answers are the stored records (the link that comes up right
    # after may refresh the observed address, so compare what a pairing fixes).
    for answered, stored in ((reply.result, b_sees), (offered.result, a_sees)):
        assert {k: answered[k] for k in PAIRING_FIELDS} == {k: stored[k] for k in PAIRING_FIELDS}
    assert a_sees["name"] == "bob" and b_sees["name"] == "alice"

    # DESIGN.md #1: exactly one connection and one stream per pairing, on each side.
    a_counts, b_counts = alice.counters(), bob.counters()
    assert a_counts["pair.connections.initiator"] == 1 and a_counts["pair.streams.initiator"] == 1
    assert b_counts["pair.connections.joiner"] == 1 and b_counts["pair.streams.joiner"] == 1
    a_done = alice.wait_event("pairing.completed")
    b_done = bob.wait_event("pairing.completed")
    assert (a_done["connections"], a_done["streams"]) == (1, 1)
    assert (b_done["connections"], b_done["streams"]) == (1, 1)

    # DESIGN.md #4: directional keys.
    assert a_sees["send_key_fingerprint"] == b_sees["receive_key_fingerprint"]
    assert a_sees["receive_key_fingerprint"] == b_sees["send_key_fingerprint"]
    assert a_sees["send_key_fingerprint"] != a_sees["receive_key_fingerprint"]
    assert b_sees["send_key_fingerprint"] != b_sees["receive_key_fingerprint"]
    assert (a_done["send_key_fp"], a_done["receive_key_fp"]) == (
        a_sees["send_key_fingerprint"],
        a_sees["receive_key_fingerprint"],
    )

    # DESIGN.md #2: the pairing stored the addresses each side announced, and
    # they stay first in line (the link may add an observed one after them).
    assert bob.info["addresses"] == [bob.address] and alice.info["addresses"] == [alice.address]
    assert offered.result["addresses"] == bob.info["addresses"] == a_sees["addresses"][:1]
    assert reply.result["addresses"] == alice.info["addresses"] == b_sees["addresses"][:1]

    # Both people see the same short authentication string.
    a_sas = alice.wait_event("pairing.peer_verified")["sas"]
    b_sas = bob.wait_event("pairing.peer_verified")["sas"]
    assert a_sas == b_sas and len(a_sas.split()) == 4

    assert alice.events("pairing.failed") == [] and bob.events("pairing.failed") == []


# -- 2. wrong, burned and expired codes -------------------------------------------------


def test_wrong_code_fails_on_both_sides_and_stores_nothing(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice", "bob")
    offer = alice.pair()

    reply = bob.join(wrong_code(offer["code"]), address=alice.address)
    assert not reply.ok and reply.code == "WRONG_CODE", reply.error
    failed = alice.wait_event("pairing.failed")
    assert failed["code"] == "WRONG_CODE"
    assert bob.wait_event("pairing.failed")["code"] == "WRONG_CODE"
    assert_nothing_stored(alice, bob)
    assert alice.events("pairing.peer_verified") == [] and bob.events("pairing.peer_verified") == []


def test_third_wrong_attempt_burns_the_code(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice", "bob")
    offer = alice.pair()
    waiting = alice.request("wait_offer", nameplate=offer["nameplate"], timeout=30)

    for attempt in (1, 2, 3):
        reply = bob.join(wrong_code(offer["code"]), address=alice.address)
        assert reply.code == "WRONG_CODE", f"attempt {attempt}: {reply.error}"
        # Alice must have released the code before the next attempt, or it is BUSY.
        alice.wait_event("pairing.failed", count=attempt, code="WRONG_CODE")

    # The right code is refused now: three counted attempts burned it.
    reply = bob.join(offer["uri"])
    assert not reply.ok and reply.code == "CODE_USED_UP", reply.error
    offered = alice.await_reply(waiting)
    assert not offered.ok and offered.code == "CODE_USED_UP", offered.error
    assert alice.wait_event("pairing.code_closed")["state"] == "burned"
    assert_nothing_stored(alice, bob)


def test_expired_code_is_refused(nodes: NodeFactory) -> None:
    alice, bob = nodes.start(("alice", ["pairing.code_expiry=1"]), "bob")
    offer = alice.pair()
    # The offer's own failure tells us the code expired: no sleep.
    expired = alice.call("wait_offer", nameplate=offer["nameplate"], timeout=10)
    assert not expired.ok and expired.code == "CODE_EXPIRED", expired.error
    alice.wait_event("pairing.code_expired", nameplate=offer["nameplate"])

    reply = bob.join(offer["uri"])
    assert not reply.ok and reply.code == "CODE_EXPIRED", reply.error
    assert alice.wait_event("pairing.failed")["code"] == "CODE_EXPIRED"
    assert_nothing_stored(alice, bob)


# -- 3. a relay in the middle -----------------------------------------------------------


@pytest.fixture
def relay_to(tmp_path: Any) -> Any:
    """Start a relay (tools/relay.py) in front of a node's address; closed after the test."""
    relays: list[RelayProcess] = []

    def start(target: str) -> RelayProcess:
        relay = RelayProcess(tmp_path, target).start()
        relays.append(relay)
        return relay

    yield start
    for relay in relays:
        assert relay.close() == 0, "the relay did not exit cleanly"


def test_relay_in_the_middle_fails_key_confirmation(nodes: NodeFactory, relay_to: Any) -> None:
    alice, bob = nodes.start("alice", "bob")
    relay = relay_to(alice.address)
    offer = alice.pair()

    # The bare code: nothing pins Alice's NodeId, so Bob's handshake with the relay succeeds.
    reply = bob.join(offer["code"], address=relay.address)
    assert not reply.ok and reply.code == "WRONG_CODE", reply.error

    # The relay really was in the middle, with its own identity on both sides.
    piped = relay.wait_printed("relayed")
    assert (piped["downstream"], piped["upstream"]) == (bob.node_id, alice.node_id)
    assert relay.node_id not in (alice.node_id, bob.node_id)
    # Each side saw the relay's NodeId in TLS: the transcripts differ, confirmation fails.
    assert bob.wait_event("pairing.failed")["code"] == "WRONG_CODE"
    a_failed = alice.wait_event("pairing.failed")
    assert a_failed["code"] == "WRONG_CODE"
    assert a_failed["peer"] == NodeId.from_text(relay.node_id).fingerprint
    assert_nothing_stored(alice, bob)


def test_pinned_uri_refuses_the_relay_at_the_handshake(nodes: NodeFactory, relay_to: Any) -> None:
    alice, bob = nodes.start("alice", "bob")
    relay = relay_to(alice.address)
    offer = alice.pair()
    # A QR code pins Alice's NodeId; here its only address leads to the relay.
    uri = parse_code_or_uri(offer["uri"])
    assert uri.node is not None and uri.node.text == alice.node_id
    via_relay = PairingUri(uri.code, uri.node, (relay.address,)).text

    reply = bob.join(via_relay)
    assert not reply.ok and reply.code == "IDENTITY_MISMATCH", reply.error
    assert bob.events("pairing.dial_failed")
    # Nothing reached Alice: no session, the code is untouched and still works.
    assert relay.printed("relayed") == []
    assert alice.events("pairing.session_started") == []
    assert_nothing_stored(alice, bob)
    assert bob.join(offer["uri"]).ok
    assert_paired(alice, bob)


# -- 4. a session crash ------------------------------------------------------------------


def test_session_crash_fails_the_pairing_cleanly_and_the_node_keeps_serving(nodes: NodeFactory) -> None:
    alice, bob, carol = nodes.start(("alice", ['testing.crash_session_after="PairResponse"']), "bob", "carol")
    offer = alice.pair()
    waiting = alice.request("wait_offer", nameplate=offer["nameplate"], timeout=30)

    # The switch crashes Alice's session when Bob's PairResponse arrives (before
    # it is handled): on_failure resets the stream and closes the connection
    # with INTERNAL_ERROR, and Bob fails with that code, told by the peer.
    reply = bob.join(offer["uri"])
    assert not reply.ok and reply.code == "INTERNAL_ERROR" and reply.remote, reply.error
    assert bob.wait_event("pairing.failed")["code"] == "INTERNAL_ERROR"
    crashed = alice.wait_event("pairing.crashed")
    assert "PairResponse" in crashed["error"]
    alice.wait_event("actor.exited", actor="pair-i-1")
    assert_nothing_stored(alice, bob)
    assert alice.events("pairing.peer_verified") == [] and bob.events("pairing.peer_verified") == []

    # The node keeps serving: the control API answers, and the crashed session
    # gave its code back (the attempt stays counted), so the next attempts get
    # a session of their own (which the switch crashes too) until the code
    # burns and the offer settles, instead of BUSY forever.
    assert alice.ok("info")["node_id"] == alice.node_id
    assert alice.counters()["pair.crashed.initiator"] == 1
    for attempt in (2, 3):
        reply = bob.join(offer["uri"])
        assert reply.code == "INTERNAL_ERROR", f"attempt {attempt}: {reply.error}"
        alice.wait_event("pairing.crashed", count=attempt)
    offered = alice.await_reply(waiting)
    assert not offered.ok and offered.code == "CODE_USED_UP", offered.error
    assert alice.counters()["pair.crashed.initiator"] == 3
    assert alice.events("quic.handler_failed") == []
    assert_nothing_stored(alice, bob)

    # Bob is unharmed: a pairing with a node without the switch works.
    assert bob.join(carol.pair()["uri"]).ok
    assert_paired(carol, bob)


def test_initiator_crash_after_the_vote_leaves_neither_side_paired(nodes: NodeFactory) -> None:
    alice, bob = nodes.start(("alice", ['testing.crash_session_after="PairDone"', SHORT]), ("bob", [SHORT]))
    offer = alice.pair()

    # Bob voted (PairDone) and stored Alice as pending; Alice crashes on the
    # vote and forgets her pending record. Bob is in doubt, asks again on a
    # new connection, and Alice's registry says: not committed.
    reply = bob.join(offer["uri"])
    assert not reply.ok and reply.code == "ABORTED", reply.error
    alice.wait_event("pairing.crashed")
    bob.wait_event("pairing.in_doubt")
    assert bob.wait_event("pairing.resolved")["committed"] is False
    assert alice.wait_event("pairing.resolve_answered")["committed"] is False
    assert bob.counters()["pair.resolve_connections"] >= 1
    assert_nothing_stored(alice, bob)


# -- 5. the last messages lost: no split brain ----------------------------------------------


def test_lost_vote_aborts_on_both_sides(nodes: NodeFactory) -> None:
    alice, bob = nodes.start(("alice", [SHORT]), ("bob", [SHORT, "testing.drop_pair_done=true"]))
    offer = alice.pair()

    # Bob stores Alice as pending and votes, but the vote never leaves. Alice
    # waits one step (2 s), then aborts and deletes her pending record.
    reply = bob.join(offer["uri"], timeout=6 * STEP)
    assert not reply.ok and reply.code == "ABORTED", reply.error
    assert bob.wait_event("testing.dropped")["message"] == "PairDone"
    assert alice.wait_event("pairing.failed")["code"] == "TIMEOUT"
    # Bob learns it one of two ways, both correct: Alice's PairReject(ABORTED)
    # reaches him first (the usual case: she entered the step a round trip
    # earlier, with the same step_timeout), or his own deadline passes first
    # (a loaded machine delays her timer by a few ms), he is in doubt, asks,
    # and her registry answers "not committed".
    if not bob.events("pairing.in_doubt"):
        assert bob.wait_event("pairing.failed")["code"] == "ABORTED"
    else:
        assert bob.wait_event("pairing.resolved")["committed"] is False
    for node in (alice, bob):  # the pending records go within the bound
        node.wait_for(partial(holds_nothing, node), timeout=STEP, what="no device, not even pending")
    assert alice.events("pairing.completed") == [] and bob.events("pairing.completed") == []


def test_lost_decision_is_resolved_to_committed_on_both_sides(nodes: NodeFactory) -> None:
    alice, bob = nodes.start(("alice", [SHORT, "testing.drop_pair_commit=true"]), ("bob", [SHORT]))
    offer = alice.pair()
    waiting = alice.request("wait_offer", nameplate=offer["nameplate"], timeout=30)

    # Alice commits and her PairCommit is lost: Bob, having voted, is in
    # doubt; he asks again on a new connection (PairResolve) and Alice's
    # registry says committed. The join returns the device only then.
    reply = bob.join(offer["uri"], timeout=30)
    assert reply.ok and reply.result["state"] == "confirmed", reply.error
    assert alice.await_reply(waiting).ok
    assert alice.wait_event("testing.dropped")["message"] == "PairCommit"
    assert len(alice.events("testing.dropped")) == 1  # the resolve's answer got through
    bob.wait_event("pairing.in_doubt")
    assert bob.wait_event("pairing.resolved")["committed"] is True
    assert alice.wait_event("pairing.resolve_answered")["committed"] is True
    assert_paired(alice, bob)
    a_sees, b_sees = only_device(alice), only_device(bob)
    assert a_sees["send_key_fingerprint"] == b_sees["receive_key_fingerprint"]
    assert a_sees["receive_key_fingerprint"] == b_sees["send_key_fingerprint"]
    # One pairing connection, then one resolve connection.
    b_counts = bob.counters()
    assert b_counts["pair.connections.joiner"] == 1 and b_counts["pair.resolve_connections"] == 1
    assert alice.counters()["pair.connections.initiator"] == 2


# -- 6. load shedding --------------------------------------------------------------------------


def test_pairing_beyond_the_limit_is_refused_busy(nodes: NodeFactory) -> None:
    alice, bob = nodes.start(("alice", ["node.max_concurrent_pairings=1"]), "bob")
    offer = alice.pair()
    with RawPairClient() as raw:
        # A pairing connection that says nothing holds Alice's only session slot
        # (for up to step_timeout, 10 s by default).
        raw.dial(alice.address)
        alice.wait_event("pairing.session_started")
        reply = bob.join(offer["uri"])
        assert not reply.ok and reply.code == "BUSY" and reply.remote, reply.error
        assert alice.wait_event("pairing.shed")["active"] == 1
        assert alice.counters()["pair.shed"] == 1
    # The silent client is gone: its session ends and gives the slot back.
    alice.wait_event("actor.exited", actor="pair-i-1")
    assert bob.join(offer["uri"]).ok
    assert_paired(alice, bob)


# -- 7. bad bytes on the pairing stream ----------------------------------------------------


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


BAD_INPUT = {
    "not msgpack": (frame(b"\xc1\xc1\xc1"), ErrorCode.MALFORMED_MESSAGE),
    "empty frame": (frame(b""), ErrorCode.MALFORMED_MESSAGE),
    "missing fields": (frame(msgpack.packb([1, 1, {}])), ErrorCode.MALFORMED_MESSAGE),
    "oversized frame": ((65537).to_bytes(4, "big") + b"\x00" * 16, ErrorCode.FRAME_TOO_LARGE),
    "random garbage": (b"\xff" * 64, ErrorCode.FRAME_TOO_LARGE),
    "unknown tag": (frame(msgpack.packb([1, 99, {}])), ErrorCode.UNKNOWN_MESSAGE),
    "unknown version": (frame(msgpack.packb([9, 1, {}])), ErrorCode.UNSUPPORTED_VERSION),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_bytes_get_a_reject_and_the_node_keeps_serving(nodes: NodeFactory, case: str) -> None:
    data, expected = BAD_INPUT[case]
    alice, bob = nodes.start("alice", "bob")
    offer = alice.pair()
    with RawPairClient() as raw:
        raw.dial(alice.address)
        raw.send(data)
        # The documented answer: PairReject(code), then the stream ends.
        raw.wait_for(lambda: any(e[0] == "data" and e[3] for e in raw.events()), what="the end of the stream")
        frames = raw.frames()
        assert len(frames) == 1 and isinstance(frames[0], PairReject), frames
        assert frames[0].code == expected, f"{ErrorCode(frames[0].code).name}: {frames[0].reason}"
    failed = alice.wait_event("pairing.failed")
    assert failed["code"] == expected.name and failed["remote"] is False
    # Nothing was claimed: the code is intact and Alice pairs normally.
    assert bob.join(offer["uri"]).ok
    assert_paired(alice, bob)


# -- 8. stopping, and crashing ------------------------------------------------------------


def test_stop_exits_zero_and_releases_the_port(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice", "bob")
    assert bob.join(alice.pair()["uri"]).ok
    port = alice.port
    with RawPairClient() as raw:
        # A pairing in progress when the node stops: its peer is told
        # GOING_AWAY (not a fault: DESIGN.md "Shutdown leaves nothing behind").
        raw.dial(alice.address)
        raw.send(b"\x00\x00")  # half a frame header: the session holds the stream, waiting
        alice.wait_event("pairing.session_started", count=2)
        alice.stop()  # asserts exit status 0 within the bound and the 'stopped' line
        raw.wait_for(raw.close_info, what="the connection closed by the stopping node")
        code, _reason, by_peer = raw.close_info() or (None, "", False)
        assert code == ErrorCode.GOING_AWAY and by_peer
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))  # OSError (EADDRINUSE) if the node kept it
    assert alice.events("node.stopping") and alice.events("actor.exited", actor="node", reason="normal")
    assert alice.events("quic.handler_failed") == []


def test_a_pairing_survives_sigkill_and_restart(nodes: NodeFactory) -> None:
    alice, bob = nodes.start("alice", "bob")
    assert bob.join(alice.pair()["uri"]).ok
    node_id, address, before = bob.node_id, bob.address, only_device(bob)

    # What was acknowledged to the peer is durable: a crash loses none of it.
    assert bob.kill() == -signal.SIGKILL
    bob.restart()  # same home, same port
    assert (bob.node_id, bob.address) == (node_id, address)
    after = only_device(bob)
    assert {k: after[k] for k in (*PAIRING_FIELDS, "paired_at")} == {
        k: before[k] for k in (*PAIRING_FIELDS, "paired_at")
    }
    assert only_device(alice)["node_id"] == bob.node_id
