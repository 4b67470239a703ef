"""Exit notices: every supervised actor reports exactly one :class:`ChildExited` per death.

pykka has no supervision and, left alone, loses deaths: an exception in
``on_start`` skips ``on_failure``, and a ``BaseException`` in any actor stops
every actor of the process (``ActorRegistry.stop_all()``). Every child mixes in
:class:`Supervised`, which reports EXACTLY ONE :class:`ChildExited` per death to
its parent, whatever killed it: an exception in a told handler, in
``on_start``, in ``on_stop`` or ``on_failure``; a normal stop; a shutdown by the
supervisor; or a ``BaseException``, which here is an ordinary death of that one
actor. The mixin works for ``ThreadingActor`` and ``LoopActor`` subclasses alike::

    class Registry(Supervised, pykka.ThreadingActor): ...
    class Session(Supervised, LoopActor): ...

Fault injection goes through the same door: a Supervised actor that is told
:class:`InjectedCrash` raises :class:`InjectedFault` from its handler, which is
an ordinary crash of that actor (actors/faults.py sends it, only when the node's
``[testing] fault_injection`` is on).

A child learns its parent at construction: whoever starts it (a
:class:`~quicpair.actors.kernel.supervisor.Supervisor` running a ``ChildSpec``,
the links supervisor, a test) does so inside :func:`supervised_by`, and
``Supervised.__init__`` claims that attachment.

Private pykka 4.5.0 attributes used here (checked by tests/kernel/test_hooks_pykka.py):
``Actor._handle_receive``, ``_stop``, ``_handle_failure``, ``_actor_loop_setup``,
``_actor_loop_running``, ``_actor_loop_teardown`` (overridden) and the
``queue.Queue`` inbox of ``ThreadingActor``.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import pykka
from pykka import ActorDeadError, ActorRef

from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loopactor import Shutdown, handle_envelope

__all__ = [
    "Attachment",
    "ChildExited",
    "ExitReason",
    "InjectedCrash",
    "InjectedFault",
    "StartedProbe",
    "Supervised",
    "actor_log",
    "describe_exit",
    "supervised_by",
]

#: Why an actor ended: a stop asked by anyone ("normal"), a stop asked by its
#: supervisor or the loop's shutdown ("shutdown"), or the exception that killed it.
ExitReason: TypeAlias = Literal["normal", "shutdown"] | BaseException


@dataclass(frozen=True, slots=True)
class ChildExited:
    """A supervised actor ended; sent once per death to its supervisor."""

    #: The child's name in its ChildSpec.
    name: str
    #: The incarnation that ended (a restarted child has a new ref).
    ref: ActorRef[Any]
    #: Why it ended.
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class StartedProbe:
    """Asked right after start: answered once on_start has run (or ActorDeadError if it failed)."""


@dataclass(frozen=True, slots=True)
class InjectedCrash:
    """Told to a Supervised actor: it crashes (raises InjectedFault) as if a handler failed."""

    #: Who asked, carried into the exception and the exit's log line.
    reason: str = "fault injection"


class InjectedFault(RuntimeError):
    """A crash asked for on purpose (``[testing] fault_injection``); never on a real device."""


class Attachment:
    """What a Supervised actor learns at construction: its parent and its name."""

    __slots__ = ("claimed_urn", "name", "parent", "parent_name")

    def __init__(self, parent: ActorRef[Any], name: str, parent_name: str) -> None:
        self.parent = parent
        self.name = name
        self.parent_name = parent_name
        #: Set by the Supervised actor that claimed this attachment.
        self.claimed_urn: str | None = None


_pending = threading.local()


@contextlib.contextmanager
def supervised_by(parent: ActorRef[Any], name: str, parent_name: str = "") -> Iterator[Attachment]:
    """Attach the first Supervised actor constructed in this block (this thread) to ``parent``.

    ``parent`` then receives its ChildExited. Supervisors use it around
    ``ChildSpec.start``; other owners (tests, the reconnection supervisor) may too.
    """
    attachment = Attachment(parent, name, parent_name)
    previous = getattr(_pending, "attachment", None)
    _pending.attachment = attachment
    try:
        yield attachment
    finally:
        _pending.attachment = previous


def actor_log(**context: Any) -> Any:
    # Resolved per event: structlog's configuration may change while actors live.
    return get_logger().bind(**context)


def describe_exit(reason: ExitReason) -> str:
    return reason if isinstance(reason, str) else repr(reason)


class Supervised(pykka.Actor):
    """Mixin: report this actor's one exit to its supervisor; survive BaseException.

    Put it before the pykka base class: ``class X(Supervised, ThreadingActor)``.
    """

    #: The name the supervisor knows this actor by (its class name if unsupervised).
    supervision_name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        for base in mro[: mro.index(Supervised)]:
            if issubclass(base, pykka.Actor) and not issubclass(base, Supervised):
                # Its hooks would shadow ours: Shutdown would not read as "shutdown", a
                # BaseException could reach pykka's stop_all().
                raise TypeError(f"{cls.__name__}: list Supervised before {base.__name__} in its bases")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        attachment: Attachment | None = getattr(_pending, "attachment", None)
        if attachment is not None and attachment.claimed_urn is None:
            attachment.claimed_urn = self.actor_urn
            self._qp_parent: ActorRef[Any] | None = attachment.parent
            self._qp_parent_name = attachment.parent_name
            self.supervision_name = attachment.name
        else:
            self._qp_parent = None
            self._qp_parent_name = ""
            self.supervision_name = type(self).__name__
        self._qp_exit: ExitReason | None = None
        self._qp_shutdown_requested = False
        self._qp_reported = False

    def _qp_log(self) -> Any:
        return actor_log(actor=self.supervision_name, supervisor=self._qp_parent_name, urn=self.actor_urn)

    def _qp_note_exit(self, reason: ExitReason) -> None:
        if self._qp_exit is None:  # the first cause wins; later failures are consequences
            self._qp_exit = reason

    def _handle_receive(self, message: Any) -> Any:
        if type(message) is Shutdown:
            self._qp_shutdown_requested = True
            return self._stop()
        if type(message) is StartedProbe:
            return None
        if type(message) is InjectedCrash:
            raise InjectedFault(f"{self.supervision_name}: {message.reason}")
        return super()._handle_receive(message)

    def _stop(self) -> None:
        super()._stop()  # an exception in on_stop reaches _handle_failure first, and wins
        self._qp_note_exit("shutdown" if self._qp_shutdown_requested else "normal")

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: Any,
    ) -> None:
        if exception_value is None:
            exception_value = exception_type() if exception_type is not None else RuntimeError("failure")
        self._qp_note_exit(exception_value)
        super()._handle_failure(exception_type, exception_value, traceback)

    def _actor_loop_setup(self) -> None:
        try:
            super()._actor_loop_setup()  # pykka catches Exception from on_start, not BaseException
        except BaseException:
            self._handle_failure(*sys.exc_info())
        if not self.actor_stopped.is_set():
            self._qp_log().debug("actor.started", cls=type(self).__name__)

    def _actor_loop_running(self) -> None:
        # ThreadingActor only (a LoopActor drains on its loop): pykka's loop, but a
        # BaseException kills this actor instead of calling ActorRegistry.stop_all().
        while not self.actor_stopped.is_set():
            handle_envelope(self, self.actor_inbox.get())

    def _actor_loop_teardown(self) -> None:
        try:
            super()._actor_loop_teardown()
        finally:
            self._qp_report()

    def _qp_report(self) -> None:
        if self._qp_reported:
            return
        self._qp_reported = True
        reason: ExitReason = self._qp_exit if self._qp_exit is not None else "normal"
        log = self._qp_log()
        if isinstance(reason, BaseException):
            log.warning("actor.exited", reason=describe_exit(reason), exc_info=reason)
        else:
            log.debug("actor.exited", reason=reason)
        if self._qp_parent is not None:
            # ActorDeadError: the supervisor is gone (it is stopping us, or died): nobody to tell.
            with contextlib.suppress(ActorDeadError):
                self._qp_parent.tell(ChildExited(self.supervision_name, self.actor_ref, reason))
