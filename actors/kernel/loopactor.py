"""A pykka actor whose inbox is drained on an asyncio loop (see actors/kernel/loop.py).

Session actors must touch aioquic objects, which belong to the loop thread.
A ``ThreadingActor`` pays a thread hop per message (~40-50 µs measured, up to
a 5 ms GIL switch interval when the loop is busy); a :class:`LoopActor` runs
its handlers on the loop itself and keeps pykka's ``ActorRef``, ``tell``,
``ask``, proxies and ``ActorRegistry`` (tools/bench_loopactor.py measures it).

How it works: the inbox is a deque under a lock. A ``put`` from any thread
appends and, if the actor has no turn pending, puts the actor on its loop's
run queue; the run queue schedules ONE drain callback with ``call_soon``
(loop thread) or ``call_soon_threadsafe`` (other threads) when it becomes
non-empty, so a burst of messages, to any number of actors, costs one
wake-up. The drain gives each ready actor a turn of up to :data:`ACTOR_TURN`
envelopes, handled with pykka's own semantics, and yields to the loop's I/O
after :data:`DRAIN_BATCH` envelopes. A tell between two LoopActors of one
loop is therefore handled in the same callback, without a loop iteration
(measured on the 2-core dev VM with tools/bench_loopactor.py: a tell round
trip between two LoopActors ~5 µs, between two ThreadingActors ~10 µs;
``await ask_async`` from the loop ~8 µs to a LoopActor, ~19 µs to a
ThreadingActor).

Rules on the loop thread (DESIGN.md, "Actors"):

- talk to actors with ``ref.tell(...)``, or ``await ask_async(ref, msg)`` /
  ``await call_async(ref, "method", ...)`` for replies (actors/kernel/replies.py,
  for any actor);
- a blocking ``ask``, ``ref.stop()`` (blocking by default), a proxy attribute
  assignment or ``ActorRegistry.stop_all()`` would deadlock: a LoopActor's
  futures refuse them with RuntimeError instead (the message itself was sent);
- never ``await`` a pykka future (pykka's ``__await__`` blocks).

Differences from pykka's ``Actor._actor_loop_running``: a ``BaseException``
(``SystemExit``, ``asyncio.CancelledError``...) in a handler kills only this
actor (an ask gets ``ActorDeadError``) instead of ``ActorRegistry.stop_all()``,
which would block the loop; a supervisor sees it as an ordinary death.

Private pykka 4.5.0 attributes this module relies on (pinned in setup.cfg,
checked by tests/kernel/test_hooks_pykka.py):

- ``pykka._envelope.Envelope(message, reply_to)`` and its two attributes;
- ``Actor._create_actor_inbox`` / ``Actor._create_future`` (overridden);
- ``Actor._start_actor_loop`` (overridden) and the order of ``Actor.start``
  (construct, ``ActorRegistry.register``, ``_start_actor_loop``), replayed by
  :meth:`LoopActor.start_on`;
- ``Actor._actor_loop_setup`` / ``Actor._actor_loop_teardown`` (called);
- ``Actor._handle_receive`` / ``Actor._handle_failure`` / ``Actor._stop``
  (called by :func:`handle_envelope`, which mirrors ``_actor_loop_running``);
- the inbox protocol ``put`` / ``get`` / ``empty`` and ``ActorRef.tell`` /
  ``ask`` checking ``is_alive()`` before ``actor_inbox.put(Envelope(...))``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import pykka
from pykka import ActorDeadError, ActorRef, ActorRegistry
from pykka._envelope import Envelope

from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loop import EventLoopThread, current_loop_thread

if TYPE_CHECKING:
    from types import TracebackType

    from pykka._actor import ActorInbox

__all__ = [
    "ACTOR_TURN",
    "DRAIN_BATCH",
    "ActorTimer",
    "LoopActor",
    "LoopFuture",
    "Shutdown",
    "handle_envelope",
]

T = TypeVar("T")
OptExcInfo = tuple[type[BaseException] | None, BaseException | None, "TracebackType | None"]

#: Envelopes handled per drain before the loop gets a turn for I/O. A handler
#: costs a few µs, so 64 keeps the loop's latency for datagrams well under a
#: millisecond even when a thousand messages arrive at once.
DRAIN_BATCH = 64

#: Envelopes one actor handles before the next ready actor gets its turn, so a
#: flooded actor cannot starve its neighbours within a drain.
ACTOR_TURN = 16

_pykka_log = logging.getLogger("pykka")


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop request on behalf of the system (a supervisor, or the loop closing).

    Handled like pykka's stop, but the exit reason is ``"shutdown"`` instead of
    ``"normal"``; send it with ``ref.ask(Shutdown(), block=False)``.
    """


@dataclass(frozen=True, slots=True)
class _Call:
    """A timer callback, run through the inbox semantics so that it may fail the actor."""

    #: The function to call on the loop thread.
    fn: Callable[..., object]
    #: Its positional arguments.
    args: tuple[Any, ...]


def handle_envelope(actor: pykka.Actor, envelope: Envelope[Any]) -> None:
    """Handle one envelope exactly like pykka 4.5's ``Actor._actor_loop_running``, except BaseException.

    An Exception in an ask goes back to the caller (the actor lives on); in a
    tell it fails the actor (``_handle_failure`` then ``on_failure``). A
    BaseException fails the actor in both cases, the asker gets ActorDeadError.
    """
    reply_to = envelope.reply_to
    try:
        response = actor._handle_receive(envelope.message)
    except Exception:
        if reply_to is None:
            _fail(actor)
        else:
            _pykka_log.info(f"Exception returned from {actor} to caller:", exc_info=True)
            reply_to.set_exception()
    except BaseException as exc:
        if reply_to is not None:
            dead = ActorDeadError(f"{actor} died handling this message: {exc!r}")
            dead.__cause__ = exc
            reply_to.set_exception((ActorDeadError, dead, None))
        _fail(actor)
    else:
        if reply_to is not None:
            reply_to.set(response)


def _fail(actor: pykka.Actor) -> None:
    exc_info = sys.exc_info()
    actor._handle_failure(*exc_info)
    try:
        actor.on_failure(*exc_info)
    except BaseException:
        actor._handle_failure(*sys.exc_info())


class LoopFuture(pykka.ThreadingFuture[T]):
    """A ThreadingFuture that refuses to block an event loop thread.

    On a loop thread, ``get()`` returns a value that is already there and
    otherwise raises RuntimeError at once: waiting there would stop the very
    loop that must produce the answer.
    """

    def get(self, *, timeout: float | None = None) -> Any:
        if current_loop_thread() is not None and (timeout is None or timeout > 0):
            try:
                return super().get(timeout=0)
            except pykka.Timeout:
                raise RuntimeError(
                    "blocking on a pykka future on the event loop thread would deadlock; "
                    "use ref.tell(...) or `await ask_async(ref, message)` there "
                    "(the message itself was sent)"
                ) from None
        return super().get(timeout=timeout)


def _refuse(envelope: Envelope[Any], actor_name: str) -> None:
    if envelope.reply_to is not None:
        dead = ActorDeadError(f"{actor_name} stopped before handling the message")
        envelope.reply_to.set_exception((ActorDeadError, dead, None))


class _LoopInbox:
    """pykka's ActorInbox protocol over a locked deque, waking the loop once per burst."""

    __slots__ = ("_closed", "_items", "_lock", "_name", "_scheduled", "_wake")

    def __init__(self) -> None:
        self._items: collections.deque[Envelope[Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake: Callable[[], object] | None = None  # set once on_start has run
        self._scheduled = False  # the actor is on its run queue (a turn is pending)
        self._closed = False
        self._name = "actor"

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._lock:
            closed = self._closed
            wake = None
            if not closed:
                self._items.append(envelope)
                if not self._scheduled and self._wake is not None:
                    self._scheduled = True
                    wake = self._wake
        if closed:
            _refuse(envelope, self._name)
            if envelope.reply_to is None:
                raise ActorDeadError(f"{self._name} not found")
            return
        if wake is not None:
            try:
                wake()
            except RuntimeError:  # the loop closed under a racing start: nobody will drain
                self.fail_all()

    def get(self) -> Envelope[Any]:
        with self._lock:
            return self._items.popleft()

    def empty(self) -> bool:
        with self._lock:
            return not self._items

    def attach(self, wake: Callable[[], object], name: str) -> None:
        """Start delivering: schedule a drain now if messages arrived before on_start ended."""
        with self._lock:
            self._wake = wake
            self._name = name
            pending = bool(self._items) and not self._closed
            self._scheduled = pending
        if pending:
            wake()

    def pop(self) -> Envelope[Any] | None:
        """The next envelope, or None; None also ends the pending drain."""
        with self._lock:
            if self._items:
                return self._items.popleft()
            self._scheduled = False
            return None

    def close(self) -> None:
        """Refuse further puts; what is queued stays for pykka's teardown to answer."""
        with self._lock:
            self._closed = True
            self._wake = None

    def fail_all(self) -> None:
        """Close and answer everything queued with ActorDeadError (the loop is gone)."""
        with self._lock:
            self._closed = True
            self._wake = None
            stale = list(self._items)
            self._items.clear()
        for envelope in stale:
            _refuse(envelope, self._name)


class ActorTimer:
    """A ``LoopActor.call_later`` timer; cancelled automatically when its actor stops."""

    __slots__ = ("_handle", "_timers")

    def __init__(self, timers: set[ActorTimer]) -> None:
        self._timers = timers
        self._handle: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        """Cancel the timer (no effect if it already ran). Loop thread only."""
        if self._handle is not None:
            self._handle.cancel()
        self._timers.discard(self)

    def cancelled(self) -> bool:
        return self._handle is None or self._handle.cancelled()

    def when(self) -> float:
        """The loop time at which the timer fires."""
        assert self._handle is not None
        return self._handle.when()


class _RunQueue:
    """The LoopActors of one loop that have mail, drained by one coalesced loop callback."""

    def __init__(self, loop_thread: EventLoopThread) -> None:
        self._loop_thread = loop_thread
        self._ready: collections.deque[LoopActor] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False  # a _run callback is pending on the loop

    def make_ready(self, actor: LoopActor) -> None:
        """Give ``actor`` a turn (any thread). Raises RuntimeError if the loop is closed."""
        with self._lock:
            self._ready.append(actor)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop_thread.call_soon(self._run)
        except RuntimeError:
            with self._lock:
                self._scheduled = False
            raise

    def _run(self) -> None:
        budget = DRAIN_BATCH
        try:
            while budget > 0:
                with self._lock:
                    if not self._ready:
                        self._scheduled = False
                        return
                    actor = self._ready.popleft()
                budget -= actor._qp_turn(min(budget, ACTOR_TURN))
        except BaseException:
            self._loop_thread.call_soon(self._run)  # never leave the queue stuck "scheduled"
            raise
        self._loop_thread.call_soon(self._run)  # more to do: let I/O in first


_run_queues: weakref.WeakKeyDictionary[EventLoopThread, _RunQueue] = weakref.WeakKeyDictionary()
_run_queues_lock = threading.Lock()


def _run_queue_for(loop_thread: EventLoopThread) -> _RunQueue:
    with _run_queues_lock:
        run_queue = _run_queues.get(loop_thread)
        if run_queue is None:
            run_queue = _run_queues[loop_thread] = _RunQueue(loop_thread)
        return run_queue


class LoopActor(pykka.Actor):
    """A pykka actor run by an :class:`~quicpair.actors.kernel.loop.EventLoopThread`.

    Start it with ``MyActor.start_on(loop_thread, *args, **kwargs)``. ``__init__``
    runs in the caller's thread; ``on_start``, every handler, ``on_stop``,
    ``on_failure`` and timers run on the loop thread, one at a time. If the
    loop shuts down while the actor is alive, the actor is stopped first
    (``on_stop`` runs, a warning is logged).
    """

    _qp_loop_thread: EventLoopThread | None = None
    _qp_run_queue: _RunQueue

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._qp_inbox = cast(_LoopInbox, self.actor_inbox)
        self._qp_timers: set[ActorTimer] = set()
        self._qp_close_key: int | None = None
        self._qp_finished = False

    # -- pykka's actor-type hooks ------------------------------------------------------

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return _LoopInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return LoopFuture()

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> ActorRef[Self]:
        raise TypeError(
            f"{cls.__name__} runs on an event loop: start it with {cls.__name__}.start_on(loop_thread, ...)"
        )

    @classmethod
    def start_on(cls, loop_thread: EventLoopThread, /, *args: Any, **kwargs: Any) -> ActorRef[Self]:
        """Construct the actor here, register it, and run it on ``loop_thread``'s loop.

        The same steps as pykka's ``Actor.start`` (construct, register, start
        the loop); ``args``/``kwargs`` go to the constructor.
        """
        if not loop_thread.is_running():
            raise RuntimeError(f"cannot start {cls.__name__} on {loop_thread!r}: its loop is not running")
        obj = cls(*args, **kwargs)
        obj._qp_loop_thread = loop_thread
        obj._qp_run_queue = _run_queue_for(loop_thread)
        ActorRegistry.register(obj.actor_ref)
        try:
            obj._start_actor_loop()
        except BaseException:
            ActorRegistry.unregister(obj.actor_ref)
            obj.actor_stopped.set()
            raise
        return obj.actor_ref

    def _start_actor_loop(self) -> None:
        loop_thread = self.loop_thread
        self._qp_close_key = loop_thread.add_close_callback(self._qp_on_loop_closing)
        try:
            loop_thread.call_soon(self._qp_boot)
        except RuntimeError:
            loop_thread.remove_close_callback(self._qp_close_key)
            raise

    def _handle_receive(self, message: Any) -> Any:
        if type(message) is _Call:
            return message.fn(*message.args)
        if type(message) is Shutdown:
            return self._stop()
        return super()._handle_receive(message)

    # -- public helpers for subclasses -------------------------------------------------

    @property
    def loop_thread(self) -> EventLoopThread:
        """The EventLoopThread this actor runs on."""
        if self._qp_loop_thread is None:
            raise RuntimeError(f"{self} is not started yet (start it with start_on)")
        return self._qp_loop_thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop this actor runs on."""
        return self.loop_thread.loop

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> ActorTimer:
        """Run ``fn(*args)`` on the loop after ``delay`` seconds, as if it were a told message.

        Only from the loop thread (``on_start``, handlers, timers). An
        exception in ``fn`` fails the actor like one in a told handler; the
        timer is cancelled if the actor stops first.
        """
        if not self.loop_thread.in_loop_thread():
            raise RuntimeError("LoopActor.call_later() must be called on the loop thread")
        if self.actor_stopped.is_set():
            raise ActorDeadError(f"{self} is stopped")
        timer = ActorTimer(self._qp_timers)
        timer._handle = self.loop.call_later(delay, self._qp_fire, timer, fn, args)
        self._qp_timers.add(timer)
        return timer

    # -- the life cycle, all on the loop thread ----------------------------------------

    def _qp_boot(self) -> None:
        if self._qp_finished:  # the loop closed before we got to run
            return
        try:
            self._actor_loop_setup()
        except BaseException:
            self._handle_failure(*sys.exc_info())
        if self.actor_stopped.is_set():
            self._qp_finish()
            return
        self._qp_inbox.attach(self._qp_wake, str(self))

    def _qp_wake(self) -> None:
        self._qp_run_queue.make_ready(self)

    def _qp_turn(self, budget: int) -> int:
        """Handle up to ``budget`` envelopes (called by the run queue); returns how many."""
        if self._qp_finished:
            return 0
        inbox = self._qp_inbox
        for handled in range(budget):
            envelope = inbox.pop()
            if envelope is None:
                return handled  # the inbox cleared its "turn pending" flag
            handle_envelope(self, envelope)
            if self.actor_stopped.is_set():
                self._qp_finish()
                return handled + 1
        self._qp_run_queue.make_ready(self)  # still has mail: back of the queue
        return budget

    def _qp_fire(self, timer: ActorTimer, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._qp_timers.discard(timer)
        if self.actor_stopped.is_set():
            return
        handle_envelope(self, Envelope(_Call(fn, args)))
        if self.actor_stopped.is_set():
            self._qp_finish()

    def _qp_on_loop_closing(self) -> None:
        self._qp_close_key = None
        if self._qp_finished:
            return
        if not self.actor_stopped.is_set():
            log = get_logger().bind(actor=str(self), loop=self.loop_thread.name)
            log.warning("actor.stopped_by_loop_shutdown")
            handle_envelope(self, Envelope(Shutdown()))
        self._qp_finish()

    def _qp_finish(self) -> None:
        """Once: cancel timers, refuse new mail, answer queued asks, let mixins report the exit."""
        if self._qp_finished:
            return
        self._qp_finished = True
        for timer in list(self._qp_timers):
            timer.cancel()
        if self._qp_close_key is not None:
            self.loop_thread.remove_close_callback(self._qp_close_key)
            self._qp_close_key = None
        self._qp_inbox.close()
        try:
            self._actor_loop_teardown()
        except Exception as exc:
            get_logger().bind(actor=str(self)).error("actor.teardown_failed", error=repr(exc))
