"""The demo: two node processes pair over QUIC on 127.0.0.1, and the pairing survives a restart.

    python -m tools.demo            # what tools/run-demo runs; exit status 0 when every check passed
    python -m tools.demo --keep     # keep the temporary homes and logs for a look afterwards

Alice and Bob are two real processes (``python -m tools.nodehost``), each with
its own temporary home, driven over the control protocol (tools/control.py).
Alice opens a code, Bob joins with the pairing URI. The report then checks
what a person would: both sides show the same SAS words (read from each
node's own log), each side holds the other as confirmed under the NodeId that
side really has, one connection and one stream served each side's pairing,
the session keys are directional, and the announced addresses were stored.
Finally Bob's process stops and starts again on the same home, and its
registry still holds Alice.

Every wait is bounded; on any failure the demo says what failed, shows the
end of both logs and exits 1. Processes are stopped and the temporary
directory is removed in every case (unless ``--keep``).
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
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from actors.node import Node

__all__ = ["DemoFailed", "NodeProcess", "main"]

REPO = Path(__file__).resolve().parents[1]
#: Bounds of each step. A loopback pairing takes ~40 ms and a node starts in well
#: under a second; these only bound a hung process.
START_TIMEOUT = 20.0
PAIR_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0


class DemoFailed(Exception):
    """A step or a check of the demo failed; the message says which and what was seen."""


class NodeProcess:
    """One ``python -m tools.nodehost`` process: requests in on stdin, replies out on stdout."""

    def __init__(self, name: str, home: Path, log: Path) -> None:
        self.name, self.home, self.log = name, home, log
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
        args = [
            sys.executable,
            "-m",
            "tools.nodehost",
            "--home",
            str(self.home),
            "--listen",
            f"127.0.0.1:{port}",
        ]
        # mDNS off: the demo stays on loopback and sends nothing to the local network.
        args += ["--name", self.name, "--set", "discovery.mdns=false"]
        with open(self.log, "a", encoding="utf-8") as log:
            self._proc = subprocess.Popen(
                args, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self._lines = queue.Queue()
        threading.Thread(
            target=self._read, args=(self._proc.stdout,), name=f"demo-{self.name}", daemon=True
        ).start()
        first = self._next_line(time.monotonic() + START_TIMEOUT, "its ready line")
        if first.get("event") != "ready":
            raise DemoFailed(f"{self.name}'s node did not start: {first.get('error', first)}")
        self.info = first
        return first

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)  # end of output: the process is gone

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

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The node's log lines (JSON) with this event name, oldest first."""
        found = []
        for line in self.log.read_text("utf-8").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    found.append(entry)
        return found

    def log_tail(self, lines: int = 8) -> str:
        return "\n".join(self.log.read_text("utf-8").splitlines()[-lines:])


class _Report:
    """Prints the steps and checks as they happen; a failed check ends the demo."""

    def __init__(self) -> None:
        self.passed = 0

    @staticmethod
    def step(text: str) -> None:
        print(f"\n{text}", flush=True)

    @staticmethod
    def say(text: str) -> None:
        print(f"   {text}", flush=True)

    def check(self, ok: bool, text: str, seen: str = "") -> None:
        print(f"   [{'ok' if ok else 'FAILED'}] {text}", flush=True)
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


def run_demo(workdir: Path, report: _Report) -> None:
    alice = NodeProcess("alice", workdir / "alice", workdir / "alice.log")
    bob = NodeProcess("bob", workdir / "bob", workdir / "bob.log")
    with _stopped_at_exit(alice, bob):
        _pair_and_check(alice, bob, report)
        _restart_and_check(alice, bob, report)
        _links_and_reconnection(alice, bob, report)


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


def _pair_and_check(alice: NodeProcess, bob: NodeProcess, report: _Report) -> None:
    report.step("1. Two node processes start, each with its own home and identity")
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


def _restart_and_check(alice: NodeProcess, bob: NodeProcess, report: _Report) -> None:
    report.step("4. Bob's process stops and starts again on the same home (and port, as a real device would)")
    before = bob.request("device", node_id=alice.info["node_id"])
    old_id, port = bob.info["node_id"], bob.info["port"]
    status = bob.stop()
    report.check(status == 0, f"Bob's process stopped cleanly (exit status {status})")
    info = bob.start(port)
    _show_started(info, bob.name, report)
    report.check(
        info["node_id"] == old_id, "Bob came back with the same NodeId (the identity is in its home)"
    )
    after = bob.request("device", node_id=alice.info["node_id"])
    # Addresses may have grown (where Alice was last seen from): the pairing itself must not change.
    kept = (
        "node_id",
        "name",
        "role",
        "state",
        "send_key_fingerprint",
        "receive_key_fingerprint",
        "paired_at",
    )
    report.check(
        after is not None
        and after["state"] == "confirmed"
        and all(after[key] == before[key] for key in kept)
        and all(a in after["addresses"] for a in alice.info["addresses"]),
        "Bob's registry still holds Alice, confirmed, with the same keys; stored addresses: "
        + ", ".join(after["addresses"] if after else []),
        seen=json.dumps(after),
    )


def _links_and_reconnection(alice: NodeProcess, bob: NodeProcess, report: _Report) -> None:
    # ---- LINKS AND RECONNECTION: to be added here once links land -----------------------
    # Then this step shows, on the same two processes: the paired link comes up by itself
    # (link.up on both sides, dialled by the lower NodeId), a message each way (Node.send),
    # Bob's restart above followed by the link coming back (link.down, link.up, the
    # reconnect counters), and zero reconnects while both stay up.
    report.step("5. Links and reconnection")
    if hasattr(Node, "send"):
        report.say("this build has links, but this demo does not exercise them yet: not shown.")
    else:
        report.say("not shown: links are not part of this build yet. Once they land, this step")
        report.say("shows the paired link coming up by itself and coming back after Bob's restart.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes and logs")
    args = parser.parse_args(argv)
    print("quicpair demo: two node processes pair over QUIC on 127.0.0.1", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="quicpair-demo-"))  # 0700: homes inside must be private
    report = _Report()
    try:
        run_demo(workdir, report)
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
    print(f"\nAll {report.passed} checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
