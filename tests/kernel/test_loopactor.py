"""LoopActor: a pykka actor drained on the asyncio loop, with pykka's refs, asks and registry."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.loopactor import DRAIN_BATCH, ActorTimer, LoopActor
from quicpair.actors.kernel.replies import ask_async, call_async

T = 5.0  # every wait in this file is bounded by this


@pytest.fixture
def lt() -> Iterator[EventLoopThread]:
    loop_thread = EventLoopThread("actors-loop").start()
    yield loop_thread
    pykka.ActorRegistry.stop_all(timeout=T)
    loop_thread.stop()


class Recorder(LoopActor):
    """Remembers what it got and on which thread; a few messages do special things."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.seen: list[Any] = []
        self.threads: set[str] = set()
        self.failures: list[str] = []
        self.stopped_on: str | None = None

    def on_start(self) -> None:
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:  # hold the loop so that mail piles up before the first drain
            assert self.gate.wait(T)

    def on_receive(self, message: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        if message == "fail":
            raise ValueError("told failure")
        if message == "exit":
            raise SystemExit("a BaseException in a handler")
        if message == "cancelled":
            raise asyncio.CancelledError()
        self.seen.append(message)
        return message

    def on_stop(self) -> None:
        self.stopped_on = threading.current_thread().name

    def on_failure(self, *exc_info: Any) -> None:
        self.failures.append(f"{exc_info[0].__name__}@{threading.current_thread().name}")

    def get_seen(self) -> list[Any]:
        return list(self.seen)

    def get_threads(self) -> set[str]:
        return set(self.threads)


def test_plain_start_is_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match="start_on"):
        Recorder.start()


def test_start_on_a_loop_that_is_not_running_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        Recorder.start_on(EventLoopThread("idle"))
    assert pykka.ActorRegistry.get_all() == []


def test_ask_and_tell_from_other_threads_run_handlers_on_the_loop(lt: EventLoopThread) -> None:
    ref = Recorder.start_on(lt)
    assert ref.ask("hello", timeout=T) == "hello"
    senders = [threading.Thread(target=ref.tell, args=(i,)) for i in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(T)
    proxy = ref.proxy()
    assert sorted(proxy.get_seen().get(timeout=T)[1:]) == [0, 1, 2, 3]
    assert proxy.get_threads().get(timeout=T) == {"actors-loop"}
    ref.stop(timeout=T)


def test_order_per_sender_is_preserved(lt: EventLoopThread) -> None:
    ref = Recorder.start_on(lt)
    per_sender = 300

    def send(sender: int) -> None:
        for i in range(per_sender):
            ref.tell((sender, i))

    senders = [threading.Thread(target=send, args=(s,)) for s in range(3)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(T)
    seen = ref.proxy().get_seen().get(timeout=T)
    assert len(seen) == 3 * per_sender
    for s in range(3):
        assert [i for sender, i in seen if sender == s] == list(range(per_sender))
    ref.stop(timeout=T)


def test_mail_sent_before_on_start_ends_waits_and_keeps_its_order(lt: EventLoopThread) -> None:
    gate = threading.Event()
    ref = Recorder.start_on(lt, gate)
    for i in range(5):
        ref.tell(i)
    gate.set()
    assert ref.proxy().get_seen().get(timeout=T) == [0, 1, 2, 3, 4]
    ref.stop(timeout=T)


def test_a_drain_yields_to_the_loop_after_a_batch(lt: EventLoopThread) -> None:
    class Counter(LoopActor):
        def __init__(self, gate: threading.Event) -> None:
            super().__init__()
            self.gate = gate
            self.count = 0
            self.count_when_loop_ran: int | None = None

        def on_start(self) -> None:
            assert self.gate.wait(T)

        def on_receive(self, message: Any) -> None:
            self.count += 1
            if self.count == 1:  # scheduled behind the first drain: runs when it yields
                self.loop.call_soon(self.mark)

        def mark(self) -> None:
            self.count_when_loop_ran = self.count

    gate = threading.Event()
    ref = Counter.start_on(lt, gate)
    for i in range(3 * DRAIN_BATCH):
        ref.tell(i)
    gate.set()
    proxy = ref.proxy()
    assert proxy.count.get(timeout=T) == 3 * DRAIN_BATCH
    assert proxy.count_when_loop_ran.get(timeout=T) == DRAIN_BATCH
    ref.stop(timeout=T)


def test_ask_returns_the_handlers_exception_and_the_actor_lives_on(lt: EventLoopThread) -> None:
    ref = Recorder.start_on(lt)
    with pytest.raises(ValueError, match="told failure"):
        ref.ask("fail", timeout=T)
    assert ref.ask("still here", timeout=T) == "still here"
    ref.stop(timeout=T)


def test_an_exception_in_a_told_handler_stops_the_actor_on_the_loop(lt: EventLoopThread) -> None:
    ref = Recorder.start_on(lt)
    actor = ref.proxy()._actor  # the test may look inside; production code never does
    ref.tell("fail")
    # Queued behind the failure, or refused if the loop already ended the actor: never handled.
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell("after the failure: never handled")
    assert ref.actor_stopped.wait(T)
    assert pykka.ActorRegistry.get_all() == []
    assert actor.failures == ["ValueError@actors-loop"]
    assert "after the failure: never handled" not in actor.seen
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("dead", timeout=T)
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("dead")


@pytest.mark.parametrize("message", ["exit", "cancelled"])
def test_a_base_exception_kills_only_that_actor_and_not_the_loop(lt: EventLoopThread, message: str) -> None:
    victim = Recorder.start_on(lt)
    bystander = Recorder.start_on(lt)
    with pytest.raises(pykka.ActorDeadError, match="died handling this message"):
        victim.ask(message, timeout=T)
    assert victim.actor_stopped.wait(T)
    assert bystander.ask("alive", timeout=T) == "alive"
    assert lt.is_running()
    assert pykka.ActorRegistry.get_all() == [bystander]
    bystander.stop(timeout=T)


def test_told_base_exception_runs_on_failure(lt: EventLoopThread) -> None:
    ref = Recorder.start_on(lt)
    actor = ref.proxy()._actor
    ref.tell("exit")
    assert ref.actor_stopped.wait(T)
    assert actor.failures == ["SystemExit@actors-loop"]


def test_on_start_failure_stops_the_actor_and_answers_waiting_asks(lt: EventLoopThread) -> None:
    class BadStart(LoopActor):
        def on_start(self) -> None:
            raise RuntimeError("cannot start")

    ref = BadStart.start_on(lt)
    future = ref.ask("queued", block=False)
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=T)
    assert ref.actor_stopped.wait(T)
    assert pykka.ActorRegistry.get_all() == []


def test_proxy_and_registry_work(lt: EventLoopThread) -> None:
    ref = Recorder.start_on(lt)
    assert pykka.ActorRegistry.get_by_urn(ref.actor_urn) is ref
    assert pykka.ActorRegistry.get_by_class(Recorder) == [ref]
    proxy = ref.proxy()
    proxy.on_receive("via proxy").get(timeout=T)
    proxy.gate = None  # a blocking ProxySetAttr from this thread is fine
    assert proxy.get_seen().get(timeout=T) == ["via proxy"]
    pykka.ActorRegistry.stop_all(timeout=T)
    assert not ref.is_alive()


class Caller(LoopActor):
    """Talks to another actor from a handler, i.e. from the loop thread."""

    def on_receive(self, message: tuple[str, pykka.ActorRef[Any]]) -> Any:
        action, other = message
        if action == "blocking-ask":
            return other.ask("hi")
        if action == "blocking-stop":
            return other.stop()
        if action == "proxy-setattr":
            other.proxy().gate = None
            return None
        if action == "stop-self":
            self.actor_ref.stop(block=False)
            return "stopping"
        raise AssertionError(action)


def test_a_blocking_ask_on_the_loop_thread_raises_instead_of_deadlocking(lt: EventLoopThread) -> None:
    caller = Caller.start_on(lt)
    other = Recorder.start_on(lt)
    with pytest.raises(RuntimeError, match="would deadlock"):
        caller.ask(("blocking-ask", other), timeout=T)
    with pytest.raises(RuntimeError, match="would deadlock"):
        caller.ask(("proxy-setattr", other), timeout=T)
    assert other.ask("fine from here", timeout=T) == "fine from here"
    pykka.ActorRegistry.stop_all(timeout=T)


def test_stopping_from_the_loop_never_deadlocks(lt: EventLoopThread) -> None:
    caller = Caller.start_on(lt)
    other = Recorder.start_on(lt)
    with pytest.raises(RuntimeError, match="the message itself was sent"):
        caller.ask(("blocking-stop", other), timeout=T)
    assert other.actor_stopped.wait(T)  # the stop request was delivered all the same
    assert caller.ask(("stop-self", other), timeout=T) == "stopping"
    assert caller.actor_stopped.wait(T)
    assert pykka.ActorRegistry.get_all() == []


def test_ask_async_from_a_coroutine_reaches_loop_and_thread_actors(lt: EventLoopThread) -> None:
    class Doubler(pykka.ThreadingActor):
        def on_receive(self, message: int) -> int:
            if message < 0:
                raise ValueError("negative")
            return message * 2

        def triple(self, n: int) -> int:
            return n * 3

    on_loop = Recorder.start_on(lt)
    threaded = Doubler.start()

    async def scenario() -> list[Any]:
        results: list[Any] = [await ask_async(on_loop, "x"), await ask_async(threaded, 21)]
        results.append(await call_async(threaded, "triple", 5))
        results.append(await call_async(on_loop, "get_seen"))
        try:
            await ask_async(threaded, -1)
        except ValueError as exc:
            results.append(str(exc))
        return results

    assert lt.submit(scenario()).result(T) == ["x", 42, 15, ["x"], "negative"]
    threaded.stop(timeout=T)

    async def ask_dead() -> None:
        await ask_async(threaded, 1)

    with pytest.raises(pykka.ActorDeadError):
        lt.submit(ask_dead()).result(T)
    on_loop.stop(timeout=T)


class Timed(LoopActor):
    def __init__(self) -> None:
        super().__init__()
        self.fired: list[tuple[str, str]] = []
        self.timers: list[ActorTimer] = []

    def arm(self, delay: float, tag: str) -> None:
        self.timers.append(self.call_later(delay, self.fire, tag))

    def fire(self, tag: str) -> None:
        if tag == "fail":
            raise ValueError("timer failure")
        self.fired.append((tag, threading.current_thread().name))

    def cancel_all(self) -> None:
        for timer in self.timers:
            timer.cancel()


def test_call_later_runs_on_the_loop(lt: EventLoopThread, until: Callable[..., None]) -> None:
    ref = Timed.start_on(lt)
    proxy = ref.proxy()
    proxy.arm(0.0, "soon").get(timeout=T)
    until(lambda: proxy.fired.get(timeout=T) == [("soon", "actors-loop")], what="timer")
    ref.stop(timeout=T)


def test_call_later_is_cancelled_when_the_actor_stops(lt: EventLoopThread) -> None:
    ref = Timed.start_on(lt)
    actor = ref.proxy()._actor
    ref.proxy().arm(3600.0, "never").get(timeout=T)
    (timer,) = actor.timers
    assert not timer.cancelled()
    ref.stop(timeout=T)
    assert timer.cancelled()
    assert actor._qp_timers == set()


def test_a_cancelled_timer_never_fires_and_is_forgotten(lt: EventLoopThread) -> None:
    ref = Timed.start_on(lt)
    actor = ref.proxy()._actor
    proxy = ref.proxy()
    proxy.arm(3600.0, "cancelled").get(timeout=T)
    proxy.cancel_all().get(timeout=T)
    assert actor.timers[0].cancelled()
    assert actor._qp_timers == set()
    ref.stop(timeout=T)


def test_an_exception_in_a_timer_fails_the_actor(lt: EventLoopThread) -> None:
    ref = Timed.start_on(lt)
    ref.proxy().arm(0.0, "fail").get(timeout=T)
    assert ref.actor_stopped.wait(T)
    assert pykka.ActorRegistry.get_all() == []


def test_call_later_off_the_loop_thread_is_refused(lt: EventLoopThread) -> None:
    ref = Timed.start_on(lt)
    actor = ref.proxy()._actor
    with pytest.raises(RuntimeError, match="loop thread"):
        actor.call_later(0.0, print)
    ref.stop(timeout=T)


def test_stopping_the_loop_stops_live_actors_first() -> None:
    lt = EventLoopThread("short-lived").start()
    ref = Recorder.start_on(lt)
    actor = ref.proxy()._actor
    lt.stop(timeout=T)
    assert not ref.is_alive()
    assert actor.stopped_on == "short-lived"
    assert pykka.ActorRegistry.get_all() == []
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("too late", timeout=T)


def test_starting_on_a_stopped_loop_is_refused() -> None:
    lt = EventLoopThread().start()
    lt.stop()
    with pytest.raises(RuntimeError, match="not running"):
        Recorder.start_on(lt)
    assert pykka.ActorRegistry.get_all() == []
