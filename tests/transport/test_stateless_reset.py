"""Dead and restarted peers at the transport: stateless resets, the dead-peer rule, liveness checks.

The listening peer is a real process (``python -c`` running ``listen``), so that
it can die as a process dies: SIGKILL, no CONNECTION_CLOSE, its connection state
gone. Restarted on the same port with the same identity, it derives the same
stateless reset key (protocol/keys.py) and answers the old connection's next
packet with a reset; the dialer (in this process) must recognise it at once.
Raw UDP sockets play the junk senders. Every wait is bounded; the bounds are
set against the fallback each mechanism replaces (a 30 s idle timeout).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.listener import RESET_BURST, listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import Identity
from quicpair.protocol.keys import RESET_TOKEN_SIZE, stateless_reset_key, stateless_reset_token
from quicpair.protocol.messages import ALPN_LINK
from quicpair.protocol.notice import NOTICE_SIZE, make_notice
from support.nodeproc import REPO_ROOT

HOST = "127.0.0.1"
ALICE_SEED = bytes([1]) * 32  # listens, in a process of its own
ALICE = Identity.from_seed(ALICE_SEED)
BOB = Identity.from_seed(bytes([2]) * 32)  # dials, in this process
#: What every mechanism here replaces: the idle timeout of these connections.
IDLE = 30.0

#: A listener on HOST:port for ALICE (or another seed), with its reset key; prints its port.
LISTENER = """
import asyncio, sys
from quicpair.actors.transport.listener import listen
from quicpair.protocol.identity import Identity
from quicpair.protocol.keys import stateless_reset_key
from quicpair.protocol.messages import ALPN_LINK

async def main() -> None:
    seed, port = bytes.fromhex(sys.argv[1]), int(sys.argv[2])
    identity = Identity.from_seed(seed)
    links = []
    listener = await listen("127.0.0.1", port, identity, alpns=[ALPN_LINK],
                            admit=lambda peer, alpn: None, on_connection=links.append,
                            idle_timeout=30.0, reset_key=stateless_reset_key(seed))
    print(listener.address[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def scenario(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop, bounded as a whole."""

    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 25.0))

    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


@contextmanager
def listener_process(seed: bytes = ALICE_SEED, port: int = 0) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A listener process; yields it and its port; SIGKILLed (if still running) at the end."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, seed.hex(), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the scenario's timeout (the process prints or dies)
        assert line.strip().isdigit(), f"the listener process did not start (status {proc.poll()})"
        yield proc, int(line)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


async def dial_alice(port: int, *, dead_after_ptos: int | None = None) -> QuicLink:
    return await dial(
        HOST,
        port,
        BOB,
        alpn=ALPN_LINK,
        expect=ALICE.node_id,
        timeout=10.0,
        idle_timeout=IDLE,
        dead_after_ptos=dead_after_ptos,
        reset_key=stateless_reset_key(bytes([2]) * 32),
    )


async def until_closed(link: QuicLink, timeout: float) -> tuple[ErrorCode, str, bool]:
    async def poll() -> tuple[ErrorCode, str, bool]:
        while (info := link.close_info) is None:
            await asyncio.sleep(0.005)
        return info

    return await asyncio.wait_for(poll(), timeout)


# -- a restarted listener resets the old connection ------------------------------------------


@scenario
async def test_a_restarted_listener_resets_the_old_connection_at_its_next_packet() -> None:
    with listener_process() as (first, port):
        link = await dial_alice(port)
        assert await link.check_alive(5.0) is True, "a live peer answers the PING"
        sigkill(first)
    with listener_process(port=port):  # the same identity, hence the same reset key, same port
        started = time.monotonic()
        alive = await link.check_alive(5.0)  # our next packet meets the new process
        code, reason, by_peer = await until_closed(link, 5.0)
        print(f"\nreset recognised {1000 * (time.monotonic() - started):.1f} ms after the PING")
        assert alive is False
        assert code is ErrorCode.PEER_RESTARTED and by_peer and "stateless reset" in reason


@scenario
async def test_a_listener_that_comes_back_with_another_key_cannot_reset_and_the_dead_peer_rule_ends_it() -> (
    None
):
    """A reset is only believed with the token the peer issued: another node's is junk."""
    with listener_process() as (first, port):
        link = await dial_alice(port, dead_after_ptos=3)
        sigkill(first)
    with listener_process(seed=bytes([9]) * 32, port=port):
        started = time.monotonic()
        assert await link.check_alive(1.0) is False
        code, _reason, by_peer = await until_closed(link, 15.0)  # far below the 30 s idle timeout
        print(f"\nno valid reset: the dead-peer rule closed it after {time.monotonic() - started:.2f} s")
        assert code is ErrorCode.TIMEOUT and not by_peer


@scenario
async def test_a_vanished_listener_is_seen_after_a_few_probe_timeouts_not_the_idle_timeout() -> None:
    with listener_process() as (proc, port):
        link = await dial_alice(port, dead_after_ptos=3)
        sigkill(proc)
        started = time.monotonic()
        assert await link.check_alive(1.0) is False
        code, reason, by_peer = await until_closed(link, 15.0)
        print(f"\ndead peer seen {time.monotonic() - started:.2f} s after the PING (idle timeout {IDLE:g} s)")
        assert code is ErrorCode.TIMEOUT and not by_peer and "probe" in reason


# -- what a listener sends for an unknown connection ---------------------------------------------


def short_header(dcid: bytes, size: int) -> bytes:
    """A datagram shaped like a 1-RTT packet for connection id ``dcid`` (8 bytes), ``size`` long."""
    return bytes([0x40]) + dcid + os.urandom(size - 1 - len(dcid))


@scenario
async def test_an_unknown_connection_gets_a_reset_smaller_than_its_packet_and_resets_are_rate_limited() -> (
    None
):
    reset_key = stateless_reset_key(ALICE_SEED)
    listener = await listen(
        HOST, 0, ALICE, alpns=[ALPN_LINK], admit=lambda p, a: None, on_connection=lambda link: None,
        reset_key=reset_key,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.setblocking(False)
        raw.connect(listener.address)

        async def answer(timeout: float = 1.0) -> bytes | None:
            try:
                return await asyncio.wait_for(loop.sock_recv(raw, 2048), timeout)
            except TimeoutError:
                return None

        dcid = os.urandom(8)
        for size, expected in ((1200, 43), (40, 39), (22, 21)):
            raw.send(short_header(dcid, size))
            reset = await answer()
            assert reset is not None and len(reset) == expected, (size, reset)
            assert reset[0] & 0xC0 == 0x40, "shaped as a short header"
            assert reset[-RESET_TOKEN_SIZE:] == stateless_reset_token(reset_key, dcid)
        raw.send(short_header(dcid, 21))  # a reset would have to be 20 bytes: below the minimum
        assert await answer(0.3) is None

        for _ in range(3 * RESET_BURST):
            raw.send(short_header(os.urandom(8), 100))
        answered = 0
        while await answer(0.3) is not None:
            answered += 1
        # The bucket holds RESET_BURST; it refills at RESET_RATE a second while we send.
        assert RESET_BURST - 3 <= answered <= RESET_BURST + 10, answered
    listener.close()
    await listener.wait_closed()


@scenario
async def test_a_restart_notice_goes_to_the_notice_hook_and_never_to_quic() -> None:
    notices: list[tuple[bytes, Any]] = []
    listener = await listen(
        HOST, 0, ALICE, alpns=[ALPN_LINK], admit=lambda p, a: None, on_connection=lambda link: None,
        reset_key=stateless_reset_key(ALICE_SEED), on_notice=lambda data, addr: notices.append((data, addr)),
    )  # fmt: skip
    notice = make_notice(bytes(32), BOB.node_id, ALICE.node_id, b"\x01" * 8)
    assert len(notice) == NOTICE_SIZE
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.setblocking(False)
        raw.connect(listener.address)
        raw.send(notice)
        raw.send(notice[:-1])  # not a notice (size): not for the hook, and no reset either
        deadline = time.monotonic() + 3.0
        while not notices and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert [data for data, _ in notices] == [notice]
        assert notices[0][1][1] == raw.getsockname()[1]
    assert listener.resets == 0, "a notice is not a packet of an unknown connection"
    listener.close()
    await listener.wait_closed()
