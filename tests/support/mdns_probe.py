"""A ``python -m quicpair.tools.mdns_probe serve`` process inside a test's network namespace.

The probe runs the node's own mDNS code (actors/discovery/mdns.py) on its own,
driven by JSON lines: start (advertise a NodeId), nameplates, resolve, watch,
and ``rogue`` (publish any TXT record under any name: forged and garbage adverts).
Used by tests/discovery/test_discovery.py and the forged-advert link tests.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.netns import Host

__all__ = ["Probe"]

ROOT = Path(__file__).resolve().parents[2]
#: Every wait is bounded by this (mDNS on a veth answers in ms).
WAIT = 10.0


class Probe:
    """A ``quicpair.tools.mdns_probe serve`` process inside one host; requests are bounded."""

    def __init__(self, host: Host, log: Path) -> None:
        self.host = host
        self.log = log
        self._stderr = log.open("w")
        self.proc = host.popen(
            [sys.executable, "-m", "quicpair.tools.mdns_probe", "--log-level", "debug", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self.stopped = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))

    def send(self, op: str, **fields: Any) -> int:
        return self.send_together((op, fields))[0]

    def send_together(self, *requests: tuple[str, dict[str, Any]]) -> list[int]:
        """Write requests in one write: the probe finds them all in its buffer at once."""
        assert self.proc.stdin is not None
        ids, lines = [], []
        for op, fields in requests:
            self._next += 1
            self.stopped = self.stopped or op == "stop"
            ids.append(self._next)
            lines.append(json.dumps({"id": self._next, "op": op, **fields}) + "\n")
        self.proc.stdin.write("".join(lines))
        self.proc.stdin.flush()
        return ids

    def reply(self, request_id: int, timeout: float = WAIT + 5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self._get(deadline, f"reply to request {request_id}")
            if message.get("id") == request_id:
                assert message["ok"], message
                return message

    def __call__(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.reply(self.send(op, **fields))

    def wait_event(self, match: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if match(event):
                return event
        while True:
            message = self._get(deadline, "a matching watch event")
            if match(message):
                return message

    def _get(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            message = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{self.host}: no {what} in time; log: {self.log}") from None
        if "event" in message:
            self.events.append(message)
        return message

    def log_events(self, name: str) -> list[dict[str, Any]]:
        self._stderr.flush()
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == name]

    def stop(self) -> int | None:
        """Ask the probe to stop (it sends goodbyes); :meth:`join` waits for it."""
        try:
            return self.send("stop") if self.proc.poll() is None and not self.stopped else None
        except OSError:
            return None

    def join(self, request_id: int | None) -> None:
        """Wait for a clean exit; anything less is left for the Lan to kill."""
        try:
            if request_id is not None:
                self.reply(request_id)
            self.proc.wait(timeout=WAIT)
        except (AssertionError, subprocess.TimeoutExpired):
            pass
        finally:
            self._stderr.close()
