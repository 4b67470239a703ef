"""One asyncio event loop, owned by one named thread, shared by every actor that does I/O.

aioquic's ``QuicConnection`` is sans-I/O and not thread-safe, so a single loop
owns every connection (DESIGN.md, "Actors"); :class:`EventLoopThread` is that
loop's owner and the only object that starts, feeds and stops it.

Thread rules (the loop thread is the thread that runs ``self.loop``):

======================  ===================  ==========================================
call                    other threads        the loop thread
======================  ===================  ==========================================
``start()``             yes                  n/a (the thread does not exist yet)
``call_soon()``         yes (thread-safe)    yes (plain ``loop.call_soon``, no self-pipe)
``submit()``            yes                  yes, but never block on the returned future
``request_stop()``      yes                  yes (returns at once)
``stop()``              yes (joins)          FORBIDDEN: raises RuntimeError (it would
                                             join its own thread); use ``request_stop()``
======================  ===================  ==========================================

Anything else that blocks on the loop thread (a blocking pykka ``ask``,
``ActorRef.stop(block=True)``, ``ActorRegistry.stop_all()``, ``Future.result()``)
freezes every connection and deadlocks when the answer needs the loop.
:func:`current_loop_thread` lets other modules detect that case and refuse
loudly instead (``quicpair.actors.kernel.loopactor`` does, for its futures).

Stopping runs the registered close callbacks first, newest first, on the loop
(LoopActors use them to stop if they are still alive), then cancels every
task, waits a bounded time for them, shuts down async generators and the
default executor, closes the loop and ends the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar

from quicpair.actors.kernel.logs import get_logger

__all__ = ["EventLoopThread", "current_loop_thread"]

T = TypeVar("T")

#: How long start() waits for the new thread to run its loop. Thread creation
#: takes well under a millisecond; only a wedged machine takes seconds.
START_TIMEOUT = 5.0

#: How long the shutdown waits for cancelled tasks to finish their cleanup.
#: A task that swallows CancelledError must not hold the node hostage.
CANCEL_TIMEOUT = 2.0

_names = itertools.count(1)
_local = threading.local()


def current_loop_thread() -> EventLoopThread | None:
    """The EventLoopThread whose loop runs on the calling thread, if any."""
    owner: EventLoopThread | None = getattr(_local, "owner", None)
    return owner


class EventLoopThread:
    """Owns one asyncio loop running forever in one named thread.

    One-shot: ``start()`` once, ``stop()`` any number of times (idempotent).
    The thread is not a daemon by default, like pykka's actors: a node must
    stop its loop explicitly, and forgetting to is visible, not silent.
    """

    def __init__(self, name: str | None = None, *, daemon: bool = False) -> None:
        self.name = name or f"quicpair-loop-{next(_names)}"
        self._daemon = daemon
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False
        self._closed = threading.Event()
        self._close_callbacks: dict[int, Callable[[], None]] = {}
        self._callback_ids = itertools.count()

    def __repr__(self) -> str:
        state = "closed" if self._closed.is_set() else "running" if self.is_running() else "idle"
        return f"<EventLoopThread {self.name} {state}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop. Touch it only from the loop thread, except for ``call_soon_threadsafe``."""
        if self._loop is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._loop

    def is_running(self) -> bool:
        """True between a successful ``start()`` and the beginning of shutdown."""
        return self._started.is_set() and not self._stopping and not self._closed.is_set()

    def in_loop_thread(self) -> bool:
        """True when called on this loop's own thread."""
        return self._thread_ident is not None and threading.get_ident() == self._thread_ident

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Start the thread and return once its loop is running."""
        with self._lock:
            if self._thread is not None or self._stopping:
                raise RuntimeError(f"{self.name} was already started (an EventLoopThread is one-shot)")
            # Created here, not in __init__: an unstarted EventLoopThread holds no sockets.
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=self._daemon)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise RuntimeError(f"{self.name}: loop thread did not start within {START_TIMEOUT} s")
        return self

    def request_stop(self) -> None:
        """Begin the shutdown and return at once (safe on any thread, idempotent)."""
        with self._lock:
            if self._stopping or self._thread is None or self._closed.is_set():
                self._stopping = True
                return
            self._stopping = True
        with contextlib.suppress(RuntimeError):  # the loop already died (see _run): nothing to stop
            self._schedule(self._shutdown)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread within ``timeout`` seconds.

        Idempotent. Raises RuntimeError on the loop thread (joining yourself
        deadlocks) and TimeoutError if the thread is still alive at the deadline.
        """
        if self.in_loop_thread():
            raise RuntimeError(
                f"{self.name}.stop() called on its own loop thread would deadlock; use request_stop() there"
            )
        self.request_stop()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{self.name}: loop thread still running {timeout} s after stop()")

    def add_close_callback(self, fn: Callable[[], None]) -> int:
        """Run ``fn()`` on the loop when it starts shutting down; returns a key for removal.

        Callbacks run newest first, each guarded (an exception is logged, the
        others still run). Thread-safe.
        """
        with self._lock:
            key = next(self._callback_ids)
            self._close_callbacks[key] = fn
            return key

    def remove_close_callback(self, key: int) -> None:
        """Forget a close callback (no error if it already ran or was removed)."""
        with self._lock:
            self._close_callbacks.pop(key, None)

    # -- scheduling -----------------------------------------------------------------

    def call_soon(self, fn: Callable[..., object], *args: Any) -> asyncio.Handle:
        """Schedule ``fn(*args)`` on the loop; thread-safe.

        On the loop thread this is a plain ``call_soon`` (no self-pipe write).
        Raises RuntimeError once the loop is closed.
        """
        loop = self.loop
        if self.in_loop_thread():
            return loop.call_soon(fn, *args)
        return loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the loop; returns a concurrent future.

        Safe from any thread. On the loop thread, never call ``.result()`` on
        the returned future: add a done callback or await the task instead.
        """
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:
            coro.close()  # no "coroutine was never awaited" warning on top of the real error
            raise

    def _log(self) -> Any:
        # Resolved per event, not cached: structlog's configuration may change after construction.
        return get_logger().bind(loop=self.name)

    def _schedule(self, fn: Callable[[], object]) -> None:
        self.call_soon(fn)

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        loop = self.loop
        _local.owner = self
        self._thread_ident = threading.get_ident()
        asyncio.set_event_loop(loop)
        loop.call_soon(self._started.set)
        try:
            loop.run_forever()
        except BaseException as exc:  # a KeyboardInterrupt/SystemExit escaped a callback
            self._log().critical("loop.crashed", error=repr(exc))
            self._stopping = True
        finally:
            try:
                self._run_close_callbacks()
                self._cancel_tasks()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                self._closed.set()
                _local.owner = None
                self._thread_ident = None  # thread idents are recycled once a thread ends
                self._started.set()  # unblock a start() racing with an immediate crash

    def _shutdown(self) -> None:
        self._run_close_callbacks()
        self.loop.stop()

    def _run_close_callbacks(self) -> None:
        while True:
            with self._lock:
                if not self._close_callbacks:
                    return
                key = max(self._close_callbacks)  # newest first, like pykka's stop_all
                fn = self._close_callbacks.pop(key)
            try:
                fn()
            except Exception as exc:
                self._log().error("loop.close_callback_failed", callback=repr(fn), error=repr(exc))

    def _cancel_tasks(self) -> None:
        loop = self.loop
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        _, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_TIMEOUT))
        for task in pending:
            self._log().error("loop.task_ignored_cancel", task=repr(task), timeout=CANCEL_TIMEOUT)
