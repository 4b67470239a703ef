"""The initiator's book of open pairing codes: who may try which code, and how often.

A code is the only way into a pairing, so its life is short and its use is
counted (DESIGN.md, "What the pairing must guarantee")::

    open() ──> OPEN ──claim──> HELD ──consume──> CONSUMED       single use
                ^               │
                └───release─────┤  (attempts < max_attempts)
                                └──release──> BURNED           max_attempts counted attempts
    OPEN ──(now >= expires_at)──> EXPIRED                      no new claim after expiry
    OPEN/HELD ──cancel──> CANCELLED                            the person closed the code

The attempt is counted when the code is *claimed*, not when it fails: the
PairChallenge that follows a claim hands the joiner one online guess (it can
test its password against the initiator's key confirmation), whatever the
session does next. So a joiner that vanishes after the Challenge costs an
attempt exactly like a wrong code does, and ``max_attempts`` bounds the
guesses an attacker gets: with 33 bits of code and 3 attempts, 3 in 2**33.

Only one session may hold a code at a time (``BUSY`` for a second one), so
two joiners can never race to consume it and the attempt count is exact.

A held code that passes its expiry keeps its session: a pairing that started
in time may finish. Expiry refuses *new* claims only.

Pure and synchronous: ``now`` is a parameter, randomness comes from ``rand``.
The book is owned by one actor; sessions reach it through that owner (or,
on the same loop thread, directly through the :class:`CodeClaims` protocol).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import errors
from .codes import PairingCode
from .errors import ErrorCode

__all__ = [
    "DEFAULT_EXPIRY",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_OPEN",
    "CodeClaims",
    "CodeState",
    "CodeStatus",
    "Codebook",
]

#: Five minutes: long enough to read a code aloud and type it, short enough
#: that a code seen on a screen is useless soon after (magic-wormhole's
#: nameplates live about as long).
DEFAULT_EXPIRY = 300.0
#: Three counted attempts: a typo may be retried twice, a guesser gets 3 / 2**33.
DEFAULT_MAX_ATTEMPTS = 3
#: Codes open at the same time on one node; more is a script, not a person.
DEFAULT_MAX_OPEN = 32
#: How long a finished code is remembered, so a late joiner hears "used up"
#: or "expired" rather than "no such code", and its nameplate is not reused.
DEFAULT_LINGER = 600.0


class CodeState(enum.Enum):
    """Where a code is in its life (see the module docstring's diagram)."""

    OPEN = "open"
    HELD = "held"
    CONSUMED = "consumed"
    BURNED = "burned"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True when no joiner can ever use the code again."""
        return self not in (CodeState.OPEN, CodeState.HELD)


@dataclass(frozen=True, slots=True)
class CodeStatus:
    """A snapshot of one code, for status displays and logs (never the secret words)."""

    #: The public part of the code.
    nameplate: int
    #: Where the code is in its life.
    state: CodeState
    #: Claims so far (each one was an online guess).
    attempts: int
    #: Of those, the ones that failed key confirmation.
    wrong_attempts: int
    #: Counted attempts after which the code is burned.
    max_attempts: int
    #: When the code stops accepting claims (same clock as ``now``).
    expires_at: float
    #: Why the last attempt failed, if one did.
    last_failure: ErrorCode | None


class CodeClaims(Protocol):
    """What an initiator machine needs from the codebook (the :class:`Codebook` has it)."""

    def claim(self, nameplate: int, now: float) -> PairingCode:
        """Hold the code for one attempt and count it; ``errors.PairingFailed`` if refused."""
        ...

    def release(self, nameplate: int) -> None:
        """The attempt ended without success and without a wrong code."""
        ...

    def record_failure(self, nameplate: int, code: ErrorCode) -> None:
        """The attempt ended with ``code`` (``WRONG_CODE`` counts as a wrong attempt)."""
        ...

    def consume(self, nameplate: int) -> None:
        """The attempt succeeded: the code is used up."""
        ...


@dataclass(slots=True)
class _Entry:
    code: PairingCode
    expires_at: float
    max_attempts: int
    state: CodeState = CodeState.OPEN
    attempts: int = 0
    wrong_attempts: int = 0
    last_failure: ErrorCode | None = None

    def current_state(self, now: float) -> CodeState:
        if self.state is CodeState.OPEN and now >= self.expires_at:
            return CodeState.EXPIRED
        return self.state


class Codebook:
    """The open codes of one initiator node: open, claim, release, consume, describe."""

    __slots__ = ("_entries", "_linger", "_max_open")

    def __init__(self, *, max_open: int = DEFAULT_MAX_OPEN, linger: float = DEFAULT_LINGER) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        self._entries: dict[int, _Entry] = {}
        self._max_open = max_open
        self._linger = linger

    def __repr__(self) -> str:
        return f"Codebook({len(self._entries)} codes)"

    # -- the person's side ---------------------------------------------------------

    def open(
        self,
        now: float,
        rand: Callable[[int], bytes],
        expiry: float = DEFAULT_EXPIRY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> PairingCode:
        """A new code with a nameplate no remembered code uses.

        ``errors.PairingFailed(BUSY)`` when ``max_open`` codes are already open.
        """
        if expiry <= 0:
            raise ValueError("a code's expiry must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._forget_old(now)
        live = sum(1 for e in self._entries.values() if not e.current_state(now).is_final)
        if live >= self._max_open:
            raise errors.PairingFailed(
                ErrorCode.BUSY, f"{live} codes are already open; close one or wait for them to expire"
            )
        code = PairingCode.generate(rand, set(self._entries))
        self._entries[code.nameplate] = _Entry(code=code, expires_at=now + expiry, max_attempts=max_attempts)
        return code

    def cancel(self, nameplate: int) -> None:
        """Close a code before it is used; a session holding it may still finish."""
        entry = self._entries.get(nameplate)
        if entry is not None and entry.state is CodeState.OPEN:
            entry.state = CodeState.CANCELLED

    def describe(self, nameplate: int, now: float) -> CodeStatus | None:
        """The code's status, or None if no remembered code has this nameplate."""
        entry = self._entries.get(nameplate)
        if entry is None:
            return None
        return CodeStatus(
            nameplate=nameplate,
            state=entry.current_state(now),
            attempts=entry.attempts,
            wrong_attempts=entry.wrong_attempts,
            max_attempts=entry.max_attempts,
            expires_at=entry.expires_at,
            last_failure=entry.last_failure,
        )

    def statuses(self, now: float) -> list[CodeStatus]:
        """Every remembered code, by nameplate."""
        found = (self.describe(n, now) for n in sorted(self._entries))
        return [status for status in found if status is not None]

    def next_expiry(self, now: float) -> float | None:
        """When the next still-open code expires (for a status display's timer), or None."""
        pending = [e.expires_at for e in self._entries.values() if e.current_state(now) is CodeState.OPEN]
        return min(pending, default=None)

    # -- the sessions' side (CodeClaims) -------------------------------------------

    def claim(self, nameplate: int, now: float) -> PairingCode:
        """Hold the code for one attempt and count the attempt.

        Raises ``errors.PairingFailed`` with the code the joiner is told:
        NO_SUCH_CODE, CODE_EXPIRED, CODE_USED_UP (consumed or burned),
        CODE_CANCELLED or BUSY (another session holds it right now).
        """
        entry = self._entries.get(nameplate)
        if entry is None:
            raise errors.PairingFailed(ErrorCode.NO_SUCH_CODE, f"no open code has nameplate {nameplate}")
        state = entry.current_state(now)
        if state is CodeState.EXPIRED:
            raise errors.PairingFailed(ErrorCode.CODE_EXPIRED, f"code {nameplate} has expired")
        if state is CodeState.HELD:
            raise errors.PairingFailed(ErrorCode.BUSY, f"code {nameplate} is being tried right now")
        if state is CodeState.CANCELLED:
            raise errors.PairingFailed(ErrorCode.CODE_CANCELLED, f"code {nameplate} was cancelled")
        if state is not CodeState.OPEN:
            raise errors.PairingFailed(ErrorCode.CODE_USED_UP, f"code {nameplate} is {state.value}")
        entry.state = CodeState.HELD
        entry.attempts += 1
        return entry.code

    def release(self, nameplate: int) -> None:
        """The held attempt ended without success; the code burns if it has no attempts left."""
        entry = self._held(nameplate)
        if entry is None:
            return
        if entry.attempts >= entry.max_attempts:
            entry.state = CodeState.BURNED
        else:
            entry.state = CodeState.OPEN

    def record_failure(self, nameplate: int, code: ErrorCode) -> None:
        """Like :meth:`release`, remembering why; ``WRONG_CODE`` counts as a wrong attempt."""
        entry = self._held(nameplate)
        if entry is None:
            return
        entry.last_failure = code
        if code is ErrorCode.WRONG_CODE:
            entry.wrong_attempts += 1
        self.release(nameplate)

    def consume(self, nameplate: int) -> None:
        """The held attempt succeeded: the code is never accepted again."""
        entry = self._held(nameplate)
        if entry is None:
            raise errors.LocalProtocolError(
                ErrorCode.INTERNAL_ERROR, f"codebook: consume of code {nameplate}, which no session holds"
            )
        entry.state = CodeState.CONSUMED

    # -- internals -------------------------------------------------------------------

    def _held(self, nameplate: int) -> _Entry | None:
        entry = self._entries.get(nameplate)
        if entry is None or entry.state is not CodeState.HELD:
            return None
        return entry

    def _forget_old(self, now: float) -> None:
        """Drop finished codes ``linger`` seconds after their expiry (bounds memory).

        Counting from the expiry rather than from the end keeps a consumed or
        burned code's nameplate out of reuse for as long as a person might
        still type it.
        """
        for nameplate, entry in list(self._entries.items()):
            if entry.current_state(now).is_final and now >= entry.expires_at + self._linger:
                del self._entries[nameplate]
