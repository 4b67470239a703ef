"""What the actors of one node share: identity, settings, counters and the current refs.

The refs here are the *current incarnations* of the node's permanent
actors; a supervisor restart replaces them (each ChildSpec's start function
records its new ref), so actors look them up at the moment of use rather
than keeping a ref from construction time.

Fields marked *loop-confined* are touched only on the node's event-loop
thread (all session actors and the listener run there), which is what makes
sharing them without locks correct.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pykka import ActorRef

from quicpair.actors.kernel.counters import Counters
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.transport.udp import route_source
from quicpair.config.settings import Settings
from quicpair.protocol.addresses import WILDCARDS, announce_to, dial_order, listening_addresses
from quicpair.protocol.claims import ClaimLimiter
from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import format_address
from quicpair.protocol.delivery import first_seq_of_epoch
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.keys import stateless_reset_key
from quicpair.protocol.notice import BOOT_SIZE

__all__ = ["Endpoints", "NodeContext", "Offer", "interface_hosts"]


class Endpoints(Protocol):
    """Both ends of a connection (a QuicLink has them)."""

    @property
    def local_address(self) -> tuple[str, int]: ...

    @property
    def remote_address(self) -> tuple[str, int]: ...


@dataclass(slots=True)
class Offer:
    """An open pairing code on this node, and how its story ends."""

    #: The nameplate (public part) of the code.
    nameplate: int
    #: Resolved with the paired DeviceRecord, or failed with PairingFailed.
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    #: One line per failed attempt ("wrong code", "timed out"...), for people.
    attempts: list[str] = field(default_factory=list)
    #: The person who opened the code asked to confirm the SAS of each pairing with it.
    verify: bool = False
    #: Where SAS checks go for whoever waits on the offer (actors/pairing/device.py CheckChain).
    checks: Any = None


@dataclass(slots=True)
class NodeContext:
    """Shared, mostly read-only state of one node's actors."""

    identity: Identity
    settings: Settings
    home: Path
    counters: Counters
    loop_thread: EventLoopThread
    #: Monotonic clock for deadlines and code expiry (a parameter so tests can see it).
    clock: Callable[[], float] = time.monotonic
    #: Wall clock for registry timestamps.
    wall_clock: Callable[[], float] = time.time
    rand: Callable[[int], bytes] = os.urandom
    #: The node's logger, bound to ``node=<fingerprint>``; actors bind more.
    log: Any = None
    #: For events a stranger can cause (bad pairing attempts, shed connections): rate
    #: limited and summarised (actors/kernel/logs.py RateLimitedLog).
    unauth_log: Any = None
    #: Open codes (loop-confined). Lives here, not in the listener, so a
    #: listener restart does not forget the codes people are typing.
    codebook: Codebook = field(default_factory=Codebook)
    #: Failed pairing claims per source address (loop-confined): a prober is refused
    #: (BUSY) before it can cost a code an attempt (protocol/claims.py).
    claims: ClaimLimiter = field(default_factory=ClaimLimiter)
    #: nameplate -> Offer (loop-confined).
    offers: dict[int, Offer] = field(default_factory=dict)
    #: Pairing sessions alive now (loop-confined), for load shedding.
    active_sessions: int = 0
    #: Current incarnations of the permanent actors.
    registry: ActorRef[Any] | None = None
    sessions: ActorRef[Any] | None = None
    listener: ActorRef[Any] | None = None
    #: Owner of paired links (admit/accepted), once links are running; loop-confined.
    #: The LinksActor itself (actors/links/supervisor.py), set by its on_start.
    links: Any = None
    #: The LinksActor's ref (for the Node API and other threads).
    link_supervisor: ActorRef[Any] | None = None
    #: The running mDNS Discovery (actors/discovery/mdns.py) or None; loop-confined.
    discovery: Any = None
    #: Application messages received from peers (actors/link_inbox.Inbox); thread-safe.
    inbox: Any = None
    #: Called on the loop thread when ``offers`` changed (the discovery actor sets it to
    #: re-advertise the open nameplates at once); None without discovery.
    offers_changed: Any = None
    #: Cleanup tasks started by stopping actors (e.g. mDNS goodbyes) that the node
    #: awaits, bounded, before it stops the loop; loop-confined.
    closing: list[Any] = field(default_factory=list)
    #: (host, port) the listener bound; reset by each listener incarnation.
    bound: concurrent.futures.Future[tuple[str, int]] = field(default_factory=concurrent.futures.Future)
    #: The bound port (actors/transport/listener.py's Listener), to send restart notices
    #: from; set by the listener actor once bound; loop-confined.
    port: Any = None
    #: This run's send epoch (raised in the registry at every start: protocol/delivery.py).
    send_epoch: int = 1
    #: Random id of this start, in our restart notices (protocol/notice.py).
    boot: bytes = b""
    #: Called on the loop with a peer whose link hello named another pairing than ours
    #: (PAIRING_MISMATCH): the node resolves a pairing it holds in doubt with it. Set by
    #: the Node; None in bare test contexts.
    pairing_mismatch: Callable[[NodeId], None] | None = None
    #: Joiner sessions resolving a pairing in doubt, by peer (loop-confined): actors/pairing/joiner.py.
    resolvers: dict[NodeId, ActorRef[Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _send_seq: int = 0
    _reset_key: bytes = b""

    def __post_init__(self) -> None:
        self._reset_key = stateless_reset_key(self.identity.seed)
        self._send_seq = first_seq_of_epoch(self.send_epoch)
        if not self.boot:
            self.boot = self.rand(BOOT_SIZE)

    def next_id(self) -> int:
        """A node-unique number for naming sessions and connections in logs."""
        return next(self._ids)

    def next_send_seq(self) -> int:
        """The next delivery number of this node (loop-confined): one counter for every peer, so a
        restarted link worker never repeats a number its predecessor used in this run."""
        seq = self._send_seq
        self._send_seq = seq + 1
        return seq

    @property
    def reset_key(self) -> bytes:
        """The node's static stateless-reset key (derived from its identity; survives restarts)."""
        return self._reset_key
    # -- addresses (protocol/addresses.py decides; this only enumerates and applies) --------

    def direct_addresses(self) -> list[str]:
        """Every ``host:port`` this node listens at (loopback and link-local with its zone too).

        Not for peers as such: what a peer is told is :meth:`addresses_for`,
        what a pairing URI shows is :meth:`uri_addresses`.
        """
        if not self.bound.done() or self.bound.exception() is not None:
            return []
        host, port = self.bound.result()
        return listening_addresses(host, port, interface_hosts() if host in WILDCARDS else ())

    def uri_addresses(self) -> list[str]:
        """The addresses for a pairing URI / QR code: only ones a device on the network could use."""
        return announce_to(self.direct_addresses(), peer=None)

    def addresses_for(self, link: Endpoints) -> list[str]:
        """The addresses to announce to the peer at the other end of ``link``, best first.

        The peer's address says whether it may have loopback ones; the
        address it reached us on (the kernel's choice of source towards it,
        when we listen on a wildcard) comes first.
        """
        remote = format_address(*link.remote_address)
        local: str | None = link.local_address[0]
        if local in WILDCARDS:
            local = route_source(link.remote_address[0])
        port = self._bound_port()
        # A dialed connection leaves from an ephemeral port: what counts is the port we listen on.
        reached = format_address(local, port) if local is not None and port else None
        return announce_to(self.direct_addresses(), peer=remote, reached_on=reached)

    def dial_order(self, addresses: Iterable[str]) -> list[str]:
        """``addresses`` (a peer's, best first) in the order to race them from this node."""
        host = self.dial_source()
        local = [host] if host is not None else interface_hosts()
        return dial_order(addresses, local=local, own=self.direct_addresses())

    def dial_source(self) -> str | None:
        """The host our dials leave from: the listen address when bound to one, else None (any)."""
        if self.bound.done() and self.bound.exception() is None:
            host = self.bound.result()[0]
        else:
            host = self.settings.node.listen_host
        return None if host in WILDCARDS else host

    def _bound_port(self) -> int:
        if not self.bound.done() or self.bound.exception() is not None:
            return 0
        return self.bound.result()[1]

    def require_registry(self) -> ActorRef[Any]:
        if self.registry is None:
            raise RuntimeError("the registry actor is not running")
        return self.registry


def interface_hosts() -> list[str]:
    """The IP addresses of this host's interfaces, IPv6 link-local ones with their zone.

    ifaddr comes with zeroconf; it reads getifaddrs(3), a few hundred
    microseconds, so callers ask at the moment of use rather than cache.
    """
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                host, _, scope = ip.ip
                found.append(f"{host}%{adapter.name}" if scope else host)
            else:
                found.append(ip.ip)
    return found
