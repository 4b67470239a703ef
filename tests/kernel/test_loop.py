"""EventLoopThread: one loop, one thread, a clean and bounded shutdown, no self-deadlock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import quicpair.actors.kernel.loop as loop_module
from quicpair.actors.kernel.loop import EventLoopThread, current_loop_thread

T = 5.0  # every wait in this file is bounded by this


@pytest.fixture
def lt() -> Iterator[EventLoopThread]:
    loop_thread = EventLoopThread("test-loop").start()
    yield loop_thread
    loop_thread.stop()


def on_loop(lt: EventLoopThread, fn: object) -> object:
    """Run a plain function on the loop and return its result (bounded)."""

    async def call() -> object:
        return fn()  # type: ignore[operator]

    return lt.submit(call()).result(T)


def test_start_runs_the_loop_in_a_named_thread(lt: EventLoopThread) -> None:
    assert lt.is_running()
    assert lt.loop.is_running()
    assert on_loop(lt, lambda: threading.current_thread().name) == "test-loop"
    assert on_loop(lt, lt.in_loop_thread) is True
    assert lt.in_loop_thread() is False


def test_current_loop_thread_names_the_owner_only_on_its_thread(lt: EventLoopThread) -> None:
    assert current_loop_thread() is None
    assert on_loop(lt, current_loop_thread) is lt


def test_call_soon_from_another_thread_runs_on_the_loop(lt: EventLoopThread) -> None:
    seen: list[str] = []
    done = threading.Event()

    def record(tag: str) -> None:
        seen.append(f"{tag}@{threading.current_thread().name}")
        done.set()

    lt.call_soon(record, "x")
    assert done.wait(T)
    assert seen == ["x@test-loop"]


def test_call_soon_on_the_loop_keeps_fifo_order(lt: EventLoopThread) -> None:
    order: list[int] = []
    done = threading.Event()

    def first() -> None:
        for i in range(3):
            lt.call_soon(order.append, i)
        lt.call_soon(done.set)

    lt.call_soon(first)
    assert done.wait(T)
    assert order == [0, 1, 2]


def test_submit_returns_a_concurrent_future(lt: EventLoopThread) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert lt.submit(add(2, 3)).result(T) == 5


def test_stop_is_idempotent_and_joins_the_thread() -> None:
    lt = EventLoopThread("stop-twice").start()
    lt.stop()
    lt.stop()
    assert not lt.is_running()
    assert "stop-twice" not in {t.name for t in threading.enumerate()}


def test_stop_before_start_is_harmless_and_start_after_stop_refused() -> None:
    lt = EventLoopThread()
    lt.stop()
    with pytest.raises(RuntimeError, match="already started"):
        lt.start()


def test_start_twice_is_refused(lt: EventLoopThread) -> None:
    with pytest.raises(RuntimeError, match="one-shot"):
        lt.start()


def test_loop_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = EventLoopThread("never").loop


def test_stop_cancels_pending_tasks() -> None:
    lt = EventLoopThread().start()
    cancelled = threading.Event()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = lt.submit(forever())
    assert started.wait(T)
    lt.stop()
    assert cancelled.is_set()
    assert future.cancelled()


def test_a_task_that_ignores_cancel_does_not_hang_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_module, "CANCEL_TIMEOUT", 0.05)
    lt = EventLoopThread().start()
    started = threading.Event()

    async def stubborn() -> None:
        started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # rude, and survived only until the loop closes

    lt.submit(stubborn())
    assert started.wait(T)
    lt.stop(timeout=T)
    assert not lt.is_running()


def test_stop_on_the_loop_thread_raises_instead_of_deadlocking(lt: EventLoopThread) -> None:
    with pytest.raises(RuntimeError, match="would deadlock"):
        on_loop(lt, lt.stop)
    assert lt.is_running()


def test_request_stop_on_the_loop_thread_ends_the_loop() -> None:
    lt = EventLoopThread().start()
    lt.call_soon(lt.request_stop)
    lt.stop(timeout=T)  # joins the thread the loop is ending by itself
    assert not lt.is_running()


def test_close_callbacks_run_newest_first_on_the_loop_and_survive_errors() -> None:
    lt = EventLoopThread("closing").start()
    ran: list[str] = []

    def boom() -> None:
        ran.append("boom")
        raise ValueError("close callback failure is logged, not fatal")

    lt.add_close_callback(lambda: ran.append(f"first@{threading.current_thread().name}"))
    lt.add_close_callback(boom)
    removed = lt.add_close_callback(lambda: ran.append("removed"))
    lt.add_close_callback(lambda: ran.append("last"))
    lt.remove_close_callback(removed)
    lt.stop()
    assert ran == ["last", "boom", "first@closing"]


def test_scheduling_after_stop_raises_and_closes_the_coroutine() -> None:
    lt = EventLoopThread().start()
    lt.stop()
    with pytest.raises(RuntimeError):
        lt.call_soon(print)

    async def never() -> None:
        raise AssertionError("must not run")

    coro: Any = never()
    with pytest.raises(RuntimeError):
        lt.submit(coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning


def test_context_manager_starts_and_stops() -> None:
    with EventLoopThread("ctx") as lt:
        assert lt.is_running()
    assert not lt.is_running()


def test_a_base_exception_escaping_a_callback_still_closes_cleanly() -> None:
    lt = EventLoopThread().start()
    closed = threading.Event()
    lt.add_close_callback(closed.set)

    def die() -> None:
        raise SystemExit("escaped to asyncio")

    lt.call_soon(die)
    lt.stop(timeout=T)
    assert closed.is_set()
    assert not lt.is_running()
