"""Measure a real ``quicpair run`` under two faults: a descriptor flood, and its home removed.

::

    python -m quicpair.tools.bench_daemon --flood-seconds 10 --home-runs 5

**Descriptor flood.** A daemon on 127.0.0.1 gets a file limit 24 above what it holds
(``prlimit``), then up to 80 control connections that stay open: ``accept()`` fails
with EMFILE. Prints the daemon's CPU time while the flood is held and after it ended,
how long until ``quicpair status`` answers again, and the log lines of the episode.

**Vanished home.** ``rm -rf`` of a running daemon's home, then how long until it
exited, and with which status (74), over ``--home-runs`` daemons.

Everything runs in a temporary directory, on loopback, mDNS off.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["main"]

_RUN = ["run", "--json", "--listen", "127.0.0.1:0", "--set", "discovery.mdns=false"]


def _cli(home: Path, *args: str, stderr: IO[str] | int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "quicpair.tools.cli", "--home", str(home), *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _started(home: Path, stderr: IO[str] | int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    daemon = _cli(home, *_RUN, stderr=stderr)
    assert daemon.stdout is not None
    ready = json.loads(daemon.stdout.readline() or "{}")
    if ready.get("event") != "ready":
        daemon.kill()
        raise SystemExit(f"the daemon did not start: {ready}")
    return daemon


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flood(base: Path, seconds: float) -> dict[str, Any]:
    home, log_path = base / "flood", base / "flood.log"
    with open(log_path, "w", encoding="utf-8") as log:
        daemon = _started(home, stderr=log)
    try:
        limit = len(os.listdir(f"/proc/{daemon.pid}/fd")) + 24
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (limit, limit))
        before = len(log_path.read_text().splitlines())
        clients = []
        for _ in range(80):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            clients.append(client)
            for _attempt in range(50):
                try:
                    client.connect(str(home / "control.sock"))
                    break
                except BlockingIOError:
                    time.sleep(0.01)
        time.sleep(1.0)
        cpu, start = _cpu(daemon.pid), time.monotonic()
        time.sleep(seconds)
        held = (_cpu(daemon.pid) - cpu) / (time.monotonic() - start)
        for client in clients:
            client.close()
        ended = time.monotonic()
        while _cli(home, "status").wait(30) != 0:
            pass
        answered = time.monotonic() - ended
        cpu = _cpu(daemon.pid)
        time.sleep(5.0)
        after = (_cpu(daemon.pid) - cpu) / 5.0
        events = [json.loads(line)["event"] for line in log_path.read_text().splitlines()[before:]]
    finally:
        daemon.terminate()
        daemon.wait(30)
    return {
        "cpu_while_flooded": held,
        "cpu_after": after,
        "cli_back_after_s": answered,
        "log_lines": len(events),
        "events": sorted(set(events)),
    }


def vanished_home(base: Path, runs: int) -> list[tuple[float, int]]:
    results = []
    for run in range(runs):
        home = base / f"gone-{run}"
        daemon = _started(home)
        time.sleep(0.3 * run)  # at different moments of the daemon's one-second watch
        start = time.monotonic()
        shutil.rmtree(home)
        status = daemon.wait(30)
        results.append((time.monotonic() - start, status))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quicpair.tools.bench_daemon", description=__doc__)
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="how long the flood is held")
    parser.add_argument("--home-runs", type=int, default=5, help="daemons whose home is removed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quicpair-bench-daemon-") as tmp:
        base = Path(tmp)
        base.chmod(0o700)
        f = flood(base, args.flood_seconds)
        print(
            f"flood held {args.flood_seconds:g} s: daemon CPU {100 * f['cpu_while_flooded']:.1f}% of a core"
        )
        print(f"flood ended: `quicpair status` answered after {f['cli_back_after_s']:.2f} s (one CLI start)")
        print(f"after the flood: daemon CPU {100 * f['cpu_after']:.1f}% of a core")
        print(f"log lines of the episode: {f['log_lines']} ({', '.join(f['events'])})")
        gone = vanished_home(base, args.home_runs)
        times = ", ".join(f"{seconds:.2f} s" for seconds, _ in gone)
        print(f"home removed: exited after {times}; statuses {sorted({status for _, status in gone})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
