"""The Node API in one process: lifecycle, pairing over real QUIC on loopback, bad homes."""

from __future__ import annotations

import concurrent.futures
import os
import socket
from pathlib import Path

import pytest

from quicpair.actors import Node
from quicpair.config.settings import Settings, load_settings
from quicpair.protocol.errors import ErrorCode, IdentityError, PairingFailed, QuicpairError, RegistryError
from support.waiting import wait_until


def settings(name: str, **pairing: float) -> Settings:
    return load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": 0, "name": name},
        pairing={"step_timeout": 3.0, **pairing},
        discovery={"mdns": False},
    )


def test_pair_and_join_in_one_process(tmp_path: Path) -> None:
    with Node(tmp_path / "alice", settings("alice")) as alice, Node(tmp_path / "bob", settings("bob")) as bob:
        offer = alice.pair()
        joined = bob.join(offer.uri, timeout=15)
        offered = offer.wait(timeout=15)

        assert joined.node_id == alice.node_id and offered.node_id == bob.node_id
        assert (joined.name, offered.name) == ("alice", "bob")
        assert joined.state == offered.state == "confirmed"
        # Both sides can show the same short authentication string.
        assert len(joined.sas) == 4 and joined.sas == offered.sas
        # Directional keys (DESIGN.md failure #4), checked through fingerprints only.
        assert offered.send_key_fingerprint == joined.receive_key_fingerprint
        assert offered.receive_key_fingerprint == joined.send_key_fingerprint
        assert offered.send_key_fingerprint != offered.receive_key_fingerprint
        # The announced addresses were stored (DESIGN.md failure #2).
        assert list(joined.addresses) == alice.addresses
        assert list(offered.addresses) == bob.addresses
        # One connection and one stream per pairing, on each side (failure #1).
        a, b = alice.counters(), bob.counters()
        assert a["pair.connections.initiator"] == a["pair.streams.initiator"] == 1
        assert b["pair.connections.joiner"] == b["pair.streams.joiner"] == 1
        assert [d.node_id for d in alice.devices()] == [bob.node_id]


def test_code_typed_with_address_instead_of_uri(tmp_path: Path) -> None:
    with Node(tmp_path / "a", settings("a")) as alice, Node(tmp_path / "b", settings("b")) as bob:
        offer = alice.pair()
        host, port = alice.address
        device = bob.join(offer.code.upper().replace("-", " "), address=f"{host}:{port}", timeout=15)
        assert device.node_id == alice.node_id


def test_unused_code_expires_and_the_offer_says_so(tmp_path: Path) -> None:
    with Node(tmp_path / "a", settings("a", code_expiry=0.3)) as alice:
        offer = alice.pair()
        with pytest.raises(PairingFailed) as info:
            offer.wait(timeout=10)
        assert info.value.code is ErrorCode.CODE_EXPIRED


def test_cancelled_code_is_refused(tmp_path: Path) -> None:
    with Node(tmp_path / "a", settings("a")) as alice, Node(tmp_path / "b", settings("b")) as bob:
        offer = alice.pair()
        assert offer.cancel()
        with pytest.raises(PairingFailed) as info:
            bob.join(offer.uri, timeout=15)
        assert info.value.code is ErrorCode.CODE_CANCELLED
        assert bob.devices(include_pending=True) == [] and alice.devices(include_pending=True) == []


def test_sas_verified_by_both_people_through_the_api(tmp_path: Path) -> None:
    with Node(tmp_path / "a", settings("a")) as alice, Node(tmp_path / "b", settings("b")) as bob:
        offer = alice.pair(verify=True)
        seen: dict[str, tuple[str, ...]] = {}

        def alice_says_yes() -> object:
            return offer.wait(
                timeout=15, confirm=lambda check: bool(seen.setdefault("alice", check.sas)) or True
            )

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            offered = pool.submit(alice_says_yes)
            joined = bob.join(
                offer.uri, timeout=15, confirm=lambda check: bool(seen.setdefault("bob", check.sas))
            )
            device = offered.result(15)
        assert seen["alice"] == seen["bob"] == joined.sas == device.sas  # type: ignore[attr-defined]
        # The words are stored with the pairing, on both sides.
        assert [d.sas for d in alice.devices()] == [joined.sas] == [d.sas for d in bob.devices()]


@pytest.mark.parametrize("refuser", ["alice", "bob"])
def test_a_refused_sas_stores_nothing_on_either_side(tmp_path: Path, refuser: str) -> None:
    with Node(tmp_path / "a", settings("a")) as alice, Node(tmp_path / "b", settings("b")) as bob:
        offer = alice.pair()  # Bob asks for the check; Alice is asked too
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            offered = pool.submit(offer.wait, 15, confirm=lambda _check: refuser != "alice")
            with pytest.raises(PairingFailed) as joined:
                bob.join(offer.uri, timeout=15, verify=True, confirm=lambda _check: refuser != "bob")
            with pytest.raises(PairingFailed) as shown:
                offered.result(15)
        assert joined.value.code is shown.value.code is ErrorCode.SAS_REFUSED
        assert alice.devices(include_pending=True) == [] and bob.devices(include_pending=True) == []
        with pytest.raises(PairingFailed) as again:  # the code is cancelled: it may be known to others
            bob.join(offer.uri, timeout=15)
        assert again.value.code is ErrorCode.CODE_CANCELLED


def test_stop_releases_the_port(tmp_path: Path) -> None:
    node = Node(tmp_path / "a", settings("a")).start()
    host, port = node.address
    node.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))


def test_identity_survives_restart(tmp_path: Path) -> None:
    with Node(tmp_path / "a", settings("a")) as first:
        node_id = first.node_id
    with Node(tmp_path / "a", settings("a")) as second:
        assert second.node_id == node_id


def test_home_readable_by_others_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "open"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    with pytest.raises(IdentityError, match="chmod 700"):
        Node(home, settings("a")).start()


def test_corrupt_registry_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    home = tmp_path / "a"
    Node(home, settings("a")).start().stop()
    registry = home / "registry.sqlite3"
    registry.write_bytes(b"this is not a database" * 100)
    os.chmod(registry, 0o600)
    before = registry.read_bytes()
    with pytest.raises(RegistryError):
        Node(home, settings("a")).start()
    assert registry.read_bytes() == before


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_joiner_left_in_doubt_asks_again_when_it_next_starts(tmp_path: Path) -> None:
    """2PC recovery: the decision was lost and the initiator went away; the next start settles it."""
    port = free_udp_port()
    alice_settings = load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": port, "name": "alice"},
        pairing={"step_timeout": 2.0},
        discovery={"mdns": False},
        testing={"drop_pair_commit": True},
    )
    bob_settings = settings("bob", resolve_timeout=1.0)
    alice = Node(tmp_path / "alice", alice_settings).start()
    bob = Node(tmp_path / "bob", bob_settings).start()
    try:
        offer = alice.pair()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            joining = pool.submit(bob.join, offer.uri, timeout=20)
            assert offer.wait(timeout=15).state == "confirmed"  # Alice committed; PairCommit dropped
            alice.stop()  # ...and she is gone before Bob could ask
            with pytest.raises(PairingFailed) as info:
                joining.result(timeout=20)
        assert info.value.code is ErrorCode.TIMEOUT
        [pending] = bob.devices(include_pending=True)
        assert pending.state == "pending" and pending.node_id.raw != b""
    finally:
        bob.stop()
        alice.stop()

    alice = Node(tmp_path / "alice", alice_settings).start()  # same home, same port
    bob = Node(tmp_path / "bob", bob_settings).start()
    try:
        wait_until(
            lambda: [d.state for d in bob.devices(include_pending=True)] == ["confirmed"],
            timeout=15,
            what="Bob's pending pairing resolved as committed",
        )
        assert [d.node_id for d in alice.devices()] == [bob.node_id]
    finally:
        bob.stop()
        alice.stop()


def test_an_initiator_never_keeps_a_pairing_it_did_not_commit(tmp_path: Path) -> None:
    """Presumed abort: a PENDING record of ours as initiator is deleted at start."""
    from quicpair.actors.registry.actor import DeviceRecord, DeviceState, RegistryStore
    from quicpair.protocol.identity import Identity
    from quicpair.protocol.keys import Role

    home = tmp_path / "alice"
    Node(home, settings("alice")).start().stop()
    peer = Identity.generate().node_id
    with RegistryStore(home / "registry.sqlite3") as store:
        store.add_pending(
            DeviceRecord(
                node_id=peer,
                name="bob",
                role=Role.INITIATOR,
                state=DeviceState.PENDING,
                pairing_id=b"\x01" * 32,
                pairing_secret=b"\x02" * 32,
                send_key_fp="a" * 16,
                receive_key_fp="b" * 16,
                paired_at=1.0,
                updated_at=1.0,
            )
        )
    with Node(home, settings("alice")) as alice:
        assert alice.devices(include_pending=True) == []


def test_a_joiner_stopped_after_its_vote_keeps_the_pairing_in_doubt(tmp_path: Path) -> None:
    """Stopping the joiner after PairDone must not delete what the initiator may have committed."""
    alice_settings = load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": 0, "name": "alice"},
        pairing={"step_timeout": 10.0},
        discovery={"mdns": False},
        testing={"drop_pair_commit": True},
    )
    bob_settings = settings("bob")
    with Node(tmp_path / "alice", alice_settings) as alice:
        bob = Node(tmp_path / "bob", bob_settings).start()
        try:
            offer = alice.pair()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                joining = pool.submit(bob.join, offer.uri, timeout=30)
                assert offer.wait(timeout=15).state == "confirmed"  # Alice committed; PairCommit dropped
                bob.stop()  # Bob voted and waits for the decision: now he is gone
                with pytest.raises(PairingFailed):
                    joining.result(timeout=15)
        finally:
            bob.stop()
        with Node(tmp_path / "bob", bob_settings) as bob:
            wait_until(
                lambda: [d.state for d in bob.devices(include_pending=True)] == ["confirmed"],
                timeout=15,
                what="Bob's in-doubt pairing resolved as committed at his next start",
            )


def test_pairing_with_oneself_is_refused_and_costs_no_session_slot(tmp_path: Path) -> None:
    one_slot = load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": 0, "name": "a", "max_concurrent_pairings": 1},
        pairing={"step_timeout": 3.0},
        discovery={"mdns": False},
    )
    with Node(tmp_path / "a", one_slot) as alice, Node(tmp_path / "b", settings("b")) as bob:
        offer = alice.pair()
        host, port = alice.address
        with pytest.raises(QuicpairError):
            alice.join(offer.code, address=f"{host}:{port}", timeout=10)
        # The one pairing slot is still free: Bob pairs with the same code.
        assert bob.join(offer.uri, timeout=15).node_id == alice.node_id
