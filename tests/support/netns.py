"""Real hosts on one machine: network namespaces joined by a bridge, for tests.

A :class:`Lan` is one namespace holding a Linux bridge (the "switch") and N
host namespaces, each with one veth cable ``eth0`` plugged into the switch::

    qpt-<pid>-<n>-h0 [eth0 10.231.0.10/16] ──┐
    qpt-<pid>-<n>-h1 [eth0 10.231.0.11/16] ──┼── qpt-<pid>-<n>-br [br0]
    ...                                      ┘

Nothing is created in the caller's own namespace: veth pairs are created
directly inside the namespaces (``ip -n NS link add ... peer ... netns NS2``),
the hosts have no default route, and addresses come from 10.231.0.0/16,
fd00:231::/64 and fe80::/64, so no packet can leave the namespaces a test
made. Each host has ``lo`` up and a multicast route (224.0.0.0/4 on eth0) so
mDNS works.

What a LAN speaks is its ``stack``:

- ``"ipv4"`` (the default): IPv4 only, IPv6 disabled in the namespaces;
- ``"dual"``: IPv4, a ULA ``fd00:231::(10+i)/64`` and a link-local
  ``fe80::(10+i)/64`` on each eth0;
- ``"ipv6"``: the ULA and the link-local address, no IPv4 address at all;
- ``"link-local"``: only the link-local address (two devices on a cable or
  an unmanaged switch, no router, no DHCP).

IPv6 addresses are fixed (no SLAAC, ``addr_gen_mode`` none) and usable at
once (duplicate address detection off): a test never waits for DAD. The
switch namespace forwards frames only (IPv6 off there). :meth:`Lan.blackhole_ipv4`
drops every IPv4 packet at the switch while ARP still answers, like a
network whose IPv4 is broken or behind a captive portal (nftables, see
:func:`require_nft`); :meth:`Lan.separate` drops IPv4 between two hosts only;
:meth:`Host.add_cable` gives a host a second cable
with an address of its own (a multi-homed host).

Namespace names carry the creating process's pid, so parallel runs never
collide, and namespaces left behind by a crashed run (whose pid is gone) are
removed the next time a Lan is created. Every Lan deletes its namespaces, and
kills every process still inside them, when it is closed, including on failure.

Tests that use this need root and ``ip netns``; :func:`require_netns` FAILS
(never skips) with a clear message when either is missing: CI runs as root
and a skipped multi-host test would hide a broken environment.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

__all__ = [
    "PREFIX",
    "STACKS",
    "Host",
    "Lan",
    "cleanup_stale",
    "lan",
    "namespaces_now",
    "netem_available",
    "netns_lan",
    "require_netns",
    "require_nft",
]

#: Every namespace made by this module starts with this; stale cleanup only touches these.
PREFIX = "qpt"
#: Host i gets 10.231.0.(10 + i); moves go anywhere else in the /16.
_NET = "10.231"
_PREFIXLEN = 16
#: Host i gets fd00:231::(10 + i) and fe80::(10 + i), in hex.
_ULA = "fd00:231::"
_LINK_LOCAL = "fe80::"
#: What a LAN may speak (see the module docstring).
STACKS = ("ipv4", "dual", "ipv6", "link-local")
_HOST_BASE = 10
_MAX_HOSTS = 200
_NAME_RE = re.compile(rf"^{PREFIX}-(\d+)-\d+-\w+$")
#: An `ip` call is local and quick; 10 s only bounds a wedged kernel or tool.
_CMD_TIMEOUT = 10.0

_seq = itertools.count()


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = _CMD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr.strip()}")
    return proc


def namespaces_now() -> list[str]:
    """Every network namespace on the machine (``ip netns list``)."""
    return _ns_list()


def _ns_list() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL every process still inside ``ns`` (they can only be ours: we made ``ns``)."""
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    for token in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(token), signal.SIGKILL)


def _delete_ns(ns: str) -> None:
    _kill_inside(ns)
    _run(["ip", "netns", "delete", ns], check=False)


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces of ours whose creating process is gone; return their names."""
    removed = []
    for ns in _ns_list():
        match = _NAME_RE.match(ns)
        if match is None or not ns.startswith(prefix + "-"):
            continue
        if not _pid_alive(int(match.group(1))):
            _delete_ns(ns)
            removed.append(ns)
    return removed


def require_nft() -> None:
    """Fail the test (not skip) unless nftables' ``nft`` is installed (Debian package ``nftables``).

    CI installs it before the tests (.ci/run); on a workstation:
    ``apt-get install -y nftables``.
    """
    if shutil.which("nft") is None:
        pytest.fail(
            "this test needs nftables' `nft` command to drop traffic inside its own namespaces; "
            "install it with `apt-get install -y nftables` (.ci/run does)",
            pytrace=False,
        )


def require_netns() -> None:
    """Fail the test (not skip) unless we are root and ``ip netns`` works."""
    if os.geteuid() != 0:
        pytest.fail(
            "this test needs root to create network namespaces (ip netns); "
            "run the netns tests as root, as CI does",
            pytrace=False,
        )
    if shutil.which("ip") is None:
        pytest.fail("this test needs iproute2's `ip` command (ip netns); it is not installed", pytrace=False)
    trial = f"{PREFIX}-{os.getpid()}-{next(_seq)}-trial"
    proc = _run(["ip", "netns", "add", trial], check=False)
    if proc.returncode != 0:
        pytest.fail(f"`ip netns add` does not work here: {proc.stderr.strip()}", pytrace=False)
    _run(["ip", "netns", "delete", trial], check=False)


class Host:
    """One host of a :class:`Lan`: a namespace with ``eth0`` plugged into the switch."""

    def __init__(self, lan: Lan, index: int, ns: str, port: str) -> None:
        self.lan = lan
        self.index = index
        #: The namespace name (for ``ip netns exec``).
        self.ns = ns
        #: The host's interface, and its peer's name on the bridge side.
        self.iface = "eth0"
        self.switch_port = port
        stack = lan.stack
        #: eth0's IPv4 address (without prefix length); None on an IPv6-only LAN.
        self.ipv4 = f"{_NET}.0.{_HOST_BASE + index}" if stack in ("ipv4", "dual") else None
        #: eth0's ULA; None without one.
        self.ula = f"{_ULA}{_HOST_BASE + index:x}" if stack in ("dual", "ipv6") else None
        #: eth0's link-local address, with its zone (``fe80::a%eth0``); None on an IPv4 LAN.
        self.link_local = f"{_LINK_LOCAL}{_HOST_BASE + index:x}%eth0" if stack != "ipv4" else None
        #: The second cable's (name, address) once :meth:`add_cable` ran.
        self.cables: list[tuple[str, str]] = []

    @property
    def address(self) -> str:
        """The host's main address: IPv4 if it has one, else its ULA, else its link-local one."""
        found = self.ipv4 or self.ula or self.link_local
        assert found is not None
        return found

    @address.setter
    def address(self, value: str) -> None:
        self.ipv4 = value

    def __repr__(self) -> str:
        return f"Host({self.ns}, {self.address})"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = _CMD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host and wait for it (bounded by ``timeout``)."""
        return _run(self.exec_argv(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process inside the host; the Lan kills it on close if it still runs."""
        kwargs.setdefault("text", True)
        proc: subprocess.Popen[str] = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self.lan.processes.append(proc)
        return proc

    def add_cable(self, address: str) -> str:
        """A second cable into the switch with its own IPv4 ``address`` (same /16); its name.

        The host becomes multi-homed: both cables reach the whole LAN, and the
        kernel sends from eth0's address unless a socket is bound to this one.
        """
        name = f"eth{1 + len(self.cables)}"
        port = f"{self.switch_port}c{len(self.cables) + 1}"
        self.lan.ip(
            self.lan.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", name, "netns", self.ns
        )
        self.lan.ip(self.lan.bridge_ns, "link", "set", port, "master", "br0")
        self.lan.ip(self.lan.bridge_ns, "link", "set", port, "up")
        self.lan.ip(self.ns, "addr", "add", f"{address}/{_PREFIXLEN}", "dev", name)
        self.lan.ip(self.ns, "link", "set", name, "up")
        self.cables.append((name, address))
        return name

    def move(self, new_address: str) -> None:
        """Change eth0's address (break before make, like a DHCP renumbering)."""
        self.lan.ip(self.ns, "addr", "del", f"{self.address}/{_PREFIXLEN}", "dev", self.iface)
        self.lan.ip(self.ns, "addr", "add", f"{new_address}/{_PREFIXLEN}", "dev", self.iface)
        self.address = new_address

    def cut(self) -> None:
        """Unplug the cable at the switch: the host sees its carrier drop, keeps its address."""
        self.lan.ip(self.lan.bridge_ns, "link", "set", self.switch_port, "down")

    def restore(self) -> None:
        """Plug the cable back in."""
        self.lan.ip(self.lan.bridge_ns, "link", "set", self.switch_port, "up")

    def partition(self) -> None:
        """Silently drop everything to and from this host while its link stays up.

        Unlike :meth:`cut`, the host sees no carrier change: like a Wi-Fi that
        stays associated while nothing gets through. Uses netem ``loss 100%``
        when the kernel has it, else a token bucket whose burst (1 byte) is
        smaller than any packet, so tbf drops every packet (measured here:
        this kernel has tbf but no sch_netem).
        """
        for ns, dev in ((self.ns, self.iface), (self.lan.bridge_ns, self.switch_port)):
            self.lan.ip_tc(ns, "qdisc", "replace", "dev", dev, "root", *_blackhole_qdisc())

    def heal(self) -> None:
        """Undo :meth:`partition` (and :meth:`set_loss`)."""
        for ns, dev in ((self.ns, self.iface), (self.lan.bridge_ns, self.switch_port)):
            self.lan.ip_tc(ns, "qdisc", "del", "dev", dev, "root", check=False)

    def set_loss(self, percent: float) -> None:
        """Drop ``percent`` % of the packets this host sends (needs sch_netem in the kernel)."""
        if not netem_available():
            raise RuntimeError("tc netem is not available in this kernel (no sch_netem); use partition()")
        self.lan.ip_tc(self.ns, "qdisc", "replace", "dev", self.iface, "root", "netem", "loss", f"{percent}%")


_netem: bool | None = None


def netem_available() -> bool:
    """True when this kernel has tc netem (tried once, in a throwaway namespace)."""
    global _netem
    if _netem is None:
        trial = f"{PREFIX}-{os.getpid()}-{next(_seq)}-netem"
        _run(["ip", "netns", "add", trial])
        try:
            proc = _run(
                [
                    "ip",
                    "netns",
                    "exec",
                    trial,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    "lo",
                    "root",
                    "netem",
                    "loss",
                    "1%",
                ],
                check=False,
            )
            _netem = proc.returncode == 0
        finally:
            _delete_ns(trial)
    return _netem


def _blackhole_qdisc() -> list[str]:
    if netem_available():
        return ["netem", "loss", "100%"]
    return ["tbf", "rate", "8bit", "burst", "1", "limit", "1"]


class Lan:
    """A switch namespace and ``n`` host namespaces; use as a context manager."""

    def __init__(self, n: int, *, stack: str = "ipv4") -> None:
        if not 1 <= n <= _MAX_HOSTS:
            raise ValueError(f"a Lan has 1..{_MAX_HOSTS} hosts")
        if stack not in STACKS:
            raise ValueError(f"a Lan's stack is one of {STACKS}, not {stack!r}")
        self.n = n
        #: What the LAN speaks (module docstring).
        self.stack = stack
        seq = next(_seq)
        base = f"{PREFIX}-{os.getpid()}-{seq}"
        #: The namespace that holds the bridge.
        self.bridge_ns = f"{base}-br"
        self.hosts = [Host(self, i, f"{base}-h{i}", f"p{i}") for i in range(n)]
        self.processes: list[subprocess.Popen[str]] = []
        self._created: list[str] = []

    # -- commands ----------------------------------------------------------

    @staticmethod
    def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", ns, *args], check=check)

    @staticmethod
    def ip_tc(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", ns, "tc", *args], check=check)

    def _add_ns(self, ns: str, *, ipv6: bool) -> None:
        _run(["ip", "netns", "add", ns])
        self._created.append(ns)
        if ipv6:
            # Before any interface exists, so that eth0 inherits it: fixed addresses only
            # (no SLAAC link-local), usable at once (no DAD), no router solicitations.
            sysctls = [
                f"net.ipv6.conf.{which}.{key}={value}"
                for which in ("all", "default")
                for key, value in (("accept_dad", 0), ("addr_gen_mode", 1), ("accept_ra", 0))
            ]
        else:
            sysctls = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        _run(["ip", "netns", "exec", ns, "sysctl", "-qw", *sysctls])
        self.ip(ns, "link", "set", "lo", "up")

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> Lan:
        cleanup_stale()
        try:
            self._add_ns(self.bridge_ns, ipv6=False)  # a switch forwards frames, IPv6 ones too
            # Snooping off: mDNS must flood like on a dumb switch, whatever IGMP saw.
            self.ip(self.bridge_ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            self.ip(self.bridge_ns, "link", "set", "br0", "up")
            for host in self.hosts:
                self._add_ns(host.ns, ipv6=self.stack != "ipv4")
                # Both ends are born inside their namespaces: nothing touches ours.
                self.ip(
                    self.bridge_ns,
                    "link",
                    "add",
                    host.switch_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    host.iface,
                    "netns",
                    host.ns,
                )
                self.ip(self.bridge_ns, "link", "set", host.switch_port, "master", "br0")
                self.ip(self.bridge_ns, "link", "set", host.switch_port, "up")
                if host.ipv4 is not None:
                    self.ip(host.ns, "addr", "add", f"{host.ipv4}/{_PREFIXLEN}", "dev", host.iface)
                for ip6 in (host.ula, host.link_local):
                    if ip6 is not None:
                        bare = ip6.split("%", 1)[0]
                        self.ip(host.ns, "-6", "addr", "add", f"{bare}/64", "dev", host.iface, "nodad")
                self.ip(host.ns, "link", "set", host.iface, "up")
                if host.ipv4 is not None:
                    self.ip(host.ns, "route", "add", "224.0.0.0/4", "dev", host.iface)
        except BaseException:
            self.close()
            raise
        return self

    def blackhole_ipv4(self) -> None:
        """Drop every IPv4 packet at the switch, silently; ARP still answers (nftables, bridge family)."""
        require_nft()
        ruleset = (
            "table bridge qpt {\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            "    ether type ip drop\n"
            "  }\n"
            "}\n"
        )
        self._bridge_nft(ruleset, f"load the blackhole in {self.bridge_ns}")

    def separate(self, a: Host, b: Host) -> None:
        """Drop every IPv4 packet between hosts ``a`` and ``b`` at the switch, both ways, silently.

        Each still reaches every other host, so a third host can be the only path
        between them (tests/links/test_links_lossy.py puts tools/impairment.py there).
        """
        require_nft()
        if a.ipv4 is None or b.ipv4 is None:
            raise ValueError("separate() needs two hosts with IPv4 addresses")
        table = f"qpt_sep_{a.index}_{b.index}"
        ruleset = (
            f"table bridge {table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    ip saddr {a.ipv4} ip daddr {b.ipv4} drop\n"
            f"    ip saddr {b.ipv4} ip daddr {a.ipv4} drop\n"
            "  }\n"
            "}\n"
        )
        self._bridge_nft(ruleset, f"separate {a} and {b}")

    def _bridge_nft(self, ruleset: str, what: str) -> None:
        """Load an nftables ruleset in the switch's namespace; RuntimeError saying ``what`` failed."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.bridge_ns, "nft", "-f", "-"],
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nft could not {what}: {proc.stderr.strip()}")

    def close(self) -> None:
        """Kill our processes, delete our namespaces; never raises for what is already gone."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3.0
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=3.0)
        self.processes.clear()
        for ns in reversed(self._created):
            _delete_ns(ns)
        self._created.clear()

    def __enter__(self) -> Lan:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def namespaces(self) -> list[str]:
        """The namespaces that currently exist for this Lan."""
        mine = {self.bridge_ns, *(h.ns for h in self.hosts)}
        return [ns for ns in _ns_list() if ns in mine]


@contextlib.contextmanager
def lan(n: int, *, stack: str = "ipv4") -> Iterator[Lan]:
    """``with lan(2) as net: a, b = net.hosts`` — checks the environment first."""
    require_netns()
    with Lan(n, stack=stack) as net:
        yield net


@pytest.fixture
def netns_lan() -> Iterator[Any]:
    """A factory ``make(n) -> Lan``; every Lan it made is closed after the test, whatever happened."""
    require_netns()
    made: list[Lan] = []

    def make(n: int, *, stack: str = "ipv4") -> Lan:
        net = Lan(n, stack=stack)
        made.append(net)
        return net.open()

    try:
        yield make
    finally:
        for net in reversed(made):
            net.close()
