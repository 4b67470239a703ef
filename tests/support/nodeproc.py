"""Real node processes for integration tests: :class:`NodeProcess` and the ``nodes`` fixture.

Each node is a ``python -m quicpair.tools.nodehost`` subprocess with its own home under
the test's ``tmp_path``, listening on loopback, driven by JSON lines on its
stdin (tools/control.py) and logging JSON lines to its own file::

    from support.nodeproc import nodes_fixture as nodes_fixture  # the ``nodes`` fixture

    def test_pairing(nodes):
        alice, bob = nodes.start("alice", "bob")
        offer = alice.pair()
        device = bob.join(offer["uri"]).result
        assert device["node_id"] == alice.node_id
        alice.wait_event("pairing.completed")

Every wait is bounded and fails with a message that names what was awaited
and shows the tail of the node's log and stderr. A node still running when
its test ends is stopped cleanly (exit status 0 asserted) if the test
passed, and killed with SIGKILL if it failed, so a broken test never leaves
a process behind. :meth:`NodeProcess.kill` (SIGKILL by default) and
:meth:`NodeProcess.restart` (same home, same port) serve crash tests.

``netns="NAME"`` runs a node inside a namespace of tests/support/netns.py (``ip netns
exec``), where it may run mDNS; in the test's own namespace mDNS is refused.

:class:`RelayProcess` runs tools/relay.py, a man in the middle with its own
identity; both share :class:`ChildProcess` (a ``python -m`` child printing
JSON lines, ``ready`` first).

The child gets ``PYTHONPATH`` set to the repository root, so this works from
a source checkout and from CI's venv (where the package is installed
editable) alike; it runs with ``sys.executable``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

__all__ = [
    "REPLY_TIMEOUT",
    "REPO_ROOT",
    "ChildProcess",
    "NodeFactory",
    "NodeProcess",
    "Pending",
    "RelayProcess",
    "Reply",
    "nodes_fixture",
    "poll",
]

#: The repository root: the child's PYTHONPATH and working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Default bound on one control request (a pairing on loopback takes ~50 ms).
REPLY_TIMEOUT = 15.0
#: Bound on a node's start (interpreter + imports ~0.5 s on 2 cores; generous for loaded CI).
READY_TIMEOUT = 20.0
#: Bound on a clean stop: actors stopped in reverse, port released, loop joined.
STOP_TIMEOUT = 10.0
#: Settings every test node gets: no mDNS (tests stay on loopback), terse logs.
#: debug: the tests wait for lifecycle events (actor.exited, pairing.session_started...)
#: that a node logs below info.
BASE_SETTINGS = ("discovery.mdns=false", "log.level=debug")


def poll(predicate: Callable[[], Any], *, timeout: float, what: str, fail: Callable[[str], None]) -> None:
    """Check ``predicate`` every 5 ms until true; ``fail(message)`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


@dataclass(frozen=True)
class Pending:
    """A request sent and not yet answered."""

    #: The operation, for failure messages.
    op: str
    #: Gets the Reply (or fails if the process went away).
    future: concurrent.futures.Future[Reply]


@dataclass(frozen=True)
class Reply:
    """One reply line of the control protocol."""

    #: The request's id.
    id: Any
    #: True for a result, False for an error.
    ok: bool
    #: The operation's result (None for errors).
    result: Any
    #: ``{"type", "message", "code"?, "remote"?}`` for errors, else None.
    error: dict[str, Any] | None

    @property
    def code(self) -> str | None:
        """The error's wire code name (``WRONG_CODE``...), None for a success or a code-less error."""
        return None if self.error is None else self.error.get("code")

    @property
    def remote(self) -> bool:
        """True when the error came from the peer (its PairReject, close or refusal)."""
        return self.error is not None and bool(self.error.get("remote"))


class ChildProcess:
    """A ``python -m MODULE`` child: JSON lines on stdout (``ready`` first), stderr to a file.

    Subclasses give the command line and handle the lines; this owns the
    process, the thread that reads its stdout, and the bounded waits.
    """

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None
        #: The ``ready`` line of the current incarnation.
        self.info: dict[str, Any] = {}
        #: Lines without an ``id`` the child printed (``ready``, ``stopped``...).
        self.lines: list[dict[str, Any]] = []
        self._raw: list[str] = []
        self._ready: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._reader: threading.Thread | None = None
        self._stderr: IO[str] | None = None
        #: Put before ``python -m MODULE`` (e.g. ``ip netns exec NAME``); it must exec, not fork.
        self.command_prefix: list[str] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, pid={self.proc.pid if self.proc else None})"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr"

    def _spawn(self, module: str, args: list[str]) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._ready = concurrent.futures.Future()
        self.lines = []
        env = dict(os.environ)  # quicpair comes from the install (tools/setup-venv), not the checkout
        self._stderr = open(self.stderr_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            cwd=REPO_ROOT,
            env=env,
        )
        self._reader = threading.Thread(
            target=self._read_stdout, args=(self.proc,), name=f"nodeproc-{self.name}", daemon=True
        )
        self._reader.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Wait for the ``ready`` line; fails on ``failed`` or an early exit."""
        try:
            self.info = self._ready.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._fail(f"no 'ready' line within {timeout} s")
        except RuntimeError as exc:
            self._fail(str(exc))
        return self.info

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def address(self) -> str:
        """``host:port`` the child listens on (IPv6 in brackets)."""
        host = str(self.info["host"])
        return f"[{host}]:{self.info['port']}" if ":" in host else f"{host}:{self.info['port']}"

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def node_id(self) -> str:
        return str(self.info["node_id"])

    def kill(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` (SIGKILL: a crash, nothing gets to clean up); returns the exit status."""
        assert self.proc is not None, f"{self.name} was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self._wait_exit(timeout)

    def end_stdin(self, timeout: float = STOP_TIMEOUT) -> int:
        """End its stdin (a helper process's stop signal); its exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        return self._wait_exit(timeout)

    def _wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            self._reap()
            self._fail(f"did not exit within {timeout} s; killed")
        self._reap()
        return code

    def _reap(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
            self._reader = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _read_stdout(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            self._raw.append(text.rstrip("\n"))
            try:
                message = json.loads(text)
            except json.JSONDecodeError:
                continue
            if not isinstance(message, dict):
                continue
            if "id" in message:
                self._on_reply(message)
                continue
            self.lines.append(message)
            if message.get("event") == "ready" and not self._ready.done():
                self._ready.set_result(message)
            elif message.get("event") == "failed" and not self._ready.done():
                self._ready.set_exception(RuntimeError(f"start failed: {message.get('error')}"))
        # End of stdout: the process is gone, nothing more will come.
        gone = RuntimeError(f"{self.name} closed its stdout (exit status {proc.wait()})")
        if not self._ready.done():
            self._ready.set_exception(gone)
        self._on_gone(gone)

    def printed(self, event: str) -> list[dict[str, Any]]:
        """The lines ``{"event": event, ...}`` the child printed so far."""
        return [line for line in list(self.lines) if line.get("event") == event]

    def wait_printed(self, event: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The first ``event`` line, waiting at most ``timeout`` seconds for it."""
        poll(lambda: self.printed(event), timeout=timeout, what=f"a {event!r} line", fail=self._fail)
        return self.printed(event)[0]

    def _on_reply(self, message: dict[str, Any]) -> None:
        self.lines.append({"event": "unexpected_reply", "reply": message})

    def _on_gone(self, error: RuntimeError) -> None:
        """Hook: stdout ended (called on the reader thread)."""

    def diagnostics(self, lines: int = 25) -> str:
        """The tail of the child's stderr and stdout, for failure messages."""
        try:
            stderr = self.stderr_path.read_text(encoding="utf-8").splitlines()[-lines:]
        except FileNotFoundError:
            stderr = ["(none)"]
        return (
            f"--- {self.name} stderr ({self.stderr_path}) ---\n"
            + "\n".join(stderr)
            + f"\n--- {self.name} stdout ---\n"
            + "\n".join(self._raw[-lines:])
        )

    def _fail(self, message: str) -> None:
        pytest.fail(f"{self.name}: {message}\n{self.diagnostics()}", pytrace=False)


class NodeProcess(ChildProcess):
    """One node in a subprocess; see the module docstring."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        settings: Sequence[str] = (),
        *,
        listen: str | None = "127.0.0.1:0",
        netns: str | None = None,
    ) -> None:
        super().__init__(name, workdir)
        self.home = workdir / name
        self.settings = [*BASE_SETTINGS, *settings]
        #: ``--listen HOST:PORT``; None starts the node with the default listen setting.
        self.listen = listen
        #: The network namespace the node runs in (None: the test's own).
        self.netns = netns
        if netns is not None:
            # `ip netns exec` execs after setns(): kill() still reaches the node itself.
            self.command_prefix = ["ip", "netns", "exec", netns]
        elif _mdns_enabled(self.settings):  # network hygiene: never on the real interfaces
            raise ValueError(f"{name}: mDNS only inside a test's own network namespace (netns=...)")
        elif listen is None:  # the default listens on every interface: the same rule
            raise ValueError(f"{name}: the default listen setting only inside a test's own namespace")
        #: 1 for the first start, +1 for each restart (each has its own log file).
        self.incarnation = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[Any, concurrent.futures.Future[Reply]] = {}

    # -- lifecycle -----------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """The JSON log of the current incarnation."""
        return self.workdir / f"{self.name}{self._suffix}.log"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}{self._suffix}.stderr"

    @property
    def _suffix(self) -> str:
        return "" if self.incarnation <= 1 else f".{self.incarnation}"

    def launch(self) -> NodeProcess:
        """Start the process; :meth:`wait_ready` waits for its ``ready`` line."""
        self.incarnation += 1
        self._waiting = {}
        args = ["--home", str(self.home), "--name", self.name]
        if self.listen is not None:
            args += ["--listen", self.listen]
        args += ["--log", str(self.log_path)]
        for item in self.settings:
            args += ["--set", item]
        self._spawn("quicpair.tools.nodehost", args)
        return self

    def start(self) -> NodeProcess:
        self.launch().wait_ready()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the node to stop; assert a clean exit within ``timeout``.

        Clean: status 0, the ``stopped`` line printed, no traceback on stderr.
        """
        assert self.proc is not None, f"{self.name} was never started"
        reply = self.call("stop", wait=timeout)
        assert reply.ok, f"{self.name}: stop refused: {reply.error}"
        code = self._wait_exit(timeout)
        if code != 0:
            self._fail(f"exited with status {code} after 'stop' (expected 0)")
        if not self.printed("stopped"):
            self._fail("exited without its 'stopped' line")
        if "Traceback" in self.stderr_path.read_text(encoding="utf-8"):
            self._fail("printed a traceback on stderr")

    def restart(self, *, same_port: bool = True) -> NodeProcess:
        """Start a new incarnation on the same home (and, by default, the same port)."""
        assert not self.running, f"{self.name} must be stopped or killed before a restart"
        if same_port and self.info and self.listen is not None:
            self.listen = self.address
        return self.start()

    def close(self, *, graceful: bool) -> None:
        """End the process however it stands: stop cleanly when ``graceful``, else SIGKILL."""
        if self.proc is None:
            return
        if self.running:
            if graceful:
                try:
                    self.stop()
                finally:
                    if self.running:
                        self.kill()
            else:
                self.kill()
        self._reap()

    # -- control requests ------------------------------------------------------------

    def request(self, op: str, **fields: Any) -> Pending:
        """Send a request now; :meth:`await_reply` waits for its reply."""
        if not self.running:
            self._fail(f"cannot send {op!r}: the process is not running")
        assert self.proc is not None and self.proc.stdin is not None
        request_id = next(self._ids)
        future: concurrent.futures.Future[Reply] = concurrent.futures.Future()
        with self._lock:
            self._waiting[request_id] = future
        try:
            self.proc.stdin.write(json.dumps({"id": request_id, "op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            self._fail(f"cannot send {op!r}: {exc}")
        return Pending(op, future)

    def await_reply(self, pending: Pending, timeout: float = REPLY_TIMEOUT) -> Reply:
        """The reply to a :meth:`request`, within ``timeout`` seconds."""
        try:
            return pending.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._fail(f"no reply to {pending.op!r} within {timeout} s")
        except RuntimeError as exc:
            self._fail(f"no reply to {pending.op!r}: {exc}")
        raise AssertionError("unreachable")

    def call(self, op: str, *, wait: float = REPLY_TIMEOUT, **fields: Any) -> Reply:
        """Send a request and wait (at most ``wait`` seconds) for its reply.

        ``fields`` are the request's own (``timeout`` among them is the
        node's bound on the operation, not this wait).
        """
        return self.await_reply(self.request(op, **fields), wait)

    def ok(self, op: str, *, wait: float = REPLY_TIMEOUT, **fields: Any) -> Any:
        """The result of a request that must succeed."""
        reply = self.call(op, wait=wait, **fields)
        if not reply.ok:
            self._fail(f"{op} {fields} failed: {reply.error}")
        return reply.result

    def _on_reply(self, message: dict[str, Any]) -> None:
        reply = Reply(message["id"], bool(message.get("ok")), message.get("result"), message.get("error"))
        with self._lock:
            future = self._waiting.pop(reply.id, None)
        if future is not None:
            future.set_result(reply)
        else:
            super()._on_reply(message)

    def _on_gone(self, error: RuntimeError) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    # -- the scenario's words ----------------------------------------------------------

    def pair(self) -> dict[str, Any]:
        """Open a code: ``{"code", "uri", "nameplate", "expires_in"}``."""
        result: dict[str, Any] = self.ok("pair")
        return result

    def join(self, code: str, *, address: str | None = None, timeout: float = REPLY_TIMEOUT) -> Reply:
        """Join with a code or URI; the reply (device, or the error) is returned either way."""
        fields: dict[str, Any] = {"code": code, "timeout": timeout}
        if address is not None:
            fields["address"] = address
        return self.call("join", wait=timeout + 5.0, **fields)

    def devices(self, *, include_pending: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ok("devices", include_pending=include_pending)
        return result

    def counters(self) -> dict[str, int]:
        result: dict[str, int] = self.ok("counters")
        return result

    # -- the JSON log --------------------------------------------------------------------

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Log events of the current incarnation, filtered by event name and field values."""
        try:
            text = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            if not line.endswith("}"):
                continue  # a line still being written
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (name is None or event.get("event") == name) and all(
                event.get(k) == v for k, v in match.items()
            ):
                found.append(event)
        return found

    def wait_event(
        self, name: str, *, count: int = 1, timeout: float = REPLY_TIMEOUT, **match: Any
    ) -> dict[str, Any]:
        """Wait until the log holds ``count`` events ``name`` matching ``match``; the last one."""
        self.wait_for(
            lambda: len(self.events(name, **match)) >= count,
            timeout=timeout,
            what=f"{count} log event(s) {name} {match or ''}",
        )
        return self.events(name, **match)[count - 1]

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; fail after ``timeout`` (or at once if the node exits)."""

        def check() -> bool:
            if predicate():
                return True
            if not self.running:
                self._fail(f"exited ({self.returncode}) while waiting for {what}")
            return False

        poll(check, timeout=timeout, what=what, fail=self._fail)

    def diagnostics(self, lines: int = 25) -> str:
        try:
            log = self.log_path.read_text(encoding="utf-8").splitlines()[-lines:]
        except FileNotFoundError:
            log = ["(none)"]
        return (
            f"--- {self.name} log ({self.log_path}) ---\n"
            + "\n".join(log)
            + "\n"
            + super().diagnostics(lines)
        )


def _mdns_enabled(settings: Sequence[str]) -> bool:
    """What ``--set discovery.mdns=...`` items amount to: the last one wins, as in nodehost."""
    values = [item.partition("=")[2].strip() for item in settings if item.startswith("discovery.mdns=")]
    return (values[-1] if values else "true") != "false"  # true in config/defaults.toml


class NodeFactory:
    """Starts nodes for one test and ends them all afterwards (see :func:`nodes`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[NodeProcess] = []

    def node(
        self, name: str, *settings: str, listen: str = "127.0.0.1:0", netns: str | None = None
    ) -> NodeProcess:
        """A node not yet launched (call ``.start()``), ended with the test."""
        node = NodeProcess(name, self.workdir, settings, listen=listen, netns=netns)
        self.started.append(node)
        return node

    def start(self, *specs: str | tuple[str, Sequence[str]]) -> list[NodeProcess]:
        """Start nodes in parallel: each spec is a name or ``(name, [settings])``; in order."""
        made = []
        for spec in specs:
            name, settings = (spec, ()) if isinstance(spec, str) else spec
            made.append(self.node(name, *settings).launch())
        for node in made:
            node.wait_ready()
        return made

    def close(self, *, graceful: bool) -> None:
        errors = []
        for node in reversed(self.started):
            try:
                node.close(graceful=graceful)
            except BaseException as exc:  # every node must be ended first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(name="nodes")
def nodes_fixture(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeFactory]:
    """A :class:`NodeFactory` whose nodes are stopped (passed) or SIGKILLed (failed) after the test."""
    failed_before = request.session.testsfailed
    factory = NodeFactory(tmp_path)
    yield factory
    # The call phase's report is logged before teardown: a failed test has
    # already been counted here, and its nodes are killed, not waited for.
    factory.close(graceful=request.session.testsfailed == failed_before)


class RelayProcess(ChildProcess):
    """``python -m quicpair.tools.relay`` in a subprocess: a man in the middle with its own identity."""

    def __init__(self, workdir: Path, target: str) -> None:
        super().__init__("relay", workdir)
        self.target = target

    def start(self) -> RelayProcess:
        self._spawn("quicpair.tools.relay", ["--listen", "127.0.0.1:0", "--target", self.target])
        self.wait_ready()
        return self

    def close(self, timeout: float = STOP_TIMEOUT) -> int:
        """End stdin (the relay's stop signal); its exit status (SIGKILL after ``timeout``)."""
        return self.end_stdin(timeout)
