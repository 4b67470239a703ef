"""The demo: two node processes pair over QUIC on 127.0.0.1, link up, and reconnect after a restart.

    python -m quicpair.tools.demo        # what tools/run-demo runs; exit status 0 when every check passed
    python -m quicpair.tools.demo --keep         # keep the temporary homes and logs for a look afterwards
    python -m quicpair.tools.demo --dialer bob   # make the identities so that Bob holds the lower NodeId

Alice and Bob are two real processes (``python -m quicpair.tools.nodehost``), each with
its own temporary home, driven over the control protocol (tools/control.py).
Alice opens a code, Bob joins with the pairing URI. The report checks what a
person would: the same SAS words in both logs, each side holds the other as
confirmed under the NodeId that side really has, one connection and one
stream per side for the pairing, directional session keys, stored addresses.
Then the link comes up by itself, dialed by the lower NodeId, on one
connection with the same id on both sides; a message goes each way, and the
link idles past its idle timeout with zero reconnects. Last, Bob's process
stops and starts again on the same home and port: his registry still holds
Alice, the link comes back from the stored address (no mDNS), how long it
took is read from the logs, and a message goes each way again.

Both nodes run with short link timers (``--set link.idle_timeout=3`` ...,
printed at the start) so that this takes seconds. Every wait is bounded; a
failed check is marked [FAIL], the end of both logs is shown and the exit
status is 1. Processes are stopped and the temporary directory is removed
in every case (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from quicpair.config.settings import load_settings
from quicpair.protocol.identity import Identity, NodeId

__all__ = ["DemoFailed", "NodeProcess", "main"]

REPO = Path(__file__).resolve().parents[1]
#: Bounds of each step. A loopback pairing takes ~40 ms and a node starts in well
#: under a second; these only bound a hung process.
START_TIMEOUT = 20.0
PAIR_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0
#: Short link timers for the demo, given to both nodes with --set (printed at the start):
#: a silent link is closed after 3 s (PINGs every 1 s keep a live one open, below the
#: idle/2 rule of RFC 9000 10.1.2), redials wait 0.2 s doubling up to 2 s.
LINK_TIMERS = {"idle_timeout": 3, "keepalive_interval": 1, "backoff_min": 0.2, "backoff_max": 2}
#: Bound on the link coming up (after the pairing, after the restart). With the timers
#: above it takes well under a second (a redial round: <= 2.4 s backoff + a handshake).
LINK_TIMEOUT = 15.0
#: The idle period shown with zero reconnects: longer than the idle timeout, so only
#: the keep-alive holds the link.
HOLD = 4.0
#: Bound on a send and on the wait for the message at the other end.
MESSAGE_TIMEOUT = 5.0
#: Poll interval of the bounded waits on ``links`` and the logs.
POLL = 0.02


class DemoFailed(Exception):
    """A step or a check of the demo failed; the message says which and what was seen."""


class NodeProcess:
    """One ``python -m quicpair.tools.nodehost`` process: requests in on stdin, replies out on stdout."""

    def __init__(self, name: str, home: Path, log: Path, settings: tuple[str, ...] = ()) -> None:
        self.name, self.home, self.log, self.settings = name, home, log, settings
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    def start(self, port: int = 0) -> dict[str, Any]:
        """Start the process; returns its ``ready`` line (NodeId, address) or raises DemoFailed."""
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        args = [sys.executable, "-m", "quicpair.tools.nodehost"]
        args += ["--home", str(self.home), "--name", self.name]
        # mDNS off: the demo stays on loopback and sends nothing to the local network.
        args += ["--listen", f"127.0.0.1:{port}", "--set", "discovery.mdns=false"]
        args += [arg for item in self.settings for arg in ("--set", item)]
        with open(self.log, "a", encoding="utf-8") as log:
            self._proc = subprocess.Popen(
                args, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        # A queue per process: the previous one's reader may still be delivering its end.
        self._lines = queue.Queue()
        threading.Thread(
            target=self._read, args=(self._proc.stdout, self._lines), name=f"demo-{self.name}", daemon=True
        ).start()
        first = self._next_line(time.monotonic() + START_TIMEOUT, "its ready line")
        if first.get("event") != "ready":
            raise DemoFailed(f"{self.name}'s node did not start: {first.get('error', first)}")
        self.info = first
        return first

    @staticmethod
    def _read(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
        assert stream is not None
        for line in stream:
            lines.put(line)
        lines.put(None)  # end of output: the process is gone

    def _next_line(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise DemoFailed(f"{self.name}'s node sent no {what} in time") from None
        if line is None:
            raise DemoFailed(f"{self.name}'s node exited (status {self.wait(1.0)}) before sending {what}")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def send(self, op: str, **fields: Any) -> int:
        """Send a request without waiting; returns its id for :meth:`reply`."""
        assert self._proc is not None and self._proc.stdin is not None
        self._next_id += 1
        self._proc.stdin.write(json.dumps({"id": self._next_id, "op": op, **fields}) + "\n")
        self._proc.stdin.flush()
        return self._next_id

    def reply(self, request_id: int, wait: float = REQUEST_TIMEOUT) -> Any:
        """The result of request ``request_id``; DemoFailed if it failed or took ``wait`` s."""
        deadline = time.monotonic() + wait
        while request_id not in self._replies:
            line = self._next_line(deadline, f"the reply to request {request_id}")
            self._replies[line.get("id", -1)] = line
        reply = self._replies.pop(request_id)
        if not reply.get("ok"):
            error = reply.get("error", {})
            raise DemoFailed(f"{self.name}: {error.get('type')}: {error.get('message')}")
        return reply.get("result")

    def request(self, op: str, wait: float = REQUEST_TIMEOUT, **fields: Any) -> Any:
        return self.reply(self.send(op, **fields), wait)

    def wait(self, timeout: float) -> int | None:
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """Ask the node to stop; its exit status, or None if it had to be killed."""
        if self._proc is None or self._proc.poll() is not None:
            return None if self._proc is None else self._proc.returncode
        with contextlib.suppress(OSError, DemoFailed):
            self.request("stop")
        status = self.wait(STOP_TIMEOUT)
        if status is None:
            self._proc.kill()
            self._proc.wait()
        return status

    def log_events(self, *events: str) -> list[dict[str, Any]]:
        """The node's log lines (JSON) with one of these event names, oldest first (all incarnations)."""
        found = []
        for line in self.log.read_text("utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") in events:
                    found.append(entry)
        return found

    def log_tail(self, lines: int = 8) -> str:
        return "\n".join(self.log.read_text("utf-8").splitlines()[-lines:])


class _Report:
    """Prints the steps and checks as they happen; a failed check ends the demo."""

    passed = 0  #: checks passed so far

    @staticmethod
    def step(text: str) -> None:
        print(f"\n{text}", flush=True)

    @staticmethod
    def say(text: str) -> None:
        print(f"   {text}", flush=True)

    def check(self, ok: bool, text: str, seen: str = "") -> None:
        print(f"   [{'ok' if ok else 'FAIL'}] {text}", flush=True)
        if not ok:
            raise DemoFailed(f"{text}{f' (seen: {seen})' if seen else ''}")
        self.passed += 1


def _short(node_id: str) -> str:
    return f"{node_id[:8]}...{node_id[-4:]}"


def _show_started(info: dict[str, Any], name: str, report: _Report) -> None:
    where = f"{info['host']}:{info['port']}"
    report.say(f"{name:5}  NodeId {info['node_id']}  ({info['fingerprint']})  listening on {where}")


def _logged_peer(node: NodeProcess) -> str:
    events = node.log_events("pairing.completed")
    return str(events[-1].get("peer", "")) if events else ""


def _sas(node: NodeProcess) -> str:
    events = node.log_events("pairing.peer_verified")
    return str(events[-1]["sas"]) if events else ""


def run_demo(workdir: Path, report: _Report, dialer: str | None = None) -> None:
    timers = tuple(f"link.{key}={value}" for key, value in LINK_TIMERS.items())
    alice = NodeProcess("alice", workdir / "alice", workdir / "alice.log", timers)
    bob = NodeProcess("bob", workdir / "bob", workdir / "bob.log", timers)
    if dialer is not None:
        _choose_identities(*((alice, bob) if dialer == "alice" else (bob, alice)))
    with _stopped_at_exit(alice, bob):
        _pair_and_check(alice, bob, report, dialer)
        conn = _link_comes_up(alice, bob, report)
        _messages_and_idle(alice, bob, conn, report)
        _restart_and_reconnect(alice, bob, conn, report)


def _choose_identities(lower: NodeProcess, higher: NodeProcess) -> None:
    """Make both identities beforehand (a node makes its own at first start) so that ``lower`` dials."""
    one, two = Identity.generate(), Identity.generate()
    low, high = (one, two) if one.node_id.raw < two.node_id.raw else (two, one)
    for node, identity in ((lower, low), (higher, high)):
        node.home.mkdir(mode=0o700)
        identity.save(node.home / "identity.pem")


@contextlib.contextmanager
def _stopped_at_exit(*nodes: NodeProcess) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for node in nodes:
            if node.log.exists():
                print(f"\n--- last lines of {node.log.name} ---\n{node.log_tail()}", file=sys.stderr)
        raise
    finally:
        for node in nodes:
            node.stop()


def _pair_and_check(alice: NodeProcess, bob: NodeProcess, report: _Report, dialer: str | None) -> None:
    report.step("1. Two node processes start, each with its own home and identity")
    defaults = load_settings().link
    report.say("short link timers for the demo, --set on both nodes (defaults in brackets, seconds):")
    report.say(
        "  ".join(f"link.{key}={value} ({getattr(defaults, key):g})" for key, value in LINK_TIMERS.items())
    )
    report.say("discovery.mdns=false: no mDNS, nothing leaves 127.0.0.1")
    if dialer is not None:
        report.say(
            f"identities made by the demo so that {dialer.capitalize()} holds the lower NodeId (--dialer)"
        )
    for node in (alice, bob):
        _show_started(node.start(), node.name, report)

    report.step("2. Alice opens a code; Bob joins with the pairing URI (what her QR code shows)")
    offer = alice.request("pair")
    report.say(f"code  {offer['code']}")
    report.say(f"URI   {offer['uri']}")
    waiting = alice.send("wait_offer", nameplate=offer["nameplate"], timeout=PAIR_TIMEOUT)
    started = time.monotonic()
    bob_view = bob.request("join", wait=PAIR_TIMEOUT + 5, code=offer["uri"], timeout=PAIR_TIMEOUT)
    elapsed = time.monotonic() - started
    alice_view = alice.reply(waiting, wait=PAIR_TIMEOUT + 5)
    report.say(f"paired in {elapsed * 1000:.0f} ms (Bob's join request to its reply)")

    report.step("3. What each side now holds")
    sas_a, sas_b = _sas(alice), _sas(bob)
    report.check(bool(sas_a) and sas_a == sas_b, f'same SAS words on both sides: "{sas_a}" / "{sas_b}"')
    a_id, b_id = alice.info["node_id"], bob.info["node_id"]
    # The ``peer`` a session logs is the NodeId of the QUIC connection's TLS certificate.
    a_peer, b_peer = _logged_peer(alice), _logged_peer(bob)
    report.check(
        alice_view["state"] == "confirmed"
        and alice_view["node_id"] == b_id
        and a_peer == bob.info["fingerprint"],
        f"Alice holds Bob as {alice_view['state']}, NodeId {_short(alice_view['node_id'])} = Bob's own "
        f"identity {_short(b_id)}; the TLS peer in Alice's log: {a_peer}",
    )
    pinned = offer["uri"].split("node=")[1].split("&")[0]
    report.check(
        bob_view["state"] == "confirmed"
        and bob_view["node_id"] == a_id == pinned
        and b_peer == alice.info["fingerprint"],
        f"Bob holds Alice as {bob_view['state']}, NodeId {_short(bob_view['node_id'])} = Alice's own "
        f"identity {_short(a_id)} = the one pinned in the URI; the TLS peer in Bob's log: {b_peer}",
    )
    for node, role in ((alice, "initiator"), (bob, "joiner")):
        counters = node.request("counters")
        conns, streams = counters.get(f"pair.connections.{role}"), counters.get(f"pair.streams.{role}")
        report.check(
            conns == 1 and streams == 1,
            f"{node.name.capitalize()} ({role}) used {conns} QUIC connection and {streams} stream for the "
            f"pairing (counters pair.connections.{role}, pair.streams.{role})",
            seen=json.dumps(counters),
        )
    a_send, a_recv = alice_view["send_key_fingerprint"], alice_view["receive_key_fingerprint"]
    b_send, b_recv = bob_view["send_key_fingerprint"], bob_view["receive_key_fingerprint"]
    report.check(a_send == b_recv, f"Alice's send key {a_send} = Bob's receive key {b_recv}")
    report.check(b_send == a_recv, f"Bob's send key {b_send} = Alice's receive key {a_recv}")
    report.check(
        a_send != a_recv and b_send != b_recv, "on each side the send key differs from the receive key"
    )
    for node, view, peer in ((alice, alice_view, bob), (bob, bob_view, alice)):
        announced = peer.info["addresses"]
        report.check(
            bool(announced) and all(a in view["addresses"] for a in announced),
            f"{node.name.capitalize()} stored {peer.name.capitalize()}'s direct addresses: "
            f"{', '.join(view['addresses'])} (announced: {', '.join(announced)})",
        )


def _order(alice: NodeProcess, bob: NodeProcess) -> tuple[NodeProcess, NodeProcess]:
    """(dialer, listener): the lower NodeId by raw bytes dials (protocol/dialrule.py)."""
    a, b = (NodeId.from_text(node.info["node_id"]) for node in (alice, bob))
    return (alice, bob) if a.raw < b.raw else (bob, alice)


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` every POLL s until it holds (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def _link(node: NodeProcess) -> dict[str, Any]:
    """The node's one link status (``links``); {} if it has none (or several)."""
    links: list[dict[str, Any]] = node.request("links")
    return links[0] if len(links) == 1 else {}


def _linked(la: dict[str, Any], lb: dict[str, Any]) -> bool:
    """Both up, on one connection each, the same one."""
    return (
        bool(la and lb)
        and la["state"] == lb["state"] == "up"
        and la["connections"] == lb["connections"] == 1
        and la["connection_id"] == lb["connection_id"]
    )


def _wait_linked(a: NodeProcess, b: NodeProcess) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """Poll ``links`` on both until linked (True) or LINK_TIMEOUT passed (False); the statuses last seen."""
    seen: list[dict[str, Any]] = [{}, {}]

    def linked() -> bool:
        seen[:] = [_link(a), _link(b)]
        return _linked(*seen)

    ok = _poll(linked, LINK_TIMEOUT)
    return ok, seen[0], seen[1]


def _wait_event(node: NodeProcess, event: str, count: int = 1, **match: Any) -> dict[str, Any]:
    """The ``count``-th log event ``event`` with these field values, or {} after MESSAGE_TIMEOUT."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [e for e in node.log_events(event) if all(e.get(k) == v for k, v in match.items())]
        return len(found) >= count

    return found[count - 1] if _poll(logged, MESSAGE_TIMEOUT) else {}


def _latest(*events: dict[str, Any]) -> dict[str, Any]:
    return max(events, key=lambda e: str(e.get("timestamp", "")))


def _seconds(earlier: dict[str, Any], later: dict[str, Any]) -> float:
    """Seconds between two log events (ISO 8601 UTC timestamps of one host's clock); NaN if one is missing."""
    if not (earlier and later):
        return float("nan")
    delta = datetime.fromisoformat(later["timestamp"]) - datetime.fromisoformat(earlier["timestamp"])
    return delta.total_seconds()


def _counters(node: NodeProcess, *names: str) -> dict[str, int]:
    counters: dict[str, int] = node.request("counters")
    return {name: counters.get(name, 0) for name in names}


def _show(counters: dict[str, int]) -> str:
    return ", ".join(f"{name} {value}" for name, value in counters.items())


def _link_comes_up(alice: NodeProcess, bob: NodeProcess, report: _Report) -> str:
    """Step 4; the connection id of the link."""
    report.step("4. The paired link comes up by itself; the lower NodeId dials")
    dialer, listener = _order(alice, bob)
    d_name, l_name = dialer.name.capitalize(), listener.name.capitalize()
    report.say(
        f"NodeIds by raw bytes: {d_name} {_short(dialer.info['node_id'])} < "
        f"{l_name} {_short(listener.info['node_id'])}, so {d_name} dials and {l_name} only accepts"
    )
    ok, d_link, l_link = _wait_linked(dialer, listener)
    conn = str(d_link.get("connection_id"))
    report.check(
        ok,
        f"link up on both sides (`links`): 1 connection each, the same connection id {conn}",
        seen=json.dumps([d_link, l_link]),
    )
    report.check(
        (d_link["role"], d_link["dialed_by"], l_link["role"], l_link["dialed_by"])
        == ("dialer", "local", "listener", "peer"),
        f"{d_name}: role {d_link['role']}, dialed by {d_link['dialed_by']}; "
        f"{l_name}: role {l_link['role']}, dialed by {l_link['dialed_by']}",
        seen=json.dumps([d_link, l_link]),
    )
    ups = [_wait_event(node, "link.up", conn=conn) for node in (dialer, listener)]
    paired = _latest(*(_wait_event(node, "pairing.completed") for node in (alice, bob)))
    report.check(
        all(ups),
        f"link.up for {conn} in both logs, {_seconds(paired, _latest(*ups)) * 1000:.0f} ms after "
        "the pairing completed on both sides (log timestamps)",
    )
    dials = dialer.log_events("link.dial")
    d_count = _counters(dialer, "link.dials", "link.dials_failed")
    l_count = _counters(listener, "link.dials", "link.connections_accepted")
    report.check(
        bool(dials)
        and all(d["source"] == "stored" for d in dials)
        and d_count["link.dials"] >= 1
        and l_count == {"link.dials": 0, "link.connections_accepted": 1},
        f"{d_name} dialed {', '.join(sorted({d['address'] for d in dials}))}, the stored address "
        f"({_show(d_count)}); {l_name}: {_show(l_count)}",
        seen=json.dumps([dials, d_count, l_count]),
    )
    return conn


def _exchange(alice: NodeProcess, bob: NodeProcess, text: str, report: _Report) -> None:
    """A sealed message each way, received intact from the right NodeId."""
    for sender, receiver in ((alice, bob), (bob, alice)):
        payload = f"{text} from {sender.name.capitalize()}"
        sender.request("send", node_id=receiver.info["node_id"], payload=payload, timeout=MESSAGE_TIMEOUT)
        got = receiver.request("messages", wait=MESSAGE_TIMEOUT + REQUEST_TIMEOUT, timeout=MESSAGE_TIMEOUT)
        report.check(
            [(m["node_id"], m["text"]) for m in got] == [(sender.info["node_id"], payload)],
            f'{sender.name.capitalize()} -> {receiver.name.capitalize()}: "{payload}", received from '
            f"NodeId {_short(sender.info['node_id'])}",
            seen=json.dumps(got),
        )


def _messages_and_idle(alice: NodeProcess, bob: NodeProcess, conn: str, report: _Report) -> None:
    report.step("5. A message each way, sealed with the link's keys (ChaCha20-Poly1305); then the link idles")
    _exchange(alice, bob, "hello", report)
    idle = LINK_TIMERS["idle_timeout"]
    report.say(f"idle for {HOLD:g} s, longer than the {idle:g} s idle timeout: only the keep-alive holds it")
    time.sleep(HOLD)  # the point of this step: nothing may happen meanwhile
    la, lb = _link(alice), _link(bob)
    report.check(
        _linked(la, lb) and la["connection_id"] == conn,
        f"still up on both sides, on the same connection {conn}",
        seen=json.dumps([la, lb]),
    )
    names = ("link.up", "link.down", "link.reconnects", "link.messages_sent", "link.messages_received")
    for node in (alice, bob):
        counters = _counters(node, *names)
        report.check(
            list(counters.values()) == [1, 0, 0, 1, 1],
            f"{node.name.capitalize()}'s counters: {_show(counters)}",
        )


def _restart_and_reconnect(alice: NodeProcess, bob: NodeProcess, old_conn: str, report: _Report) -> None:
    report.step("6. Bob's process stops and starts again on the same home and port, as a real device would")
    dialer, listener = _order(alice, bob)
    d_name, l_name = dialer.name.capitalize(), listener.name.capitalize()
    before = bob.request("device", node_id=alice.info["node_id"])
    old_id, port = bob.info["node_id"], bob.info["port"]
    dials_before = len(dialer.log_events("link.dial"))
    failed_before = len(dialer.log_events("link.dial_failed"))
    started_before = len(bob.log_events("node.started"))
    stopping = time.monotonic()
    status = bob.stop()
    report.check(status == 0, f"Bob's process stopped cleanly (exit status {status})")
    down = _wait_event(alice, "link.down")
    report.check(
        (down.get("code"), down.get("by_peer"), down.get("fault")) == ("GOING_AWAY", True, False),
        f"Alice saw the link go down: link.down {down.get('code')} from Bob (a goodbye, not a fault)",
        seen=json.dumps(down),
    )
    info = bob.start(port)
    away = time.monotonic() - stopping
    _show_started(info, bob.name, report)
    report.check(
        info["node_id"] == old_id, "Bob came back with the same NodeId (the identity is in its home)"
    )
    after = bob.request("device", node_id=alice.info["node_id"])
    # Only where Alice was seen may change (addresses may grow): the pairing itself must not.
    where_seen = ("addresses", "observed_address")
    report.check(
        after is not None
        and after["state"] == "confirmed"
        and all(after[key] == value for key, value in before.items() if key not in where_seen)
        and all(a in after["addresses"] for a in alice.info["addresses"]),
        "Bob's registry still holds Alice, confirmed, with the same keys; stored addresses: "
        + ", ".join(after["addresses"] if after else []),
        seen=json.dumps(after),
    )

    ok, la, lb = _wait_linked(alice, bob)
    conn = str(la.get("connection_id"))
    report.check(
        ok and conn != old_conn,
        f"link up again on both sides: 1 connection each, the same new connection id {conn}",
        seen=json.dumps([la, lb]),
    )
    a_up, b_up = (_wait_event(node, "link.up", conn=conn) for node in (alice, bob))
    started = _wait_event(bob, "node.started", count=started_before + 1)
    report.check(
        bool(a_up and b_up and started),
        f"link.up for {conn} in both logs {_seconds(started, _latest(a_up, b_up)) * 1000:.0f} ms after Bob's "
        f"node.started; Alice's link was down {_seconds(down, a_up):.2f} s (link.down -> link.up)",
    )
    report.say(f"(Bob's process took {away:.2f} s from the stop request to its ready line)")
    dials = dialer.log_events("link.dial")[dials_before:]
    failed = len(dialer.log_events("link.dial_failed")) - failed_before
    stored = dialer.request("device", node_id=listener.info["node_id"])["addresses"]
    d_up = a_up if dialer is alice else b_up
    where = f"{listener.info['host']}:{listener.info['port']}"
    report.check(
        bool(dials)
        and all(d["source"] == "stored" and d["address"] in stored for d in dials)
        and d_up.get("address") == where,
        f"{d_name} redialed {l_name}'s stored address {', '.join(sorted({d['address'] for d in dials}))}: "
        f"{len(dials)} dial(s) ({', '.join(sorted({d['why'] for d in dials}))}), {failed} failed round(s); "
        f"up on {d_up.get('address')}",
        seen=json.dumps(dials),
    )
    lookups = [e for node in (alice, bob) for e in node.log_events("link.mdns_lookup", "discovery.lookup")]
    report.check(not lookups, "no mDNS lookup on either side (discovery is off): the stored address did it")
    _exchange(alice, bob, "hello again", report)
    a_count = _counters(alice, "link.up", "link.down", "link.reconnects")
    report.check(
        a_count == {"link.up": 2, "link.down": 1, "link.reconnects": 1},
        f"Alice (her process ran throughout): {_show(a_count)}: Bob's restart and nothing else",
    )
    b_count = _counters(bob, "link.up", "link.down", "link.reconnects")
    l_dials = _counters(listener, "link.dials")["link.dials"]
    report.check(
        b_count == {"link.up": 1, "link.down": 0, "link.reconnects": 0} and l_dials == 0,
        f"Bob's new process: {_show(b_count)}; {l_name} never dialed (link.dials {l_dials})",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    parser.add_argument(
        "--dialer", choices=("alice", "bob"), help="give this node the lower NodeId: it dials"
    )
    args = parser.parse_args(argv)
    print("quicpair demo: two node processes pair over QUIC on 127.0.0.1, link up and reconnect", flush=True)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="quicpair-demo-"))  # 0700: homes inside must be private
    report = _Report()
    try:
        run_demo(workdir, report, args.dialer)
    except DemoFailed as exc:
        print(f"\nquicpair demo: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nquicpair demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"\n(kept {workdir}: alice/, bob/ homes and alice.log, bob.log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nAll {report.passed} checks passed in {time.monotonic() - began:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
