"""What the pairing machines emit, and the core they share to emit it.

The events are the machines' whole output besides bytes (h11 style): the
session actor drains ``next_event()`` after every call and acts on each one.
What the actor must do for each event:

======================  ===================================================================
event                   the actor...
======================  ===================================================================
SasCheckRequested       shows the SAS words to the person, then calls ``sas_confirmed(now)``
                        or ``sas_refused(now)`` (only when a side asked to verify the SAS)
PeerVerified            stores the peer as PENDING durably, then calls ``pending_stored(now)``
CommitRequested         marks the peer CONFIRMED durably, then calls ``committed(now)``
                        (initiator: ``commit_refused(now)`` if the registry refuses)
PairingSucceeded        reports success; the pairing is committed on this side
PairingFailed           deletes the PENDING record if ``pending_must_be_deleted``; reports
PairingInDoubt          keeps the PENDING record (never used as paired) and resolves later
ResolveRequested        looks the pairing up, calls ``answer_resolve(committed, secret, now)``
ResolveAnswered         deletes the PENDING record if ``pending_must_be_deleted``
PairingResolved         marks CONFIRMED if ``committed``, else deletes the PENDING record
======================  ===================================================================

"Delete the PENDING record" never touches a CONFIRMED record: the registry
deletes only a record that is still pending for that ``pairing_id``. That is
what makes the initiator's late failures safe (see :mod:`protocol.pairing`).

:class:`PairingMachine` is the shared core: bytes in (through the strict
:class:`~protocol.framing.FrameDecoder`), messages and local calls dispatched
through the machine's one transition table, per-state deadlines, and the one
way a machine ends badly, decided by the state's :class:`Ending`.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import errors
from .errors import ErrorCode, FrameError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import FrameDecoder, decode_body, encode_frame
from .keys import PairingKeys, Role
from .messages import DeviceInfo, Message, PairReject
from .seal import CONTEXT_PAIR, Opener, Sealer

__all__ = [
    "DEFAULT_STEP_TIMEOUT",
    "DEFAULT_VERIFY_TIMEOUT",
    "CommitRequested",
    "Ending",
    "Local",
    "PairingEvent",
    "PairingFailed",
    "PairingInDoubt",
    "PairingMachine",
    "PairingResolved",
    "PairingSucceeded",
    "PeerVerified",
    "ResolveAnswered",
    "ResolveRequested",
    "SasCheckRequested",
    "Target",
    "Trigger",
    "open_device_info",
    "seal_device_info",
    "wire_code",
]

#: Every step of the exchange is one round trip plus, at most, one local
#: durable write (an SQLite commit with fsync: milliseconds). Ten seconds
#: covers a slow radio link and a loaded disk by orders of magnitude while a
#: person still gets a prompt answer.
DEFAULT_STEP_TIMEOUT = 10.0
#: The deadline of the steps where a person compares the SAS words and answers: people
#: read four words to each other and press a key, which takes seconds to a minute.
DEFAULT_VERIFY_TIMEOUT = 120.0

_MAX_REASON = 256  # PairReject.reason limit (protocol.messages)


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerVerified:
    """Key confirmation passed and the peer's sealed DeviceInfo opened: store it as PENDING."""

    #: What the peer says about itself (name, direct addresses to persist).
    peer_info: DeviceInfo
    #: Everything derived from the PAKE: pairing id, secret, SAS, session keys.
    keys: PairingKeys


@dataclass(frozen=True, slots=True)
class SasCheckRequested:
    """Both sides proved the key; a side asked to verify the SAS: ask the person now.

    Nothing is stored yet. The actor shows ``sas`` and calls ``sas_confirmed(now)``
    when the person says the words match the other device's, ``sas_refused(now)``
    when they do not (the pairing then fails on both sides with SAS_REFUSED).
    """

    #: The words both devices show; they match unless someone is in the middle.
    sas: tuple[str, ...]
    #: The peer's name when this side knows it already (the initiator), else "".
    peer_name: str = ""


@dataclass(frozen=True, slots=True)
class CommitRequested:
    """Both sides stored each other as pending: mark the peer CONFIRMED durably now."""


@dataclass(frozen=True, slots=True)
class PairingSucceeded:
    """The pairing is committed on this side (and, by the protocol, decided on the other)."""

    #: The peer's DeviceInfo, as in PeerVerified.
    peer_info: DeviceInfo
    #: The pairing's keys, as in PeerVerified.
    keys: PairingKeys


@dataclass(frozen=True, slots=True)
class PairingFailed:
    """The pairing ended without a device on this side."""

    #: Why (the same code went to the peer in a PairReject when it could).
    code: ErrorCode
    #: True when the peer reported the failure (its PairReject, or it closed the stream).
    remote: bool
    #: True when a PENDING record may exist for this pairing and must be deleted.
    pending_must_be_deleted: bool
    #: A one-line explanation for logs and the command line.
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PairingInDoubt:
    """The joiner voted to commit but never heard the decision: keep PENDING, resolve later."""

    #: The pairing to ask the initiator about (with PairResolve).
    pairing_id: bytes


@dataclass(frozen=True, slots=True)
class ResolveRequested:
    """A joiner asks whether this initiator committed a pairing (PairResolve received)."""

    #: The pairing asked about: look it up in the registry for the peer's NodeId.
    pairing_id: bytes
    #: The joiner's proof (done MAC); the machine checks it in ``answer_resolve``.
    mac: bytes


@dataclass(frozen=True, slots=True)
class ResolveAnswered:
    """The initiator answered a PairResolve (PairCommit or PairReject went out)."""

    #: The pairing asked about.
    pairing_id: bytes
    #: True when PairCommit was sent (the registry holds the joiner CONFIRMED).
    committed: bool
    #: True when the joiner proved the pairing and it was not committed: delete its PENDING record.
    pending_must_be_deleted: bool


@dataclass(frozen=True, slots=True)
class PairingResolved:
    """An in-doubt pairing's outcome is known: commit it or delete it."""

    #: The pairing that was in doubt.
    pairing_id: bytes
    #: True: the initiator committed, mark CONFIRMED. False: it aborted, delete PENDING.
    committed: bool


PairingEvent = (
    SasCheckRequested
    | PeerVerified
    | CommitRequested
    | PairingSucceeded
    | PairingFailed
    | PairingInDoubt
    | ResolveRequested
    | ResolveAnswered
    | PairingResolved
)


# -- the shared machine core ---------------------------------------------------------


class Local(enum.Enum):
    """Triggers that come from this node rather than from the peer's messages."""

    PENDING_STORED = "pending_stored"
    COMMITTED = "committed"
    COMMIT_REFUSED = "commit_refused"
    ANSWER_RESOLVE = "answer_resolve"
    SAS_CONFIRMED = "sas_confirmed"
    SAS_REFUSED = "sas_refused"
    TIMEOUT = "timeout"
    ABORT = "abort"
    PEER_CLOSED = "peer_closed"


#: A transition's trigger: a message class received from the peer, or a local call.
Trigger = type[Any] | Local
#: A move's target: one state, or the states its handler chooses among (it returns one).
Target = Any


@dataclass(frozen=True, slots=True)
class Ending:
    """What it means to end a machine badly in one non-final state (one row per state)."""

    #: Send PairReject(code) to the peer on a local failure (never after the joiner voted).
    tell_peer: bool = True
    #: A PENDING record may exist here (PeerVerified was out): deleted on failure, kept in doubt.
    pending: bool = False
    #: End in doubt instead of failed (the joiner after its vote: it may not abort alone).
    in_doubt: bool = False
    #: Expose the code as ``failure_code`` so the actor may reset the stream with it.
    may_reset: bool = True
    #: The code sent in PairReject when this state's deadline passes.
    timeout_reject: ErrorCode = ErrorCode.TIMEOUT
    #: Read and act on the peer's bytes in this state (False: the outcome no longer depends on them).
    reads: bool = True
    #: A closed stream ends the machine here (False: the decision stands without the peer).
    ends_on_peer_close: bool = True


S = TypeVar("S", bound=enum.Enum)
#: A handler returns None, or the state it chose when its move lists several.
Handler = Callable[[Any, float], Any]


def wire_code(value: int) -> ErrorCode:
    """Why the peer ended the pairing, from its wire code.

    A code this version does not know (a later version's) and NO_ERROR (a
    rejection is never "no error") both read as ABORTED: the pairing is over
    and nothing was kept.
    """
    try:
        code = ErrorCode(value)
    except ValueError:
        return ErrorCode.ABORTED
    return ErrorCode.ABORTED if code is ErrorCode.NO_ERROR else code


def _trigger_name(trigger: Trigger) -> str:
    return trigger.value if isinstance(trigger, Local) else trigger.__name__


class PairingMachine(Generic[S]):
    """Bytes and calls in, bytes and events out; subclasses bring the tables and handlers.

    ``moves`` maps ``(state, trigger)`` to the state entered when the
    handler returns, or to a tuple of states when the handler decides which
    (it returns the one it chose). ``slow`` states (a person answers there)
    get ``slow_timeout`` instead of ``step_timeout``. A handler may instead end the machine (by raising a
    :class:`~protocol.errors.ProtocolError` or ``errors.PairingFailed``, or by
    calling :meth:`_fail`/:meth:`_doubt`), as the source state's row in
    ``endings`` says. A state without a row in ``endings`` is final.
    """

    def __init__(
        self,
        *,
        role: Role,
        name: str,
        state: S,
        moves: Mapping[tuple[S, Trigger], S | tuple[S, ...]],
        endings: Mapping[S, Ending],
        failed: S,
        in_doubt: S | None,
        handlers: Mapping[Trigger, Handler],
        now: float,
        step_timeout: float,
        slow: frozenset[S] = frozenset(),
        slow_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    ) -> None:
        if not step_timeout > 0 or not slow_timeout > 0:
            raise ValueError("step_timeout and slow_timeout must be positive")
        self.role = role
        self._name = name
        self._state = state
        self._moves = moves
        self._endings = endings
        self._failed_state = failed
        self._in_doubt_state = in_doubt
        self._handlers = handlers
        self._step_timeout = step_timeout
        self._slow = slow
        self._slow_timeout = slow_timeout
        self._deadline: float | None = now + step_timeout
        self._decoder = FrameDecoder()
        self._outgoing = bytearray()
        self._events: collections.deque[PairingEvent] = collections.deque()
        self._failure_code: ErrorCode | None = None
        self._detail = ""

    def __repr__(self) -> str:
        return f"{self._name}({self._state.name})"

    # -- the public surface ---------------------------------------------------------

    @property
    def state(self) -> S:
        """The current state (for logs and tests; decisions belong to the events)."""
        return self._state

    @property
    def is_finished(self) -> bool:
        """True in a final state: succeeded, failed, in doubt or answered."""
        return self._state not in self._endings

    @property
    def failure_code(self) -> ErrorCode | None:
        """The code to reset the stream with once ended badly; None when running, done or not allowed.

        None after the initiator started committing: nothing may then tell the
        joiner "aborted", the joiner resolves against the registry instead.
        """
        return self._failure_code

    @property
    def detail(self) -> str:
        """Why the machine ended badly, for logs ('' otherwise)."""
        return self._detail

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer's stream. Protocol errors end the machine; nothing is raised."""
        if not data or not self._reads():
            return
        try:
            self._decoder.feed(data)
        except FrameError as exc:
            self._end_by_error(exc)
            return
        while self._reads():
            try:
                message = self._decoder.next_message()
            except FrameError as exc:
                self._end_by_error(exc)
                return
            if message is None:
                return
            self._dispatch(type(message), message, now)

    def next_event(self) -> PairingEvent | None:
        """The next event, or None; drain after every call."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Bytes for the peer's stream; drain after every call."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called, or None in a final state."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Time passed; ends the machine if the current step's deadline is reached."""
        if self._deadline is not None and now >= self._deadline:
            self._dispatch(Local.TIMEOUT, None, now)

    def abort(self, code: ErrorCode, now: float) -> None:
        """Give up locally (shutdown, crash of a collaborator); no-op once finished."""
        if not self.is_finished:
            self._dispatch(Local.ABORT, code, now)

    def peer_closed(self, now: float, code: int | None = None) -> None:
        """The stream or connection ended without a PairReject (FIN, reset with ``code``, loss)."""
        if not self.is_finished and self._ending().ends_on_peer_close:
            self._dispatch(Local.PEER_CLOSED, code, now)

    def sas_confirmed(self, now: float) -> None:
        """The person here says the SAS words match the other device's (section 10.8)."""
        self._local(Local.SAS_CONFIRMED, None, now)

    def sas_refused(self, now: float) -> None:
        """The person here says the SAS words differ: fail with SAS_REFUSED on both sides."""
        self._local(Local.SAS_REFUSED, None, now)

    # -- for subclasses -------------------------------------------------------------

    def _local(self, trigger: Local, payload: Any, now: float) -> None:
        """A callback from the actor: legal only where the table lists it."""
        if self._state in (self._failed_state, self._in_doubt_state):
            # The durable write raced the machine's ending; the ending's event
            # already told the actor what to do with the record.
            return
        if (self._state, trigger) not in self._moves:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_VIOLATION,
                f"{self._describe(trigger)} is not allowed here",
            )
        self._dispatch(trigger, payload, now)

    def _send(self, message: Message) -> None:
        self._outgoing += encode_frame(message)

    def _emit(self, event: PairingEvent) -> None:
        self._events.append(event)

    def _ending(self) -> Ending:
        return self._endings.get(self._state, _FINAL)

    def _reads(self) -> bool:
        return not self.is_finished and self._ending().reads

    def _describe(self, trigger: Trigger) -> str:
        return f"{self.role.value} in state {self._state.name}: {_trigger_name(trigger)}"

    def _dispatch(self, trigger: Trigger, payload: Any, now: float) -> None:
        target = self._moves.get((self._state, trigger))
        if target is None:
            self._end_generically(trigger, payload)
            return
        before = self._state
        try:
            chosen = self._handlers[trigger](payload, now)
        except (ProtocolError, errors.PairingFailed) as exc:
            self._end_by_error(exc)
            return
        if self._state is before:
            if isinstance(target, tuple):
                assert chosen in target, f"{self._describe(trigger)} chose {chosen!r}, not one of {target}"
                target = chosen
            self._enter(target, now)

    def _end_generically(self, trigger: Trigger, payload: Any) -> None:
        """Triggers every non-final state accepts without a row in the table: they end it."""
        what = self._describe(trigger)
        if trigger is Local.TIMEOUT:
            self._end(ErrorCode.TIMEOUT, what, remote=False, reject=self._ending().timeout_reject)
        elif trigger is Local.ABORT:
            self._end(payload, f"{what} ({payload.name})", remote=False)
        elif trigger is Local.PEER_CLOSED:
            code = ErrorCode.ABORTED if payload is None else wire_code(payload)
            how = "no code" if payload is None else f"code 0x{payload:x}"
            self._end(code, f"{what} ({how})", remote=True)
        elif trigger is PairReject:
            # The peer's decision stands even after the joiner's vote: the
            # coordinator only rejects before it decided to commit.
            code = wire_code(payload.code)
            self._fail(code, f"{what} {code.name} ({payload.reason[:80]!r})", remote=True)
        else:
            self._end(ErrorCode.PROTOCOL_VIOLATION, f"{what} is unexpected", remote=False)

    def _enter(self, state: S, now: float) -> None:
        self._state = state
        timeout = self._slow_timeout if state in self._slow else self._step_timeout
        self._deadline = None if self.is_finished else now + timeout

    def _end_by_error(self, exc: ProtocolError | errors.PairingFailed) -> None:
        remote = isinstance(exc, errors.PairingFailed) and exc.remote
        self._end(exc.code, f"{self.role.value} in state {self._state.name}: {exc.args[0]}", remote=remote)

    def _end(self, code: ErrorCode, detail: str, *, remote: bool, reject: ErrorCode | None = None) -> None:
        """End badly, as this state's Ending says: in doubt, or failed (PairReject if allowed)."""
        ending = self._ending()
        if ending.in_doubt:
            self._doubt(code, detail)
            return
        if ending.tell_peer and not remote:
            reason = detail.encode("utf-8")[:_MAX_REASON].decode("utf-8", "ignore")
            self._send(PairReject(code=reject or code, reason=reason))
        self._fail(code, detail, remote=remote)

    def _fail(self, code: ErrorCode, detail: str, *, remote: bool) -> None:
        ending = self._ending()
        self._finish(self._failed_state, code if ending.may_reset else None, detail)
        self._ended(code)
        self._emit(
            PairingFailed(code=code, remote=remote, pending_must_be_deleted=ending.pending, detail=detail)
        )

    def _doubt(self, code: ErrorCode, detail: str) -> None:
        assert self._in_doubt_state is not None, "only a joiner can be in doubt"
        self._finish(self._in_doubt_state, code, detail)
        self._emit(PairingInDoubt(pairing_id=self._pairing_id_for_doubt()))

    def _finish(self, state: S, failure_code: ErrorCode | None, detail: str) -> None:
        self._state = state
        self._deadline = None
        self._failure_code = failure_code
        self._detail = detail

    def _ended(self, code: ErrorCode) -> None:
        """Hook: the machine just failed with ``code`` (the initiator releases its code)."""

    def _pairing_id_for_doubt(self) -> bytes:
        raise NotImplementedError  # pragma: no cover - only machines with an in-doubt state


_FINAL = Ending(tell_peer=False, may_reset=False, reads=False, ends_on_peer_close=False)


# -- DeviceInfo boxes (PairResponse, PairComplete) -------------------------------------


def seal_device_info(key: bytes, plaintext: bytes) -> bytes:
    """The box of an encoded DeviceInfo: sequence 0 of the pairing context, one box each way."""
    _seq, box = Sealer(key, CONTEXT_PAIR).seal(plaintext)
    return box


def open_device_info(key: bytes, box: bytes) -> DeviceInfo:
    """The peer's DeviceInfo from its box; SealError or FrameError if it is not exactly that."""
    message = decode_body(Opener(key, CONTEXT_PAIR).open(0, box))
    if not isinstance(message, DeviceInfo):
        raise RemoteProtocolError(
            ErrorCode.MALFORMED_MESSAGE, f"the sealed box holds a {type(message).__name__}, not a DeviceInfo"
        )
    return message
