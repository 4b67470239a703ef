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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykka import ActorRef

from quicpair.actors.kernel.counters import Counters
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.config.settings import Settings
from quicpair.protocol.claims import ClaimLimiter
from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import format_address
from quicpair.protocol.identity import Identity

__all__ = ["NodeContext", "Offer"]


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
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        """A node-unique number for naming sessions and connections in logs."""
        return next(self._ids)

    def direct_addresses(self) -> list[str]:
        """The addresses this node tells peers it can be reached at (``host:port``)."""
        if not self.bound.done() or self.bound.exception() is not None:
            return []
        host, port = self.bound.result()
        if host not in ("0.0.0.0", "::"):
            return [format_address(host, port)]
        return [format_address(ip, port) for ip in _interface_addresses(ipv6=host == "::")]

    def require_registry(self) -> ActorRef[Any]:
        if self.registry is None:
            raise RuntimeError("the registry actor is not running")
        return self.registry


def _interface_addresses(*, ipv6: bool) -> list[str]:
    """Non-loopback interface addresses, loopback last (ifaddr comes with zeroconf)."""
    import ifaddr

    found: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                if not ipv6 or ip.ip[0].startswith("fe80"):
                    continue  # link-local needs a scope id; not useful to a peer
                text = ip.ip[0]
            else:
                text = ip.ip
            (loopback if text in ("127.0.0.1", "::1") else found).append(text)
    return (found + loopback)[:16]
