"""Finding nodes on the local network: mDNS / DNS-SD (RFC 6762, RFC 6763).

Every node advertises one ``_quicpair._udp.local.`` service: the instance is
named after its NodeId fingerprint, the SRV port is its QUIC listen port, the
A/AAAA records are its direct addresses, and the TXT record
(protocol/advert.py) holds its NodeId, a boot id drawn at each start,
and the nameplates of its open codes, nothing secret.

What discovery returns is a hint, never a credential: anyone on the LAN can
advertise any id. The QUIC handshake pins the NodeId, so a lie only costs a
failed dial. Malformed adverts from the network are ignored (debug log).

Discovery is not thread-safe: it runs on the node's asyncio loop (the thread
that owns all network I/O) and every method must be called from that loop.
python-zeroconf attaches to that loop (``use_asyncio=True``), so it starts no
thread of its own.

Events: ``discovery.advertised`` (our records went out), ``discovery.resolved``
(a node was learned or changed), ``discovery.lookup`` (what, found, elapsed_ms),
``discovery.withdrawn``; ``discovery.ignored`` (debug) for bad adverts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any

import ifaddr
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)

# Re-exported by zeroconf/__init__ but not in its __all__, which mypy --strict requires.
from zeroconf._dns import DNSRecord, DNSText
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from quicpair.actors.kernel.logs import get_logger
from quicpair.protocol.advert import (
    BOOT_ID_LENGTH,
    MAX_NAMEPLATES,
    SERVICE_TYPE,
    TXT_VERSION,
    Advert,
    decode_txt,
    encode_txt,
    format_endpoint,
    instance_name,
    new_boot_id,
)
from quicpair.protocol.errors import QuicpairError, RemoteProtocolError
from quicpair.protocol.identity import NodeId

# The TXT record's names are re-exported: callers find everything mDNS here.
__all__ = [
    "BOOT_ID_LENGTH",
    "MAX_NAMEPLATES",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "Advert",
    "Discovery",
    "WatchCallback",
    "decode_txt",
    "encode_txt",
    "format_endpoint",
    "instance_name",
    "new_boot_id",
]

#: Called on the loop with a node's NodeId and its "host:port" endpoints.
WatchCallback = Callable[[NodeId, list[str]], None]

#: Bound for completing a half-known service (SRV/TXT/A) after a browser event:
#: zeroconf's default for a service info request, several query rounds (RFC 6762 5.2).
_LEARN_TIMEOUT = 3.0
#: Announcements after a change, one second apart (RFC 6762 8.3: at least two).
_ANNOUNCEMENTS = 3
_ANNOUNCE_INTERVAL = 1.0
#: RFC 1035 3.2.2 / 3.2.4: TXT type and the IN class, for reading zeroconf's cache.
_TYPE_TXT = 16
_CLASS_IN = 1


# -- our addresses ------------------------------------------------------------


def _check_addresses(addresses: Iterable[str]) -> list[str]:
    checked = []
    for text in addresses:
        try:
            # A scope (%eth0) means nothing to another host; receivers add their own.
            checked.append(str(ipaddress.ip_address(text.split("%", 1)[0])))
        except ValueError as exc:
            raise ValueError(f"not an IP address: {text!r}") from exc
    return list(dict.fromkeys(checked))


def _interface_addresses(allowed: Collection[str] | None) -> list[str]:
    """Addresses of this host's interfaces for A and AAAA records: all but loopback.

    Link-local ones too (without a zone): mDNS stays on the link, and the
    receiver knows which interface it heard them on.
    """
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            addr = ipaddress.ip_address(text)
            if addr.is_loopback or (allowed is not None and text not in allowed):
                continue
            found.append(str(addr))
    return found


# -- the runtime ------------------------------------------------------------


class Discovery:
    """Advertise this node and find others on the LAN, on the caller's asyncio loop.

    ``interfaces`` restricts mDNS to the interfaces holding these addresses
    (default: all); ``ipv6`` also runs mDNS over IPv6 (ff02::fb). ``rand``
    draws the boot id at each :meth:`start`.
    """

    def __init__(
        self,
        *,
        interfaces: Sequence[str] | None = None,
        ipv6: bool = True,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._ipv6 = ipv6
        self._rand = rand
        #: This start's boot id (None until started).
        self._boot: str | None = None
        self._log: Any = get_logger(component="discovery")
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._node: NodeId | None = None
        self._port = 0
        self._addresses: list[str] = []
        self._nameplates: frozenset[int] = frozenset()
        #: What is registered with zeroconf (None until the name probe is done).
        self._info: ServiceInfo | None = None
        self._registration: asyncio.Task[None] | None = None
        self._publish_lock = asyncio.Lock()
        self._announcer: asyncio.Future[Any] | None = None
        #: Instance names our browser has seen -> what we last learned about each.
        self._names: dict[str, tuple[Advert, list[str]] | None] = {}
        self._watchers: list[WatchCallback] = []
        self._waiters: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------

    async def start(
        self, node_id: NodeId, port: int, addresses: Sequence[str], *, advertise: bool = True
    ) -> None:
        """Open the mDNS sockets, start browsing, and start advertising this node.

        Returns once browsing runs; advertising first probes the name (RFC
        6762 8.1, ~1.2 s with zeroconf's timing) in the background: await
        :meth:`advertised` to know it is out. Empty ``addresses`` means "the
        addresses of my interfaces". ``advertise=False`` only looks (tools).
        """
        if self._azc is not None:
            raise RuntimeError("Discovery already started")
        if not 0 < port < 65536:
            raise ValueError(f"not a UDP port: {port}")
        self._node, self._port = node_id, port
        self._boot = new_boot_id(self._rand)
        self._log = self._log.bind(node=node_id.fingerprint)
        self._set_addresses(addresses)
        choice: Any = InterfaceChoice.All
        version: IPVersion | None = IPVersion.All if self._ipv6 else IPVersion.V4Only
        if self._interfaces is not None:
            choice, version = self._interfaces, None  # zeroconf derives the version from them
        try:
            zc = Zeroconf(interfaces=choice, ip_version=version, use_asyncio=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise QuicpairError(f"mDNS discovery cannot start: {exc}") from exc
        self._azc = AsyncZeroconf(zc=zc)
        self._browser = AsyncServiceBrowser(zc, [SERVICE_TYPE], handlers=[self._on_service_change])
        if advertise:
            info = self._service_info(instance_name(node_id))
            self._registration = asyncio.get_running_loop().create_task(self._register(info))
            self._registration.add_done_callback(self._registered)

    def _registered(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("discovery.advertise_failed", error=str(exc))

    async def advertised(self) -> None:
        """Wait until our service is probed and announced (raises if that failed)."""
        if self._registration is None:
            raise RuntimeError("Discovery not started, or started with advertise=False")
        await asyncio.shield(self._registration)

    async def stop(self) -> None:
        """Withdraw our service (goodbye packets, RFC 6762 10.1) and close the sockets."""
        azc, self._azc = self._azc, None
        if azc is None:
            return
        pending = [t for t in (self._registration, self._announcer, *self._tasks) if t is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        with contextlib.suppress(OSError, RuntimeError):
            await azc.async_close()  # sends the goodbyes for everything registered
        for waiter in self._waiters:
            waiter.cancel()
        self._log.info("discovery.withdrawn")

    # -- what we advertise -------------------------------------------------

    @property
    def boot_id(self) -> str | None:
        """The boot id this start advertises (``b=`` in the TXT record); None before start."""
        return self._boot

    async def set_nameplates(self, nameplates: Collection[int]) -> None:
        """Advertise exactly these nameplates (an empty set removes ``np``)."""
        encode_txt(self._require_node(), nameplates)  # validate before changing anything
        self._nameplates = frozenset(nameplates)
        await self._publish()

    async def update_addresses(self, addresses: Sequence[str], port: int | None = None) -> None:
        """Re-announce at new addresses (and port), e.g. after a network change.

        With all interfaces, the mDNS sockets are re-bound to the interfaces'
        current addresses first (a socket bound to a vanished address can no
        longer send). Empty ``addresses`` means "the addresses of my interfaces".
        """
        self._require_node()
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"not a UDP port: {port}")
        self._port = port or self._port
        self._set_addresses(addresses)
        await self._publish(rescan=self._interfaces is None)

    def _set_addresses(self, addresses: Sequence[str]) -> None:
        self._addresses = _check_addresses(addresses) or _interface_addresses(self._interfaces)
        if not self._addresses:
            # Peers cannot resolve us without an A/AAAA record; nameplates still show.
            self._log.warning("discovery.no_addresses")

    def _require_node(self) -> NodeId:
        if self._node is None or self._azc is None:
            raise RuntimeError("Discovery not started")
        return self._node

    def _service_info(self, name: str) -> ServiceInfo:
        node = self._require_node()
        return ServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=self._port,
            properties=encode_txt(node, self._nameplates, self._boot),
            server=f"quicpair-{node.fingerprint}.local.",
            parsed_addresses=self._addresses,
        )

    async def _register(self, info: ServiceInfo) -> None:
        assert self._azc is not None
        try:
            # allow_name_change: a second instance of the same node (or a 40-bit
            # fingerprint collision) gets "-2"; lookups go by the TXT id anyway.
            announcing = await self._azc.async_register_service(info, allow_name_change=True)
        except NonUniqueNameException as exc:
            raise QuicpairError(f"mDNS name {info.name} is taken") from exc
        self._announcer = asyncio.ensure_future(announcing)
        self._info = info
        self._log_advertised(info)
        await self._publish()  # in case something changed while we were probing

    async def _publish(self, *, rescan: bool = False) -> None:
        """Put the current port/addresses/nameplates on the wire (after the name probe)."""
        async with self._publish_lock:
            azc, old = self._azc, self._info
            if azc is None or old is None:
                return  # not registered yet: _register publishes the latest state
            new = self._service_info(old.name[: -len(SERVICE_TYPE) - 1])
            if not rescan and _same(old, new):
                return
            if self._announcer is not None:
                self._announcer.cancel()  # it would re-send the old records
            registry = azc.zeroconf.registry  # queries are answered from it
            if rescan:
                # Re-bind with us out of the registry: zeroconf re-announces what is
                # registered on new sockets, without the goodbyes sent below.
                registry.async_remove(old)
                try:
                    await azc.async_update_interfaces()
                finally:
                    registry.async_add(new)
            else:
                registry.async_update(new)
            self._info = new
            self._announcer = asyncio.ensure_future(self._announce(azc.zeroconf, new, _obsolete(old, new)))
            self._log_advertised(new)

    async def _announce(self, zc: Zeroconf, info: ServiceInfo, obsolete: list[DNSRecord]) -> None:
        """Announce ``info`` and, in the same packets, say goodbye to what it replaces.

        A goodbye (TTL 0, RFC 6762 10.1) for each replaced record: the cache-flush
        bit alone spares records a peer received less than a second ago (RFC 6762
        10.2), so after two quick changes an old address or nameplate would
        linger for its whole TTL. Three announcements one second apart (8.3).
        """
        for attempt in range(_ANNOUNCEMENTS):
            if attempt:
                await asyncio.sleep(_ANNOUNCE_INTERVAL)
            out = zc.generate_service_broadcast(info, None)
            for record in obsolete:
                out.add_answer_at_time(record, 0)
            zc.async_send(out)

    def _log_advertised(self, info: ServiceInfo) -> None:
        advert = decode_txt(info.text)
        self._log.info(
            "discovery.advertised",
            name=info.get_name(),
            port=info.port,
            addresses=info.parsed_addresses(),
            nameplates=sorted(advert.nameplates),
            boot=advert.boot,
        )

    # -- what others advertise ---------------------------------------------

    def watch(self, callback: WatchCallback) -> Callable[[], None]:
        """Call ``callback(node_id, endpoints)`` when a node appears, restarts or moves.

        A hint for the reconnection supervisor to dial now. It fires when a
        node is first learned, when its endpoints change, and when its boot id
        changes (it restarted, maybe at the very same endpoints). Not for
        ourselves, not for nameplate-only changes. Returns a function that
        unsubscribes.
        """
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    async def resolve_node(self, node_id: NodeId, timeout: float) -> list[str]:
        """Endpoints (``host:port``) where ``node_id`` says it is; ``[]`` after ``timeout`` s."""
        found = await self._lookup(
            f"node {node_id.fingerprint}",
            lambda advert: advert.node_id == node_id,
            timeout,
            hint=f"{instance_name(node_id)}.{SERVICE_TYPE}",
        )
        return list(dict.fromkeys(endpoint for _, endpoints in found for endpoint in endpoints))

    async def resolve_nameplate(self, nameplate: int, timeout: float) -> list[tuple[NodeId, list[str]]]:
        """Nodes (not us) advertising ``nameplate``, with their endpoints; ``[]`` after ``timeout`` s."""
        return await self._lookup(
            f"nameplate {nameplate}",
            lambda advert: nameplate in advert.nameplates and advert.node_id != self._node,
            timeout,
        )

    async def _lookup(
        self, what: str, wanted: Callable[[Advert], bool], timeout: float, hint: str | None = None
    ) -> list[tuple[NodeId, list[str]]]:
        azc = self._azc
        if azc is None:
            raise RuntimeError("Discovery not started")
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + timeout
        found = self._matches(wanted)
        queried = bool(not found and timeout > 0)
        browser: AsyncServiceBrowser | None = None
        learners: list[asyncio.Task[None]] = []
        try:
            if queried:
                # A fresh browser asks the LAN now (QU first, RFC 6762 5.4) instead of
                # waiting for the long-lived browser's next refresh; answers land in the
                # shared cache and reach us through _on_service_change.
                browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[_ignore])
                # Names whose SRV/A expired (host TTL 120 s) while the PTR stayed
                # (75 min): the browser's known-answer list would hide them, ask directly.
                stale = {n for n, seen in self._names.items() if seen is None or wanted(seen[0])}
                stale |= {n for n in self._names if self._from_cache(n) is None}
                for name in stale | ({hint} if hint else set()):
                    learners.append(loop.create_task(self._learn(name, timeout)))
            while not found and (remaining := deadline - loop.time()) > 0 and self._azc is not None:
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.add(waiter)
                try:
                    await asyncio.wait([waiter], timeout=remaining)
                finally:
                    self._waiters.discard(waiter)
                found = self._matches(wanted)
        finally:
            for task in learners:
                task.cancel()
            if browser is not None:
                await browser.async_cancel()
        self._log.info(
            "discovery.lookup",
            what=what,
            found=len(found),
            queried=queried,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return found

    def _matches(self, wanted: Callable[[Advert], bool]) -> list[tuple[NodeId, list[str]]]:
        """Current answers from zeroconf's cache (which honours TTLs, goodbyes, cache flushes)."""
        result = []
        for name in list(self._names):
            current = self._from_cache(name)
            if current is not None and wanted(current[0]):
                result.append((current[0].node_id, current[1]))
        return result

    def _from_cache(self, name: str) -> tuple[Advert, list[str]] | None:
        if self._azc is None:
            return None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not info.load_from_cache(self._azc.zeroconf):
            return None
        return self._parse(self._azc.zeroconf, info)

    def _parse(self, zc: Zeroconf, info: ServiceInfo) -> tuple[Advert, list[str]] | None:
        # The newest TXT, not zeroconf's pick: a record replaced within a second
        # of the previous one stays cached next to it (RFC 6762 10.2). One replaced
        # later is "marked to expire in 1 s", which zeroconf does by setting its
        # creation time to the new one's and its TTL to 1: on a tie, the longer TTL
        # is the new record (without this a restarted node's new boot id was missed).
        now = current_time_millis()
        texts = [
            record
            for record in zc.cache.get_all_by_details(info.name, _TYPE_TXT, _CLASS_IN)
            if isinstance(record, DNSText) and not record.is_expired(now)
        ]
        rdata = max(texts, key=lambda record: (record.created, record.ttl)).text if texts else info.text
        try:
            advert = decode_txt(rdata)
        except RemoteProtocolError as exc:
            self._log.debug("discovery.ignored", name=info.name, reason=str(exc))
            return None
        if info.port is None or not 0 < info.port < 65536:
            self._log.debug("discovery.ignored", name=info.name, reason=f"bad port {info.port}")
            return None
        endpoints = [format_endpoint(host, info.port) for host in info.parsed_scoped_addresses()]
        return (advert, endpoints) if endpoints else None

    def _on_service_change(
        self, *, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """zeroconf's browser callback, on the loop, after its cache is updated."""
        if state_change is ServiceStateChange.Removed:
            self._names.pop(name, None)
            self._notify()
            return
        self._names.setdefault(name, None)
        self._spawn(self._learn(name, _LEARN_TIMEOUT))

    async def _learn(self, name: str, timeout: float) -> None:
        """Complete a service's SRV/TXT/A (from cache, else by asking), then tell waiters."""
        if self._azc is None:
            return
        zc = self._azc.zeroconf
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc, timeout * 1000) or self._azc is None:
            return
        current = self._parse(zc, info)
        if current is None:
            return
        advert, endpoints = current
        previous = self._names.get(name)
        self._names[name] = current
        self._notify()
        if advert.node_id == self._node:
            return
        if previous is not None and (previous[0].boot, previous[1]) == (advert.boot, endpoints):
            return  # a refresh, or only the nameplates changed
        restarted = previous is not None and previous[0].boot != advert.boot
        self._log.info(
            "discovery.resolved",
            peer=advert.node_id.fingerprint,
            endpoints=endpoints,
            boot=advert.boot,
            restarted=restarted,
        )
        for callback in list(self._watchers):
            try:
                callback(advert.node_id, list(endpoints))
            except Exception:
                self._log.exception("discovery.watch_failed", peer=advert.node_id.fingerprint)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _same(old: ServiceInfo, new: ServiceInfo) -> bool:
    return (old.text, old.port, old.parsed_addresses()) == (new.text, new.port, new.parsed_addresses())


def _obsolete(old: ServiceInfo, new: ServiceInfo) -> list[DNSRecord]:
    """Goodbye (TTL 0) copies of ``old``'s records that ``new`` no longer has."""
    keep: set[DNSRecord] = {new.dns_service(), new.dns_text(), *new.dns_addresses()}
    mine: list[DNSRecord] = [old.dns_service(), old.dns_text(), *old.dns_addresses()]
    gone: list[DNSRecord] = [old.dns_service(0), old.dns_text(0), *old.dns_addresses(0)]
    return [bye for record, bye in zip(mine, gone, strict=True) if record not in keep]


def _ignore(**_: Any) -> None:
    """Handler for lookup browsers: they only send queries; the main browser listens."""
