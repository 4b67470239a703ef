"""The joiner's pairing session: dial the initiator, pair on one stream, settle.

:class:`JoinerSession` dials the initiator's addresses (pinning its NodeId
when the code came as a URI that carries it), opens the ONE stream, and runs
:class:`protocol.pairing.Joiner` on it. The same actor holds the pairing
to the end, including the rare end where it voted to commit but never heard
the decision: then it keeps the device PENDING and asks the initiator again
(:class:`protocol.pairing.Resolver`, on a new connection) until
``[pairing] resolve_timeout``; the initiator's registry holds the truth.

The caller waits on ``result`` (a concurrent Future): the DeviceRecord, or
``errors.PairingFailed`` / ``errors.PeerUnreachable``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from dataclasses import dataclass
from typing import Any

import pykka

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.pairing.device import Device
from quicpair.actors.pairing.session import PairingSessionBase
from quicpair.actors.registry.actor import DeviceRecord, DeviceState
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import errors
from quicpair.protocol.codes import PairingCode, format_address
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
)

__all__ = ["JoinerSession"]

#: Between two PairResolve attempts while in doubt (the initiator may be restarting).
RESOLVE_RETRY = 1.0


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
    ) -> None:
        """``resume``: a PENDING record left in doubt by an earlier run: only ask about it."""
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
        self._resume = resume
        self._voted = resume is not None

    # -- connecting --------------------------------------------------------------

    def begin(self) -> None:
        record = self._resume
        if record is not None:
            # In doubt since an earlier run: go straight to PairResolve.
            self._peer = record.node_id
            self._address = self._addresses[0]
            self._keys_secret = self._in_doubt = (record.pairing_id, record.pairing_secret)
            self._resolve_until = self.ctx.clock() + self.ctx.settings.pairing.resolve_timeout
            self.ctx.counters.incr("pair.in_doubt.joiner")
        self._dial(self._addresses, self._expect)

    def _dial(self, addresses: list[tuple[str, int]], expect: NodeId | None) -> None:
        ref = self.actor_ref
        ctx = self.ctx
        timeout = ctx.settings.pairing.step_timeout
        log = self.log

        async def run() -> None:
            last: BaseException | None = None
            for host, port in addresses:
                log.info("pairing.dial", address=format_address(host, port))
                try:
                    link = await dial(
                        host,
                        port,
                        ctx.identity,
                        alpn=ALPN_PAIR,
                        expect=expect,
                        timeout=timeout,
                        idle_timeout=ctx.settings.link.idle_timeout,
                    )
                except QuicpairError as exc:
                    log.warning("pairing.dial_failed", address=format_address(host, port), error=str(exc))
                    last = exc
                    continue
                try:
                    ref.tell(_Dialed(link, None))
                except pykka.ActorDeadError:
                    # The session ended while we dialed: nobody will own this link.
                    link.close(ErrorCode.GOING_AWAY, "pairing session ended")
                return
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(_Dialed(None, last or errors.PeerUnreachable("no address to dial")))

        self._task = self.loop.create_task(run())

    def on_other(self, message: Any) -> Any:
        if isinstance(message, _Dialed):
            self._on_dialed(message)
            return None
        return super().on_other(message)

    def _on_dialed(self, message: _Dialed) -> None:
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
        if self._in_doubt is None:
            self.ctx.counters.incr("pair.streams.joiner")
            assert self._code is not None
            self.install(
                Joiner(
                    local=self.ctx.identity.node_id,
                    peer=link.peer,
                    code=self._code,
                    device_info=DeviceInfo(
                        name=self.ctx.settings.node.name, addresses=self.ctx.direct_addresses()
                    ),
                    now=self.ctx.clock(),
                    rand=self.ctx.rand,
                    step_timeout=self.ctx.settings.pairing.step_timeout,
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
        if isinstance(event, PeerVerified):
            self.log.info(
                "pairing.peer_verified", peer_name=event.peer_info.name, sas=" ".join(event.keys.sas)
            )
            assert self._address is not None
            observed = format_address(*self._address)
            self._keys_secret = (event.keys.pairing_id, event.keys.pairing_secret)
            self._sas = event.keys.sas
            self.store_pending(self._peer, event.peer_info, event.keys, observed)
        elif isinstance(event, CommitRequested):
            assert isinstance(self.machine, Joiner) and self.machine.pairing_id is not None
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
                send_key=keys.send_fingerprint,
                receive_key=keys.receive_fingerprint,
            )
            self.write("record", "get", self._peer)
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
            if event.committed:
                self._commit(event.pairing_id)
                self.ctx.counters.incr("pair.completed.joiner")
                self.log.info("pairing.completed", resolved=True, connections=self.connections)
                self.write("record", "get", self._peer)
            else:
                self.forget_pending()
                self._settle_error(errors.PairingFailed(ErrorCode.ABORTED, remote=True))

    def _commit(self, pairing_id: bytes) -> None:
        assert self._peer is not None
        self.write("committed", "confirm", self._peer, pairing_id, self.ctx.wall_clock())

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

    def connection_done(self) -> None:
        if self._in_doubt is not None and not self.result.done():
            self._retry_resolve()
        else:
            self.stop()

    def _retry_resolve(self) -> None:
        if self._retry_timer is not None and not self._retry_timer.cancelled():
            return
        if self.ctx.clock() >= self._resolve_until:
            self.log.warning("pairing.unresolved")
            self._settle_error(
                errors.PairingFailed(
                    ErrorCode.TIMEOUT,
                    "the initiator did not answer in time; the device stays pending and is asked "
                    "about again when this node next starts",
                )
            )
            self.stop()
            return
        assert self._address is not None and self._peer is not None
        # Where it answered last, then every address it gave us.
        targets = [self._address, *(a for a in self._addresses if a != self._address)]
        self._retry_timer = self.call_later(RESOLVE_RETRY, self._redial, targets, self._peer)

    def _redial(self, addresses: list[tuple[str, int]], peer: NodeId) -> None:
        self._retry_timer = None
        self._dial(addresses, peer)

    # -- durable writes ----------------------------------------------------------

    def on_write_done(self, what: str, result: Any) -> None:
        machine = self.machine
        now = self.ctx.clock()
        if what == "pending_stored" and isinstance(machine, Joiner):
            self._voted = True  # PairDone goes out now: from here on, never forget the record
            machine.pending_stored(now)
        elif what == "committed":
            if result:
                self.pending_confirmed()
                if isinstance(machine, Joiner) and not machine.is_finished:
                    machine.committed(now)
            else:
                self.log.error("pairing.confirm_refused")
        elif what == "record" and isinstance(result, DeviceRecord):
            self._announce_paired(result)
            if not self.result.done():
                self.result.set_result(Device.from_record(result, self._sas))

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
        if self._task is not None:
            self._task.cancel()
        super().on_stop()
        self._settle_error(errors.PairingFailed(ErrorCode.GOING_AWAY, "the node stopped during the pairing"))

    def crashed(self, exc: BaseException | None) -> None:
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
