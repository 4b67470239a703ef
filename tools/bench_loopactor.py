"""Round-trip cost of LoopActor vs pykka's ThreadingActor (a benchmark, not a test).

    python -m quicpair.tools.bench_loopactor [--n 5000] [--repeat 5]

Prints microseconds per round trip (median of ``--repeat`` runs) for:

- ask from a plain thread (blocking ``ref.ask``), to each actor type;
- tell throughput from a plain thread (n tells, then one ask to sync);
- ``await ask_async(ref, ...)`` from a coroutine on the loop, to each type;
- tell ping-pong between two actors of the same type (the session <-> session,
  session <-> registry pattern): one round trip = two tells.

Numbers depend on the machine and its load; copy them to docs/BENCHMARKS.md when they matter.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.loopactor import LoopActor
from quicpair.actors.kernel.replies import ask_async


class LoopEcho(LoopActor):
    def on_receive(self, message: Any) -> Any:
        return message


class ThreadEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class _Ponger:
    """Shared ping-pong logic: bounce a counter between two actors, then signal."""

    peer: pykka.ActorRef[Any] | None
    done: threading.Event | None
    actor_ref: pykka.ActorRef[Any]

    def bounce(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "peer":
            self.peer, self.done = message[1], message[2]
            return None
        remaining = int(message)
        if remaining == 0:
            assert self.done is not None
            self.done.set()
        else:
            assert self.peer is not None
            self.peer.tell(remaining - 1)
        return None


class LoopPong(_Ponger, LoopActor):
    peer = None
    done = None

    def on_receive(self, message: Any) -> Any:
        return self.bounce(message)


class ThreadPong(_Ponger, pykka.ThreadingActor):
    peer = None
    done = None

    def on_receive(self, message: Any) -> Any:
        return self.bounce(message)


def per_op(n: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / n * 1e6


def ask_loop(ref: pykka.ActorRef[Any], n: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(n):
            ref.ask(i, timeout=10)

    return run


def tell_burst(ref: pykka.ActorRef[Any], n: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(n):
            ref.tell(i)
        ref.ask("sync", timeout=30)

    return run


def ask_async_loop(lt: EventLoopThread, ref: pykka.ActorRef[Any], n: int) -> Callable[[], None]:
    async def many() -> None:
        for i in range(n):
            await ask_async(ref, i)

    def run() -> None:
        lt.submit(many()).result(60)

    return run


def ping_pong(a: pykka.ActorRef[Any], b: pykka.ActorRef[Any], n: int) -> Callable[[], None]:
    def run() -> None:
        done = threading.Event()
        a.ask(("peer", b, done), timeout=10)
        b.ask(("peer", a, done), timeout=10)
        a.tell(2 * n)  # n round trips = 2n tells
        if not done.wait(60):
            raise TimeoutError("ping-pong did not finish")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="round trips per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median reported)")
    args = parser.parse_args()
    n = args.n

    lt = EventLoopThread("bench-loop").start()
    try:
        loop_echo, thread_echo = LoopEcho.start_on(lt), ThreadEcho.start()
        cases: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
            ("ask from a thread", ask_loop(thread_echo, n), ask_loop(loop_echo, n)),
            ("tell burst from a thread", tell_burst(thread_echo, n), tell_burst(loop_echo, n)),
            (
                "await ask_async on the loop",
                ask_async_loop(lt, thread_echo, n),
                ask_async_loop(lt, loop_echo, n),
            ),
            (
                "tell ping-pong, same type",
                ping_pong(ThreadPong.start(), ThreadPong.start(), n),
                ping_pong(LoopPong.start_on(lt), LoopPong.start_on(lt), n),
            ),
        ]
        print(f"n={n} per run, median of {args.repeat} runs, microseconds per round trip / message")
        print(f"{'case':32} {'ThreadingActor':>15} {'LoopActor':>10} {'ratio':>6}")
        for name, threaded, on_loop in cases:
            threaded()  # warm up
            on_loop()
            t = statistics.median(per_op(n, threaded) for _ in range(args.repeat))
            lo = statistics.median(per_op(n, on_loop) for _ in range(args.repeat))
            print(f"{name:32} {t:15.1f} {lo:10.1f} {t / lo:6.1f}")
    finally:
        pykka.ActorRegistry.stop_all(timeout=10)
        lt.stop()


if __name__ == "__main__":
    main()
