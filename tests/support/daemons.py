"""Real ``quicpair run`` daemons and CLI commands for the daemon's fault tests.

::

    from support.daemons import daemons_fixture as daemons_fixture  # the ``daemons`` fixture

    def test_x(daemons, tmp_path):
        alice, bob = daemons.start("alice", "bob")          # on 127.0.0.1, mDNS off
        daemons.pair(alice, bob)                            # through the CLI; links come up
        alice.signal(signal.SIGTERM)
        assert alice.wait() == 0
        bob.wait_event("link.down", code="GOING_AWAY")

A :class:`Daemon` is one ``python -m quicpair.tools.cli run --json`` process:
its stdout (the ready and stopped lines) is read line by line, its stderr (the
JSON log) goes to a file that :meth:`Daemon.events` parses. Every wait is
bounded; every process a test starts is ended at teardown (SIGTERM, then
SIGKILL), pass or fail. :func:`control` sends one raw control request.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "COMMAND_TIMEOUT",
    "ENV",
    "LOOPBACK",
    "REPO",
    "Daemon",
    "Daemons",
    "assert_clean_error",
    "control",
    "daemons_fixture",
    "eventually",
    "quicpair",
]

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ)  # quicpair comes from the install (tools/setup-venv), not the checkout
ENV.pop("QUICPAIR_HOME", None)
ENV.pop("NOTIFY_SOCKET", None)
#: A CLI command answers in well under a second; this only bounds a hang.
COMMAND_TIMEOUT = 30.0
LOOPBACK = ["--listen", "127.0.0.1:0", "--set", "discovery.mdns=false"]
#: Short link timers, so that a link comes back quickly after a restart.
FAST_LINKS = ["--set", "link.backoff_min=0.1", "--set", "link.backoff_max=1"]


def quicpair(
    *args: str, home: Path | None = None, timeout: float = COMMAND_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m quicpair.tools.cli [--home HOME] ARGS`` to completion."""
    argv = [sys.executable, "-m", "quicpair.tools.cli", *(["--home", str(home)] if home else []), *args]
    return subprocess.run(
        argv,
        cwd=REPO,
        env=env or ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """Exit ``status``, one ``quicpair: error:`` line naming ``fragments``, no traceback; returns it."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("quicpair: error: ")]
    if not errors:  # under --json an error is one JSON line: {"error": {"message": ...}, ...}
        errors = [
            str(json.loads(line)["error"]["message"])
            for line in result.stderr.splitlines()
            if line.startswith('{"error"')
        ]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def control(home: Path, op: str, timeout: float = COMMAND_TIMEOUT, **fields: Any) -> dict[str, Any]:
    """One raw control request to the daemon of ``home``; its reply."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(home / "control.sock"))
        sock.sendall(json.dumps({"id": 1, "op": op, **fields}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return reply


def eventually(what: str, check: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Call ``check()`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(every)


class Daemon:
    """One ``quicpair run`` process."""

    def __init__(
        self, name: str, home: Path, log_path: Path, extra: list[str], popen_kwargs: dict[str, Any]
    ) -> None:
        self.name = name
        self.home = home
        self.log_path = log_path
        argv = [sys.executable, "-m", "quicpair.tools.cli", "--home", str(home), "run", "--init", "--json"]
        argv += [*LOOPBACK, *FAST_LINKS, "--set", f'node.name="{name}"', *extra]
        kwargs: dict[str, Any] = {
            "env": ENV, "stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, **popen_kwargs
        }  # fmt: skip
        with open(log_path, "a", encoding="utf-8") as err:
            self.popen = subprocess.Popen(argv, cwd=REPO, stderr=err, text=True, **kwargs)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"test-{name}-stdout")
        self._reader.start()
        self.info: dict[str, Any] = {}

    def _read(self) -> None:
        if self.popen.stdout is not None:  # None: the test gave stdout somewhere else (a terminal)
            for line in self.popen.stdout:
                self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def line(self, timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        """The next JSON line on stdout (``ready``, ``stopped``)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.name}: no output line within {timeout} s; log:\n{self.log_tail()}")
        if line is None:
            pytest.fail(f"{self.name}: exited ({self.popen.poll()}) before the line; log:\n{self.log_tail()}")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def ready(self) -> dict[str, Any]:
        self.info = self.line()
        assert self.info["event"] == "ready", self.info
        return self.info

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = COMMAND_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name}: still running after {timeout} s; log:\n{self.log_tail()}")

    def events(self, name: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """The log events so far (all, or those named ``name`` with these ``fields``)."""
        found = []
        for line in self.log_path.read_text("utf-8", "replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a traceback, say: the tests look for those separately
            if not isinstance(event, dict):
                continue
            if name is not None and event.get("event") != name:
                continue
            if all(event.get(k) == v for k, v in fields.items()):
                found.append(event)
        return found

    def wait_event(self, name: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """The first event ``name`` with ``fields``, waiting up to ``timeout`` seconds."""
        found: list[dict[str, Any]] = eventually(
            f"{self.name}: event {name} {fields}", lambda: self.events(name, **fields), timeout
        )
        return found[0]

    def log_tail(self) -> str:
        return self.log_path.read_text("utf-8", "replace")[-4000:]

    def links(self) -> list[dict[str, Any]]:
        reply = control(self.home, "links")
        assert reply["ok"], reply
        links: list[dict[str, Any]] = reply["result"]
        return links

    def link_up(self) -> bool:
        """True when every link is up (False while the links supervisor restarts)."""
        reply = control(self.home, "links")
        links = reply.get("result") if reply["ok"] else None
        return bool(links) and all(link["state"] == "up" for link in links)

    def end(self) -> None:
        """Teardown: SIGTERM, then SIGKILL; always joins the reader."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(10)


class Daemons:
    """Starts daemons for one test and ends every one of them afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Daemon] = []

    def spawn(self, name: str, *extra: str, home: Path | None = None, **popen_kwargs: Any) -> Daemon:
        """Start a daemon (its home is ``tmp_path/name`` unless given); not waited for."""
        home = home if home is not None else self.tmp_path / name
        daemon = Daemon(name, home, self.tmp_path / f"{name}.log", list(extra), popen_kwargs)
        self.started.append(daemon)
        return daemon

    def start(self, *names: str, extra: tuple[str, ...] = ()) -> list[Daemon]:
        """Start one daemon per name at once; each is ready when this returns."""
        spawned = [self.spawn(name, *extra) for name in names]
        for daemon in spawned:
            daemon.ready()
        return spawned

    def pair(self, initiator: Daemon, joiner: Daemon) -> None:
        """Pair two running daemons (``join`` through the CLI), and wait until their link is up."""
        # The code lives as long as the connection that opened it: keep it open until the end.
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(COMMAND_TIMEOUT)
            sock.connect(str(initiator.home / "control.sock"))
            stream = sock.makefile("rwb")
            stream.write(b'{"id": 1, "op": "pair"}\n')
            stream.flush()
            offer = json.loads(stream.readline())
            assert offer["ok"], offer
            joined = quicpair("join", offer["result"]["uri"], "--timeout", "20", home=joiner.home)
            assert joined.returncode == 0, joined.stderr
            request = {"id": 2, "op": "wait_offer", "nameplate": offer["result"]["nameplate"], "timeout": 10}
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            assert json.loads(stream.readline())["ok"]
        eventually("the link up on both sides", lambda: initiator.link_up() and joiner.link_up())

    def close(self) -> None:
        for daemon in reversed(self.started):
            daemon.end()


@pytest.fixture(name="daemons")
def daemons_fixture(tmp_path: Path) -> Iterator[Daemons]:
    factory = Daemons(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
