"""The joiner's pairing session: dial the initiator, pair on one stream, settle.

:class:`JoinerSession` dials the initiator's addresses (pinning its NodeId
when the code came as a URI that carries it), opens the ONE stream, and runs
:class:`protocol.pairing.Joiner` on it. The same actor holds the pairing
to the end, including the rare end where it voted to commit but never heard
the decision: then it keeps the device PENDING and asks the initiator again
(:class:`protocol.pairing.Resolver`, on a new connection) until the initiator
answers, however long that takes (the initiator's registry holds the truth):
every :data:`RESOLVE_RETRY` seconds at first, backing off to
:data:`RESOLVE_RETRY_MAX`, at once on :class:`ResolveNow` (the link saw the
peer use another pairing than ours: actors/node.py), and again when the node
next starts. No split brain: the two sides end on the same pairing.

The caller waits on ``result`` (a concurrent Future): the DeviceRecord, or
``errors.PairingFailed`` / ``errors.PeerUnreachable``. The caller's wait is
not the session's: after ``[pairing] resolve_timeout`` in doubt, or when the
caller gives up (:class:`CallerGaveUp`), the caller gets its answer (TIMEOUT:
"still being resolved") while a session that voted goes on resolving; one
that has not voted yet stops, and the pairing is aborted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from dataclasses import dataclass
from typing import Any

import pykka

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.backoff import Backoff
from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.pairing.device import CheckChain, Device, Joining, SasCheck
from quicpair.actors.pairing.session import PairingSessionBase, SasAnswer, tell_if_alive
from quicpair.actors.registry.actor import DeviceRecord, DeviceState
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.actors.transport.race import first_answer
from quicpair.protocol import errors
from quicpair.protocol.codes import PairingCode, format_address, split_address
from quicpair.protocol.errors import ErrorCode, QuicpairError, RegistryError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import Role
from quicpair.protocol.messages import ALPN_PAIR, DeviceInfo, PairDone
from quicpair.protocol.pairing import (
    CommitRequested,
    Joiner,
    PairingFailed,
    PairingInDoubt,
    PairingResolved,
    PairingSucceeded,
    PeerVerified,
    Resolver,
    SasCheckRequested,
)

__all__ = ["RESOLVE_RETRY", "RESOLVE_RETRY_MAX", "CallerGaveUp", "JoinerSession", "ResolveNow"]

#: Between two PairResolve attempts while in doubt (the initiator may be restarting), at first...
RESOLVE_RETRY = 1.0
#: ... backing off to this (Akka's formula, actors/kernel/backoff.py): an initiator that is
#: down for a day is asked once a minute, not 86,400 times.
RESOLVE_RETRY_MAX = 60.0


@dataclass(frozen=True, slots=True)
class ResolveNow:
    """Ask the initiator about our pairing in doubt now (the link saw it use another pairing)."""


@dataclass(frozen=True, slots=True)
class CallerGaveUp:
    """``Node.join``'s wait ended: abort if we have not voted; keep resolving if we have."""


@dataclass(frozen=True, slots=True)
class _Dialed:
    link: QuicLink | None
    error: BaseException | None


class JoinerSession(PairingSessionBase):
    """Pairs with the initiator at ``addresses`` using ``code``."""

    role = Role.JOINER

    def __init__(
        self,
        ctx: NodeContext,
        session_id: str,
        code: PairingCode | None,
        addresses: list[tuple[str, int]],
        expect: NodeId | None,
        result: concurrent.futures.Future[Any],
        *,
        resume: DeviceRecord | None = None,
        verify: bool = False,
        joining: Joining | None = None,
        checks: CheckChain | None = None,
    ) -> None:
        """``resume``: a PENDING record left in doubt by an earlier run: only ask about it.

        ``verify``: the person here asks to confirm the SAS; SAS checks go to ``checks``
        and what the session is doing to ``joining.progress``.
        """
        super().__init__(ctx, session_id)
        if (code is None) == (resume is None):
            raise ValueError("a joiner session needs a code, or a pending record to resume")
        self._code = code
        self._addresses = addresses
        self._expect = expect
        self.result = result
        self._peer: NodeId | None = None
        self._address: tuple[str, int] | None = None
        self._in_doubt: tuple[bytes, bytes] | None = None  # (pairing_id, pairing_secret)
        self._resolve_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._retry_timer: ActorTimer | None = None
        self._keys_secret: tuple[bytes, bytes] | None = None
        self._sas: tuple[str, ...] = ()
        self._confirmed: DeviceRecord | None = None  # the record the CONFIRMED write returned
        self._resume = resume
        self._voted = resume is not None
        self._dialing = False
        self._resolve_backoff = Backoff(RESOLVE_RETRY, RESOLVE_RETRY_MAX, 0.2, 1e9)
        self._verify = verify
        self._joining = joining
        self._checks = checks

    # -- connecting --------------------------------------------------------------

    def begin(self) -> None:
        record = self._resume
        if record is not None:
            # In doubt since an earlier run: go straight to PairResolve.
            self._peer = record.node_id
            self._address = self._addresses[0]
            self._keys_secret = self._in_doubt = (record.pairing_id, record.pairing_secret)
            # The record to delete if the initiator answers ABORTED (without it, a resumed
            # session that heard "not committed" left its PENDING record behind for good).
            self._pending_record = (record.node_id, record.pairing_id)
            self._resolve_until = self.ctx.clock() + self.ctx.settings.pairing.resolve_timeout
            self.ctx.counters.incr("pair.in_doubt.joiner")
            self._register_resolver()
        self._dial(self._addresses, self._expect)

    def _dial(self, addresses: list[tuple[str, int]], expect: NodeId | None) -> None:
        self._dialing = True
        ref = self.actor_ref
        ctx = self.ctx
        timeout = ctx.settings.pairing.step_timeout
        log = self.log
        given = [format_address(host, port) for host, port in addresses]
        # Both families raced, Happy-Eyeballs style (actors/transport/race.py), from our listen address.
        ordered = ctx.dial_order(given)
        source = ctx.dial_source()

        async def dial_one(address: str) -> QuicLink:
            host, port = split_address(address)
            return await dial(
                host,
                port,
                ctx.identity,
                alpn=ALPN_PAIR,
                expect=expect,
                timeout=timeout,
                idle_timeout=ctx.settings.link.idle_timeout,
                source=source,
            )

        def attempt(address: str) -> None:
            log.info("pairing.dial", address=address)
            self._progress(f"dialing {address}")

        async def run() -> None:
            if not ordered and given:
                error: BaseException = errors.PeerUnreachable(
                    f"none of the initiator's addresses ({', '.join(given)}) can be reached from this "
                    f"node's addresses{'' if source is None else f' (it listens on {source} only)'}"
                )
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(_Dialed(None, error))
                return
            try:
                link, _ = await first_answer(
                    ordered,
                    dial_one,
                    stagger=ctx.settings.link.stagger,
                    on_attempt=attempt,
                    on_failure=lambda address, exc: log.warning(
                        "pairing.dial_failed", address=address, error=str(exc)
                    ),
                )
            except QuicpairError as exc:
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(_Dialed(None, exc))
                return
            try:
                ref.tell(_Dialed(link, None))
            except pykka.ActorDeadError:
                # The session ended while we dialed: nobody will own this link.
                link.close(ErrorCode.GOING_AWAY, "pairing session ended")

        self._task = self.loop.create_task(run())

    def on_other(self, message: Any) -> Any:
        if isinstance(message, _Dialed):
            self._on_dialed(message)
            return None
        if isinstance(message, ResolveNow):
            if self._in_doubt is not None and self._retry_timer is not None:
                self._retry_timer.cancel()  # waiting for the next try: try now
                self._retry_timer = None
                self._resolve_backoff.reset()
                self.log.info("pairing.resolve_now")
                self._redial(self._resolve_targets(), self._peer_or_expected())
            return None
        if isinstance(message, CallerGaveUp):
            if not self._voted:
                # Before our vote: abort the pairing with the initiator, store nothing.
                self.stop()
            return None
        return super().on_other(message)

    def on_sas_answered(self) -> None:
        self._progress("waiting for the other device to confirm the words")

    def _progress(self, text: str) -> None:
        if self._joining is not None:
            self._joining.progress = text

    def _on_dialed(self, message: _Dialed) -> None:
        self._dialing = False
        if message.link is None:
            if self._in_doubt is not None:
                self._retry_resolve()
                return
            error = message.error
            if isinstance(error, errors.RemoteProtocolError) and error.code in (
                ErrorCode.BUSY,
                ErrorCode.UNSUPPORTED_VERSION,
            ):
                error = errors.PairingFailed(error.code, str(error.args[0]), remote=True)
            self._settle_error(error or errors.PeerUnreachable("dial failed"))
            self.stop()
            return
        link = message.link
        self.link = None
        self.stream_id = None
        self.attach(link)
        self._peer = link.peer
        self._address = link.remote_address
        self.ctx.counters.incr(
            "pair.connections.joiner" if self._in_doubt is None else "pair.resolve_connections"
        )
        self.stream_id = link.open_stream()
        self._streams_seen += 1
        doing = "asking about the outcome" if self._in_doubt is not None else "pairing"
        self._progress(f"{doing} with {link.peer.fingerprint}")
        if self._in_doubt is None:
            self.ctx.counters.incr("pair.streams.joiner")
            assert self._code is not None
            self.install(
                Joiner(
                    local=self.ctx.identity.node_id,
                    peer=link.peer,
                    code=self._code,
                    device_info=DeviceInfo(
                        name=self.ctx.settings.node.name, addresses=self.ctx.addresses_for(link)
                    ),
                    now=self.ctx.clock(),
                    rand=self.ctx.rand,
                    step_timeout=self.ctx.settings.pairing.step_timeout,
                    verify=self._verify,
                    verify_timeout=self.ctx.settings.pairing.verify_timeout,
                )
            )
        else:
            pairing_id, secret = self._in_doubt
            self.install(
                Resolver(
                    local=self.ctx.identity.node_id,
                    peer=link.peer,
                    pairing_id=pairing_id,
                    pairing_secret=secret,
                    now=self.ctx.clock(),
                    step_timeout=self.ctx.settings.pairing.step_timeout,
                )
            )
        self.pump()

    # -- machine events --------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        assert self._peer is not None
        if isinstance(event, SasCheckRequested):
            ref = self.actor_ref
            check = SasCheck(
                session=self.session_id,
                sas=event.sas,
                peer=self._peer,
                peer_name="",
                answer=lambda yes: tell_if_alive(ref, SasAnswer(yes)),
                outcome=self.result,
            )
            self.log.info("pairing.sas_check", sas=" ".join(event.sas))
            self._progress("waiting for the SAS words to be confirmed")
            if self._checks is None:
                check.refuse()
            else:
                self._checks.put(check)
        elif isinstance(event, PeerVerified):
            self._progress("storing the pairing")
            self.log.info(
                "pairing.peer_verified", peer_name=event.peer_info.name, sas=" ".join(event.keys.sas)
            )
            self._keys_secret = (event.keys.pairing_id, event.keys.pairing_secret)
            self._sas = event.keys.sas
            # Durable before the vote (PairDone): the initiator may commit on it (PROTOCOL.md 10.5).
            self.store_pending(self._peer, event.peer_info, event.keys, what="pending_stored", durable=True)
        elif isinstance(event, CommitRequested):
            assert isinstance(self.machine, Joiner) and self.machine.pairing_id is not None
            self.kill_point("joiner_before_confirm")
            self._commit(self.machine.pairing_id)
        elif isinstance(event, PairingSucceeded):
            self.pending_confirmed()
            self.ctx.counters.incr("pair.completed.joiner")
            keys = event.keys.for_role(Role.JOINER)
            self.log.info(
                "pairing.completed",
                peer_name=event.peer_info.name,
                connections=self.connections,
                streams=self._streams_seen,
                sas=" ".join(event.keys.sas),
                send_key_fp=keys.send_fingerprint,
                receive_key_fp=keys.receive_fingerprint,
            )
            self._on_record(self._confirmed)
        elif isinstance(event, PairingFailed):
            if event.pending_must_be_deleted:
                self.forget_pending()
            self.ctx.counters.incr("pair.failed.joiner")
            self.log.warning("pairing.failed", code=event.code.name, remote=event.remote, detail=event.detail)
            # The detail (with the machine's state) is in the log; people get the code's meaning.
            self._settle_error(self.failure_for(event.code, event.remote))
        elif isinstance(event, PairingInDoubt):
            self._on_in_doubt(event)
        elif isinstance(event, PairingResolved):
            self.log.info("pairing.resolved", committed=event.committed)
            self._in_doubt = None
            self._unregister_resolver()
            if event.committed:
                self._commit(event.pairing_id)
                self.ctx.counters.incr("pair.completed.joiner")
                self.log.info("pairing.completed", resolved=True, connections=self.connections)
            else:
                self.forget_pending()
                self._settle_error(errors.PairingFailed(ErrorCode.ABORTED, remote=True))

    def _commit(self, pairing_id: bytes) -> None:
        assert self._peer is not None
        # Not fsynced (PROTOCOL.md 10.5): lost with the machine's power, it leaves the durable
        # PENDING record, which the next start resolves to CONFIRMED with the initiator.
        self.write("committed", "confirm_and_get", self._peer, pairing_id, self.ctx.wall_clock(), False)

    def _on_in_doubt(self, event: PairingInDoubt) -> None:
        secret = self._keys_secret
        first = self._in_doubt is None
        if secret is None:
            self._settle_error(errors.PairingFailed(ErrorCode.ABORTED, "in doubt without a stored pairing"))
            return
        self._in_doubt = secret
        if first:
            self.ctx.counters.incr("pair.in_doubt.joiner")
            self._resolve_until = self.ctx.clock() + self.ctx.settings.pairing.resolve_timeout
            self.log.warning("pairing.in_doubt", resolve_timeout=self.ctx.settings.pairing.resolve_timeout)
            self._register_resolver()

    def connection_done(self) -> None:
        if self._in_doubt is not None:  # even when the caller has its answer already
            self._retry_resolve()
        else:
            self.stop()

    def _retry_resolve(self) -> None:
        if (self._retry_timer is not None and not self._retry_timer.cancelled()) or self._dialing:
            return
        now = self.ctx.clock()
        if now >= self._resolve_until and not self.result.done():
            # The caller's wait ends here; the resolution does not (module docstring).
            self.log.warning("pairing.unresolved", still_resolving=True)
            self._settle_error(
                errors.PairingFailed(
                    ErrorCode.TIMEOUT,
                    "the other device did not say whether it kept the pairing; this device keeps asking "
                    "it (now, at every contact, and after a restart) and ends on the same pairing",
                )
            )
        delay = self._resolve_backoff.next_delay(now)
        self.log.info("pairing.resolve_retry", delay=round(delay, 3))
        self._retry_timer = self.call_later(
            delay, self._redial, self._resolve_targets(), self._peer_or_expected()
        )

    def _resolve_targets(self) -> list[tuple[str, int]]:
        # Where it answered last, then every address it gave us.
        first = [self._address] if self._address is not None else []
        return [*first, *(a for a in self._addresses if a not in first)]

    def _peer_or_expected(self) -> NodeId | None:
        return self._peer if self._peer is not None else self._expect

    def _redial(self, addresses: list[tuple[str, int]], peer: NodeId | None) -> None:
        self._retry_timer = None
        if not self._dialing:
            self._dial(addresses, peer)

    def _register_resolver(self) -> None:
        peer = self._peer_or_expected()
        if peer is not None:
            self.ctx.resolvers[peer] = self.actor_ref

    def _unregister_resolver(self) -> None:
        for peer, ref in list(self.ctx.resolvers.items()):
            if ref is self.actor_ref:
                del self.ctx.resolvers[peer]

    # -- durable writes ----------------------------------------------------------

    def on_write_done(self, what: str, result: Any) -> None:
        machine = self.machine
        now = self.ctx.clock()
        if what == "pending_stored" and isinstance(machine, Joiner):
            self._voted = True  # PairDone goes out now: from here on, never forget the record
            self.kill_point("joiner_before_vote")
            machine.pending_stored(now)
        elif what == "committed":
            if result is not None:
                self.kill_point("joiner_after_confirm")
                self.pending_confirmed()
                self._confirmed = result
                if isinstance(machine, Joiner):
                    if not machine.is_finished:
                        machine.committed(now)  # PairingSucceeded: handle_event reports the record
                else:
                    self._on_record(result)  # resolved after doubt
            else:
                self.log.error("pairing.confirm_refused")

    def _on_record(self, record: DeviceRecord | None) -> None:
        """The pairing is committed here: start its link, hand the device to the caller."""
        if isinstance(record, DeviceRecord):
            self._announce_paired(record)
            if not self.result.done():
                self.result.set_result(Device.from_record(record, self._sas))

    def storage_failed(self, what: str, error: RegistryError) -> None:
        super().storage_failed(what, error)
        if self._voted:
            # After our vote the machine cannot fail, only doubt: the record stays
            # PENDING (never used as paired) and the pairing is settled when the node
            # next starts. Settled here, the session stops instead of asking again
            # while the disk is still full.
            self._settle_error(
                errors.PairingFailed(
                    ErrorCode.STORAGE_ERROR,
                    f"this device could not store the pairing ({error}); it stays pending "
                    "and is settled with the other device when this node next starts",
                )
            )

    def may_forget_pending(self) -> bool:
        return not self._voted

    def _settle_error(self, error: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(error)

    # -- lifecycle -----------------------------------------------------------------

    def on_stop(self) -> None:
        self._unregister_resolver()
        if self._task is not None:
            self._task.cancel()
        super().on_stop()
        self._settle_error(errors.PairingFailed(ErrorCode.GOING_AWAY, "the node stopped during the pairing"))

    def crashed(self, exc: BaseException | None) -> None:
        self._unregister_resolver()
        if self._task is not None:
            self._task.cancel()
        self._settle_error(errors.PairingFailed(ErrorCode.INTERNAL_ERROR, f"pairing session failed: {exc!r}"))

    def _announce_paired(self, record: Any) -> None:
        # The new device gets its link now (actors/links/supervisor.py), not at the next node start.
        links = self.ctx.links
        if links is not None and isinstance(record, DeviceRecord) and record.state is DeviceState.CONFIRMED:
            links.peer_paired(record)

    # -- fault injection (``[testing]``; all off on a real device) ---------------

    def drop_outgoing(self, data: bytes) -> bool:
        if not self.ctx.settings.testing.drop_pair_done:
            return False
        return self.dropping(data, PairDone)
