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
import ipaddress
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pykka

from quicpair.actors.context import NodeContext
from quicpair.actors.discovery.actor import RESOLVE_NAMEPLATE_TIMEOUT, DiscoveryActor
from quicpair.actors.faults import crash_actor
from quicpair.actors.kernel.counters import Counters
from quicpair.actors.kernel.exits import Supervised
from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.supervisor import ChildSpec, Restart, Strategy, Supervisor
from quicpair.actors.links.inbox import Inbox, ReceivedMessage
from quicpair.actors.links.messages import LinkStatus, SendRequest
from quicpair.actors.links.supervisor import LinksActor, UnpairCommand, load_link_records
from quicpair.actors.pairing.device import Device, PairingOffer
from quicpair.actors.pairing.joiner import JoinerSession
from quicpair.actors.pairing.listener import ListenerActor
from quicpair.actors.registry.actor import DeviceRecord, DeviceState, RegistryActor, RegistryStore
from quicpair.config.live import SettingsChange, apply_live
from quicpair.config.settings import Settings, load_settings
from quicpair.protocol import errors
from quicpair.protocol.codes import parse_code_or_uri, split_address
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

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Open the home, start the actors and bind the port; raises on any failure, leaving nothing."""
        if self._root is not None:
            raise RuntimeError("the node is already started")
        prepare_home(self.home)
        identity = Identity.load_or_create(self.home / IDENTITY_FILE)
        # Open and check the registry once up front, so a corrupt or newer
        # file is a clear error from start(), not a restart loop; and recover
        # pairings a previous run left half-done (see _recover_pairings).
        with RegistryStore(self.home / REGISTRY_FILE) as store:
            in_doubt = _recover_pairings(store)
        loop = EventLoopThread(f"quicpair-loop-{identity.node_id.fingerprint}").start()
        ctx = NodeContext(
            identity=identity,
            settings=self.settings,
            home=self.home,
            counters=Counters(),
            loop_thread=loop,
            log=get_logger(node=identity.node_id.fingerprint),
        )
        ctx.inbox = Inbox(f"quicpair-{identity.node_id.fingerprint}", ctx.counters, ctx.log)
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
        ctx.log.info("node.started", node_id=identity.node_id.text, address=self.address, home=str(self.home))
        for record in in_doubt:
            self._resume_in_doubt(record)
        return self

    def _resume_in_doubt(self, record: DeviceRecord) -> None:
        """Ask the initiator again about a pairing we voted for but never heard decided."""
        ctx = self._context
        sessions = ctx.sessions
        targets = []
        for address in (*record.addresses, *([record.observed_address] if record.observed_address else [])):
            try:
                target = split_address(address)
            except ValueError:
                continue
            if target not in targets:
                targets.append(target)
        if sessions is None or not targets:
            ctx.log.warning("pairing.unresolved", peer=record.node_id.fingerprint, reason="no address to ask")
            return
        ctx.log.info("pairing.resume_in_doubt", peer=record.node_id.fingerprint)
        name = f"pair-r-{ctx.next_id()}"
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        spec = ChildSpec(
            name,
            lambda: JoinerSession.start_on(
                ctx.loop_thread, ctx, name, None, targets, record.node_id, result, resume=record
            ),
            restart=Restart.TEMPORARY,
        )
        sessions.proxy().start_child(spec).get(timeout=CALL_TIMEOUT)

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
        """The direct addresses this node announces to peers."""
        return self._context.direct_addresses()

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

    def _ask_registry(self, method: str, *args: Any) -> Any:
        registry = self._context.require_registry()
        return getattr(registry.proxy(), method)(*args).get(timeout=CALL_TIMEOUT)

    # -- pairing -------------------------------------------------------------------

    def pair(self) -> PairingOffer:
        """Open a single-use code; the returned offer tells the code and waits for the device."""
        ctx = self._context
        listener = ctx.listener
        if listener is None:
            raise RuntimeError("the listener is not running")
        proxy = listener.proxy()
        text, uri, nameplate, expires_in = proxy.open_code().get(timeout=CALL_TIMEOUT)
        future: concurrent.futures.Future[Any] = proxy.offer_future(nameplate).get(timeout=CALL_TIMEOUT)
        return PairingOffer(
            code=text,
            uri=uri,
            nameplate=nameplate,
            expires_in=expires_in,
            future=future,
            cancel=lambda: bool(proxy.cancel_code(nameplate).get(timeout=CALL_TIMEOUT)),
        )

    def join(self, code_or_uri: str, *, address: str | None = None, timeout: float | None = None) -> Device:
        """Pair with the device that shows ``code_or_uri``; returns it once committed on both sides.

        ``address`` (``host:port``) says where the initiator listens when the
        code is typed without its URI. Raises CodeFormatError for a mistyped
        code, PairingFailed (wrong code, expired, used up, busy, ...) or
        PeerUnreachable.
        """
        ctx = self._context
        uri = parse_code_or_uri(code_or_uri)
        targets: list[tuple[str, int]] = []
        if address is not None:
            try:
                targets.append(split_address(address))
            except ValueError as exc:
                raise errors.CodeFormatError(f"address {address!r} is not host:port ({exc})") from exc
        targets += [split_address(a) for a in uri.addresses if split_address(a) not in targets]
        if not targets:
            targets = self._find_nameplate(uri.code.nameplate)
        if not targets:
            raise errors.PeerUnreachable(
                "no address for the initiator: use the pairing URI (or QR code), or give its address"
            )
        if uri.node is not None and uri.node == ctx.identity.node_id:
            raise errors.PairingFailed(ErrorCode.PROTOCOL_VIOLATION, "this code was opened by this very node")
        sessions = ctx.sessions
        if sessions is None:
            raise RuntimeError("the node is not running")
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        name = f"pair-j-{ctx.next_id()}"
        spec = ChildSpec(
            name,
            lambda: JoinerSession.start_on(ctx.loop_thread, ctx, name, uri.code, targets, uri.node, result),
            restart=Restart.TEMPORARY,
        )
        session = sessions.proxy().start_child(spec).get(timeout=CALL_TIMEOUT)
        pairing = self.settings.pairing
        bound = timeout if timeout is not None else 6 * pairing.step_timeout + pairing.resolve_timeout
        try:
            device: Device = result.result(timeout=bound)
        except concurrent.futures.TimeoutError as exc:
            # Stop the session so that "failed" stays true: before our vote it aborts
            # the pairing with the initiator; after it, the record stays PENDING (in
            # doubt) and is resolved at the next start, never silently committed.
            session.stop(block=False)
            raise errors.PairingFailed(ErrorCode.TIMEOUT, f"no result within {bound:g} s") from exc
        return device

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

    def send(self, peer: NodeId, payload: bytes, *, timeout: float = SEND_TIMEOUT) -> None:
        """Send ``payload`` to the paired device ``peer``, sealed with the link's keys.

        Returns once the message is handed to the link (QUIC then delivers it
        in order, or the connection dies: at most once, like TCP). While the
        link is down the message waits, in order, up to ``timeout`` seconds for
        it to come up; then PeerUnreachable is raised and the message is
        dropped, never sent later. LocalProtocolError: ``peer`` is not paired
        (UNKNOWN_PEER) or was unpaired (UNPAIRED), or the payload is larger
        than MAX_APP_PAYLOAD bytes (FRAME_TOO_LARGE).
        """
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        data = bytes(payload)
        if len(data) > MAX_APP_PAYLOAD:
            raise errors.LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"payload of {len(data)} bytes; at most {MAX_APP_PAYLOAD}"
            )
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._tell_links(SendRequest(peer, data, time.monotonic() + timeout, future))
        try:
            future.result(timeout=timeout + CALL_TIMEOUT)
        except concurrent.futures.TimeoutError as exc:
            raise errors.PeerUnreachable(f"no answer from the link to {peer.fingerprint}") from exc

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


async def _await_all(tasks: list[Any]) -> None:
    pending = [task for task in tasks if not task.done()]
    tasks.clear()
    if pending:
        await asyncio.wait(pending, timeout=CLOSING_TIMEOUT)


def _mdns_expected(settings: Settings) -> bool:
    """True when this node runs mDNS (actors/discovery/actor.py decides the same way)."""
    host = settings.node.listen_host
    return settings.discovery.mdns and not ipaddress.ip_address(host).is_loopback


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
    """Create the home (0700) if needed; refuse one that other users can enter."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(os.stat(home).st_mode)
    except OSError as exc:
        raise IdentityError(f"cannot use {home} as the node's home: {exc.strerror}") from exc
    if mode & 0o077:
        raise IdentityError(
            f"the node's home {home} is accessible by other users (mode {mode:o}); run: chmod 700 {home}"
        )
