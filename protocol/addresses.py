"""Which addresses a node announces to whom, and in which order a dialer tries them.

Pure: the actors enumerate the interfaces (actors/context.py) and hand the
results to these functions; nothing here touches a socket. The rules
(PROTOCOL.md 7.4):

* **Scope.** Every IP address is one of :class:`Scope`: loopback (this
  machine only), link-local (``fe80::/10``, ``169.254/16``: one link only,
  and an IPv6 one needs the interface, its *zone*, to be dialed), private
  (RFC 1918, ``100.64/10``, ULA ``fc00::/7``) or global. Unspecified and
  multicast addresses (and IPv4's ``0/8``, ``240/4``, broadcast) are
  never announced nor dialed.
* **Announce what the peer can reach** (:func:`announce_to`). Loopback
  addresses go only to a peer that is itself on loopback, and into a pairing
  URI only when the node is bound to loopback. A link-local IPv6 address is
  announced without its zone: the sender's interface name means nothing to
  the receiver, which dials it on its own link-local interfaces.
* **Order** (RFC 6724 section 6, as the destination preference of the
  receiver): the address the peer reached us on first; then global and
  private addresses by RFC 6724 precedence (IPv6 global 40, IPv4 35, ULA 3);
  link-local ones last (they work only when both share a link).
* **Receive with care** (:func:`announced_addresses`): only IP literals, the
  sender's zone dropped, IPv4-mapped IPv6 written as IPv4, loopback kept
  only from a peer on loopback.
* **Dial** (:func:`dial_order`): RFC 6724 rule 1 (avoid unusable
  destinations: a family or scope we have no address of, or ourselves),
  zone-less link-local addresses expanded once per link-local interface of
  ours, then the families interleaved (RFC 8305 section 4, First Address
  Family Count 1) so that a Happy-Eyeballs race reaches the other family
  after one stagger step when the first one is blackholed.
* **Observed addresses** (:func:`dialable_observed`): an accepted
  connection's source port is the dialer's ephemeral socket; the host is
  kept with the port the peer announced it listens on.

Addresses are ``host:port`` texts in the normal form of
:func:`quicpair.protocol.codes.normalize_address`; an IPv6 zone is written
``[fe80::1%eth0]:47470``.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from .codes import format_address, normalize_address, split_address
from .messages import MAX_ADDRESSES

__all__ = [
    "WILDCARDS",
    "Scope",
    "announce_to",
    "announced_addresses",
    "dial_order",
    "dialable_observed",
    "listening_addresses",
    "precedence",
    "scope_of",
    "unmapped",
]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The hosts a listener binds to listen on every interface: IPv4 only, or both families.
WILDCARDS: Final = ("0.0.0.0", "::")


class Scope(enum.Enum):
    """How far an address reaches (RFC 4007, RFC 6724 3.1-3.2, simplified to what a peer needs)."""

    #: This machine only: ``127/8``, ``::1``.
    LOOPBACK = "loopback"
    #: One link only: ``fe80::/10`` (dialed with the interface's zone), ``169.254/16``.
    LINK_LOCAL = "link-local"
    #: A private network: RFC 1918, shared ``100.64/10``, ULA ``fc00::/7``.
    PRIVATE = "private"
    #: Anything else that can be dialed.
    GLOBAL = "global"


_PRIVATE: Final = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_IPV4_LINK_LOCAL: Final = ipaddress.ip_network("169.254.0.0/16")
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")

#: RFC 6724 2.1, the default policy table: (prefix, precedence), longest prefix first.
#: IPv4 addresses are looked up as IPv4-mapped (``::ffff:0:0/96``).
_POLICY: Final = sorted(
    (
        (ipaddress.IPv6Network("::1/128"), 50),
        (ipaddress.IPv6Network("::/0"), 40),
        (ipaddress.IPv6Network("::ffff:0:0/96"), 35),
        (ipaddress.IPv6Network("2002::/16"), 30),
        (ipaddress.IPv6Network("2001::/32"), 5),
        (ipaddress.IPv6Network("fc00::/7"), 3),
        (ipaddress.IPv6Network("::/96"), 1),
        (ipaddress.IPv6Network("fec0::/10"), 1),
        (ipaddress.IPv6Network("3ffe::/16"), 1),
    ),
    key=lambda entry: -entry[0].prefixlen,
)


def _parse(host: str) -> tuple[IP, str]:
    """(address, zone) of a host text; IPv4-mapped IPv6 as IPv4. ValueError if not an IP literal."""
    text, _, zone = host.partition("%")
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, ""
    return ip, zone


def unmapped(host: str) -> str:
    """``host`` in the form peers see it: an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a
    dual-stack socket reports for an IPv4 peer) as plain IPv4; anything else unchanged."""
    try:
        ip, _ = _parse(host)
    except ValueError:
        return host
    return str(ip) if isinstance(ip, ipaddress.IPv4Address) and ":" in host else host


def _scope(ip: IP) -> Scope | None:
    if ip.is_unspecified or ip.is_multicast:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and (ip in _THIS_NETWORK or ip.is_reserved):
        return None  # "this network" (RFC 1122 3.2.1.3), 240/4 and the broadcast address
    if ip.is_loopback:
        return Scope.LOOPBACK
    if ip.is_link_local or ip in _IPV4_LINK_LOCAL:
        return Scope.LINK_LOCAL
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return Scope.PRIVATE
    return Scope.GLOBAL


def scope_of(host: str) -> Scope | None:
    """The :class:`Scope` of a host (an IP literal, zone allowed); None for an address that is
    never dialed (unspecified, multicast). ValueError if ``host`` is not an IP literal."""
    return _scope(_parse(host)[0])


def _precedence(ip: IP) -> int:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}") if isinstance(ip, ipaddress.IPv4Address) else ip
    return next(value for net, value in _POLICY if mapped in net)


def precedence(host: str) -> int:
    """RFC 6724 precedence of a host in the default policy table (higher is preferred)."""
    return _precedence(_parse(host)[0])


def _split(address: str) -> tuple[IP, str, int] | None:
    """(ip, zone, port) of an address text, None when it is not an IP literal with a port."""
    try:
        host, port = split_address(address)
        ip, zone = _parse(host)
    except ValueError:
        return None
    return ip, zone, port


def _text(ip: IP, zone: str, port: int) -> str:
    return format_address(f"{ip}%{zone}" if zone else str(ip), port)


# -- what we listen at, and what we tell a peer ------------------------------------------------


def listening_addresses(bound: str, port: int, interfaces: Iterable[str]) -> list[str]:
    """Where a socket bound to ``bound:port`` can be reached, as ``host:port``.

    A wildcard (``0.0.0.0``: every IPv4 address; ``::``: both families,
    IPV6_V6ONLY off) stands for the ``interfaces``' addresses (IPv6
    link-local ones with their zone, ``fe80::1%eth0``), in their order;
    any other host only for itself.
    """
    if bound not in WILDCARDS:
        return [format_address(bound, port)]
    found: list[str] = []
    for host in interfaces:
        try:
            ip, zone = _parse(host)
        except ValueError:
            continue
        if _scope(ip) is None or (bound == "0.0.0.0" and ip.version == 6):
            continue
        text = _text(ip, zone if ip.version == 6 and ip.is_link_local else "", port)
        if text not in found:
            found.append(text)
    return found


def announce_to(listening: Sequence[str], *, peer: str | None, reached_on: str | None = None) -> list[str]:
    """The addresses to announce to a peer seen at ``peer`` (``host:port``), best first.

    ``peer`` None is a pairing URI (anyone may read it): loopback addresses
    go into it only when every address we listen at is loopback (the node is
    bound to loopback). Otherwise they go only to a peer on loopback. Zones
    are dropped; ``reached_on`` (our address the peer reached us on, or that
    we reached it from) comes first; then RFC 6724 precedence, link-local
    last; at most MAX_ADDRESSES.
    """
    parsed = [p for p in (_split(a) for a in listening) if p is not None and _scope(p[0]) is not None]
    if peer is None:
        loopback_ok = bool(parsed) and all(_scope(ip) is Scope.LOOPBACK for ip, _, _ in parsed)
    else:
        seen = _split(peer)
        loopback_ok = seen is not None and _scope(seen[0]) is Scope.LOOPBACK
    first = _split(reached_on) if reached_on is not None else None
    candidates: list[tuple[tuple[bool, bool, int], str]] = []
    for ip, _, port in parsed:
        scope = _scope(ip)
        if scope is Scope.LOOPBACK and not loopback_ok:
            continue
        is_first = first is not None and (first[0], first[2]) == (ip, port)
        key = (not is_first, scope is Scope.LINK_LOCAL, -_precedence(ip))
        candidates.append((key, _text(ip, "", port)))
    ordered = [text for _, text in sorted(candidates, key=lambda c: c[0])]  # stable: interface order
    return list(dict.fromkeys(ordered))[:MAX_ADDRESSES]


# -- what a peer tells us ------------------------------------------------------------------------


def announced_addresses(addresses: Iterable[str], *, peer: str | None = None) -> tuple[str, ...]:
    """The addresses a peer announced that are worth storing and dialing, normalised.

    A peer's DeviceInfo, LinkHello and LinkAddresses carry free-form strings;
    only IP literals with a port are kept (a name would make us resolve and
    dial whatever the peer chooses), without the sender's zone (ours is added
    when we dial), IPv4-mapped ones as IPv4, never unspecified or multicast,
    and loopback only when the peer itself is seen at ``peer`` on loopback
    (None: we do not know where it is, e.g. a URI a person gave us).
    Duplicates once, in the peer's order; invalid entries are dropped, not
    fatal: the rest is still useful.
    """
    seen = _split(peer) if peer is not None else None
    loopback_ok = peer is None or (seen is not None and _scope(seen[0]) is Scope.LOOPBACK)
    kept: list[str] = []
    for text in addresses:
        parsed = _split(text) if isinstance(text, str) else None
        if parsed is None:
            continue
        ip, _, port = parsed
        scope = _scope(ip)
        if scope is None or (scope is Scope.LOOPBACK and not loopback_ok):
            continue
        normal = _text(ip, "", port)
        if normal not in kept:
            kept.append(normal)
    return tuple(kept[:MAX_ADDRESSES])


def dialable_observed(address: str, announced: tuple[str, ...]) -> str | None:
    """The host an accepted connection came from, at the port the peer listens on.

    The source port of a dialer's connection is its ephemeral socket, never
    something to dial back; the host is worth keeping (the peer may have moved
    and not be able to tell us), paired with its announced listening port.
    A link-local host keeps its zone: it is the interface *we* saw it on.
    """
    parsed = _split(address)
    ports = [p[2] for p in (_split(a) for a in announced) if p is not None]
    if parsed is None or not ports or _scope(parsed[0]) is None:
        return None
    ip, zone, _ = parsed
    return _text(ip, zone, ports[0])


# -- what we dial ----------------------------------------------------------------------------------


def dial_order(addresses: Iterable[str], *, local: Sequence[str], own: Sequence[str] = ()) -> list[str]:
    """The order to race ``addresses`` in, from a node whose usable source addresses are ``local``.

    ``local`` are host texts (IPv6 link-local with their zone); ``own`` are
    the ``host:port`` this node listens at (never dial ourselves, whatever a
    peer announced). An address whose family or scope no local address can
    reach is dropped (RFC 6724 rule 1); a link-local IPv6 address without a
    zone is tried once per link-local interface of ours; then the families
    are interleaved (RFC 8305 4), each keeping the order given (which holds
    the history: the address that last worked first). A host name (only a
    person types one) is kept, as a family of its own; an invalid text is
    dropped.
    """
    mine = [p for p in (_safe_parse(h) for h in local) if p is not None]
    zones = list(dict.fromkeys(z for ip, z in mine if ip.version == 6 and ip.is_link_local and z))
    own_set = {(ip, port) for ip, _, port in (p for p in (_split(a) for a in own) if p is not None)}
    own_ports = {port for _, port in own_set}
    own_loopback = any(_scope(ip) is Scope.LOOPBACK for ip, _ in own_set)

    def usable(ip: IP) -> bool:
        scope = _scope(ip)
        if scope is None:
            return False
        if scope is Scope.LOOPBACK:
            return any(m.version == ip.version and m.is_loopback for m, _ in mine)
        if scope is Scope.LINK_LOCAL:
            return any(m.version == ip.version and _scope(m) is Scope.LINK_LOCAL for m, _ in mine)
        return any(m.version == ip.version and _scope(m) in (Scope.PRIVATE, Scope.GLOBAL) for m, _ in mine)

    expanded: list[tuple[int, str]] = []
    for address in addresses:
        parsed = _split(address)
        if parsed is None:
            with contextlib.suppress(ValueError):  # a name a person typed: the resolver decides
                expanded.append((0, normalize_address(address)))
            continue
        ip, zone, port = parsed
        if (ip, port) in own_set or (own_loopback and ip.is_loopback and port in own_ports):
            continue  # ourselves (a loopback address reaches every local socket)
        if not usable(ip):
            continue
        if ip.version == 6 and ip.is_link_local and not zone:
            expanded.extend((6, _text(ip, z, port)) for z in zones)
        else:
            expanded.append((ip.version, _text(ip, zone, port)))
    unique = list(dict.fromkeys(expanded))
    return _interleave(unique)


def _safe_parse(host: str) -> tuple[IP, str] | None:
    try:
        return _parse(host)
    except ValueError:
        return None


def _interleave(items: list[tuple[int, str]]) -> list[str]:
    """RFC 8305 4: alternate the families, starting with the first one's, each in its order."""
    if not items:
        return []
    first = items[0][0]
    lead = [text for version, text in items if version == first]
    other = [text for version, text in items if version != first]
    out: list[str] = []
    for index in range(max(len(lead), len(other))):
        out.extend(group[index] for group in (lead, other) if index < len(group))
    return out
