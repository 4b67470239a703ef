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

from typing import Any

from quicpair.actors.pairing.device import Device
from quicpair.actors.pairing.session import PairingSessionBase, SessionCrash
from quicpair.actors.registry.actor import DeviceRecord, DeviceState
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import errors
from quicpair.protocol.codebook import CodeState
from quicpair.protocol.codes import format_address
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
)

__all__ = ["InitiatorSession"]

_FINAL_CODE_ERRORS = {
    CodeState.BURNED: ErrorCode.CODE_USED_UP,
    CodeState.EXPIRED: ErrorCode.CODE_EXPIRED,
    CodeState.CANCELLED: ErrorCode.CODE_USED_UP,
}


class InitiatorSession(PairingSessionBase):
    """Holds one pairing connection accepted by the listener."""

    role = Role.INITIATOR

    def __init__(self, ctx: Any, session_id: str, link: QuicLink) -> None:
        super().__init__(ctx, session_id)
        self._link_to_attach = link
        self._peer = link.peer
        self._sas: tuple[str, ...] = ()
        self._inspect = FrameDecoder() if ctx.settings.testing.crash_session_after else None

    def session_ended(self) -> None:
        # The listener counted this session when it spawned it.
        self.ctx.active_sessions -= 1

    def begin(self) -> None:
        ctx = self.ctx
        self.machine = Initiator(
            local=ctx.identity.node_id,
            peer=self._peer,
            codebook=ctx.codebook,
            device_info=DeviceInfo(name=ctx.settings.node.name, addresses=ctx.direct_addresses()),
            now=ctx.clock(),
            rand=ctx.rand,
            step_timeout=ctx.settings.pairing.step_timeout,
        )
        self.attach(self._link_to_attach)
        self.pump()

    def abandon(self, exc: BaseException) -> None:
        link = self._link_to_attach
        if not link.is_closed:
            link.close(ErrorCode.INTERNAL_ERROR, "pairing session failed to start")

    # -- machine events --------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        if isinstance(event, PeerVerified):
            self._sas = event.keys.sas
            self.log.info(
                "pairing.peer_verified", peer_name=event.peer_info.name, sas=" ".join(event.keys.sas)
            )
            host, port = self._link_to_attach.remote_address
            self.store_pending(self._peer, event.peer_info, event.keys, format_address(host, port))
        elif isinstance(event, CommitRequested):
            machine = self.machine
            assert isinstance(machine, Initiator) and machine.pairing_id is not None
            self.write("committed", "confirm", self._peer, machine.pairing_id, self.ctx.wall_clock())
        elif isinstance(event, PairingSucceeded):
            self._sas = event.keys.sas
            self.pending_confirmed()
            self.ctx.counters.incr("pair.completed.initiator")
            self.log.info(
                "pairing.completed",
                peer_name=event.peer_info.name,
                connections=self.connections,
                streams=self._streams_seen,
                send_key=event.keys.for_role(Role.INITIATOR).send_fingerprint,
                receive_key=event.keys.for_role(Role.INITIATOR).receive_fingerprint,
            )
            self.write("record", "get", self._peer)
        elif isinstance(event, PairingFailed):
            self._on_failed(event)
        elif isinstance(event, ResolveRequested):
            self.log.info("pairing.resolve_requested")
            self.write("resolve", "find_by_pairing_id", event.pairing_id)
        elif isinstance(event, ResolveAnswered):
            self.log.info("pairing.resolve_answered", committed=event.committed)
            if event.pending_must_be_deleted:
                self._pending_record = (self._peer, event.pairing_id)
                self.forget_pending()

    def _on_failed(self, event: PairingFailed) -> None:
        if event.pending_must_be_deleted:
            self.forget_pending()
        self.ctx.counters.incr("pair.failed.initiator")
        self.log.warning("pairing.failed", code=event.code.name, remote=event.remote, detail=event.detail)
        nameplate = self._nameplate()
        offer = self.ctx.offers.get(nameplate) if nameplate is not None else None
        if offer is None or nameplate is None:
            return
        offer.attempts.append(errors.describe_code(event.code))
        if event.code is ErrorCode.STORAGE_ERROR:
            # A disk that is full here or there fails the next attempt too: whoever
            # shows the code learns it now, not when the code expires.
            self._close_offer(nameplate, self.failure_for(event.code, event.remote))
            return
        status = self.ctx.codebook.describe(nameplate, self.ctx.clock())
        if status is not None and status.state in _FINAL_CODE_ERRORS and not offer.result.done():
            code = _FINAL_CODE_ERRORS[status.state]
            self.log.warning("pairing.code_closed", nameplate=nameplate, state=status.state.value)
            offer.result.set_exception(
                errors.PairingFailed(code, f"{errors.describe_code(code)} after: {', '.join(offer.attempts)}")
            )
            del self.ctx.offers[nameplate]

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
        if what == "pending_stored":
            machine.pending_stored(now)
        elif what == "committed":
            if machine.is_finished:
                # The commit step's deadline passed while the write was queued: the
                # registry's answer decides, not the deadline (the joiner, in doubt,
                # will learn it with PairResolve).
                if result:
                    self.log.warning("pairing.committed_late")
                    self.ctx.counters.incr("pair.completed.initiator")
                    self.write("record", "get", self._peer)
            elif result:
                machine.committed(now)
            else:
                machine.commit_refused(now)
        elif what == "record":
            self._announce_paired(result)
            nameplate = self._nameplate()
            offer = self.ctx.offers.pop(nameplate, None) if nameplate is not None else None
            if offer is not None and not offer.result.done() and isinstance(result, DeviceRecord):
                offer.result.set_result(Device.from_record(result, self._sas))
        elif what == "resolve":
            record = result if isinstance(result, DeviceRecord) else None
            if record is None or record.node_id != self._peer:
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
