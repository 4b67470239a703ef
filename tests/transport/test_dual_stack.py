"""Addresses at the transport: the dual-stack port, the dial's source address, Happy Eyeballs.

Real sockets on loopback (127.0.0.0/8 and ::1 only); the one fake is the
kernel without IPv6 (socket creation patched inside actors/transport/udp.py),
and the race is tested with scripted dial coroutines.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from quicpair.actors.transport import race, udp
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.listener import Listener, listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.actors.transport.race import first_answer
from quicpair.protocol.errors import AddressInUse, ErrorCode, PeerUnreachable, QuicpairError
from quicpair.protocol.identity import Identity
from quicpair.protocol.messages import ALPN_LINK

ALICE = Identity.from_seed(bytes([1]) * 32)  # listens
BOB = Identity.from_seed(bytes([2]) * 32)  # dials


def scenario(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop, bounded as a whole."""

    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 15.0))

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


async def accept_on(host: str) -> tuple[Listener, list[QuicLink]]:
    accepted: list[QuicLink] = []
    listener = await listen(
        host, 0, ALICE, alpns=[ALPN_LINK], admit=lambda p, a: None, on_connection=accepted.append
    )
    return listener, accepted


async def close(listener: Listener, *links: QuicLink) -> None:
    for link in links:
        link.close(ErrorCode.GOING_AWAY, "test over")
    listener.close()
    await asyncio.wait_for(listener.wait_closed(), 2.0)


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


# -- the listening port ---------------------------------------------------------------------------


@scenario
async def test_one_dual_stack_port_takes_both_families_and_sees_ipv4_peers_as_ipv4() -> None:
    listener, accepted = await accept_on("::")
    assert listener.address[0] == "::" and listener.fallback is None
    port = listener.address[1]
    over_v4 = await dial("127.0.0.1", port, BOB, alpn=ALPN_LINK, expect=ALICE.node_id, timeout=3.0)
    over_v6 = await dial("::1", port, BOB, alpn=ALPN_LINK, expect=ALICE.node_id, timeout=3.0)
    await until(lambda: len(accepted) == 2)
    # Not ::ffff:127.0.0.1: that form would be stored, compared and announced wrongly.
    assert [link.remote_address[0] for link in accepted] == ["127.0.0.1", "::1"]
    assert [link.remote_address[1] for link in accepted] == [
        over_v4.local_address[1],
        over_v6.local_address[1],
    ]
    await close(listener, over_v4, over_v6)


def test_without_ipv6_the_wildcard_falls_back_to_ipv4_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args, **kwargs)

    async def scenario() -> None:
        monkeypatch.setattr(udp.socket, "socket", no_ipv6)
        listener, _ = await accept_on("::")
        monkeypatch.undo()
        assert listener.address[0] == "0.0.0.0"
        assert listener.fallback is not None and "IPv6 is not available" in listener.fallback
        link = await dial("127.0.0.1", listener.address[1], BOB, alpn=ALPN_LINK, timeout=3.0)
        await close(listener, link)

    asyncio.run(asyncio.wait_for(scenario(), 15.0))


@scenario
async def test_a_port_in_use_is_a_config_error_not_a_fallback() -> None:
    listener, _ = await accept_on("::")
    with pytest.raises(AddressInUse, match=r"UDP port \d+ on \[::\] is already in use by another program"):
        await listen("::", listener.address[1], ALICE, alpns=[ALPN_LINK], admit=lambda p, a: None,
                     on_connection=lambda link: None)  # fmt: skip
    await close(listener)


# -- the dial's source address ------------------------------------------------------------------------


@scenario
async def test_a_dial_leaves_from_the_source_address_it_is_given() -> None:
    """All of 127/8 is this machine: a second address without a second interface."""
    listener, accepted = await accept_on("127.0.0.1")
    port = listener.address[1]
    link = await dial("127.0.0.1", port, BOB, alpn=ALPN_LINK, timeout=3.0, source="127.0.0.2")
    await until(lambda: bool(accepted))
    assert link.local_address[0] == "127.0.0.2"
    assert accepted[0].remote_address == ("127.0.0.2", link.local_address[1]), "seen from the source given"
    unbound = await dial("127.0.0.1", port, BOB, alpn=ALPN_LINK, timeout=3.0)
    assert unbound.local_address[0] == "127.0.0.1", "without a source the kernel picks"
    await close(listener, link, unbound)


@scenario
async def test_a_source_of_the_other_family_is_unreachable_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(PeerUnreachable, match=r"cannot reach \[::1\]:1 from 127\.0\.0\.1"):
        await dial("::1", 1, BOB, alpn=ALPN_LINK, timeout=3.0, source="127.0.0.1")
    assert time.monotonic() - started < 1.0, "no timeout waited: no route from that source"


# -- socket addresses and the kernel's source choice -----------------------------------------------------


def test_socket_addresses_come_out_as_peers_and_the_registry_write_them() -> None:
    assert udp.sockaddr(("10.0.0.1", 5)) == ("10.0.0.1", 5)
    assert udp.sockaddr(("::ffff:10.0.0.1", 5, 0, 0)) == ("10.0.0.1", 5)
    assert udp.sockaddr(("fd00::1", 5, 0, 0)) == ("fd00::1", 5)
    lo = socket.if_nameindex()[0]
    assert udp.sockaddr(("fe80::1", 5, 0, lo[0])) == (f"fe80::1%{lo[1]}", 5), "the zone, by name"
    assert udp.sockaddr(("fe80::1", 5, 0, 999999)) == ("fe80::1%999999", 5), "an index without a name"


def test_route_source_is_the_address_the_kernel_would_send_from() -> None:
    assert udp.route_source("127.0.0.1") == "127.0.0.1"
    assert udp.route_source("127.0.0.9") == "127.0.0.1"
    assert udp.route_source("::1") == "::1"
    assert udp.route_source("not an address") is None


# -- Happy Eyeballs ---------------------------------------------------------------------------------------


class FakeLink:
    """What the race needs of a QuicLink."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed_with: ErrorCode | None = None

    @property
    def is_closed(self) -> bool:
        return self.closed_with is not None

    def close(self, code: ErrorCode, reason: str = "") -> None:
        self.closed_with = code


def scripted(script: dict[str, tuple[float, str]]) -> tuple[Callable[[str], Any], list[tuple[str, float]]]:
    """``dial_one`` answering each address after a delay with "ok" (a FakeLink) or "fail"."""
    started: list[tuple[str, float]] = []
    links: dict[str, FakeLink] = {}

    async def dial_one(address: str) -> QuicLink:
        started.append((address, time.monotonic()))
        delay, outcome = script[address]
        await asyncio.sleep(delay)
        if outcome == "fail":
            raise PeerUnreachable(f"{address} refused")
        links[address] = FakeLink(address)
        return cast(QuicLink, links[address])

    dial_one.links = links  # type: ignore[attr-defined]
    return dial_one, started


@scenario
async def test_a_blackholed_first_address_costs_one_stagger_not_a_timeout() -> None:
    dial_one, started = scripted({"10.0.0.5:1": (60.0, "ok"), "[fd00::5]:1": (0.01, "ok")})
    t0 = time.monotonic()
    link, address = await first_answer(["10.0.0.5:1", "[fd00::5]:1"], dial_one, stagger=0.2)
    took = time.monotonic() - t0
    assert address == "[fd00::5]:1" and cast(FakeLink, link).name == "[fd00::5]:1"
    assert 0.2 <= started[1][1] - t0 < 0.5 and took < 1.0


@scenario
async def test_a_failure_starts_the_next_attempt_at_once() -> None:
    dial_one, started = scripted({"a:1": (0.01, "fail"), "b:1": (0.01, "ok")})
    t0 = time.monotonic()
    _, address = await first_answer(["a:1", "b:1"], dial_one, stagger=5.0)
    assert address == "b:1" and started[1][1] - t0 < 0.5


@scenario
async def test_when_everything_fails_the_last_error_is_raised_and_reported() -> None:
    dial_one, _ = scripted({"a:1": (0.01, "fail"), "b:1": (0.02, "fail")})
    failures: list[str] = []
    with pytest.raises(PeerUnreachable, match="b:1 refused"):
        await first_answer(
            ["a:1", "b:1", "a:1"], dial_one, stagger=0.05, on_failure=lambda a, e: failures.append(a)
        )
    assert failures == ["a:1", "b:1"], "each address once"
    with pytest.raises(PeerUnreachable, match="no address to dial"):
        await first_answer([], dial_one, stagger=0.05)
    with pytest.raises(ValueError):
        await first_answer(["a:1"], dial_one, stagger=-1)


@scenario
async def test_a_slower_attempt_is_cancelled_once_one_answered() -> None:
    dial_one, _ = scripted({"slow:1": (0.3, "ok"), "fast:1": (0.01, "ok")})
    attempts: list[str] = []
    link, address = await first_answer(
        ["slow:1", "fast:1"], dial_one, stagger=0.1, on_attempt=attempts.append
    )
    assert address == "fast:1" and attempts == ["slow:1", "fast:1"]
    await asyncio.sleep(0.4)
    assert "slow:1" not in dial_one.links, "cancelled before it completed"  # type: ignore[attr-defined]
    assert not cast(FakeLink, link).is_closed


@scenario
async def test_a_loser_that_completed_in_the_same_tick_is_closed_before_use() -> None:
    both_started = asyncio.Event()
    started: list[str] = []
    links: dict[str, FakeLink] = {}

    async def dial_one(address: str) -> QuicLink:
        started.append(address)
        if len(started) == 2:
            both_started.set()
        await both_started.wait()  # both complete in the same loop iteration
        links[address] = FakeLink(address)
        return cast(QuicLink, links[address])

    link, address = await first_answer(["a:1", "b:1"], dial_one, stagger=0.0)
    await asyncio.sleep(0.05)
    assert address == "a:1", "the first started wins a tie"
    assert links["b:1"].closed_with is ErrorCode.GOING_AWAY and not cast(FakeLink, link).is_closed


def test_public_api_is_listed() -> None:
    for module in (race, udp):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ lists a missing {name}"
    assert issubclass(PeerUnreachable, QuicpairError)
