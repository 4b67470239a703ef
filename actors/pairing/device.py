"""What the node's API hands out: a paired device, and an open pairing offer.

A :class:`Device` shows everything a person may check about a pairing (the
SAS words too) and nothing secret: the peer's NodeId, its name and addresses, the state, and
the *fingerprints* of the two directional session keys, so anyone can see
that this side's send key is the other side's receive key without seeing
either key.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quicpair.actors.registry.actor import DeviceRecord
from quicpair.protocol import errors
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import NodeId

__all__ = ["CheckChain", "Device", "Joining", "PairingOffer", "SasCheck", "answer_check"]


@dataclass(frozen=True, slots=True)
class Device:
    """A paired (or pending) device, without its secrets."""

    #: The peer's identity, as seen in the TLS handshake of the pairing.
    node_id: NodeId
    #: The name the peer gave itself.
    name: str
    #: Our role in the pairing: "initiator" (we showed the code) or "joiner".
    role: str
    #: "pending", "confirmed" or "revoked".
    state: str
    #: Direct addresses, most recently working first.
    addresses: tuple[str, ...]
    #: The address the peer was last seen at, if any.
    observed_address: str | None
    #: Fingerprint of the key this side sends with.
    send_key_fingerprint: str
    #: Fingerprint of the key this side receives with.
    receive_key_fingerprint: str
    #: When the pairing was committed (Unix time).
    paired_at: float
    #: The short authentication string both sides derived (words people can compare),
    #: as stored with the pairing; empty for pairings stored before it was kept.
    sas: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: DeviceRecord, sas: tuple[str, ...] = ()) -> Device:
        return cls(
            node_id=record.node_id,
            name=record.name,
            role=record.role.value,
            state=str(record.state.value),
            addresses=tuple(record.addresses),
            observed_address=record.observed_address,
            send_key_fingerprint=record.send_key_fp,
            receive_key_fingerprint=record.receive_key_fp,
            paired_at=record.paired_at,
            sas=tuple(sas or record.sas),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (NodeId as text) for the command line and logs."""
        return {
            "node_id": self.node_id.text,
            "fingerprint": self.node_id.fingerprint,
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "addresses": list(self.addresses),
            "observed_address": self.observed_address,
            "send_key_fingerprint": self.send_key_fingerprint,
            "receive_key_fingerprint": self.receive_key_fingerprint,
            "paired_at": self.paired_at,
            "sas": list(self.sas),
        }


class SasCheck:
    """A pairing waiting for the person here to compare the SAS words (``--verify``).

    Show :attr:`sas`; call :meth:`confirm` when the other device shows the same
    words, :meth:`refuse` when it does not. Only the first answer counts. The
    pairing's end (the Device, or PairingFailed) arrives in :attr:`outcome`.
    """

    def __init__(
        self,
        *,
        session: str,
        sas: tuple[str, ...],
        peer: NodeId,
        peer_name: str,
        answer: Callable[[bool], None],
        outcome: concurrent.futures.Future[Any],
    ) -> None:
        #: The session asking (names the check in control requests).
        self.session = session
        #: The four words; the other device shows the same ones unless someone is in the middle.
        self.sas = sas
        #: The other device, as seen in the TLS handshake.
        self.peer = peer
        #: Its name, when this side knows it already ("" otherwise).
        self.peer_name = peer_name
        #: The pairing's end: the Device, or PairingFailed.
        self.outcome = outcome
        self._answer = answer
        self._lock = threading.Lock()
        self._answered: bool | None = None

    def __repr__(self) -> str:
        return f"SasCheck(session={self.session}, peer={self.peer.fingerprint})"

    @property
    def answered(self) -> bool | None:
        """True (confirmed), False (refused) or None (not yet)."""
        return self._answered

    def confirm(self) -> bool:
        """The words match: go on. True if this was the first answer."""
        return self._give(True)

    def refuse(self) -> bool:
        """The words differ: abort the pairing on both sides (SAS_REFUSED). True if first."""
        return self._give(False)

    def _give(self, yes: bool) -> bool:
        with self._lock:
            if self._answered is not None:
                return False
            self._answered = yes
        self._answer(yes)
        return True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the command line."""
        return {
            "session": self.session,
            "sas": list(self.sas),
            "node_id": self.peer.text,
            "fingerprint": self.peer.fingerprint,
            "name": self.peer_name,
        }


class CheckChain:
    """SAS checks handed from the loop to whoever waits, in order, without polling.

    Each link is a future resolved with ``(check, next link)``; a waiter keeps
    the link it is at and moves on once it took a check.
    """

    def __init__(self) -> None:
        self.head: concurrent.futures.Future[tuple[SasCheck, Any]] = concurrent.futures.Future()
        self._lock = threading.Lock()

    def put(self, check: SasCheck) -> None:
        with self._lock:
            link, self.head = self.head, concurrent.futures.Future()
            link.set_result((check, self.head))


def _wait_event(
    result: concurrent.futures.Future[Any],
    link: concurrent.futures.Future[tuple[SasCheck, Any]],
    timeout: float | None,
) -> tuple[Any, concurrent.futures.Future[tuple[SasCheck, Any]]]:
    """The next SAS check or the result, whichever comes first; TimeoutError after ``timeout``."""
    if not link.done() and not result.done():
        concurrent.futures.wait([result, link], timeout, concurrent.futures.FIRST_COMPLETED)
    if link.done():
        check, following = link.result()
        return check, following
    if result.done():
        return result.result(), link
    raise concurrent.futures.TimeoutError


class Joining:
    """A pairing this node is joining (:meth:`quicpair.Node.start_join`).

    :meth:`wait` returns the Device, or a :class:`SasCheck` to answer first
    when a side asked to verify the SAS. :attr:`progress` says what it is doing.
    """

    def __init__(self, session: str, result: concurrent.futures.Future[Any], checks: CheckChain) -> None:
        self.session = session
        self.result = result
        #: What the joiner is doing now, for a status line ("dialing 192.0.2.7:47470", ...).
        self.progress = "starting"
        self._link = checks.head
        self._timed_out: Callable[[], None] = lambda: None

    def wait(self, timeout: float | None = None) -> Device | SasCheck:
        """The Device, or the next SAS check; PairingFailed / PeerUnreachable; TimeoutError."""
        event, self._link = _wait_event(self.result, self._link, timeout)
        return event  # type: ignore[no-any-return]


@dataclass(slots=True)
class PairingOffer:
    """An open code on this node; :meth:`wait` returns the device that used it."""

    #: The code to read out or type: ``<nameplate>-word-word-word``.
    code: str
    #: The same code plus our NodeId and addresses (what a QR code shows).
    uri: str
    #: The public part of the code.
    nameplate: int
    #: Seconds until the code expires, from when it was opened.
    expires_in: float
    future: concurrent.futures.Future[Any] = field(repr=False)
    cancel_fn: Callable[[], bool] = field(repr=False, default=lambda: False)
    checks: CheckChain = field(repr=False, default_factory=CheckChain)
    _link: concurrent.futures.Future[tuple[SasCheck, Any]] = field(repr=False, init=False)

    def __init__(
        self,
        *,
        code: str,
        uri: str,
        nameplate: int,
        expires_in: float,
        future: concurrent.futures.Future[Any],
        cancel: Callable[[], bool],
        checks: CheckChain | None = None,
    ) -> None:
        self.code, self.uri, self.nameplate, self.expires_in = code, uri, nameplate, expires_in
        self.future, self.cancel_fn = future, cancel
        self.checks = checks if checks is not None else CheckChain()
        self._link = self.checks.head

    def __repr__(self) -> str:
        return f"PairingOffer(nameplate={self.nameplate})"  # the code itself is a secret

    def wait(
        self, timeout: float | None = None, *, confirm: Callable[[SasCheck], bool] | None = None
    ) -> Device:
        """Block until a device paired with this code; PairingFailed if the code ended unused.

        When a side asked to verify the SAS, ``confirm(check)`` is called with the
        words and must say whether the other device shows the same ones; without
        ``confirm`` such a pairing is refused (nobody here can compare the words).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            event = self.wait_event(left)
            if isinstance(event, Device):
                return event
            answer_check(event, confirm)

    def wait_event(self, timeout: float | None = None) -> Device | SasCheck:
        """The device, or the next SAS check to answer; PairingFailed (TIMEOUT after ``timeout``)."""
        try:
            event, self._link = _wait_event(self.future, self._link, timeout)
        except concurrent.futures.TimeoutError as exc:
            raise errors.PairingFailed(ErrorCode.TIMEOUT, f"nobody paired within {timeout:g} s") from exc
        return event  # type: ignore[no-any-return]

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> bool:
        """Close the code now; True if it was still open."""
        return self.cancel_fn()


def answer_check(check: SasCheck, confirm: Callable[[SasCheck], bool] | None) -> None:
    """Ask ``confirm`` about ``check`` and pass the answer on (no ``confirm``: refused)."""
    yes = confirm is not None and bool(confirm(check))
    if yes:
        check.confirm()
    else:
        check.refuse()
