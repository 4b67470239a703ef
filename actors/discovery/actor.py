"""mDNS for the node: :class:`DiscoveryActor` runs actors/discovery/mdns.py's Discovery.

A permanent child of the node's root supervisor, started after the listener
(it advertises the port the listener bound). With ``[discovery] mdns =
false`` it does nothing at all (tests on loopback, hosts without multicast).
Otherwise, on the node's loop:

* it **advertises** the node (NodeId, port, direct addresses) and, while
  codes are open, their nameplates (never anything derived from a code's
  secret words); it re-publishes when the open codes or our addresses change
  (checked every :data:`SYNC_INTERVAL` seconds, and at once when the
  listener opens or closes a code: ``ctx.offers_changed``);
* it puts the running Discovery in ``ctx.discovery``, where the link workers
  find ``resolve_node`` (their fallback after stored addresses) and
  ``Node.join`` finds ``resolve_nameplate`` (a code typed without an address);
* it forwards every announcement of another node (``watch``) to the links
  supervisor as a hint (``ctx.links.hint``): a paired peer that appears is
  dialled at once instead of at the next backoff tick; unknown nodes are
  ignored there.

Discovery failing to start (no multicast, no interface) is logged
(``discovery.unavailable``) and leaves ``ctx.discovery`` empty: links then
rely on stored addresses alone, pairing on URIs and typed addresses. Stopping
withdraws the advertisement (goodbye packets) in a task the node awaits
before it stops its loop (``ctx.closing``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from quicpair.actors.context import NodeContext
from quicpair.actors.discovery.mdns import MAX_NAMEPLATES, Discovery
from quicpair.actors.kernel.exits import Supervised
from quicpair.actors.kernel.logs import get_logger
from quicpair.actors.kernel.loopactor import ActorTimer, LoopActor
from quicpair.protocol.addresses import WILDCARDS, Scope, scope_of, unmapped
from quicpair.protocol.codes import split_address
from quicpair.protocol.identity import NodeId

__all__ = ["RESOLVE_NAMEPLATE_TIMEOUT", "SYNC_INTERVAL", "DiscoveryActor", "advertised_ips"]

#: How often open nameplates and our addresses are compared with what is advertised.
SYNC_INTERVAL = 2.0
#: ``Node.join`` with a bare code: how long to look for the nameplate (measured: ~0.2 s
#: between two network namespaces; 3 s covers zeroconf's first query retransmissions).
RESOLVE_NAMEPLATE_TIMEOUT = 3.0


def advertised_ips(direct_addresses: list[str]) -> list[str]:
    """The IPs to put in our A and AAAA records: those of our direct addresses, not loopback.

    Link-local ones too, without their zone: mDNS answers stay on the link,
    and a receiver tags them with the interface it heard them on (RFC 6762
    6.2; zeroconf sets the scope id). Empty means "every interface's
    address" to Discovery.
    """
    ips = []
    for address in direct_addresses:
        try:
            host, _ = split_address(address)
            scope = scope_of(host)
        except ValueError:
            continue
        if scope is not None and scope is not Scope.LOOPBACK:
            ips.append(unmapped(host.split("%", 1)[0]))
    return list(dict.fromkeys(ips))


class DiscoveryActor(Supervised, LoopActor):
    """Owns the node's Discovery; see the module docstring."""

    def __init__(
        self,
        ctx: NodeContext,
        factory: Callable[[], Discovery] = Discovery,
        factory_for: Callable[[list[str]], Discovery] | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self._factory_for = factory_for or (
            (lambda interfaces: Discovery(interfaces=interfaces))
            if factory is Discovery
            else lambda _: factory()
        )
        self.log = (ctx.log or get_logger()).bind(actor="discovery")
        self._factory = factory
        self._discovery: Discovery | None = None
        self._starting: asyncio.Task[None] | None = None
        self._sync_timer: ActorTimer | None = None
        self._nameplates: frozenset[int] = frozenset()
        self._ips: list[str] = []
        self._port = 0
        self._busy: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def on_start(self) -> None:
        if not self.ctx.settings.discovery.mdns:
            self.log.info("discovery.disabled", reason="[discovery] mdns = false")
            return
        host = self.ctx.settings.node.listen_host
        if ipaddress.ip_address(host).is_loopback:
            # Nobody on a LAN can reach a node bound to loopback, and mDNS would
            # otherwise go out on every real interface (network hygiene for tests).
            self.log.info("discovery.disabled", reason=f"the node listens on loopback ({host})")
            return
        self._starting = self.loop.create_task(self._start())

    async def _start(self) -> None:
        ctx = self.ctx
        try:
            _, port = await asyncio.wait_for(asyncio.wrap_future(ctx.bound), timeout=10.0)
        except Exception as exc:
            self.log.warning("discovery.unavailable", error=f"the listener did not bind: {exc!r}")
            return
        host = ctx.settings.node.listen_host
        # A node bound to one address speaks mDNS on that interface only.
        discovery = self._factory() if host in WILDCARDS else self._factory_for([host])
        ips = advertised_ips(ctx.direct_addresses())
        try:
            await discovery.start(ctx.identity.node_id, port, ips)
        except Exception as exc:
            self.log.warning("discovery.unavailable", error=str(exc))
            await discovery.stop()
            return
        self._discovery, self._port, self._ips = discovery, port, ips
        discovery.watch(self._seen)
        ctx.discovery = discovery
        ctx.offers_changed = self.nameplates_changed
        self.log.info("discovery.started", port=port, addresses=ips or "all interfaces")
        self.actor_ref.tell(_Sync())

    def on_stop(self) -> None:
        self._shutdown()

    def on_failure(self, *exc_info: Any) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        if self._busy is not None:
            self._busy.cancel()
        discovery, self._discovery = self._discovery, None
        if discovery is None:
            return
        if self.ctx.discovery is discovery:
            self.ctx.discovery = None
            self.ctx.offers_changed = None
        self.ctx.closing.append(self.loop.create_task(discovery.stop()))

    # -- advertising ----------------------------------------------------------------

    def nameplates_changed(self) -> None:
        """The set of open codes changed (any thread): re-publish soon."""
        self.actor_ref.tell(_Sync())

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Sync):
            self._sync()
            return None
        raise TypeError(f"discovery got an unexpected message {message!r}")

    def _sync(self) -> None:
        if self._sync_timer is not None:
            self._sync_timer.cancel()
        self._sync_timer = self.call_later(SYNC_INTERVAL, self.actor_ref.tell, _Sync())
        discovery = self._discovery
        if discovery is None or (self._busy is not None and not self._busy.done()):
            return
        nameplates = frozenset(sorted(self.ctx.offers)[:MAX_NAMEPLATES])
        ips = advertised_ips(self.ctx.direct_addresses())
        if nameplates == self._nameplates and ips == self._ips:
            return
        new_plates = nameplates if nameplates != self._nameplates else None
        new_ips = ips if ips != self._ips else None
        self._nameplates, self._ips = nameplates, ips
        self._busy = self.loop.create_task(self._publish(discovery, new_plates, new_ips))

    async def _publish(
        self, discovery: Discovery, nameplates: frozenset[int] | None, ips: list[str] | None
    ) -> None:
        try:
            if nameplates is not None:
                await discovery.set_nameplates(nameplates)
            if ips is not None:
                await discovery.update_addresses(ips, self._port)
        except Exception as exc:
            self.log.warning("discovery.publish_failed", error=str(exc))

    # -- hints ------------------------------------------------------------------------

    def _seen(self, node: NodeId, endpoints: list[str]) -> None:
        links = self.ctx.links
        if links is not None:
            links.hint(node, endpoints)


class _Sync:
    """Compare what is advertised with what is open and where we are."""
