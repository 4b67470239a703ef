"""The benchmark: quicpair side by side with the raw transport floor, in one run.

    python -m quicpair.tools.bench                 # the full run (several minutes)
    python -m quicpair.tools.bench --quick         # about two minutes
    python -m quicpair.tools.bench --json out.json --markdown out.md --sections pairing

Every section runs real processes on loopback and measures itself against a
floor that this tool implements too, in the same run, interleaved sample by
sample, so that a busy machine slows both alike:

``pairing``
    Two-process pairing latency: an initiator node in a child process
    (tools/nodehost.py), a fresh joiner :class:`~quicpair.actors.node.Node` in
    this process for each sample (started before the clock), ``join()`` timed
    from call to return. The floor, sample for sample: this tool's own
    transport server in a child process and a client here doing what a
    pairing does on the wire and nothing else -- a pinned mutual-TLS QUIC
    handshake (actors/transport: aioquic with the node certificates), one
    bidirectional stream, three request/response exchanges of pairing-sized
    frames, close. No actors, no PAKE, no disk. p50/p95/p99 of both, and the
    ratios.
``pake``
    SPAKE2 alone: one side's start and finish, this package's (libsodium)
    and the reference ``spake2`` package's (pure Python), when installed.
``steps``
    Where a pairing's time goes: two nodes in this process, the session
    actors' methods wrapped to stamp when each step first happens (session
    started, handshake done, each machine event, each registry write done);
    the median time of each step from ``join()``. A profile, not a target.
``concurrent``
    N pairings started at once against one initiator (N = 50 and 200 in the
    full run), the joiners spread over ``--workers`` child processes (4), all
    behind 127.0.0.1: wall time until the last one finished, failures by
    code, per-pairing latency.

``messages``, ``idle``, ``restart``, ``down``
    The link sections, in tools/bench_links.py (its docstring says what each
    measures): acknowledged messages against a raw aioquic stream, idle links
    against one hub, restart of each side to link up, a vanished peer to link down.

Adding a section: write
``run_<name>(options, machine) -> dict`` returning ``{"rows": [...], ...}``
(each row ``{"what": str, **numbers}``), add a :class:`Section` to
:data:`SECTIONS`; the JSON and markdown outputs pick it up. :data:`PLANNED`
names the sections the issue asks for that do not exist yet; the markdown
lists them as not measured.

The JSON keeps every raw sample; the markdown is the table docs/BENCHMARKS.md
shows. Child processes are this tool itself (``floor-server``,
``joiners``) or nodehost; all are stopped before the tool exits, pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = ["PLANNED", "SECTIONS", "ConcurrentRun", "Section", "main", "pair_at_once"]

Json = dict[str, Any]

#: ALPN of the floor's own protocol (not a quicpair ALPN: nothing else speaks it).
FLOOR_ALPN = "quicpair-bench/floor"
#: The floor's exchanges, client frame then server frame, sized like a pairing's messages
#: (PairRequest/PairChallenge, PairResponse/PairComplete, PairDone/PairCommit, msgpack).
FLOOR_EXCHANGES = ((48, 90), (200, 180), (40, 40))
#: Bound on any one wait of the tool on a child or a pairing.
WAIT = 120.0


# -- the sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    quick: bool
    samples: int
    concurrency: tuple[int, ...]
    workers: int
    workdir: Path


@dataclass(frozen=True)
class Section:
    """One part of the benchmark: its name on the command line, its title, how it runs."""

    name: str
    title: str
    run: Callable[[Options], Json]


#: Sections the issue asks for that are not written yet; each will be a :class:`Section` in
#: :data:`SECTIONS`.
PLANNED: dict[str, str] = {}


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> Json:
    return {
        "n": len(values),
        "p50": statistics.median(values) if values else float("nan"),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


# -- child processes --------------------------------------------------------------------------


class Child:
    """A child process speaking JSON lines on stdin/stdout; stderr to a file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, prefix: Sequence[str] = ()) -> None:
        self.name = name
        self._stderr = (workdir / f"{name}.stderr").open("w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self._lines: list[Json] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"bench-{name}", daemon=True)
        self._reader.start()
        self._ids = iter(range(1, 1 << 30))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(text)
                if isinstance(message, dict):
                    with self._cond:
                        self._lines.append(message)
                        self._cond.notify_all()
        with self._cond:
            self._lines.append({"event": "exited"})
            self._cond.notify_all()

    def wait_line(self, predicate: Callable[[Json], bool], timeout: float = WAIT) -> Json:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, line in enumerate(self._lines):
                    if predicate(line):
                        return self._lines.pop(i)
                    if line.get("event") == "exited":
                        raise RuntimeError(f"{self.name} exited ({self.proc.wait()}); see its .stderr")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: nothing expected within {timeout} s")
                self._cond.wait(remaining)

    def send(self, message: Json) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, **fields: Any) -> Any:
        """A tools/control.py request; its result, or RuntimeError."""
        request_id = next(self._ids)
        self.send({"id": request_id, "op": op, **fields})
        reply = self.wait_line(lambda line: line.get("id") == request_id)
        if not reply.get("ok"):
            raise RuntimeError(f"{self.name}: {op} failed: {reply.get('error')}")
        return reply.get("result")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # nodehost and this tool's children stop on EOF
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._reader.join(timeout=20)
        self._stderr.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Every child started in the block is closed when it ends, pass or fail."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.close()


def initiator(started: list[Child], workdir: Path, name: str, settings: Sequence[str]) -> tuple[Child, Json]:
    home = workdir / name
    argv = ["-m", "quicpair.tools.nodehost", "--home", str(home), "--listen", "127.0.0.1:0", "--name", name]
    argv += ["--log", str(workdir / f"{name}.log")]
    for item in ("discovery.mdns=false", "log.level=warning", *settings):
        argv += ["--set", item]
    child = Child(name, argv, workdir)
    started.append(child)
    return child, child.wait_line(lambda line: line.get("event") in ("ready", "failed"))


def _joiner_settings(name: str, step_timeout: float = 10.0) -> Any:
    from quicpair.config.settings import load_settings

    return load_settings(
        node={"listen_host": "127.0.0.1", "listen_port": 0, "name": name},
        pairing={"step_timeout": step_timeout},
        discovery={"mdns": False},
    )


# -- the floor: pinned mutual-TLS QUIC, one stream, three exchanges ----------------------------


def _frame(size: int, tag: int) -> bytes:
    return (size + 1).to_bytes(2, "big") + bytes([tag]) + bytes(size)


class _Frames:
    """Length-prefixed frames out of stream bytes."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                break
            out.append(self._buffer[2 : 2 + size])
            self._buffer = self._buffer[2 + size :]
        return out


#: Given a connection, what to do with each chunk of its stream: ``on_data(stream_id, data)``.
OnConnection = Callable[[Any], Callable[[int, bytes], None]]


async def serve_until_eof(alpn: str, on_connection: OnConnection, max_connections: int) -> None:
    """A floor's server in a child process: pinned QUIC on loopback with a fresh identity, every
    peer admitted, each connection's stream chunks to ``on_connection(link)``; prints its ready
    line (port, pid) and serves until stdin ends."""
    from quicpair.actors.transport.listener import listen
    from quicpair.actors.transport.quic_link import QuicLink
    from quicpair.protocol.errors import ErrorCode
    from quicpair.protocol.identity import Identity

    class Handler:
        def __init__(self, link: QuicLink) -> None:
            self.on_data = on_connection(link)

        def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
            self.on_data(stream_id, data)

        def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
            pass

        def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
            pass

    listener = await listen(
        "127.0.0.1",
        0,
        Identity.generate(),
        alpns=[alpn],
        admit=lambda peer, alpn: None,
        on_connection=lambda link: link.set_handler(Handler(link)),
        max_connections=max_connections,
    )
    print(json.dumps({"event": "ready", "port": listener.address[1], "pid": os.getpid()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    listener.close()


async def _floor_server() -> None:
    def echo(link: Any) -> Callable[[int, bytes], None]:
        frames = _Frames()

        def on_data(stream_id: int, data: bytes) -> None:
            for frame in frames.feed(data):
                index = frame[0]
                last = index == len(FLOOR_EXCHANGES) - 1
                link.send(stream_id, _frame(FLOOR_EXCHANGES[index][1], index), end_stream=last)

        return on_data

    await serve_until_eof(FLOOR_ALPN, echo, max_connections=1024)


class FloorClient:
    """The floor's client, on a loop thread of its own in this process."""

    def __init__(self, port: int) -> None:
        from quicpair.protocol.identity import Identity

        self.port = port
        self.identity = Identity.generate()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-floor", daemon=True)
        self._thread.start()

    def sample(self) -> float:
        """One floor exchange, dial to last answer, in ms."""
        return asyncio.run_coroutine_threadsafe(self._exchange(), self.loop).result(timeout=WAIT)

    async def _exchange(self) -> float:
        from quicpair.actors.transport.dial import dial
        from quicpair.protocol.errors import ErrorCode

        answers: asyncio.Queue[bytes] = asyncio.Queue()
        frames = _Frames()

        class Collect:
            def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
                for frame in frames.feed(data):
                    answers.put_nowait(frame)

            def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
                pass

            def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
                pass

        start = time.perf_counter()
        link = await dial("127.0.0.1", self.port, self.identity, alpn=FLOOR_ALPN, timeout=10.0)
        link.set_handler(Collect())
        stream = link.open_stream()
        for index, (request, _) in enumerate(FLOOR_EXCHANGES):
            link.send(stream, _frame(request, index))
            await asyncio.wait_for(answers.get(), timeout=10.0)
        elapsed = (time.perf_counter() - start) * 1000
        link.close(ErrorCode.NO_ERROR, "done")
        return elapsed

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# -- section: two-process pairing latency against the floor -----------------------------------


def run_pairing(options: Options) -> Json:
    from quicpair.actors.node import Node

    floor_ms: list[float] = []
    pairing_ms: list[float] = []
    with children() as started:
        # The initiator's links would redial every stopped joiner: wait long before that.
        alice, _ = initiator(
            started, options.workdir, "initiator", ["link.backoff_min=60", "link.backoff_max=600"]
        )
        server = Child("floor-server", ["-m", "quicpair.tools.bench", "floor-server"], options.workdir)
        started.append(server)
        floor = FloorClient(server.wait_line(lambda line: line.get("event") == "ready")["port"])
        try:
            for _ in range(3):  # warm both paths (imports, first connections)
                floor.sample()
            for i in range(-2, options.samples):
                floor_sample = floor.sample()
                uri = alice.call("pair")["uri"]
                with Node(options.workdir / f"joiner-{i + 2}", _joiner_settings(f"j{i}")) as bob:
                    start = time.perf_counter()
                    bob.join(uri, timeout=30)
                    elapsed = (time.perf_counter() - start) * 1000
                if i >= 0:  # the first two pairings warm the initiator up
                    floor_ms.append(floor_sample)
                    pairing_ms.append(elapsed)
        finally:
            floor.close()
    floor_stats, pairing_stats = summary(floor_ms), summary(pairing_ms)
    ratios = {p: pairing_stats[p] / floor_stats[p] for p in ("p50", "p95", "p99")}
    return {
        "rows": [
            {"what": "floor: pinned mutual-TLS QUIC, 1 stream, 3 exchanges (ms)", **floor_stats},
            {"what": "pairing, two processes, join() (ms)", **pairing_stats},
            {"what": "ratio pairing / floor", **ratios, "n": len(pairing_ms)},
        ],
        "targets": {"p50_ratio": 1.5, "p95_ratio": 2.0},
        "floor_ms": floor_ms,
        "pairing_ms": pairing_ms,
    }


# -- section: many pairings at once against one initiator --------------------------------------


def _joiners_worker(count: int, workdir: Path, step_timeout: float) -> None:
    """Child: ``count`` joiner nodes; on {"uris": [...]} they all join at once."""
    from quicpair.actors.kernel.logs import configure_logging
    from quicpair.actors.node import Node
    from quicpair.protocol.errors import QuicpairError

    configure_logging(level="warning", fmt="json", stream=(workdir / "nodes.log").open("a"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        nodes = list(
            pool.map(
                lambda i: Node(workdir / f"n{i}", _joiner_settings(f"n{i}", step_timeout)).start(),
                range(count),
            )
        )
    print(json.dumps({"event": "ready"}), flush=True)
    line = sys.stdin.readline()
    uris = json.loads(line)["uris"] if line else []
    barrier = threading.Barrier(len(uris))

    def join(pair: tuple[Any, str]) -> Json:
        node, uri = pair
        barrier.wait(timeout=WAIT)
        start = time.perf_counter()
        try:
            node.join(uri, timeout=6 * step_timeout + 30)
        except QuicpairError as exc:
            code = getattr(exc, "code", None)
            return {
                "ms": (time.perf_counter() - start) * 1000,
                "error": getattr(code, "name", type(exc).__name__),
            }
        return {"ms": (time.perf_counter() - start) * 1000, "error": None}

    with ThreadPoolExecutor(max_workers=max(len(uris), 1)) as pool:
        results = list(pool.map(join, zip(nodes, uris, strict=False)))
    print(json.dumps({"event": "results", "results": results}), flush=True)
    sys.stdin.readline()  # until told (or EOF)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda node: node.stop(), nodes))


# -- section: SPAKE2, libsodium against the reference -----------------------------------------


def run_pake(options: Options) -> Json:
    """One side's start + finish, quicpair's SPAKE2 (libsodium) and the ``spake2`` package's."""
    from quicpair.protocol.identity import NodeId
    from quicpair.protocol.keys import Role
    from quicpair.protocol.pake import spake2_for

    ids = (NodeId(bytes([1]) * 32), NodeId(bytes([2]) * 32))

    def ours() -> None:
        a = spake2_for(Role.INITIATOR, b"acid-zone-wrist", *ids, os.urandom)
        b = spake2_for(Role.JOINER, b"acid-zone-wrist", *ids, os.urandom)
        msg_a, msg_b = a.start(), b.start()
        a.finish(msg_b)
        b.finish(msg_a)

    def timed(run: Callable[[], None], n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            run()
            out.append((time.perf_counter() - start) * 1000 / 2)  # per side
        return out

    rows = [{"what": "quicpair SPAKE2 (libsodium), ms per side", **summary(timed(ours, 400))}]
    try:
        from spake2 import SPAKE2_A, SPAKE2_B  # the reference: a test dependency
    except ImportError:
        return {"rows": rows}

    def reference() -> None:
        a = SPAKE2_A(b"acid-zone-wrist", idA=ids[0].raw, idB=ids[1].raw)
        b = SPAKE2_B(b"acid-zone-wrist", idA=ids[0].raw, idB=ids[1].raw)
        msg_a, msg_b = a.start(), b.start()
        a.finish(msg_b)
        b.finish(msg_a)

    rows.append({"what": "spake2 0.9 (pure Python), ms per side", **summary(timed(reference, 20))})
    return {"rows": rows}


# -- section: where a pairing's time goes, step by step ----------------------------------------


#: (role, method, label): each call's first time in a pairing is stamped. The label may
#: hold ``{role}`` and ``{arg}`` (the event's type, or the write's name).
_STEPS = (
    ("joiner", "begin", "joiner: session started"),
    ("joiner", "_on_dialed", "joiner: dialed (handshake done)"),
    ("initiator", "begin", "initiator: session started"),
    ("both", "handle_event", "{role}: {arg}"),
    ("both", "_on_write_done", "{role}: write done ({arg})"),
)


@contextlib.contextmanager
def _stamping(marks: dict[str, float]) -> Iterator[None]:
    """Wrap the session methods of :data:`_STEPS` to stamp ``marks`` (restored afterwards)."""
    from quicpair.actors.pairing.initiator import InitiatorSession
    from quicpair.actors.pairing.joiner import JoinerSession

    classes: dict[str, tuple[type, ...]] = {
        "joiner": (JoinerSession,),
        "initiator": (InitiatorSession,),
        "both": (JoinerSession, InitiatorSession),
    }
    undo: list[tuple[type, str, Any]] = []

    def wrap(cls: type, name: str, label: str) -> None:
        original = cls.__dict__.get(name)
        inherited = getattr(cls, name)

        def stamped(self: Any, *args: Any) -> Any:
            arg = args[0] if args else None
            what = getattr(arg, "what", None) or type(arg).__name__
            role = getattr(getattr(self, "role", None), "value", "")
            marks.setdefault(label.format(role=role, arg=what), time.perf_counter())
            return inherited(self, *args)

        setattr(cls, name, stamped)
        undo.append((cls, name, original))

    for role, name, label in _STEPS:
        for cls in classes[role]:
            wrap(cls, name, label)
    try:
        yield
    finally:
        for cls, name, original in reversed(undo):
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


def run_steps(options: Options) -> Json:
    """Two nodes in this process, the session methods wrapped: when each step happens."""
    from quicpair.actors.node import Node

    marks: dict[str, float] = {}
    rows: list[dict[str, float]] = []
    samples = max(10, options.samples // 4)
    with Node(options.workdir / "steps-initiator", _joiner_settings("steps-i")) as alice, _stamping(marks):
        for i in range(samples + 2):
            with Node(options.workdir / f"steps-{i}", _joiner_settings(f"steps-{i}")) as bob:
                offer = alice.pair()
                marks.clear()
                start = marks["join() called"] = time.perf_counter()
                bob.join(offer.uri, timeout=30)
                marks["join() returned"] = time.perf_counter()
                if i >= 2:
                    rows.append({k: (v - start) * 1000 for k, v in marks.items()})
    names = sorted(
        {k for row in rows for k in row}, key=lambda k: statistics.median(r.get(k, 0) for r in rows)
    )
    table = []
    previous = 0.0
    for name in names:
        at = statistics.median(r[name] for r in rows if name in r)
        table.append({"what": name, "at_ms": at, "since_previous_ms": at - previous})
        previous = at
    return {"rows": table, "samples": len(rows), "raw": rows}


@dataclass(frozen=True)
class ConcurrentRun:
    """What :func:`pair_at_once` saw."""

    #: Seconds from the start signal to the last joiner's answer.
    wall: float
    #: One per joiner: ``{"ms": latency, "error": None or the error's code name}``.
    results: list[Json]
    #: The initiator's counters afterwards.
    initiator_counters: dict[str, int]


def pair_at_once(n: int, workers: int, workdir: Path, *, step_timeout: float = 10.0) -> ConcurrentRun:
    """``n`` joiner nodes in ``workers`` child processes pair at once with one initiator process.

    The initiator takes ``n`` open codes and ``n`` sessions (its settings say so), and a
    connection table of ``4 n`` (at least 256); everything else is the defaults, its flood
    protections included. Both sides use ``step_timeout`` (the joiners' dial and step bound,
    the initiator's step bound): on a loaded machine a step that outlasts it fails, and a
    failed claim costs its source address a token (protocol/claims.py), so once the bucket
    is empty the other joiners behind that address get BUSY.
    """
    with children() as started:
        cap = max(n, 32)
        alice, _ = initiator(
            started,
            workdir,
            "initiator",
            [
                f"pairing.max_open_codes={cap}",
                f"node.max_concurrent_pairings={cap}",
                f"node.max_connections={max(256, 4 * n)}",
                f"pairing.step_timeout={step_timeout}",
            ],
        )
        shares = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
        joiners = []
        for i, share in enumerate(shares):
            (workdir / f"w{i}").mkdir()
            argv = ["-m", "quicpair.tools.bench", "joiners", "--count", str(share)]
            argv += ["--dir", str(workdir / f"w{i}"), "--step-timeout", str(step_timeout)]
            worker = Child(f"w{i}", argv, workdir)
            started.append(worker)
            joiners.append(worker)
        for worker in joiners:
            worker.wait_line(lambda line: line.get("event") == "ready", timeout=WAIT + n)
        uris = [alice.call("pair")["uri"] for _ in range(n)]
        start = time.perf_counter()
        offset = 0
        for worker, share in zip(joiners, shares, strict=True):
            worker.send({"uris": uris[offset : offset + share]})
            offset += share
        results: list[Json] = []
        for worker in joiners:
            bound = WAIT + 6 * step_timeout
            results += worker.wait_line(lambda line: line.get("event") == "results", timeout=bound)["results"]
        wall = time.perf_counter() - start
        counters = alice.call("counters")
        for worker in joiners:
            worker.send({"stop": True})
    return ConcurrentRun(wall, results, counters)


def run_concurrent(options: Options) -> Json:
    rows: list[Json] = []
    raw: dict[str, Any] = {}
    for n in options.concurrency:
        workdir = options.workdir / f"concurrent-{n}"
        workdir.mkdir()
        run = pair_at_once(n, options.workers, workdir)
        failures = Counter(r["error"] for r in run.results if r["error"])
        latencies = [r["ms"] for r in run.results if not r["error"]]
        rows.append(
            {
                "what": f"{n} pairings at once, {options.workers} joiner processes, one source address",
                "wall_s": run.wall,
                "failed": sum(failures.values()),
                "failures": dict(failures),
                **{f"latency_{k}": v for k, v in summary(latencies).items() if k != "n"},
            }
        )
        raw[str(n)] = {"results": run.results, "initiator_counters": run.initiator_counters}
    return {"rows": rows, "targets": {"200_wall_s": 3.0, "failed": 0}, "raw": raw}


def _links_section(name: str) -> Callable[[Options], Json]:
    """A section of tools/bench_links.py (imported when it runs: it imports this module)."""

    def run(options: Options) -> Json:
        from quicpair.tools import bench_links

        result: Json = getattr(bench_links, f"run_{name}")(options)
        return result

    return run


SECTIONS = (
    Section("pake", "SPAKE2, one side (start and finish)", run_pake),
    Section("steps", "A pairing step by step (two nodes in one process, medians)", run_steps),
    Section("pairing", "Pairing latency, two processes, against the transport floor", run_pairing),
    Section("concurrent", "Concurrent pairings against one initiator", run_concurrent),
    Section("messages", "Acknowledged messages against a raw aioquic stream", _links_section("messages")),
    Section("idle", "Idle links: one hub node process", _links_section("idle")),
    Section("restart", "Restart of each side to link up (default timers)", _links_section("restart")),
    Section("down", "A vanished peer: SIGKILL to link.down on the survivor", _links_section("down")),
)


# -- output ------------------------------------------------------------------------------------


def machine() -> Json:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aioquic": version("aioquic"),
        "pykka": version("pykka"),
        "pynacl": version("pynacl"),
        "loadavg_at_start": os.getloadavg(),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return str(value)


def markdown(report: Json) -> str:
    out = [f"Command: `{report['command']}`", ""]
    m = report["machine"]
    out += [
        f"Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, aioquic {m['aioquic']}, "
        f"pykka {m['pykka']}, PyNaCl {m['pynacl']}; load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
    ]
    for result in report["sections"].values():
        rows = result["rows"]
        out += [f"### {result['title']}", ""]
        columns = [key for key in rows[0] if key != "what"]
        for row in rows[1:]:
            columns += [key for key in row if key != "what" and key not in columns]
        out.append("| what | " + " | ".join(columns) + " |")
        out.append("|---|" + "---|" * len(columns))
        for row in rows:
            out.append(f"| {row['what']} | " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        out += ["", f"Targets: {_cell(result.get('targets', {}))}", ""]
    for name, what in PLANNED.items():
        out.append(f"- `{name}` ({what}): not measured yet.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["floor-server"]:
        asyncio.run(_floor_server())
        return 0
    if args[:1] in (["stream-server"], ["stream-client"]):
        from quicpair.tools.bench_links import floor_main

        floor_main(args)
        return 0
    if args[:1] == ["nodes"]:
        from quicpair.tools.bench_links import worker_main

        worker_main(args[1:])
        return 0
    if args[:1] == ["joiners"]:
        parser = argparse.ArgumentParser(prog="python -m quicpair.tools.bench joiners")
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--dir", type=Path, required=True)
        parser.add_argument("--step-timeout", type=float, default=10.0)
        sub = parser.parse_args(args[1:])
        _joiners_worker(sub.count, sub.dir, sub.step_timeout)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller runs (~2 min)")
    parser.add_argument("--samples", type=int, help="pairing samples (default 100, quick 30)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="concurrent pairings (default 50 200)")
    parser.add_argument("--workers", type=int, default=4, help="joiner processes for concurrent pairings")
    parser.add_argument("--sections", nargs="+", choices=[s.name for s in SECTIONS], help="default: all")
    parser.add_argument("--json", type=Path, help="write the full report (every sample) here")
    parser.add_argument("--markdown", type=Path, help="write the markdown tables here (else stdout)")
    ns = parser.parse_args(args)
    from quicpair.actors.kernel.logs import configure_logging

    with tempfile.TemporaryDirectory(prefix="quicpair-bench-") as tmp:
        configure_logging(level="warning", fmt="json", stream=(Path(tmp) / "bench.log").open("a"))
        options = Options(
            quick=ns.quick,
            samples=ns.samples or (30 if ns.quick else 100),
            concurrency=tuple(ns.concurrency or ((50,) if ns.quick else (50, 200))),
            workers=ns.workers,
            workdir=Path(tmp),
        )
        report: Json = {
            "command": "python -m quicpair.tools.bench " + " ".join(args),
            "machine": machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "sections": {},
        }
        for section in SECTIONS:
            if ns.sections and section.name not in ns.sections:
                continue
            print(f"bench: {section.name}...", file=sys.stderr, flush=True)
            result = section.run(options)
            report["sections"][section.name] = {"title": section.title, **result}
    text = markdown(report)
    if ns.json:
        ns.json.write_text(json.dumps(report, indent=1) + "\n")
    if ns.markdown:
        ns.markdown.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
