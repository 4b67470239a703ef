"""Erlang/OTP supervision for pykka actors (pykka has none).

A :class:`Supervisor` starts its children in order, watches them, restarts
them per :class:`Strategy` and :class:`Restart` type, and stops them in
reverse order, each within its ``shutdown_timeout``. More than
``max_restarts`` restarts within ``period`` seconds (the restart intensity)
means restarting does not help: the supervisor stops every child and fails
itself, and its own parent sees that as the death of a child (escalation).
A root supervisor reports it through ``on_escalate`` (the node shuts down).

Children are :class:`~quicpair.actors.kernel.exits.Supervised` actors: each
death reaches the supervisor as exactly one ``ChildExited``
(actors/kernel/exits.py)::

    root = Supervisor.start("node", [
        ChildSpec("registry", lambda: Registry.start(path)),
        ChildSpec("listener", lambda: Listener.start_on(loop_thread, config)),
    ], strategy=Strategy.REST_FOR_ONE, on_escalate=lambda exc: node.shutdown())
    root.proxy().start_child(ChildSpec("s1", lambda: Session.start_on(loop_thread),
                                       restart=Restart.TEMPORARY)).get(timeout=5)
    root.stop(timeout=30)

``ChildSpec.start`` runs in the supervisor's thread inside ``supervised_by``;
a child that did not claim that attachment is refused (its exits would be
invisible). Supervisors are ThreadingActors and block while they stop
children: never call their blocking API from the event loop thread. Stop a
tree by stopping its root supervisor, and before the event loop:
``ActorRegistry.stop_all()`` stops children before their supervisor, which
restarts the permanent ones; a loop stopped under live LoopActor children
makes their restarts fail until the supervisor escalates (loud, not clean).

Private pykka 4.5.0 attributes used here (checked by tests/kernel/test_hooks_pykka.py):
``Actor._actor_loop_running`` (overridden), the ``queue.Queue`` inbox of
``ThreadingActor`` and ``pykka._envelope.Envelope``.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import heapq
import itertools
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pykka
from pykka import ActorDeadError, ActorRef
from pykka._envelope import Envelope

from quicpair.actors.kernel.backoff import Backoff
from quicpair.actors.kernel.exits import (
    ChildExited,
    ExitReason,
    StartedProbe,
    Supervised,
    actor_log,
    describe_exit,
    supervised_by,
)
from quicpair.actors.kernel.loopactor import Shutdown, handle_envelope
from quicpair.protocol.errors import QuicpairError

__all__ = ["ChildInfo", "ChildSpec", "Restart", "Strategy", "Supervisor"]


class Restart(enum.Enum):
    """When a child is restarted (OTP restart types)."""

    #: Always, whatever the reason it ended.
    PERMANENT = "permanent"
    #: Only after an abnormal exit (an exception); a normal stop or shutdown is final.
    TRANSIENT = "transient"
    #: Never; the child is forgotten when it ends (e.g. one pairing session).
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    """Which children a death restarts (OTP strategies)."""

    #: Only the child that died.
    ONE_FOR_ONE = "one_for_one"
    #: The child that died and every child started after it (they depend on it).
    REST_FOR_ONE = "rest_for_one"
    #: Every child.
    ONE_FOR_ALL = "one_for_all"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child."""

    #: Unique among the supervisor's children; bound to the child's log events.
    name: str
    #: Starts the child IN THE CALLING THREAD (``X.start(...)``, ``X.start_on(loop, ...)``).
    start: Callable[[], ActorRef[Any]]
    #: When the child is restarted.
    restart: Restart = Restart.PERMANENT
    #: Seconds the child gets to stop; after that it is reported and abandoned.
    shutdown_timeout: float = 5.0
    #: Seconds the supervisor waits for the child's on_start before starting the next one.
    start_timeout: float = 5.0
    #: Makes the Backoff that delays this child's restarts; None restarts at once.
    backoff: Callable[[], Backoff] | None = None


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """One line of ``Supervisor.which_children()``."""

    #: The child's name.
    name: str
    #: The running incarnation, None while it waits for a (delayed) restart.
    ref: ActorRef[Any] | None
    #: Its restart type.
    restart: Restart
    #: How many times it was restarted.
    restarts: int


@dataclass(frozen=True, slots=True)
class _StartFailed:
    #: The child whose start() raised.
    name: str
    #: Which start attempt (stale failures are ignored).
    incarnation: int
    #: What start() raised.
    error: Exception


@dataclass(frozen=True, slots=True)
class _RestartDue:
    #: The children scheduled together carry this token.
    token: int


@dataclass(slots=True, eq=False)
class _Child:
    spec: ChildSpec
    backoff: Backoff | None
    ref: ActorRef[Any] | None = None
    pending: int | None = None  # token of a scheduled restart
    incarnation: int = 0
    restarts: int = 0


def _should_restart(restart: Restart, reason: ExitReason) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return isinstance(reason, BaseException)
    return False


class Supervisor(Supervised, pykka.ThreadingActor):
    """An OTP supervisor as a pykka ThreadingActor (itself Supervised, so it nests).

    ``clock`` times the restart-intensity window and backoff resets
    (injectable for tests); restart delays are waited in real time.
    OTP's default intensity is 1 restart in 5 s; ours is 3 in 5 s, because a
    session actor's crash should not take down its siblings' supervisor.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec] = (),
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_escalate: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__()
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {max_restarts}")
        if not period > 0:
            raise ValueError(f"period must be > 0 seconds, not {period}")
        names = [spec.name for spec in children]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name!r}: child names must be unique, got {names}")
        self.name = name
        if self._qp_parent is None:
            self.supervision_name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.period = period
        self._clock = clock
        self._on_escalate = on_escalate
        self._initial = list(children)
        self._children: list[_Child] = []
        self._restart_times: collections.deque[float] = collections.deque()
        self._timers: list[tuple[float, int, Any]] = []  # heap of (due, seq, message)
        self._seq = itertools.count()
        self._tokens = itertools.count(1)

    # -- public API (call through a proxy or ask; blocking: not from the loop thread) ----

    def start_child(self, spec: ChildSpec) -> ActorRef[Any]:
        """Start a new child after the existing ones; returns its ref."""
        if self._find(spec.name) is not None:
            raise ValueError(f"supervisor {self.name!r} already has a child named {spec.name!r}")
        child = _Child(spec, spec.backoff() if spec.backoff is not None else None)
        child.ref = self._spawn(child)
        self._children.append(child)
        return child.ref

    def terminate_child(self, name: str) -> bool:
        """Stop a child (within its shutdown timeout) and forget its spec; False if unknown."""
        child = self._find(name)
        if child is None:
            return False
        self._terminate(child)
        self._children.remove(child)
        return True

    def which_children(self) -> list[ChildInfo]:
        """The children in start order."""
        return [ChildInfo(c.spec.name, c.ref, c.spec.restart, c.restarts) for c in self._children]

    # -- pykka hooks -------------------------------------------------------------------

    def on_start(self) -> None:
        try:
            for spec in self._initial:
                child = _Child(spec, spec.backoff() if spec.backoff is not None else None)
                child.ref = self._spawn(child)
                self._children.append(child)
        except Exception:
            self._terminate_all()
            raise

    def on_stop(self) -> None:
        self._terminate_all()

    def on_failure(self, *exc_info: Any) -> None:
        self._terminate_all()  # never leave orphans behind a crashed supervisor

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildExited):
            child = self._find(message.name)
            if child is not None and child.ref is not None and child.ref.actor_urn == message.ref.actor_urn:
                self._on_death(child, message.reason)
            return None  # else stale: an incarnation already replaced or terminated
        if isinstance(message, _StartFailed):
            child = self._find(message.name)
            if child is not None and child.ref is None and child.incarnation == message.incarnation:
                self._on_death(child, message.error)
            return None
        if isinstance(message, _RestartDue):
            self._restart(message.token)
            return None
        return super().on_receive(message)

    def _actor_loop_running(self) -> None:
        # Supervised's loop plus timers for delayed restarts: the inbox is pykka's
        # queue.Queue, so waiting with a timeout needs no extra thread.
        inbox = cast("queue.Queue[Envelope[Any]]", self.actor_inbox)
        while not self.actor_stopped.is_set():
            envelope = self._due_timer()
            if envelope is None:
                try:
                    envelope = inbox.get(timeout=self._until_next_timer())
                except queue.Empty:
                    continue
            handle_envelope(self, envelope)

    # -- the supervision logic ---------------------------------------------------------

    def _find(self, name: str) -> _Child | None:
        return next((c for c in self._children if c.spec.name == name), None)

    def _spawn(self, child: _Child) -> ActorRef[Any]:
        spec = child.spec
        with supervised_by(self.actor_ref, spec.name, self.name) as attachment:
            ref = spec.start()
        if attachment.claimed_urn is None or attachment.claimed_urn != ref.actor_urn:
            with contextlib.suppress(Exception):
                ref.stop(block=False)
            raise TypeError(
                f"supervisor {self.name!r}: child {spec.name!r} started {ref}, which is not a "
                "Supervised actor constructed by ChildSpec.start in the calling thread; "
                "its exits could not be supervised"
            )
        # OTP starts children synchronously: the next child is constructed only once
        # this one's on_start has run, so it may rely on it. A failed on_start is not
        # handled here: its ChildExited is already on its way.
        try:
            ref.ask(StartedProbe(), block=False).get(timeout=spec.start_timeout)
        except ActorDeadError:
            pass
        except pykka.Timeout:
            actor_log(supervisor=self.name, actor=spec.name).warning(
                "actor.start_timeout", timeout=spec.start_timeout, urn=ref.actor_urn
            )
        return ref

    def _on_death(self, child: _Child, reason: ExitReason) -> None:
        child.ref = None
        if not _should_restart(child.spec.restart, reason):
            self._children.remove(child)
            return
        now = self._clock()
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] >= self.period:
            self._restart_times.popleft()
        if len(self._restart_times) > self.max_restarts:
            self._escalate(child, reason)
        index = self._children.index(child)
        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [child]
        elif self.strategy is Strategy.REST_FOR_ONE:
            group = self._children[index:]
        else:
            group = list(self._children)
        for sibling in reversed(group):
            if sibling is not child:
                self._terminate(sibling)
        for sibling in group:  # OTP: a temporary child stopped for a sibling is not restarted
            if sibling is not child and sibling.spec.restart is Restart.TEMPORARY:
                self._children.remove(sibling)
        token = next(self._tokens)
        for member in group:
            member.pending = token
        delay = child.backoff.next_delay(now) if child.backoff is not None else 0.0
        if delay > 0:
            actor_log(supervisor=self.name, actor=child.spec.name).info(
                "actor.restart_scheduled", delay=delay, group=[m.spec.name for m in group]
            )
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), _RestartDue(token)))
        else:
            self._restart(token)

    def _restart(self, token: int) -> None:
        for child in list(self._children):
            if child.pending != token:
                continue
            child.pending = None
            child.incarnation += 1
            try:
                child.ref = self._spawn(child)
            except Exception as exc:
                log = actor_log(supervisor=self.name, actor=child.spec.name)
                log.error("actor.start_failed", error=repr(exc))
                # Handled as a death of that child, through the inbox so that a child
                # that can never start burns the intensity without recursion.
                self.actor_ref.tell(_StartFailed(child.spec.name, child.incarnation, exc))
                return
            child.restarts += 1
            if child.backoff is not None:
                child.backoff.succeeded(self._clock())
            actor_log(supervisor=self.name, actor=child.spec.name).info(
                "actor.restarted", restarts=child.restarts, urn=child.ref.actor_urn
            )

    def _escalate(self, child: _Child, reason: ExitReason) -> None:
        actor_log(supervisor=self.name, actor=child.spec.name).error(
            "supervisor.escalated",
            reason=describe_exit(reason),
            restarts=len(self._restart_times),
            max_restarts=self.max_restarts,
            period=self.period,
        )
        self._terminate_all()
        error = QuicpairError(
            f"supervisor {self.name!r} gave up: more than {self.max_restarts} restarts within "
            f"{self.period} s; the last one was for {child.spec.name!r} ({describe_exit(reason)})"
        )
        if self._on_escalate is not None:
            try:
                self._on_escalate(error)
            except Exception as exc:
                actor_log(supervisor=self.name).error("supervisor.on_escalate_failed", error=repr(exc))
        raise error from (reason if isinstance(reason, BaseException) else None)

    def _terminate(self, child: _Child) -> None:
        ref, child.ref, child.pending = child.ref, None, None
        if ref is None:
            return
        timeout = child.spec.shutdown_timeout
        try:
            ref.ask(Shutdown(), block=False).get(timeout=timeout)
        except ActorDeadError:
            pass  # it died on its own meanwhile; its ChildExited is now stale
        except pykka.Timeout:
            actor_log(supervisor=self.name, actor=child.spec.name).error(
                "actor.shutdown_timeout", timeout=timeout, urn=ref.actor_urn
            )  # abandoned: it stops when it reaches the Shutdown message, unsupervised
        except Exception as exc:
            log = actor_log(supervisor=self.name, actor=child.spec.name)
            log.error("actor.shutdown_failed", error=repr(exc))

    def _terminate_all(self) -> None:
        for child in reversed(self._children):
            self._terminate(child)

    def _due_timer(self) -> Envelope[Any] | None:
        if self._timers and self._timers[0][0] <= time.monotonic():
            return Envelope(heapq.heappop(self._timers)[2])
        return None

    def _until_next_timer(self) -> float | None:
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())
