"""The listener actor: owns the node's UDP port and routes each connection by ALPN.

Pairing connections (``quicpair/pair/1``) each get a new
:class:`~quicpair.actors.pairing.initiator.InitiatorSession`, a TEMPORARY child of the
``sessions`` supervisor; beyond ``[node] max_concurrent_pairings`` live
sessions a new pairing connection is refused with BUSY during the handshake,
before it costs a session. Link connections (``quicpair/link/1``) are handed
to the link owner registered in the context, and admitted only for NodeIds
the registry holds as paired (confirmed, not revoked).

The listener also opens pairing codes (the codebook lives in the context,
confined to the loop thread, so a listener restart does not forget codes)
and fails an offer whose code expired unused.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pykka

from quicpair.actors.context import NodeContext, Offer
from quicpair.actors.kernel.exits import Supervised
from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loopactor import ActorTimer, LoopActor
from quicpair.actors.kernel.replies import call_async
from quicpair.actors.kernel.supervisor import ChildSpec, Restart
from quicpair.actors.pairing.device import CheckChain
from quicpair.actors.pairing.initiator import Adopt, InitiatorSession
from quicpair.actors.transport.listener import Listener, listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import errors
from quicpair.protocol.codes import PairingUri
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import NodeId
from quicpair.protocol.messages import ALPN_LINK, ALPN_PAIR

__all__ = ["ListenerActor"]


class ListenerActor(Supervised, LoopActor):
    """Owns the UDP socket; a permanent child of the node's root supervisor."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.log = (ctx.log or get_logger()).bind(actor="listener")
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None
        self._expiry: ActorTimer | None = None
        #: A session started ahead of time, handed the next pairing connection (Adopt).
        self._spare: Any = None
        self._spare_starting = False

    # -- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        # Ours before the port is bound: Node.start returns once it is, and Node.pair uses this
        # ref at once (the supervisor's own record of it may come a moment later).
        self.ctx.listener = self.actor_ref
        ctx = self.ctx
        if ctx.bound.done():
            # A restarted listener binds again: keep the port it had, so the
            # addresses peers stored stay right.
            host, port = ctx.bound.result()
            ctx.bound = type(ctx.bound)()
        else:
            host, port = ctx.settings.node.listen_host, ctx.settings.node.listen_port
        ref = self.actor_ref

        async def bind() -> None:
            try:
                self._listener = await listen(
                    host,
                    port,
                    ctx.identity,
                    alpns=[ALPN_PAIR, ALPN_LINK],
                    admit=self._admit,
                    on_connection=self._on_connection,
                    idle_timeout=ctx.settings.link.idle_timeout,
                    # The dialing side of a link sends the keep-alive PINGs; accepted
                    # connections (links and pairings alike) send none of their own.
                    keepalive_interval=None,
                    dead_after_ptos=ctx.settings.link.dead_after_ptos,
                    reset_key=ctx.reset_key,
                    on_notice=self._on_notice,
                    max_connections=ctx.settings.node.max_connections,
                )
            except errors.QuicpairError as exc:
                if not ctx.bound.done():
                    ctx.bound.set_exception(exc)
                ref.tell(_BindFailed(exc))
                return
            address = self._listener.address
            ctx.port = self._listener
            if self._listener.fallback is not None:
                self.log.warning("listener.ipv4_only", reason=self._listener.fallback)
            self.log.info("listener.bound", host=address[0], port=address[1])
            if not ctx.bound.done():
                ctx.bound.set_result(address)

        self._task = self.loop.create_task(bind())
        self._start_spare()

    def on_stop(self) -> None:
        # GOING_AWAY: peers must not treat our shutdown as a fault (DESIGN.md).
        self._release(ErrorCode.GOING_AWAY, "node shutting down")

    def on_failure(self, *exc_info: Any) -> None:
        # pykka calls on_failure INSTEAD of on_stop after a crash: the port must be released
        # all the same, or the restarted listener cannot bind it again (EADDRINUSE).
        self._release(ErrorCode.INTERNAL_ERROR, "listener failed")

    def _release(self, code: ErrorCode, reason: str) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.stop(block=False)
        if self._task is not None:
            self._task.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._listener is not None:
            if self.ctx.port is self._listener:
                self.ctx.port = None
            self._listener.close(code, reason)
            self._listener = None
            self.log.info("listener.closed", code=code.name)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _BindFailed):
            raise message.error
        if isinstance(message, _Expire):
            self._expire_offers()
            return None
        raise TypeError(f"listener got an unexpected message {message!r}")

    # -- codes -----------------------------------------------------------------

    def open_code(self, verify: bool = False) -> tuple[str, str, int, float]:
        """Open a code; returns (code text, URI text, nameplate, seconds to expiry).

        ``verify``: each pairing with it waits for both people to confirm the SAS.
        """
        ctx = self.ctx
        now = ctx.clock()
        pairing = ctx.settings.pairing
        code = ctx.codebook.open(now, ctx.rand, expiry=pairing.code_expiry, max_attempts=pairing.max_attempts)
        ctx.offers[code.nameplate] = Offer(code.nameplate, verify=verify, checks=CheckChain())
        uri = PairingUri(code, ctx.identity.node_id, tuple(ctx.uri_addresses()))
        self.log.info("pairing.code_opened", nameplate=code.nameplate, expires_in=pairing.code_expiry)
        self._arm_expiry()
        return code.text, uri.text, code.nameplate, pairing.code_expiry

    def offer_future(self, nameplate: int) -> Any:
        """(the offer's result future, its CheckChain), or None once it ended."""
        offer = self.ctx.offers.get(nameplate)
        return None if offer is None else (offer.result, offer.checks)

    def cancel_code(self, nameplate: int) -> bool:
        offer = self.ctx.offers.pop(nameplate, None)
        if offer is None:
            return False
        self.ctx.codebook.cancel(nameplate)
        if not offer.result.done():
            offer.result.set_exception(
                errors.PairingFailed(ErrorCode.CODE_CANCELLED, "the code was cancelled")
            )
        self._arm_expiry()
        return True

    def _arm_expiry(self) -> None:
        # Called whenever the open codes changed: discovery advertises their nameplates.
        if self.ctx.offers_changed is not None:
            self.ctx.offers_changed()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        when = self.ctx.codebook.next_expiry(self.ctx.clock())
        if when is not None:
            self._expiry = self.call_later(
                max(when - self.ctx.clock(), 0.0) + 0.01, self.actor_ref.tell, _Expire()
            )

    def _expire_offers(self) -> None:
        now = self.ctx.clock()
        for nameplate, offer in list(self.ctx.offers.items()):
            status = self.ctx.codebook.describe(nameplate, now)
            if status is None or status.state.is_final:
                del self.ctx.offers[nameplate]
                if not offer.result.done():
                    self.log.info("pairing.code_expired", nameplate=nameplate)
                    offer.result.set_exception(errors.PairingFailed(ErrorCode.CODE_EXPIRED))
        self._arm_expiry()

    # -- connections -------------------------------------------------------------

    def _admit(self, peer: NodeId, alpn: str) -> ErrorCode | None:
        if peer == self.ctx.identity.node_id:
            # Our own identity on the other end: a node dialing itself (or a stolen key).
            self.log.warning("listener.refused_self", alpn=alpn)
            return ErrorCode.PROTOCOL_VIOLATION
        if alpn == ALPN_PAIR:
            if self.ctx.active_sessions >= self.ctx.settings.node.max_concurrent_pairings:
                log = self.ctx.unauth_log or self.log
                log.warning("pairing.shed", peer=peer.fingerprint, active=self.ctx.active_sessions)
                self.ctx.counters.incr("pair.shed")
                return ErrorCode.BUSY
            return None
        links = self.ctx.links
        if links is None:
            # The links supervisor is (re)starting: "try again", never UNKNOWN_PEER, which a
            # peer delivering an unpair would take as "it no longer knows me" (actors/links/supervisor.py).
            return ErrorCode.BUSY
        verdict: ErrorCode | None = links.admit(peer)
        return verdict

    def _on_notice(self, datagram: bytes, addr: Any) -> None:
        links = self.ctx.links
        if links is not None:
            links.notice(datagram, addr)

    def _on_connection(self, link: QuicLink) -> None:
        if link.alpn == ALPN_PAIR:
            self.ctx.counters.incr("pair.connections.initiator")
            self._start_session(link)
        elif self.ctx.links is not None:
            self.ctx.links.accepted(link)
        else:
            link.close(ErrorCode.UNKNOWN_PEER, "no link owner")

    def _start_spare(self) -> None:
        """Start the next spare session, off any pairing's path (InitiatorSession, "spare")."""
        sessions = self.ctx.sessions
        if sessions is None or self._spare is not None or self._spare_starting:
            return
        name = f"pair-i-{self.ctx.next_id()}"
        ctx = self.ctx
        spec = ChildSpec(
            name,
            lambda: InitiatorSession.start_on(ctx.loop_thread, ctx, name, None),
            restart=Restart.TEMPORARY,
        )
        self._spare_starting = True

        def started(fut: asyncio.Future[Any]) -> None:
            self._spare_starting = False
            if not fut.cancelled() and fut.exception() is None:
                self._spare = fut.result()

        call_async(sessions, "start_child", spec).add_done_callback(started)

    def _start_session(self, link: QuicLink) -> None:
        sessions = self.ctx.sessions
        if sessions is None:
            link.close(ErrorCode.BUSY, "node is starting")
            return
        ctx = self.ctx
        # Counted now, not in the session's on_start, so a burst of handshakes
        # cannot overshoot the limit; the session gives it back when it ends.
        ctx.active_sessions += 1
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                spare.tell(Adopt(link))
            except pykka.ActorDeadError:
                pass  # stopped meanwhile: start one for this connection below
            else:
                self._start_spare()
                return
        self._start_spare()
        name = f"pair-i-{self.ctx.next_id()}"
        spec = ChildSpec(
            name,
            lambda: InitiatorSession.start_on(ctx.loop_thread, ctx, name, link),
            restart=Restart.TEMPORARY,
        )
        log = self.log

        def started(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                ctx.active_sessions -= 1
                log.error(
                    "pairing.session_start_failed", error=repr(None if fut.cancelled() else fut.exception())
                )
                if not link.is_closed:
                    link.close(ErrorCode.INTERNAL_ERROR, "could not start a session")

        call_async(sessions, "start_child", spec).add_done_callback(started)


class _BindFailed:
    def __init__(self, error: errors.QuicpairError) -> None:
        self.error = error


class _Expire:
    pass
