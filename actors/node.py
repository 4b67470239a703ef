"""The node: one device's runtime, and the Python API people embed.

::

    with Node(home_a, settings) as alice, Node(home_b, settings) as bob:
        offer = alice.pair()                 # offer.code "417-apple-zebra-cloud", offer.uri
        device = bob.join(offer.uri)         # blocks until paired (or PairingFailed)
        assert offer.wait(10).node_id == bob.node_id

Once paired, the two nodes keep a link (actors/links/supervisor.py)::

    alice.send(bob.node_id, b"hello", timeout=5)    # PeerUnreachable if the link stays down
    bob.subscribe(lambda peer, payload: ...)        # or: bob.receive(timeout=5)
    alice.unpair(bob.node_id)                       # True: Bob was told now; False: at next contact

Supervision tree (``rest_for_one``: a child depends on those started before it)::

    node (Supervisor, rest_for_one)
    ├── registry   RegistryActor (ThreadingActor; SQLite in the home)   permanent
    ├── sessions   Supervisor (one_for_one) of pairing sessions          permanent
    │   └── pair-i-N / pair-j-N  Initiator/JoinerSession (LoopActor)    temporary
    ├── links      LinksActor (LoopActor; the reconnection supervisor)   permanent
    │   └── link-<fingerprint>  LinkWorker (LoopActor), one per paired device
    ├── listener   ListenerActor (LoopActor; the UDP port)               permanent
    └── discovery  DiscoveryActor (LoopActor; mDNS, if enabled)          permanent

All QUIC I/O runs on one event-loop thread owned by the node. Methods of
:class:`Node` block the calling thread (bounded by their timeouts) and must
not be called from that loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykka

from quicpair.actors.context import NodeContext
from quicpair.actors.discovery.actor import RESOLVE_NAMEPLATE_TIMEOUT, DiscoveryActor
from quicpair.actors.faults import crash_actor
from quicpair.actors.kernel.counters import Counters
from quicpair.actors.kernel.exits import Supervised
from quicpair.actors.kernel.logs import RateLimitedLog, get_logger, set_level
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.replies import call_async
from quicpair.actors.kernel.supervisor import ChildSpec, Restart, Strategy, Supervisor
from quicpair.actors.links.inbox import Inbox, ReceivedMessage
from quicpair.actors.links.messages import InboxRoom, LinkStatus, SendBatch, SendRequest, SendTally
from quicpair.actors.links.supervisor import LinksActor, UnpairCommand, load_link_records
from quicpair.actors.pairing.device import CheckChain, Device, Joining, PairingOffer, SasCheck, answer_check
from quicpair.actors.pairing.joiner import CallerGaveUp, JoinerSession, ResolveNow
from quicpair.actors.pairing.listener import ListenerActor
from quicpair.actors.registry.actor import (
    DeviceRecord,
    DeviceState,
    QueuedMessage,
    RegistryActor,
    RegistryStore,
)
from quicpair.actors.transport.tls import enable_key_log
from quicpair.config.live import SettingsChange, apply_live
from quicpair.config.settings import Settings, load_settings
from quicpair.protocol import errors
from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import format_address, normalize_address, parse_code_or_uri, split_address
from quicpair.protocol.errors import ErrorCode, IdentityError
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.keys import Role
from quicpair.protocol.messages import MAX_APP_PAYLOAD

__all__ = ["Node", "prepare_home"]

IDENTITY_FILE = "identity.pem"
REGISTRY_FILE = "registry.sqlite3"
#: How long ``join`` with a bare code waits for mDNS to come up after the node started.
DISCOVERY_START_WAIT = 5.0
#: Seconds a blocking API call may wait on an actor before giving up.
CALL_TIMEOUT = 10.0
#: Default bound of ``Node.send`` on a link that is down, and of ``Node.unpair``'s wait
#: for the peer's acknowledgement.
SEND_TIMEOUT = 10.0
UNPAIR_TIMEOUT = 5.0
#: Bound on the cleanup tasks of stopped actors (mDNS goodbyes: 3 packets ~250 ms apart).
CLOSING_TIMEOUT = 3.0
#: A pairing mismatch seen on a link starts a resolution with that peer at most this often.
MISMATCH_RESOLVE_INTERVAL = 5.0


class _Registry(Supervised, RegistryActor):
    """The registry actor as a supervised child."""


class Node:
    """One quicpair node: identity, registry, listener and sessions, under supervision."""

    def __init__(
        self,
        home: Path | str,
        settings: Settings | None = None,
        *,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        """``on_failure(exc)`` is called (from an actor thread) if the node fails for good."""
        self.home = Path(home)
        self.settings = settings if settings is not None else load_settings()
        self._ctx: NodeContext | None = None
        self._root: pykka.ActorRef[Any] | None = None
        self._loop: EventLoopThread | None = None
        self._escalated: BaseException | None = None
        self._on_failure = on_failure
        self._mismatch_seen: dict[NodeId, float] = {}
        self._registry_proxy: tuple[pykka.ActorRef[Any], Any] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Open the home, start the actors and bind the port; raises on any failure, leaving nothing."""
        if self._root is not None:
            raise RuntimeError("the node is already started")
        prepare_home(self.home)
        set_level(self.settings.log.level)
        # A taken port is the commonest reason a node cannot start: say so before anything
        # else runs (and logs). The listener's own bind still reports a race the same way.
        _check_port(self.settings.node.listen_host, self.settings.node.listen_port)
        identity = Identity.load_or_create(self.home / IDENTITY_FILE)
        key_log = self.settings.log.tls_key_log or os.environ.get("SSLKEYLOGFILE", "")
        if key_log:
            try:
                enable_key_log(key_log)
            except OSError as exc:
                raise errors.ConfigError(f"cannot open the TLS key log {key_log}: {exc.strerror}") from exc
        # Open and check the registry once up front, so a corrupt or newer
        # file is a clear error from start(), not a restart loop; and recover
        # pairings a previous run left half-done (see _recover_pairings).
        with RegistryStore(self.home / REGISTRY_FILE) as store:
            in_doubt = _recover_pairings(store)
            # Delivery numbers of this run start above every number of an earlier run.
            epoch = store.next_send_epoch()
            # Acknowledged messages the application had not taken when the node stopped.
            undelivered = store.inbox()
        loop = EventLoopThread(f"quicpair-loop-{identity.node_id.fingerprint}").start()
        ctx = NodeContext(
            identity=identity,
            settings=self.settings,
            home=self.home,
            counters=Counters(),
            loop_thread=loop,
            log=get_logger(node=identity.node_id.fingerprint),
            send_epoch=epoch,
            codebook=Codebook(max_open=self.settings.pairing.max_open_codes),
        )
        ctx.inbox = Inbox(
            f"quicpair-{identity.node_id.fingerprint}",
            ctx.counters,
            ctx.log,
            limit=self.settings.link.inbox_limit,
            limit_bytes=self.settings.link.inbox_limit_bytes,
            on_room=self._inbox_room,
            on_take=self._hand_over,
            on_give_back=self._give_back,
        )
        for peer, seq, payload in undelivered:
            ctx.inbox.deliver(peer, payload, seq)
        ctx.pairing_mismatch = self._on_pairing_mismatch
        ctx.unauth_log = RateLimitedLog(ctx.log)
        self._ctx, self._loop = ctx, loop
        try:
            self._root = Supervisor.start(
                "node",
                [
                    ChildSpec(
                        "registry",
                        lambda: self._remember("registry", _Registry.start(self.home / REGISTRY_FILE)),
                    ),
                    ChildSpec(
                        "sessions",
                        lambda: self._remember("sessions", Supervisor.start("sessions", max_restarts=10)),
                    ),
                    ChildSpec(
                        "links",
                        lambda: self._remember(
                            "link_supervisor", LinksActor.start_on(loop, ctx, load_link_records(ctx))
                        ),
                    ),
                    ChildSpec(
                        "listener", lambda: self._remember("listener", ListenerActor.start_on(loop, ctx))
                    ),
                    ChildSpec("discovery", lambda: DiscoveryActor.start_on(loop, ctx)),
                ],
                strategy=Strategy.REST_FOR_ONE,
                max_restarts=self.settings.testing.max_restarts,
                period=self.settings.testing.restart_period,
                on_escalate=self._on_escalate,
            )
            ctx.bound.result(timeout=CALL_TIMEOUT)
            # Answered once the root's on_start has run, i.e. every child started and its ref
            # is in the context (the port may be bound before the listener's ref is recorded).
            self._root.proxy().which_children().get(timeout=CALL_TIMEOUT)
        except BaseException:
            self._shutdown()
            raise
        paired = [f"{d.name} ({d.node_id.fingerprint})" for d in self.devices()]
        host, port = self.address
        if key_log:
            ctx.log.warning(
                "tls.key_log_enabled",
                path=key_log,
                warning="every TLS secret of this node is written there: whoever reads it can decrypt "
                "captured traffic; turn it off after debugging",
            )
        ctx.log.info(
            "node.started",
            node_id=identity.node_id.text,
            listening=format_address(host, port),
            addresses=self.addresses,
            devices=paired,
            home=str(self.home),
        )
        for record in in_doubt:
            self._resume_in_doubt(record)
        return self

    def _resume_in_doubt(self, record: DeviceRecord) -> None:
        """Ask the initiator again about a pairing we voted for but never heard decided."""
        ctx = self._context
        spec = self._resolver_spec(record)
        if ctx.sessions is None or spec is None:
            return
        ctx.log.info("pairing.resume_in_doubt", peer=record.node_id.fingerprint)
        ctx.sessions.proxy().start_child(spec).get(timeout=CALL_TIMEOUT)

    def _resolver_spec(self, record: DeviceRecord) -> ChildSpec | None:
        """A session that resolves ``record`` (PENDING, ours as joiner) with its initiator."""
        ctx = self._context
        targets = []
        for address in (*record.addresses, *([record.observed_address] if record.observed_address else [])):
            try:
                target = split_address(address)
            except ValueError:
                continue
            if target not in targets:
                targets.append(target)
        if not targets:
            ctx.log.warning("pairing.unresolved", peer=record.node_id.fingerprint, reason="no address to ask")
            return None
        name = f"pair-r-{ctx.next_id()}"
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        return ChildSpec(
            name,
            lambda: JoinerSession.start_on(
                ctx.loop_thread, ctx, name, None, targets, record.node_id, result, resume=record
            ),
            restart=Restart.TEMPORARY,
        )

    def _hand_over(self, messages: list[ReceivedMessage]) -> None:
        # On the application's thread, before it gets them: out of the registry's inbox.
        self._ask_registry("handed_over", [(m.peer, m.seq) for m in messages])

    def _give_back(self, messages: list[ReceivedMessage]) -> None:
        # Their reader left before it got them: back into the registry's inbox, first in line.
        self._ask_registry("given_back", [(m.peer, m.seq, m.payload) for m in messages])

    def _inbox_room(self) -> None:
        # From the thread that took messages from a full inbox (the application's).
        ctx = self._ctx
        ref = None if ctx is None else ctx.link_supervisor
        if ref is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(InboxRoom())

    def _on_pairing_mismatch(self, peer: NodeId) -> None:
        """On the loop: a link saw ``peer`` use another pairing. If we hold one with it in doubt
        (a joiner that voted and never heard the decision), ask the initiator now."""
        ctx = self._context
        resolver = ctx.resolvers.get(peer)
        if resolver is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                resolver.tell(ResolveNow())
            return
        now = ctx.clock()
        if now - self._mismatch_seen.get(peer, float("-inf")) < MISMATCH_RESOLVE_INTERVAL:
            return
        self._mismatch_seen[peer] = now
        registry, sessions = ctx.registry, ctx.sessions
        if registry is None or sessions is None:
            return

        def found(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            for record in fut.result():
                if record.node_id == peer and record.role is Role.JOINER and peer not in ctx.resolvers:
                    ctx.log.info("pairing.resume_in_doubt", peer=peer.fingerprint, why="pairing_mismatch")
                    spec = self._resolver_spec(record)
                    if spec is not None:
                        call_async(sessions, "start_child", spec).add_done_callback(_consume)

        call_async(registry, "list", [DeviceState.PENDING]).add_done_callback(found)

    def _remember(self, name: str, ref: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        assert self._ctx is not None
        setattr(self._ctx, name, ref)
        return ref

    def _on_escalate(self, exc: BaseException) -> None:
        self._escalated = exc
        if self._on_failure is not None:
            self._on_failure(exc)
        if self._ctx is not None:
            self._ctx.log.critical("node.failed", error=repr(exc))

    def stop(self, timeout: float = CALL_TIMEOUT) -> None:
        """Stop every actor (children in reverse order), close the port, end the loop thread."""
        if self._ctx is not None:
            self._ctx.log.info("node.stopping")
        self._shutdown(timeout)

    def _shutdown(self, timeout: float = CALL_TIMEOUT) -> None:
        root, self._root = self._root, None
        if root is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                root.stop(block=True, timeout=timeout)
        loop, self._loop = self._loop, None
        if loop is not None:
            if self._ctx is not None and loop.is_running():
                with contextlib.suppress(Exception):  # bounded best effort: goodbyes, not state
                    loop.submit(_await_all(self._ctx.closing)).result(CLOSING_TIMEOUT + 1.0)
            loop.stop(timeout)
        if self._ctx is not None and self._ctx.inbox is not None:
            self._ctx.inbox.close()
        if self._ctx is not None:
            # Nobody will use these codes now: release whoever waits on them.
            for offer in list(self._ctx.offers.values()):
                if not offer.result.done():
                    offer.result.set_exception(
                        errors.PairingFailed(ErrorCode.GOING_AWAY, "the node stopped; the code is closed")
                    )
            self._ctx.offers.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    # -- identity and state ------------------------------------------------------

    @property
    def failed(self) -> BaseException | None:
        """Why the node's root supervisor gave up (restart intensity exceeded), or None.

        A failed node has stopped its actors; a daemon should exit non-zero.
        """
        return self._escalated

    @property
    def _context(self) -> NodeContext:
        if self._ctx is None or self._root is None:
            raise RuntimeError("the node is not started")
        return self._ctx

    @property
    def node_id(self) -> NodeId:
        return self._context.identity.node_id

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the node's UDP socket is bound to."""
        return self._context.bound.result(timeout=CALL_TIMEOUT)

    @property
    def addresses(self) -> list[str]:
        """The direct addresses a pairing URI of this node carries: those a device on the network
        could use (no loopback unless the node is bound to loopback), best first."""
        return self._context.uri_addresses()

    def counters(self) -> dict[str, int]:
        """Counters of this node (docs/ARCHITECTURE.md lists them)."""
        return self._context.counters.snapshot()

    def devices(self, *, include_pending: bool = False) -> list[Device]:
        """Paired devices (confirmed; pending ones too when asked)."""
        states = [DeviceState.CONFIRMED] + ([DeviceState.PENDING] if include_pending else [])
        records = self._ask_registry("list", states)
        return [Device.from_record(r) for r in records]

    def reconfigure(self, settings: Settings) -> SettingsChange:
        """Run with the live settings of ``settings`` from now on (config/live.py says which).

        The others keep their running value until a restart; the returned change says
        what was applied and what waits. The log is the caller's (it is the process's).
        """
        ctx = self._context
        change = apply_live(self.settings, settings)
        self.settings = ctx.settings = change.settings
        ctx.log.info(
            "node.reconfigured", applied=sorted(change.applied), needs_restart=sorted(change.needs_restart)
        )
        return change

    def check_registry(self, timeout: float = CALL_TIMEOUT) -> None:
        """RegistryError if the registry file was replaced or damaged under the node.

        pykka.Timeout when the registry does not answer within ``timeout`` seconds.
        """
        registry = self._context.require_registry()
        registry.proxy().check().get(timeout=timeout)

    def crash_actor(self, kind: str, peer: NodeId | None = None) -> str:
        """Crash a running actor of ``kind`` (actors/faults.py); only with ``[testing] fault_injection``.

        Returns the crashed actor's name. ConfigError when fault injection is off,
        ValueError when no such actor runs right now.
        """
        ctx = self._context
        assert self._root is not None
        return crash_actor(ctx, self._root, kind, peer)

    def device(self, peer: NodeId) -> Device | None:
        record = self._ask_registry("get", peer)
        return None if record is None else Device.from_record(record)

    def add_address(self, peer: NodeId, address: str) -> str:
        """Tell the node where the paired device ``peer`` can be reached (for peers no mDNS
        reaches); kept until :meth:`remove_address`, tried right after addresses that worked,
        and dialed now. Returns the address in its stored form. UsageError for a bad address;
        LocalProtocolError(UNKNOWN_PEER) if ``peer`` is not a paired device."""
        text = self._stored_form(address)
        if not self._ask_registry("add_manual_address", peer, text, time.time()):
            raise errors.LocalProtocolError(ErrorCode.UNKNOWN_PEER, f"{peer.fingerprint} is not paired here")
        links = self._context.links
        if links is not None:
            links.hint(peer, [text])
        return text

    def remove_address(self, peer: NodeId, address: str) -> str:
        """Forget a stored address of ``peer`` (the peer may announce it again); returns it.
        UsageError when it was not stored; LocalProtocolError(UNKNOWN_PEER) if not paired."""
        text = self._stored_form(address)
        if self._ask_registry("get", peer) is None:
            raise errors.LocalProtocolError(ErrorCode.UNKNOWN_PEER, f"{peer.fingerprint} is not paired here")
        if not self._ask_registry("remove_address", peer, text, time.time()):
            raise errors.UsageError(f"{text} is not a stored address of {peer.fingerprint}")
        return text

    @staticmethod
    def _stored_form(address: str) -> str:
        try:
            return normalize_address(address)
        except ValueError as exc:
            raise errors.UsageError(f"address {address!r} is not HOST:PORT ({exc})") from exc

    def _ask_registry(self, method: str, *args: Any) -> Any:
        registry = self._context.require_registry()
        cached = self._registry_proxy
        if cached is None or cached[0] is not registry:
            # pykka builds a proxy by introspecting the actor (~100 us); the inbox's hand-over
            # asks once a message, so the proxy of the running registry actor is kept.
            cached = self._registry_proxy = (registry, registry.proxy())
        return getattr(cached[1], method)(*args).get(timeout=CALL_TIMEOUT)

    # -- pairing -------------------------------------------------------------------

    def pair(self, *, verify: bool | None = None) -> PairingOffer:
        """Open a single-use code; the returned offer tells the code and waits for the device.

        ``verify`` (default: ``[pairing] verify``): each pairing with the code waits
        for the people on both devices to confirm the SAS words (``offer.wait(confirm=...)``).
        """
        ctx = self._context
        listener = ctx.listener
        if listener is None:
            raise RuntimeError("the listener is not running")
        proxy = listener.proxy()
        wanted = self.settings.pairing.verify if verify is None else verify
        text, uri, nameplate, expires_in = proxy.open_code(wanted).get(timeout=CALL_TIMEOUT)
        future, checks = proxy.offer_future(nameplate).get(timeout=CALL_TIMEOUT)
        return PairingOffer(
            code=text,
            uri=uri,
            nameplate=nameplate,
            expires_in=expires_in,
            future=future,
            cancel=lambda: bool(proxy.cancel_code(nameplate).get(timeout=CALL_TIMEOUT)),
            checks=checks,
        )

    def join(
        self,
        code_or_uri: str,
        *,
        address: str | None = None,
        timeout: float | None = None,
        verify: bool | None = None,
        confirm: Callable[[SasCheck], bool] | None = None,
    ) -> Device:
        """Pair with the device that shows ``code_or_uri``; returns it once committed on both sides.

        ``address`` (``host:port``) says where the initiator listens when the
        code is typed without its URI. ``verify`` (default: ``[pairing] verify``)
        asks both people to confirm the SAS words; when a side asked,
        ``confirm(check)`` must say whether the other device shows the same
        words (without it the pairing is refused). Raises CodeFormatError for a
        mistyped code, UsageError (nothing to dial, or this node's own code or
        address), PairingFailed (wrong code, expired, used up, busy, SAS refused...)
        or PeerUnreachable.
        """
        pairing = self.settings.pairing
        bound = timeout if timeout is not None else 6 * pairing.step_timeout + pairing.resolve_timeout
        joining = self.start_join(code_or_uri, address=address, verify=verify)
        deadline = time.monotonic() + bound
        while True:
            try:
                event = joining.wait(max(deadline - time.monotonic(), 0.0))
            except concurrent.futures.TimeoutError as exc:
                # The caller's wait ends, not necessarily the pairing: before our vote the
                # session aborts it with the initiator (nothing stored); after it, the record
                # stays PENDING (in doubt) and the session keeps asking the initiator until it
                # answers, so both sides end on the same pairing (actors/pairing/joiner.py).
                self.cancel_join(joining)
                raise errors.PairingFailed(ErrorCode.TIMEOUT, f"no result within {bound:g} s") from exc
            if isinstance(event, Device):
                return event
            answer_check(event, confirm)
            deadline += pairing.verify_timeout  # the person's time does not count against the pairing

    def start_join(
        self, code_or_uri: str, *, address: str | None = None, verify: bool | None = None
    ) -> Joining:
        """Start joining (see :meth:`join`) and return at once; the Joining says how it ends."""
        ctx = self._context
        uri = parse_code_or_uri(code_or_uri)
        if uri.node is not None and uri.node == ctx.identity.node_id:
            raise errors.UsageError(
                "this code was opened by this device itself: enter it on the other device"
            )
        targets: list[tuple[str, int]] = []
        if address is not None:
            try:
                targets.append(split_address(address))
            except ValueError as exc:
                raise errors.CodeFormatError(f"address {address!r} is not host:port ({exc})") from exc
        targets += [split_address(a) for a in uri.addresses if split_address(a) not in targets]
        for host, port in targets:
            if self._is_own_address(host, port):
                raise errors.UsageError(
                    f"{format_address(host, port)} is this device's own address: give the address "
                    "of the device that shows the code"
                )
        if not targets:
            if not _mdns_expected(ctx.settings):
                raise errors.UsageError(
                    "a code alone does not say where the other device is, and local discovery "
                    "(mDNS) is off: give its address (--address HOST:PORT, shown next to the "
                    "code), or use the pairing URI or QR code"
                )
            targets = self._find_nameplate(uri.code.nameplate)
        if not targets:
            raise errors.PeerUnreachable(
                f"no device on the local network shows a code with nameplate {uri.code.nameplate} "
                "(mDNS): give its address (--address HOST:PORT), or use the pairing URI or QR code"
            )
        sessions = ctx.sessions
        if sessions is None:
            raise RuntimeError("the node is not running")
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        checks = CheckChain()
        name = f"pair-j-{ctx.next_id()}"
        joining = Joining(name, result, checks)
        wanted = self.settings.pairing.verify if verify is None else verify
        spec = ChildSpec(
            name,
            lambda: JoinerSession.start_on(
                ctx.loop_thread,
                ctx,
                name,
                uri.code,
                targets,
                uri.node,
                result,
                verify=wanted,
                joining=joining,
                checks=checks,
            ),
            restart=Restart.TEMPORARY,
        )
        session = sessions.proxy().start_child(spec).get(timeout=CALL_TIMEOUT)

        def gave_up() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                session.tell(CallerGaveUp())

        joining._timed_out = gave_up
        return joining

    def cancel_join(self, joining: Joining) -> None:
        """Give up a join (its waiter left or timed out): before our vote the pairing is
        aborted with the initiator; after it, the record stays pending and is resolved."""
        joining._timed_out()

    def _is_own_address(self, host: str, port: int) -> bool:
        """``host:port`` is where this very node listens (a person typed the wrong address)."""
        bound_host, bound_port = self.address
        if port != bound_port:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if bound_host not in ("0.0.0.0", "::"):
            bound = ipaddress.ip_address(bound_host)
            return ip == bound or (ip.is_loopback and bound.is_loopback)
        mine = {split_address(a)[0] for a in self.addresses}
        return ip.is_loopback or ip.is_unspecified or str(ip) in mine

    def _find_nameplate(self, nameplate: int) -> list[tuple[str, int]]:
        """Where nodes advertising ``nameplate`` on the LAN listen (mDNS); [] without discovery."""
        ctx = self._context
        discovery = ctx.discovery
        if discovery is None and _mdns_expected(ctx.settings):
            # Just started: mDNS comes up a moment after the listener binds.
            deadline = time.monotonic() + DISCOVERY_START_WAIT
            while ctx.discovery is None and time.monotonic() < deadline:
                time.sleep(0.05)
            discovery = ctx.discovery
        if discovery is None:
            return []

        async def lookup() -> list[tuple[Any, list[str]]]:
            found: list[tuple[Any, list[str]]] = await discovery.resolve_nameplate(
                nameplate, RESOLVE_NAMEPLATE_TIMEOUT
            )
            return found

        found = ctx.loop_thread.submit(lookup()).result(RESOLVE_NAMEPLATE_TIMEOUT + CALL_TIMEOUT)
        targets: list[tuple[str, int]] = []
        for node, endpoints in found:
            if node == ctx.identity.node_id:
                continue
            for endpoint in endpoints:
                with contextlib.suppress(ValueError):
                    target = split_address(endpoint)
                    if target not in targets:
                        targets.append(target)
        ctx.log.info("pairing.nameplate_resolved", nameplate=nameplate, addresses=len(targets))
        return targets

    # -- links -------------------------------------------------------------------------

    def _tell_links(self, message: Any) -> None:
        ref = self._context.link_supervisor
        try:
            if ref is None:
                raise pykka.ActorDeadError("not started")
            ref.tell(message)
        except pykka.ActorDeadError as exc:
            raise errors.PeerUnreachable("the links supervisor is restarting; try again") from exc

    def send(
        self, peer: NodeId, payload: bytes, *, timeout: float = SEND_TIMEOUT, queue: bool = False
    ) -> int:
        """Send ``payload`` to the paired device ``peer``; returns once its node acknowledged it.

        The message is sealed with the link's keys, numbered, and delivered to the
        peer's application once, in order, across reconnections and restarts of
        either node (docs/LINKS.md, "Sends"). Returns the message's delivery number
        once the peer's node has durably taken it. Within ``timeout`` seconds, or:

        * NotTransmitted (a PeerUnreachable): the link did not come up in time; the
          message was never sent, it is dropped, and never sent later;
        * NotAcknowledged (a PeerUnreachable): it was sent, but no acknowledgement
          came in time; it may have arrived, and is not sent again.

        ``queue=True``: the message is queued durably instead (in the registry, across
        restarts of this node) and delivered at the next contact, however long that
        takes; this returns once it is queued (``queued()`` lists what waits).
        LocalProtocolError: ``peer`` is not paired (UNKNOWN_PEER) or was unpaired
        (UNPAIRED), or the payload is larger than MAX_APP_PAYLOAD (FRAME_TOO_LARGE).
        """
        data = self._checked_payload(payload)
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._tell_links(SendRequest(peer, data, time.monotonic() + timeout, future, queue))
        try:
            # The worker settles it by the deadline; the margin covers a worker restart.
            return future.result(timeout=timeout + CALL_TIMEOUT)
        except concurrent.futures.TimeoutError as exc:
            raise errors.NotAcknowledged(
                f"no answer from the link to {peer.fingerprint}; the message may have been sent"
            ) from exc

    def send_many(
        self, peer: NodeId, payloads: Sequence[bytes], *, timeout: float = SEND_TIMEOUT
    ) -> list[int]:
        """Send each of ``payloads`` to ``peer``, pipelined; returns once the peer's node acknowledged all.

        Each payload is what one :meth:`send` would send (numbered, sealed, delivered
        once and in order), but the call does not wait for one acknowledgement before
        it sends the next: it keeps up to ``[link] send_window`` of them in flight and,
        when that many are unacknowledged, waits until half of them are (so the link's
        outbox never overflows), and small payloads share QUIC packets. Returns their delivery
        numbers, in order. ``timeout`` bounds the whole call. Every payload is checked
        before any is sent (TypeError, FRAME_TOO_LARGE). On a failure, the errors of
        :meth:`send`: the first one in payload order is raised once every payload sent
        so far has been settled; those before it were acknowledged.
        """
        data = [self._checked_payload(payload) for payload in payloads]
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        deadline = time.monotonic() + timeout
        window = self._context.settings.link.send_window
        chunk = max(window // 2, 1)
        chunks_in_flight = max(window // chunk, 1)
        tallies: list[SendTally] = []
        for start in range(0, len(data), chunk):
            # At most ``window`` unacknowledged: before each chunk, wait until an older one is
            # (acknowledgements settle them in order; one wake-up per chunk).
            if len(tallies) >= chunks_in_flight:
                oldest = tallies[len(tallies) - chunks_in_flight]
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    oldest.future.result(timeout=max(deadline - time.monotonic(), 0.0))
                if not oldest.future.done() or oldest.failed:
                    break  # the deadline passed, or the link failed: settled below
            payloads = data[start : start + chunk]
            tally = SendTally(len(payloads))
            tallies.append(tally)
            requests = tuple(
                SendRequest(peer, payload, deadline, tally.slot(i)) for i, payload in enumerate(payloads)
            )
            self._tell_links(SendBatch(peer, requests))
            if tallies[0].future.done() and tallies[0].failed:
                break  # the link refused the first ones (not paired, outbox full): stop here
        concurrent.futures.wait(
            [t.future for t in tallies], timeout=max(deadline - time.monotonic(), 0.0) + CALL_TIMEOUT
        )
        seqs: list[int] = []
        for tally in tallies:
            if not tally.future.done():
                raise errors.NotAcknowledged(
                    f"no answer from the link to {peer.fingerprint}; the message may have been sent"
                )
            for result in tally.results:
                if isinstance(result, BaseException):
                    raise result
                assert result is not None
                seqs.append(result)
        if len(seqs) < len(data):
            raise errors.NotTransmitted(
                f"the link to {peer.fingerprint} kept its window full for {timeout} s; "
                f"{len(data) - len(seqs)} of {len(data)} payloads were not sent"
            )
        return seqs

    def _checked_payload(self, payload: bytes) -> bytes:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        data = bytes(payload)
        if len(data) > MAX_APP_PAYLOAD:
            raise errors.LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"payload of {len(data)} bytes; at most {MAX_APP_PAYLOAD}"
            )
        return data

    def queued(self, peer: NodeId | None = None) -> list[QueuedMessage]:
        """Messages queued durably (``send(..., queue=True)``) and not yet acknowledged."""
        messages: list[QueuedMessage] = self._ask_registry("queued", peer)
        return messages

    def subscribe(self, callback: Callable[[NodeId, bytes], None]) -> Callable[[], None]:
        """Call ``callback(peer, payload)`` for every message from a paired device; returns an unsubscribe.

        Callbacks run on the node's delivery thread (never the network loop),
        one message at a time, in arrival order. While at least one callback
        is subscribed, :meth:`receive` gets nothing.
        """
        inbox: Inbox = self._context.inbox
        return inbox.subscribe(callback)

    def receive(self, timeout: float | None = None) -> ReceivedMessage | None:
        """The oldest message from a paired device, waiting up to ``timeout`` s; None if none came."""
        inbox: Inbox = self._context.inbox
        return inbox.receive(timeout)

    def give_back(self, messages: list[ReceivedMessage]) -> None:
        """Return messages :meth:`receive` gave but that never reached their reader (it left):
        they are the first the next :meth:`receive` returns, across a restart too."""
        inbox: Inbox = self._context.inbox
        inbox.give_back(messages)

    def links(self) -> list[LinkStatus]:
        """Each paired device's link: up or down, the connection in use, this node's role."""
        ref = self._context.link_supervisor
        try:
            if ref is None:
                raise pykka.ActorDeadError("not started")
            statuses: list[LinkStatus] = ref.proxy().statuses().get(timeout=CALL_TIMEOUT)
        except pykka.ActorDeadError as exc:
            raise errors.PeerUnreachable("the links supervisor is restarting; try again") from exc
        return statuses

    def unpair(self, peer: NodeId, *, timeout: float = UNPAIR_TIMEOUT) -> bool:
        """Remove the paired device ``peer`` and tell it.

        The pairing is revoked here durably before this returns: its links
        are refused from then on. Returns True when the peer acknowledged
        within ``timeout`` seconds (it removed us and closed the link), False
        when it will be told at the next contact (the unpair is kept until it
        is delivered). LocalProtocolError(UNKNOWN_PEER) if ``peer`` is not paired.
        """
        revoked: concurrent.futures.Future[None] = concurrent.futures.Future()
        delivered: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._tell_links(UnpairCommand(peer, revoked, delivered))
        revoked.result(timeout=CALL_TIMEOUT)
        try:
            return delivered.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            return False


def _consume(fut: asyncio.Future[Any]) -> None:
    """Done callback of a best-effort call: retrieve its error (it was logged where it arose)."""
    if not fut.cancelled():
        fut.exception()


async def _await_all(tasks: list[Any]) -> None:
    pending = [task for task in tasks if not task.done()]
    tasks.clear()
    if pending:
        await asyncio.wait(pending, timeout=CLOSING_TIMEOUT)


def _mdns_expected(settings: Settings) -> bool:
    """True when this node runs mDNS (actors/discovery/actor.py decides the same way)."""
    host = settings.node.listen_host
    return settings.discovery.mdns and not ipaddress.ip_address(host).is_loopback


def _check_port(host: str, port: int) -> None:
    """AddressInUse if the UDP ``host:port`` is taken (port 0 is always free)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise errors.AddressInUse(
                    f"UDP port {port} on {host} is already in use by another program; stop it, or "
                    "listen elsewhere (--listen HOST:PORT, or [node] listen_port)"
                ) from exc
            # Anything else (an address not on this host...) the listener reports precisely.


def _recover_pairings(store: RegistryStore) -> list[DeviceRecord]:
    """Settle what a previous run of this node left PENDING (2PC recovery).

    As initiator we are the coordinator: a pairing we never confirmed was
    never decided, so it is aborted (presumed abort) and its record deleted;
    a joiner asking about it is told ABORTED. As joiner, a PENDING pairing
    is one we voted for without hearing the decision: returned, so the node
    asks the initiator again (PairResolve) once it runs.
    """
    in_doubt = []
    for record in store.list([DeviceState.PENDING]):
        if record.role is Role.INITIATOR:
            store.delete_pending(record.node_id, record.pairing_id)
        else:
            in_doubt.append(record)
    return in_doubt


def prepare_home(home: Path) -> None:
    """Create the home (0700) if needed; refuse one that other users can enter or own."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(home)
        mode = stat.S_IMODE(st.st_mode)
    except OSError as exc:
        raise IdentityError(f"cannot use {home} as the node's home: {exc.strerror}") from exc
    if st.st_uid != os.geteuid():
        # Whoever owns the home can swap its files (symlinks to ours, keys of theirs).
        raise IdentityError(
            f"the node's home {home} belongs to user id {st.st_uid}, not to you ({os.geteuid()}); "
            "use a home of your own"
        )
    if mode & 0o077:
        raise IdentityError(
            f"the node's home {home} is accessible by other users (mode {mode:o}); run: chmod 700 {home}"
        )
