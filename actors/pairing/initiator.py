"""The initiator's pairing session: one accepted pairing connection, start to end.

The listener hands each connection on the pairing ALPN to a new
:class:`InitiatorSession`. It runs :class:`protocol.pairing.Initiator` on
the connection's single stream, writes the joiner to the registry (PENDING,
then CONFIRMED) when the machine asks, and settles the node's open
:class:`~quicpair.actors.context.Offer` when the code is used or used up. A
connection that opens with PairResolve instead is a joiner in doubt asking
about an earlier pairing; the registry answers it.
"""

from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass
from typing import Any

from quicpair.actors.pairing.device import Device, SasCheck
from quicpair.actors.pairing.session import PairingSessionBase, SasAnswer, SessionCrash, tell_if_alive
from quicpair.actors.registry.actor import DeviceRecord, DeviceState
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import errors
from quicpair.protocol.claims import LimitedClaims
from quicpair.protocol.codebook import CodeState
from quicpair.protocol.errors import ErrorCode, RegistryError
from quicpair.protocol.framing import FrameDecoder
from quicpair.protocol.keys import Role
from quicpair.protocol.messages import DeviceInfo, PairCommit
from quicpair.protocol.pairing import (
    CommitRequested,
    Initiator,
    InitiatorState,
    PairingFailed,
    PairingSucceeded,
    PeerVerified,
    ResolveAnswered,
    ResolveRequested,
    SasCheckRequested,
)

__all__ = ["Adopt", "InitiatorSession", "attempts_summary"]

_FINAL_CODE_ERRORS = {
    CodeState.BURNED: (ErrorCode.CODE_USED_UP, "the code was burned"),
    CodeState.EXPIRED: (ErrorCode.CODE_EXPIRED, "the code expired"),
    CodeState.CANCELLED: (ErrorCode.CODE_CANCELLED, "the code was cancelled"),
}


@dataclass(frozen=True, slots=True)
class Adopt:
    """To a spare session: this accepted pairing connection is yours (the listener counted it)."""

    link: QuicLink


def attempts_summary(attempts: list[str]) -> str:
    """``3 failed attempts (wrong code x2, timed out)``: each reason once, with its count."""
    counts = collections.Counter(attempts)
    reasons = ", ".join(f"{text} x{n}" if n > 1 else text for text, n in counts.items())
    plural = "s" if len(attempts) != 1 else ""
    return f"{len(attempts)} failed attempt{plural} ({reasons})"


class InitiatorSession(PairingSessionBase):
    """Holds one pairing connection accepted by the listener.

    Started with ``link=None`` it is a *spare*: a session the listener starts
    ahead of time, off any pairing's path, and hands the next connection with
    :class:`Adopt` -- a message on the loop instead of a spawn through the
    supervisor's thread (two thread hops and a start probe, ~5 ms measured
    under load, docs/BENCHMARKS.md). A spare that never adopts ends silently.
    """

    role = Role.INITIATOR

    def __init__(self, ctx: Any, session_id: str, link: QuicLink | None) -> None:
        super().__init__(ctx, session_id)
        self._link_to_attach = link
        self._sas: tuple[str, ...] = ()
        self._confirmed: DeviceRecord | None = None  # the record the CONFIRMED write returned
        self._inspect = FrameDecoder() if ctx.settings.testing.crash_session_after else None
        #: The joiner proved it holds the code (key confirmation passed).
        self._verified = False
        #: This session's end, for whoever answered its SAS check.
        self._outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def session_ended(self) -> None:
        # The listener counted this session when it gave it a connection.
        if self._link_to_attach is not None:
            self.ctx.active_sessions -= 1
        if not self._outcome.done():
            self._outcome.set_exception(errors.PairingFailed(ErrorCode.GOING_AWAY, "the session ended"))

    def on_start(self) -> None:
        if self._link_to_attach is not None:
            super().on_start()

    def is_spare(self) -> bool:
        return self._link_to_attach is None

    def begin(self) -> None:
        ctx = self.ctx
        self.machine = Initiator(
            local=ctx.identity.node_id,
            peer=self._held.peer,
            codebook=LimitedClaims(ctx.codebook, ctx.claims, self._source(), ctx.clock()),
            device_info=DeviceInfo(name=ctx.settings.node.name, addresses=ctx.addresses_for(self._held)),
            now=ctx.clock(),
            rand=ctx.rand,
            step_timeout=ctx.settings.pairing.step_timeout,
            verify=self._wants_verify,
            verify_timeout=ctx.settings.pairing.verify_timeout,
        )
        self.attach(self._held)
        self.pump()

    @property
    def _held(self) -> QuicLink:
        """The connection of this session (a spare has none yet)."""
        link = self._link_to_attach
        assert link is not None, f"session {self.session_id} holds no connection"
        return link

    def on_other(self, message: Any) -> Any:
        if isinstance(message, Adopt):
            if self._link_to_attach is not None:
                raise RuntimeError(f"session {self.session_id} already holds a connection")
            self._link_to_attach = message.link
            # The session starts now. A failure here is a handler's: on_failure closes the
            # link and gives the slot back, once.
            self.log.debug("pairing.session_started")
            try:
                self.begin()
            except Exception as exc:
                self.abandon(exc)
                raise
            return None
        return super().on_other(message)

    def abandon(self, exc: BaseException) -> None:
        link = self._link_to_attach
        if link is not None and not link.is_closed:
            link.close(ErrorCode.INTERNAL_ERROR, "pairing session failed to start")

    def _source(self) -> str:
        return str(self._held.remote_address[0])

    def _wants_verify(self, nameplate: int) -> bool:
        offer = self.ctx.offers.get(nameplate)
        return offer is not None and offer.verify

    # -- machine events --------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        if isinstance(event, SasCheckRequested):
            self._verified = True
            self._ask_person(event)
        elif isinstance(event, PeerVerified):
            self._verified = True
            self._sas = event.keys.sas
            self.log.info(
                "pairing.peer_verified", peer_name=event.peer_info.name, sas=" ".join(event.keys.sas)
            )
            # Neither durable nor waited for (PROTOCOL.md 10.5): the coordinator decides with
            # its CONFIRMED write, which the registry runs after this one; presumed abort
            # covers the rest. A write that fails crashes the session, and the confirm then
            # finds nothing to confirm: the pairing aborts.
            self.store_pending(
                self._held.peer, event.peer_info, event.keys, what="pending_written", durable=False
            )
            machine = self.machine
            assert isinstance(machine, Initiator)
            machine.pending_stored(self.ctx.clock())
            self.kill_point("initiator_before_complete")
        elif isinstance(event, CommitRequested):
            machine = self.machine
            assert isinstance(machine, Initiator) and machine.pairing_id is not None
            self.kill_point("initiator_before_confirm")
            peer, now = self._held.peer, self.ctx.wall_clock()
            self.write("committed", "confirm_and_get", peer, machine.pairing_id, now)
        elif isinstance(event, PairingSucceeded):
            self._sas = event.keys.sas
            self.pending_confirmed()
            self.ctx.counters.incr("pair.completed.initiator")
            self.log.info(
                "pairing.completed",
                peer_name=event.peer_info.name,
                connections=self.connections,
                streams=self._streams_seen,
                sas=" ".join(event.keys.sas),
                send_key_fp=event.keys.for_role(Role.INITIATOR).send_fingerprint,
                receive_key_fp=event.keys.for_role(Role.INITIATOR).receive_fingerprint,
            )
            self._on_record(self._confirmed)
        elif isinstance(event, PairingFailed):
            self._on_failed(event)
        elif isinstance(event, ResolveRequested):
            self.log.info("pairing.resolve_requested")
            self.write("resolve", "find_by_pairing_id", event.pairing_id)
        elif isinstance(event, ResolveAnswered):
            self.log.info("pairing.resolve_answered", committed=event.committed)
            if event.pending_must_be_deleted:
                self._pending_record = (self._held.peer, event.pairing_id)
                self.forget_pending()

    def _ask_person(self, event: SasCheckRequested) -> None:
        nameplate = self._nameplate()
        offer = self.ctx.offers.get(nameplate) if nameplate is not None else None
        ref = self.actor_ref
        check = SasCheck(
            session=self.session_id,
            sas=event.sas,
            peer=self._held.peer,
            peer_name=event.peer_name,
            answer=lambda yes: tell_if_alive(ref, SasAnswer(yes)),
            outcome=self._outcome,
        )
        self.log.info("pairing.sas_check", sas=" ".join(event.sas), peer_name=event.peer_name)
        if offer is None or offer.checks is None:
            check.refuse()  # the code's offer is gone: nobody here can compare the words
        else:
            offer.checks.put(check)

    def _on_failed(self, event: PairingFailed) -> None:
        if event.pending_must_be_deleted:
            self.forget_pending()
        self.ctx.counters.incr("pair.failed.initiator")
        # Before key confirmation the peer is a stranger, who could fill the log: rate limited.
        log = self.log if self._verified or self.ctx.unauth_log is None else self.ctx.unauth_log
        log.warning(
            "pairing.failed",
            code=event.code.name,
            remote=event.remote,
            detail=event.detail,
            peer=self._held.peer.fingerprint,
            session=self.session_id,
        )
        if not self._outcome.done():
            self._outcome.set_exception(errors.PairingFailed(event.code, remote=event.remote))
        nameplate = self._nameplate()
        offer = self.ctx.offers.get(nameplate) if nameplate is not None else None
        if offer is None or nameplate is None:
            return
        offer.attempts.append(errors.describe_code(event.code))
        if event.code in (ErrorCode.SAS_REFUSED, ErrorCode.STORAGE_ERROR):
            # Words that differ mean someone else may know the code; a disk that is full here
            # or there fails the next attempt too: nobody may use the code now, and whoever
            # shows it learns why at once, not when it expires.
            self._close_offer(nameplate, self.failure_for(event.code, event.remote))
            return
        status = self.ctx.codebook.describe(nameplate, self.ctx.clock())
        if status is not None and status.state in _FINAL_CODE_ERRORS and not offer.result.done():
            code, what = _FINAL_CODE_ERRORS[status.state]
            self.log.warning("pairing.code_closed", nameplate=nameplate, state=status.state.value)
            offer.result.set_exception(
                errors.PairingFailed(code, f"{what} after {attempts_summary(offer.attempts)}")
            )
            del self.ctx.offers[nameplate]

    def _on_record(self, record: DeviceRecord | None) -> None:
        """The pairing is committed here: start its link, settle the offer."""
        self._announce_paired(record)
        nameplate = self._nameplate()
        offer = self.ctx.offers.pop(nameplate, None) if nameplate is not None else None
        if isinstance(record, DeviceRecord):
            device = Device.from_record(record, self._sas)
            if not self._outcome.done():
                self._outcome.set_result(device)
            if offer is not None and not offer.result.done():
                offer.result.set_result(device)

    def storage_failed(self, what: str, error: RegistryError) -> None:
        super().storage_failed(what, error)  # the machine ends: its code is no longer held
        nameplate = self._nameplate()
        if nameplate is not None:
            self._close_offer(nameplate, self.failure_for(ErrorCode.STORAGE_ERROR, remote=False))

    def _close_offer(self, nameplate: int, error: errors.PairingFailed) -> None:
        """Fail the offer of ``nameplate`` with ``error`` and close its code for good."""
        offer = self.ctx.offers.pop(nameplate, None)
        if offer is None:
            return
        self.ctx.codebook.cancel(nameplate)
        if self.ctx.offers_changed is not None:
            self.ctx.offers_changed()
        self.log.warning("pairing.code_closed", nameplate=nameplate, state="failed", code=error.code.name)
        if not offer.result.done():
            offer.result.set_exception(error)

    def _nameplate(self) -> int | None:
        machine = self.machine
        return machine.nameplate if isinstance(machine, Initiator) else None

    # -- durable writes ----------------------------------------------------------

    def on_write_done(self, what: str, result: Any) -> None:
        machine = self.machine
        assert isinstance(machine, Initiator)
        now = self.ctx.clock()
        if what == "pending_written":
            pass  # the machine went on when the write was queued (handle_event)
        elif what == "committed":
            if machine.is_finished:
                # The commit step's deadline passed while the write was queued: the
                # registry's answer decides, not the deadline (the joiner, in doubt,
                # will learn it with PairResolve).
                if result is not None:
                    self.log.warning("pairing.committed_late")
                    self.ctx.counters.incr("pair.completed.initiator")
                    self._on_record(result)
            elif result is not None:
                self.kill_point("initiator_before_decision")
                self._confirmed = result
                machine.committed(now)  # PairingSucceeded: handle_event reports the record
            else:
                machine.commit_refused(now)
        elif what == "resolve":
            record = result if isinstance(result, DeviceRecord) else None
            if record is None or record.node_id != self._held.peer:
                machine.answer_resolve(False, None, now)
            else:
                machine.answer_resolve(record.state is DeviceState.CONFIRMED, record.pairing_secret, now)

    # -- crash ---------------------------------------------------------------------

    def crashed(self, exc: BaseException | None) -> None:
        # The crash skipped the machine's own ending: end it now, so that the
        # code it claimed is given back (the attempt stays counted) and the
        # offer learns of the failure. Left alone, the code stayed HELD for
        # good: every later attempt got BUSY, and the offer never settled.
        machine = self.machine
        if not self._outcome.done():
            self._outcome.set_exception(errors.PairingFailed(ErrorCode.INTERNAL_ERROR, "the session crashed"))
        if machine is None or machine.is_finished:
            return
        machine.abort(ErrorCode.INTERNAL_ERROR, self.ctx.clock())
        machine.data_to_send()  # on_failure reset the stream already: nothing more goes out
        while (event := machine.next_event()) is not None:
            if isinstance(event, PairingFailed):
                self._on_failed(event)

    def _announce_paired(self, record: Any) -> None:
        # The new device gets its link now (actors/links/supervisor.py), not at the next node start.
        links = self.ctx.links
        if links is not None and isinstance(record, DeviceRecord) and record.state is DeviceState.CONFIRMED:
            links.peer_paired(record)

    # -- fault injection (``[testing]``; all off on a real device) ---------------

    def drop_outgoing(self, data: bytes) -> bool:
        # Only the pairing's own decision is dropped, never a PairCommit that
        # answers a PairResolve: the switch must leave the joiner in doubt, and
        # resolving is how it gets out (dropping that too left it pending for good).
        machine = self.machine
        if not self.ctx.settings.testing.drop_pair_commit or not (
            isinstance(machine, Initiator) and machine.state is InitiatorState.S5_succeeded
        ):
            return False
        return self.dropping(data, PairCommit)

    def maybe_crash_before(self, data: bytes) -> None:
        if self._inspect is None:
            return
        self._inspect.feed(data)
        target = self.ctx.settings.testing.crash_session_after
        try:
            for message in self._inspect:
                if type(message).__name__ == target:
                    raise SessionCrash(f"crash injected on {target}")
        except errors.FrameError:
            self._inspect = None
