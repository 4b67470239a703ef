"""The benchmark's link sections: messages, idle links, restart and vanished peers.

Part of ``python -m quicpair.tools.bench`` (tools/bench.py runs these sections and
writes them with the others). Every quicpair node here is a real node in a child
process, paired with the others over loopback, with the default link timers and
mDNS off:

``messages``
    Acknowledged sends (``Node.send``, which returns after the peer's node took the
    message) from a node in one process to a node in another, 100 B and 60,000 B:
    one sender thread (its round trip), several sender threads (a window in
    flight) and ``Node.send_many``; a run ends when the receiving application
    (a subscriber) got the last message. The floor, interleaved run by run: a
    raw aioquic stream (actors/transport, the same pinned mutual TLS) between
    two other processes: the client writes the same messages as length-prefixed
    frames as fast as the stream takes them, the server answers the last one;
    and its round trip, one frame and an 8-byte answer. Both: messages and bytes
    per second, the ratio to the floor, CPU time of both processes per message,
    UDP datagrams per message (both ways).
``idle``
    One hub node process paired with 20, then 50, then 100 peer nodes (living
    several to a process), every link up and idle: the hub's CPU (% of one core,
    from /proc/PID/stat over a window), its resident memory, and the UDP packets
    per second of the whole run.
``restart``
    Two paired node processes on fixed ports; one is SIGKILLed and started again
    (same home, same port): from its ``node.started`` to ``link.up`` on each side
    (log timestamps), median over the samples, each side in turn.
``down``
    One of two paired node processes is SIGKILLed: from the kill to ``link.down``
    on the survivor, each side in turn (the dialer sees it by its PINGs going
    unanswered, the listener by its idle timeout).

Packets are counted when the tool runs as root: the children then live in a
network namespace of their own (``ip netns``, loopback only, removed
afterwards), whose UDP counters (/proc/PID/net/snmp) count nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from .bench import WAIT, Child, Json, Options, children, serve_until_eof, summary

__all__ = ["Netns", "run_down", "run_idle", "run_messages", "run_restart", "worker_main"]

#: ALPN of the message floor (nothing else speaks it).
STREAM_ALPN = "quicpair-bench/stream"
#: Message sizes measured.
SIZES = (100, 60_000)
#: Sender threads of the pipelined runs.
THREADS = 16


# -- network namespace (packet counts) ----------------------------------------------------------


class Netns:
    """A network namespace of this run with loopback up, when the tool runs as root; else none."""

    def __init__(self, name: str) -> None:
        self.name: str | None = None
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return
        ran = subprocess.run(["ip", "netns", "add", name], capture_output=True, check=False)
        if ran.returncode != 0:
            return
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        self.name = name

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name] if self.name else []

    def close(self) -> None:
        if self.name:
            subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=10)
            self.name = None


@contextlib.contextmanager
def netns(tag: str) -> Iterator[Netns]:
    ns = Netns(f"qpbench-{os.getpid()}-{tag}")
    try:
        yield ns
    finally:
        ns.close()


def udp_out(pid: int) -> int | None:
    """UDP datagrams sent in ``pid``'s network namespace so far (both ends of loopback)."""
    try:
        lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
    except OSError:
        return None
    udp = [line.split() for line in lines if line.startswith("Udp:")]
    if len(udp) < 2:
        return None
    return int(dict(zip(udp[0][1:], udp[1][1:], strict=True))["OutDatagrams"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _spawn(name: str, argv: list[str], workdir: Path, ns: Netns) -> Child:
    """A :class:`Child`, under ``ip netns exec`` (which execs: the pid is python's) in a namespace."""
    return Child(name, argv, workdir, prefix=ns.prefix())


# -- the worker: nodes in a child process, driven by JSON lines ---------------------------------


class _Worker:
    """``count`` nodes in this process; ops on stdin, replies ``{"id", "ok", "result"}``."""

    def __init__(self, count: int, workdir: Path, listen: str, overrides: dict[str, dict[str, Any]]) -> None:
        from quicpair.actors.node import Node
        from quicpair.config.settings import load_settings

        host, _, port = listen.rpartition(":")

        def make(i: int) -> Node:
            node_settings = {"listen_host": host, "listen_port": int(port), "name": f"n{i}"}
            sections = {**overrides, "node": {**overrides.get("node", {}), **node_settings}}
            sections.setdefault("discovery", {})["mdns"] = False
            return Node(workdir / f"n{i}", load_settings(None, **sections)).start()

        with ThreadPoolExecutor(max_workers=8) as pool:
            self.nodes = list(pool.map(make, range(count)))
        self.received = 0
        self.received_bytes = 0
        self.last_at = 0.0
        self._cond = threading.Condition()

    def op_info(self) -> list[Json]:
        return [{"node_id": n.node_id.text, "port": n.address[1]} for n in self.nodes]

    def op_pair(self, count: int) -> list[str]:
        return [self.nodes[0].pair().uri for _ in range(count)]

    def op_join(self, uris: list[str]) -> list[str]:
        def join(pair: tuple[Any, str]) -> str:
            node, uri = pair
            return str(node.join(uri, timeout=60).node_id.text)

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(join, zip(self.nodes, uris, strict=False)))

    def op_links_up(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            down = sum(1 for n in self.nodes for s in n.links() if s.state != "up")
            if not down:
                return sum(len(n.links()) for n in self.nodes)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{down} links not up within {timeout} s")
            time.sleep(0.05)

    def op_sink(self) -> None:
        """Node 0 counts every message it receives (on its delivery thread)."""

        def count(peer: Any, payload: bytes) -> None:
            with self._cond:
                self.received += 1
                self.received_bytes += len(payload)
                self.last_at = time.time()
                self._cond.notify_all()

        self.nodes[0].subscribe(count)

    def op_received(self) -> Json:
        with self._cond:
            return {"messages": self.received, "bytes": self.received_bytes}

    def op_wait_received(self, total: int, timeout: float) -> float:
        """When (Unix time) the application got its ``total``-th message (waited for)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.received >= total, timeout):
                raise TimeoutError(f"{self.received} of {total} messages within {timeout} s")
            return self.last_at

    def op_send_run(self, peer: str, size: int, count: int, threads: int, batch: int = 0) -> Json:
        """Node 0 sends ``count`` messages of ``size`` bytes to ``peer``, acknowledged, timed."""
        from quicpair.protocol.identity import NodeId

        node, target, payload = self.nodes[0], NodeId.from_text(peer), bytes(size)
        latencies: list[float] = []
        shares = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]
        barrier = threading.Barrier(threads + 1)

        def sender(share: int) -> list[float]:
            out = []
            barrier.wait(timeout=WAIT)
            if batch:
                send_many = node.send_many
                for first in range(0, share, batch):
                    t0 = time.perf_counter()
                    send_many(target, [payload] * min(batch, share - first), timeout=60)
                    out.append((time.perf_counter() - t0) * 1000)
                return out
            for _ in range(share):
                t0 = time.perf_counter()
                node.send(target, payload, timeout=60)
                out.append((time.perf_counter() - t0) * 1000)
            return out

        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [pool.submit(sender, share) for share in shares]
            barrier.wait(timeout=WAIT)
            start, started_at = time.perf_counter(), time.time()
            for future in futures:
                latencies += future.result(timeout=WAIT * 5)
            elapsed = time.perf_counter() - start
        return {"elapsed": elapsed, "started_at": started_at, "latencies_ms": latencies}

    def stop(self) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))


def _serve(handle: Callable[..., Any]) -> None:
    """Answer JSON-line requests on stdin with ``handle(op, **fields)`` until EOF or stop."""
    for line in sys.stdin:
        request = json.loads(line)
        request_id, op = request.pop("id"), request.pop("op")
        if op == "stop":
            break
        try:
            reply = {"id": request_id, "ok": True, "result": handle(op, **request)}
        except Exception as exc:  # reported to the tool, which fails the section
            reply = {"id": request_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


def worker_main(args: list[str]) -> None:
    """``python -m quicpair.tools.bench nodes --count N --dir D [--listen H:P] [--set S.K=V]...``"""
    import argparse

    from quicpair.actors.kernel.logs import configure_logging
    from quicpair.tools.nodehost import parse_overrides

    parser = argparse.ArgumentParser(prog="python -m quicpair.tools.bench nodes")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--set", action="append", default=[])
    ns = parser.parse_args(args)
    ns.dir.mkdir(parents=True, exist_ok=True)
    configure_logging(level="warning", fmt="json", stream=(ns.dir / "nodes.log").open("a"))
    worker = _Worker(ns.count, ns.dir, ns.listen, parse_overrides(ns.set))
    print(json.dumps({"event": "ready", "pid": os.getpid()}), flush=True)
    try:
        _serve(lambda op, **fields: getattr(worker, "op_" + op)(**fields))
    finally:
        worker.stop()


def _workers(started: list[Child], workdir: Path, ns: Netns, name: str, count: int, *sets: str) -> Child:
    argv = ["-m", "quicpair.tools.bench", "nodes", "--count", str(count), "--dir", str(workdir / name)]
    for item in sets:
        argv += ["--set", item]
    child = _spawn(name, argv, workdir, ns)
    started.append(child)
    child.wait_line(lambda line: line.get("event") == "ready", timeout=WAIT + count)
    return child


# -- the floor: a raw stream ----------------------------------------------------------------------


def _frames(buffer: bytearray) -> Iterator[int]:
    """Kinds of the complete frames (4-byte length, 1-byte kind, payload) at the buffer's head."""
    while len(buffer) >= 5:
        size = int.from_bytes(buffer[:4], "big")
        if len(buffer) < 5 + size:
            return
        kind = buffer[4]
        del buffer[: 5 + size]
        yield kind


def _frame(size: int, kind: int) -> bytes:
    return size.to_bytes(4, "big") + bytes([kind]) + bytes(size)


async def _stream_server() -> None:
    def sink(link: Any) -> Callable[[int, bytes], None]:
        buffer, count = bytearray(), 0

        def on_data(stream_id: int, data: bytes) -> None:
            nonlocal count
            buffer.extend(data)
            for kind in _frames(buffer):
                count += 1
                if kind:  # answer this one: the count so far
                    link.send(stream_id, count.to_bytes(8, "big"))

        return on_data

    await serve_until_eof(STREAM_ALPN, sink, max_connections=16)


async def _stream_client(port: int) -> None:
    from quicpair.actors.transport.dial import dial
    from quicpair.protocol.errors import ErrorCode
    from quicpair.protocol.identity import Identity

    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Collect:
        def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
            for i in range(0, len(data), 8):
                answers.put_nowait(data[i : i + 8])

        def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
            pass

        def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
            pass

    link = await dial("127.0.0.1", port, Identity.generate(), alpn=STREAM_ALPN, timeout=10.0)
    link.set_handler(Collect())
    stream = link.open_stream()
    loop = asyncio.get_running_loop()

    async def stream_run(size: int, count: int) -> Json:
        frame, last = _frame(size, 0), _frame(size, 1)
        start = time.perf_counter()
        for i in range(count - 1):
            link.send(stream, frame)
            if i % 64 == 63:
                await asyncio.sleep(0)  # let the loop transmit, as an application's writes would
        link.send(stream, last)
        await asyncio.wait_for(answers.get(), timeout=WAIT)
        return {"elapsed": time.perf_counter() - start}

    async def round_trips(size: int, count: int) -> Json:
        latencies = []
        frame = _frame(size, 1)
        for _ in range(count):
            start = time.perf_counter()
            link.send(stream, frame)
            await asyncio.wait_for(answers.get(), timeout=WAIT)
            latencies.append((time.perf_counter() - start) * 1000)
        return {"latencies_ms": latencies}

    ops = {"stream_run": stream_run, "round_trips": round_trips}
    print(json.dumps({"event": "ready", "pid": os.getpid()}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        request = json.loads(line)
        request_id, op = request.pop("id"), request.pop("op")
        if op == "stop":
            break
        result = await ops[op](**request)
        print(json.dumps({"id": request_id, "ok": True, "result": result}), flush=True)
    link.close(ErrorCode.NO_ERROR, "done")


def floor_main(args: list[str]) -> None:
    """``python -m quicpair.tools.bench stream-server`` / ``stream-client PORT``."""
    if args[0] == "stream-server":
        asyncio.run(_stream_server())
    else:
        asyncio.run(_stream_client(int(args[1])))


# -- section: messages ----------------------------------------------------------------------------


def _counted(pids: tuple[int, int], child: Child, op: str, **fields: Any) -> Json:
    """``child.call(op, **fields)`` (a floor run), with the CPU time both ends (``pids``) spent
    meanwhile, and the UDP datagrams sent meanwhile when they are counted."""
    before, cpu_before = udp_out(pids[0]), [cpu_seconds(pid) for pid in pids]
    result: Json = child.call(op, **fields)
    after, cpu_after = udp_out(pids[0]), [cpu_seconds(pid) for pid in pids]
    result["cpu_s"] = [b - a for a, b in zip(cpu_before, cpu_after, strict=True)]
    if before is not None and after is not None:
        result["packets"] = after - before
    return result


def run_messages(options: Options) -> Json:
    rounds = 2 if options.quick else 4
    counts = {100: 3000 if options.quick else 10000, 60_000: 300 if options.quick else 1000}
    trips = 100 if options.quick else 300
    runs: dict[str, list[Json]] = {}
    with netns("msg") as ns, children() as started:
        receiver = _workers(started, options.workdir, ns, "receiver", 1)
        sender = _workers(started, options.workdir, ns, "sender", 1)
        uri = receiver.call("pair", count=1)[0]
        peer = sender.call("join", uris=[uri])[0]
        sender.call("links_up", timeout=30)
        receiver.call("links_up", timeout=30)
        receiver.call("sink")
        server = _spawn("stream-server", ["-m", "quicpair.tools.bench", "stream-server"], options.workdir, ns)
        started.append(server)
        port = server.wait_line(lambda line: line.get("event") == "ready")["port"]
        client = _spawn(
            "stream-client", ["-m", "quicpair.tools.bench", "stream-client", str(port)], options.workdir, ns
        )
        started.append(client)
        client_pid = client.wait_line(lambda line: line.get("event") == "ready")["pid"]
        server_pid, nodes = server.proc.pid, (sender.proc.pid, receiver.proc.pid)

        def record(key: str, result: Json) -> None:
            runs.setdefault(key, []).append(result)

        delivered = 0

        def quicpair_run(**fields: Any) -> Json:
            """A send run, until the receiving application got the last message (the floor's
            server counts what its handler got, too): acknowledged is not yet delivered, and
            an application slower than the acks would show only once its inbox is full."""
            nonlocal delivered
            before, cpu_before = udp_out(nodes[0]), [cpu_seconds(pid) for pid in nodes]
            result: Json = sender.call("send_run", peer=peer, **fields)
            delivered += fields["count"]
            last_at = receiver.call("wait_received", total=delivered, timeout=WAIT)
            after, cpu_after = udp_out(nodes[0]), [cpu_seconds(pid) for pid in nodes]
            result["acked_elapsed"] = result["elapsed"]
            result["elapsed"] = max(result["elapsed"], last_at - result["started_at"])
            result["cpu_s"] = [b - a for a, b in zip(cpu_before, cpu_after, strict=True)]
            if before is not None and after is not None:
                result["packets"] = after - before
            return result

        # Warm both paths up.
        client.call("stream_run", size=100, count=500)
        quicpair_run(size=100, count=300, threads=4)
        for _ in range(rounds):
            for size in SIZES:
                n = counts[size]
                result = _counted((client_pid, server_pid), client, "stream_run", size=size, count=n)
                record(f"floor stream {size}", result)
                for threads in (1, THREADS):
                    count = n // 4 if threads == 1 else n
                    result = quicpair_run(size=size, count=count, threads=threads)
                    record(f"send {size} x{threads}", result)
                result = quicpair_run(size=size, count=n, threads=1, batch=n)
                record(f"send_many {size}", result)
                record(f"floor rtt {size}", client.call("round_trips", size=size, count=trips))
        total = receiver.call("received")
    return _messages_table(runs, total, counts)


def _messages_table(runs: dict[str, list[Json]], total: Json, counts: dict[int, int]) -> Json:
    rows: list[Json] = []
    for size in SIZES:
        floor = runs[f"floor stream {size}"]
        floor_rate = statistics.median(counts[size] / r["elapsed"] for r in floor)

        def row(what: str, key: str, n: int, size: int = size, floor_rate: float = floor_rate) -> Json:
            results = runs[key]
            rate = statistics.median(n / r["elapsed"] for r in results)
            out: Json = {"what": what, "msgs_s": rate, "MB_s": rate * size / 1e6, "ratio": rate / floor_rate}
            latencies = [x for r in results for x in r.get("latencies_ms", [])]
            if latencies:
                stats = summary(latencies)
                out |= {"p50_ms": stats["p50"], "p95_ms": stats["p95"]}
            out["cpu_us_per_msg"] = statistics.median(sum(r["cpu_s"]) / n * 1e6 for r in results)
            packets = [r["packets"] / n for r in results if "packets" in r]
            if packets:
                out["packets_per_msg"] = statistics.median(packets)
            return out

        n = counts[size]
        rows.append(row(f"{size} B: floor, raw aioquic stream", f"floor stream {size}", n))
        rtt = summary([x for r in runs[f"floor rtt {size}"] for x in r["latencies_ms"]])
        rows.append(
            {
                "what": f"{size} B: floor round trip (frame, 8-byte answer)",
                "p50_ms": rtt["p50"],
                "p95_ms": rtt["p95"],
            }
        )
        rows.append(row(f"{size} B: Node.send, 1 thread (acknowledged)", f"send {size} x1", n // 4))
        rows.append(row(f"{size} B: Node.send, {THREADS} threads", f"send {size} x{THREADS}", n))
        rows.append(row(f"{size} B: Node.send_many, one call for all", f"send_many {size}", n))
    return {
        "rows": rows,
        "targets": {"100 B msgs/s ratio": 0.25, "60000 B bytes/s ratio": 0.8},
        "received": total,
        "raw": {k: [{x: y for x, y in r.items() if x != "latencies_ms"} for r in v] for k, v in runs.items()},
    }


# -- section: idle links --------------------------------------------------------------------------


def run_idle(options: Options) -> Json:
    # Whole keep-alive periods (6 s by default); --quick measures 100 links only.
    window = 12.0 if options.quick else 60.0
    stages = (100,) if options.quick else (20, 50, 100)
    rows: list[Json] = []
    with netns("idle") as ns, children() as started:
        hub = _workers(
            started,
            options.workdir,
            ns,
            "hub",
            1,
            "pairing.max_open_codes=128",
            "node.max_concurrent_pairings=128",
            "node.max_connections=512",
        )
        hub_pid = int(hub.proc.pid)
        linked = 0

        def measure(links: int) -> None:
            time.sleep(3.0)  # let the last link-up writes settle (not a wait for anything)
            cpu0, out0, t0 = cpu_seconds(hub_pid), udp_out(hub_pid), time.monotonic()
            time.sleep(window)
            cpu1, out1, t1 = cpu_seconds(hub_pid), udp_out(hub_pid), time.monotonic()
            row: Json = {
                "what": f"{links} idle links: hub node process",
                "cpu_pct_one_core": 100 * (cpu1 - cpu0) / (t1 - t0),
                "rss_MB": rss_mb(hub_pid),
                "window_s": t1 - t0,
            }
            if out0 is not None and out1 is not None:
                row["packets_s"] = (out1 - out0) / (t1 - t0)
            rows.append(row)

        measure(0)
        for stage, target in enumerate(stages):
            add = target - linked
            peers = _workers(started, options.workdir, ns, f"peers{stage}", add)
            uris = hub.call("pair", count=add)
            peers.call("join", uris=uris)
            peers.call("links_up", timeout=60)
            hub.call("links_up", timeout=60)
            linked = target
            measure(linked)
    return {
        "rows": rows,
        "targets": {"100 links cpu_pct_one_core": 0.5, "100 links rss_MB": 100},
        "note": "packets_s counts every UDP datagram of the run's namespace: hub and peers, both ways",
    }


# -- sections: restart and vanished peer ----------------------------------------------------------


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class _Logged:
    """A nodehost child whose JSON log is read from an offset, for event timestamps."""

    def __init__(self, name: str, workdir: Path, port: int, ns: Netns) -> None:
        self.name, self.workdir, self.port, self.ns = name, workdir, port, ns
        self.log = workdir / f"{name}.log"
        self.child: Child | None = None
        self.node_id = ""

    def start(self) -> Child:
        argv = ["-m", "quicpair.tools.nodehost", "--home", str(self.workdir / self.name)]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--name", self.name, "--log", str(self.log)]
        argv += ["--set", "discovery.mdns=false", "--set", "log.level=info"]
        self.child = _spawn(self.name, argv, self.workdir, self.ns)
        ready = self.child.wait_line(lambda line: line.get("event") in ("ready", "failed"))
        if ready.get("event") != "ready":
            raise RuntimeError(f"{self.name}: {ready}")
        self.node_id = str(self.call("info")["node_id"])
        return self.child

    def call(self, op: str, **fields: Any) -> Any:
        assert self.child is not None
        return self.child.call(op, **fields)

    def kill(self) -> float:
        assert self.child is not None
        at = time.time()
        self.child.proc.send_signal(signal.SIGKILL)
        self.child.proc.wait(timeout=WAIT)
        self.child.close()
        self.child = None
        return at

    def offset(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def wait_event(self, event: str, since: int, timeout: float = 60.0) -> float:
        """Timestamp of the first ``event`` (or one of ``a|b``) logged after byte ``since``."""
        events = event.split("|")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), self.log.open("rb") as f:
                f.seek(since)
                for raw in f.read().splitlines():
                    with contextlib.suppress(ValueError):
                        line = json.loads(raw)
                        if line.get("event") in events:
                            return _stamp(line["timestamp"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {event} within {timeout} s")
            time.sleep(0.02)

    def close(self) -> None:
        if self.child is not None:
            self.child.close()


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@contextlib.contextmanager
def _pair_of_nodes(workdir: Path, tag: str) -> Iterator[tuple[_Logged, _Logged]]:
    """Two paired node processes, link up; (dialer, listener) by the dial rule."""
    from quicpair.protocol.identity import NodeId

    with netns(tag) as ns:
        a_port, b_port = _free_ports(2)
        a, b = _Logged(f"{tag}-a", workdir, a_port, ns), _Logged(f"{tag}-b", workdir, b_port, ns)
        try:
            a.start()
            b.start()
            uri = a.call("pair")["uri"]
            b.call("join", code=uri, timeout=30)
            since = 0
            a.wait_event("link.up", since)
            b.wait_event("link.up", since)
            dialer, listener = (a, b) if NodeId.from_text(a.node_id) < NodeId.from_text(b.node_id) else (b, a)
            yield dialer, listener
        finally:
            a.close()
            b.close()


def run_restart(options: Options) -> Json:
    samples = 3 if options.quick else 10
    rows: list[Json] = []
    raw: dict[str, list[Json]] = {}
    with _pair_of_nodes(options.workdir, "restart") as (dialer, listener):
        for restarted, survivor, role in ((dialer, listener, "dialer"), (listener, dialer, "listener")):
            results = []
            for _ in range(samples):
                mine, theirs = restarted.offset(), survivor.offset()
                killed = restarted.kill()
                spawned = time.time()
                restarted.start()
                started = restarted.wait_event("node.started", mine)
                up_here = restarted.wait_event("link.up", mine)
                # The survivor's link may never go down: the new connection replaces the old.
                up_there = survivor.wait_event("link.up|link.replaced", theirs)
                results.append(
                    {
                        "started_to_up_restarted_ms": (up_here - started) * 1000,
                        "started_to_up_survivor_ms": (up_there - started) * 1000,
                        "spawn_to_started_ms": (started - spawned) * 1000,
                        "killed_at": killed,
                    }
                )
                time.sleep(0.5)  # a link that just came up: let its hello exchange settle
            raw[role] = results
            rows.append(
                {
                    "what": f"restart the {role}: node.started -> link.up (median of {samples})",
                    "restarted_side_ms": statistics.median(r["started_to_up_restarted_ms"] for r in results),
                    "survivor_ms": statistics.median(r["started_to_up_survivor_ms"] for r in results),
                    "max_ms": max(
                        max(r["started_to_up_restarted_ms"], r["started_to_up_survivor_ms"]) for r in results
                    ),
                    "process_start_ms": statistics.median(r["spawn_to_started_ms"] for r in results),
                }
            )
    return {"rows": rows, "raw": raw}


def run_down(options: Options) -> Json:
    samples = 1 if options.quick else 3
    rows: list[Json] = []
    raw: dict[str, list[float]] = {}
    with _pair_of_nodes(options.workdir, "down") as (dialer, listener):
        for killed_node, survivor, role in ((dialer, listener, "dialer"), (listener, dialer, "listener")):
            seconds = []
            for _ in range(samples):
                since = survivor.offset()
                killed = killed_node.kill()
                down = survivor.wait_event("link.down", since, timeout=60)
                seconds.append(down - killed)
                mine = killed_node.offset()
                killed_node.start()
                killed_node.wait_event("link.up", mine)
            raw[role] = seconds
            rows.append(
                {
                    "what": f"the {role} SIGKILLed: link.down on the survivor (s)",
                    "median_s": statistics.median(seconds),
                    "max_s": max(seconds),
                    "n": len(seconds),
                }
            )
    return {"rows": rows, "raw": raw}
