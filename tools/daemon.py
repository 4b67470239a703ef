"""The node as a long-lived daemon: one node plus a control server on a Unix socket.

    quicpair run                        # the command line's way in (tools/cli.py)
    run_daemon(home, settings)          # the same from Python; returns the exit status
    ControlClient(home).call("devices") # a client of it (what the other commands use)

The control socket is ``<home>/control.sock`` (mode 0600, inside a 0700 home:
only the owner can reach it). It speaks tools/control.py's protocol: one JSON
request per line, one reply per request, in any order; every request runs on
its own thread, so a ``wait_offer`` that waits minutes does not hold up a
``devices`` from the same or another client. A request that is not valid gets
a precise error reply and the daemon goes on; a line longer than
:data:`MAX_REQUEST_LINE` ends that client's connection (there is no way to
find the next request in it).

One home, one node process. Before anything else the daemon connects to an
existing ``control.sock``: if a daemon answers, it refuses to start
(:class:`DaemonRunning`). The answer alone would leave a race between two
daemons starting at the same moment, so it then takes an exclusive ``flock``
on ``<home>/daemon.lock`` for its whole life; the kernel releases that lock
when the process dies, however it dies, so a stale socket from a killed daemon
is recognised (nobody holds the lock) and replaced.

A code lives as long as the connection that opened it: when a client that
made a ``pair`` request goes away (``quicpair pair`` interrupted, its terminal
closed) without seeing the code used, the daemon cancels it. A code nobody
shows any more must not stay open for guesses.

Shutdown, on SIGTERM, SIGINT, SIGQUIT or the ``stop`` op: stop accepting and
remove the socket, stop the node (links and pairings are closed with
GOING_AWAY, every open offer fails with GOING_AWAY, so waiting clients get a
reply), give running requests a bounded time to reply, close the connections,
release the lock; exit status 0. SIGQUIT first logs every thread's stack
(``daemon.thread_dump``). SIGHUP reads the settings again and applies what a
running node can (config/live.py), logging what changed and what waits for a
restart (``daemon.reloaded``); a SIGHUP that comes because the daemon's
terminal closed (it had one, and none of its standard streams is one any more)
is a graceful stop instead. Nothing in the signal handlers themselves: they
only wake the main loop.

The main loop never spins and never floods the log: an ``accept`` that fails
(EMFILE, ENFILE: out of descriptors) pauses accepting, retries with a backoff
up to 2 s or as soon as a client leaves, and logs one line when the episode
starts and one when it ends (``control.accept_paused``/``_resumed``, with the
count). Every second it also looks at the home (tools/homewatch.py): a home,
identity key or registry that vanished or was replaced, or a registry file
damaged under the node (actors/registry/guard.py), is said
(``daemon.home_lost``) and stops the daemon cleanly with exit status
:data:`EXIT_HOME_LOST`; a control socket that was deleted is bound again
(``control.socket_recreated``). A node whose supervision gave up (an actor kept
crashing) stops it with :data:`EXIT_NODE_FAILED`. Run by systemd with
``Type=notify``, it reports READY, RELOADING, STOPPING and watchdog pings
(tools/sdnotify.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from quicpair.actors.kernel.logs import configure_logging, get_logger
from quicpair.actors.node import IDENTITY_FILE, REGISTRY_FILE, Node, prepare_home
from quicpair.config.settings import Settings
from quicpair.protocol.errors import ConfigError, IdentityError, QuicpairError, RegistryError

from .client import (
    CALL_WAIT,
    CONTROL_SOCKET,
    LOCK_FILE,
    MAX_REQUEST_LINE,
    ControlClient,
    DaemonError,
    DaemonUnreachable,
    NoDaemon,
    connect_control,
    control_socket_path,
    lock_holder,
    unwrap_reply,
)
from .control import Controller, RequestError, decode_request, error_reply
from .homewatch import WATCH_INTERVAL, HomeWatch
from .sdnotify import Notifier, monotonic_usec

__all__ = [
    "CALL_WAIT",
    "CONTROL_SOCKET",
    "EXIT_HOME_LOST",
    "EXIT_NODE_FAILED",
    "LOCK_FILE",
    "MAX_REQUEST_LINE",
    "ControlClient",
    "DaemonError",
    "DaemonRunning",
    "DaemonUnreachable",
    "NoDaemon",
    "claim_home",
    "connect_control",
    "control_socket_path",
    "lock_holder",
    "prepare_home",
    "run_daemon",
    "unwrap_reply",
]

#: How long running requests get to send their reply once the node has stopped;
#: after node.stop() every node call returns at once, so this only bounds a bug.
_DRAIN_TIMEOUT = 5.0


class DaemonRunning(QuicpairError):
    """Another quicpair daemon already serves this home; stop it first with `quicpair stop`."""


# -- the home ------------------------------------------------------------------------


def _daemon_answers(home: Path) -> dict[str, Any] | None:
    """The ``info`` of the daemon serving ``home``, or None if none answers."""
    try:
        sock = connect_control(home, explain=False)
    except NoDaemon:
        return None
    with sock, sock.makefile("rwb") as stream:
        try:
            stream.write(b'{"id": 0, "op": "info"}\n')
            stream.flush()
            reply = json.loads(stream.readline(MAX_REQUEST_LINE) or b"null")
        except (OSError, ValueError):
            return {}  # something listens there but does not answer: still not ours to take
    result = reply.get("result") if isinstance(reply, dict) else None
    return result if isinstance(result, dict) else {}


@contextlib.contextmanager
def claim_home(home: Path) -> Iterator[None]:
    """Hold ``home`` for one node process (daemon or one-shot command) until the block ends."""
    prepare_home(home)
    info = _daemon_answers(home)
    if info is not None:
        who = f" (node {info['fingerprint']}, pid {info.get('pid', '?')})" if "fingerprint" in info else ""
        raise DaemonRunning(
            f"a quicpair daemon already serves {home}{who}; stop it with: quicpair --home {home} stop"
        )
    lock_path = home / LOCK_FILE
    try:
        # O_NOFOLLOW: a lock "file" that is a symlink must not make us truncate its target.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IdentityError(f"{lock_path} is a symbolic link; refusing to follow it") from exc
        raise IdentityError(f"cannot create {lock_path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise IdentityError(f"cannot lock {lock_path}: {exc.strerror}") from exc
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise DaemonRunning(
                f"another quicpair process (pid {holder}) is using {home}; "
                "stop it first (quicpair stop, or end that command)"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new claimer)


# -- the control server ---------------------------------------------------------------


class _Client:
    """One control connection: reads request lines, answers each on its own thread."""

    def __init__(self, server: _ControlServer, conn: socket.socket, number: int) -> None:
        self.server = server
        self.conn = conn
        self.log = server.log.bind(client=number)
        self._write_lock = threading.Lock()
        #: Nameplates of codes opened over this connection and not yet seen settled.
        self.open_codes: set[int] = set()
        #: The connection ended (set under the server's lock, with open_codes emptied).
        self.gone = False

    def serve(self) -> None:
        try:
            with self.conn.makefile("rb") as lines:
                while True:
                    line = lines.readline(MAX_REQUEST_LINE + 1)
                    if not line:
                        break
                    if len(line) > MAX_REQUEST_LINE and not line.endswith(b"\n"):
                        self.reply(
                            error_reply(
                                None, RequestError(f"request line longer than {MAX_REQUEST_LINE} bytes")
                            )
                        )
                        break
                    if line.strip():
                        self._dispatch(line)
        except OSError as exc:
            self.log.info("control.client_error", error=str(exc))
        finally:
            self.server.client_gone(self)

    def _dispatch(self, line: bytes) -> None:
        try:
            request = decode_request(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self.reply(error_reply(None, RequestError(f"not UTF-8: {exc.reason} at byte {exc.start}")))
            return
        except QuicpairError as exc:
            self.reply(error_reply(_request_id(line), exc))
            return
        self.server.run_request(self, request)

    def reply(self, reply: dict[str, Any]) -> bool:
        """Write one reply; False when the client left (the request still ran)."""
        data = (json.dumps(reply, sort_keys=True) + "\n").encode("utf-8")
        with self._write_lock:
            try:
                self.conn.sendall(data)
            except OSError as exc:
                self.log.info("control.reply_lost", error=str(exc))
                return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        self.conn.close()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _request_id(line: bytes) -> Any:
    """The ``id`` of a request that failed validation, so the client can match the error."""
    try:
        request = json.loads(line)
    except ValueError:
        return None
    return request.get("id") if isinstance(request, dict) else None


class _ControlServer:
    """Accepts connections on the control socket and runs their requests against a Controller."""

    def __init__(self, path: Path, controller: Controller, extra_info: dict[str, Any], log: Any) -> None:
        self.path = path
        self.controller = controller
        self.extra_info = extra_info
        self.log = log
        self._clients: set[_Client] = set()
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._count = 0
        #: Set once the daemon stops: the node's codes end with it, nothing to cancel.
        self.closing = False
        #: Called (from a client's thread) when a connection ended: a descriptor is free again.
        self.on_client_gone: Callable[[], None] = lambda: None
        self.sock = self._bind()
        #: (device, inode) of the socket file we bound, so that we never unlink another one.
        self._bound = _inode(path)

    def _bind(self) -> socket.socket:
        """A listening socket at the path, replacing what is there (our lock proves it is stale)."""
        path = self.path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old_umask = os.umask(0o177)  # born 0600: no moment where others could connect
            try:
                sock.bind(os.fspath(path))
            finally:
                os.umask(old_umask)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise IdentityError(f"cannot create the control socket {path}: {exc.strerror}") from exc
        return sock

    def rebind(self) -> socket.socket:
        """Bind the socket again (it was deleted or replaced); returns the new one. IdentityError."""
        new = self._bind()
        old, self.sock = self.sock, new
        self._bound = _inode(self.path)
        old.close()
        return new

    def accept(self) -> None:
        """Accept one client; OSError (EMFILE, ENFILE...) when the process cannot take it now."""
        conn, _ = self.sock.accept()
        with self._lock:
            self._count += 1
            client = _Client(self, conn, self._count)
            self._clients.add(client)
        try:
            threading.Thread(target=client.serve, name=f"control-client-{self._count}", daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread": out of memory or of threads
            with self._lock:
                self._clients.discard(client)
            conn.close()
            raise OSError(errno.EAGAIN, f"cannot start a thread for a client ({exc})") from exc

    def run_request(self, client: _Client, request: dict[str, Any]) -> None:
        thread = threading.Thread(
            target=self._run, args=(client, request), name=f"control-{request['op']}", daemon=True
        )
        with self._lock:
            self._running.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:
            with self._lock:
                self._running.discard(thread)
            error = QuicpairError(f"the daemon cannot start a thread for this request now ({exc}); try again")
            client.reply(error_reply(request.get("id"), error))

    def _run(self, client: _Client, request: dict[str, Any]) -> None:
        try:
            op = request["op"]
            reply = self.controller.handle(request, client_gone=lambda: client.gone)
            if op == "pair" and reply["ok"]:
                nameplate = reply["result"]["nameplate"]
                with self._lock:
                    orphan = client.gone  # it left while the code was being opened
                    if not orphan:
                        client.open_codes.add(nameplate)
                if orphan:
                    self._abandon(client, nameplate)
            elif op == "cancel_offer" or (
                op == "wait_offer" and (reply["ok"] or reply["error"].get("code") != "TIMEOUT")
            ):
                with self._lock:  # settled: used, expired or cancelled
                    client.open_codes.discard(request["nameplate"])
            elif op == "info" and reply["ok"]:
                reply["result"].update(self.extra_info)
            if not client.reply(reply):
                self.controller.reply_lost(request, reply)
        except Exception as exc:  # a bug in a handler must not end the daemon; say it and go on
            client.log.error("control.request_crashed", op=request.get("op"), error=repr(exc))
            client.reply(error_reply(request.get("id"), exc))
        finally:
            with self._lock:
                self._running.discard(threading.current_thread())

    def client_gone(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)
            client.gone = True
            codes, client.open_codes = sorted(client.open_codes), set()
        for nameplate in codes:
            self._abandon(client, nameplate)
        client.conn.close()
        self.on_client_gone()

    def _abandon(self, client: _Client, nameplate: int) -> None:
        """Cancel a code whose client left: nobody shows it any more (see the module docstring)."""
        if self.closing:
            return  # the node's codes end with it
        try:
            reply = self.controller.handle({"id": None, "op": "cancel_offer", "nameplate": nameplate})
        except Exception as exc:  # the node is going down under us
            client.log.info("control.code_abandoned", nameplate=nameplate, error=repr(exc))
            return
        cancelled = bool(reply.get("ok") and reply["result"]["cancelled"])
        client.log.info("control.code_abandoned", nameplate=nameplate, cancelled=cancelled)

    def stop_accepting(self) -> None:
        """Close the socket and remove its file, if the file at the path is still the one we bound."""
        self.closing = True
        self.sock.close()
        with contextlib.suppress(OSError):
            if _inode(self.path) == self._bound:  # never another daemon's (a home replaced under us)
                self.path.unlink()

    def drain(self, timeout: float) -> None:
        """Wait (bounded) for running requests to reply, then close every connection."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                running = list(self._running)
            if not running:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.log.warning("control.requests_abandoned", ops=sorted(t.name for t in running))
                break
            running[0].join(remaining)
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close()


# -- the client -------------------------------------------------------------------------


# -- the daemon -------------------------------------------------------------------------

#: Exit status of ``run_daemon`` when the node failed: an actor kept crashing and the root
#: supervisor gave up (``node.failed``). sysexits' EX_SOFTWARE; a service manager restarts it.
EXIT_NODE_FAILED = 70
#: Exit status when the home, the identity key or the registry vanished or was replaced
#: under the running node (tools/homewatch.py). sysexits' EX_IOERR; restarting into the same
#: state does not help (docs/systemd/ says RestartPreventExitStatus=74).
EXIT_HOME_LOST = 74
#: How often an exhausted accept is retried at first, and at most (seconds).
_PAUSE_MIN = 0.05
_PAUSE_MAX = 2.0
#: Errors of accept() that mean "out of a resource", not "a client misbehaved".
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN))
#: How long the main loop waits for the registry's check (a busy registry is asked next time).
_REGISTRY_CHECK_TIMEOUT = 2.0
#: The signals the daemon handles; what each does is in the module docstring.
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


class _AcceptPause:
    """Accept failing for lack of descriptors: stop accepting, retry with backoff, one log line each way.

    ``accept()`` failing with EMFILE leaves the connection queued, so the socket stays
    readable: retried at once, it spins (measured before this: 1.28 million log lines
    in 40 s). Paused, the loop sleeps until ``resume_at`` (doubling up to
    :data:`_PAUSE_MAX`), or until a client leaves and frees a descriptor.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self.resume_at: float | None = None
        self._delay = _PAUSE_MIN
        self._failures = 0
        self._since = 0.0
        self._first_error = ""

    def due(self, now: float) -> bool:
        """True once the pause is over (then accepting is tried again; the episode goes on)."""
        if self.resume_at is None or now < self.resume_at:
            return False
        self.resume_at = None
        return True

    def failed(self, exc: OSError, now: float) -> None:
        if self._failures == 0:
            self._since = now
            self._first_error = str(exc)
            self._log.warning("control.accept_paused", error=str(exc), retry_in=self._delay)
        else:
            self._delay = min(self._delay * 2, _PAUSE_MAX)
        self._failures += 1
        self.resume_at = now + self._delay

    def succeeded(self, now: float) -> None:
        """An accept worked: the episode, if there was one, is over."""
        if self._failures:
            self._log.warning(
                "control.accept_resumed",
                failures=self._failures,
                paused_for=round(now - self._since, 3),
                error=self._first_error,
            )
        self._failures = 0
        self._delay = _PAUSE_MIN
        self.resume_at = None

    def resume_soon(self) -> None:
        """A descriptor was freed: try again now instead of at the end of the pause."""
        if self.resume_at is not None:
            self.resume_at = 0.0


class _Daemon:
    """The daemon's main thread: accepts clients, handles signals, watches the home."""

    def __init__(
        self,
        home: Path,
        node: Node,
        server: _ControlServer,
        log: Any,
        reload: Callable[[], Settings] | None,
        notifier: Notifier,
    ) -> None:
        self.home = home
        self.node = node
        self.server = server
        self.log = log
        self.reload = reload
        self.notifier = notifier
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.stopping = threading.Event()
        #: Why the daemon stops, in the order things happened (signal names, "stop", ...).
        self.reasons: list[str] = []
        self.status = 0
        #: Signals received and not handled yet (appended by the handler, read by the loop).
        self.signals: list[signal.Signals] = []
        self.pause = _AcceptPause(log)
        self.watch = HomeWatch(home, home / IDENTITY_FILE, home / REGISTRY_FILE, server.path)
        self.watch.socket_bound()
        #: Started with a terminal: a SIGHUP then means it closed (see _on_hangup).
        self.had_terminal = any(_isatty(fd) for fd in (0, 1, 2))
        server.on_client_gone = self._client_left

    # -- from other threads and the signal handler --------------------------------------

    def request_stop(self, reason: str, status: int = 0) -> None:
        if not self.stopping.is_set():
            self.reasons.append(reason)
            self.status = status
        self.stopping.set()
        self._wake()

    def on_signal(self, signum: int, _: FrameType | None) -> None:
        # No logging here: the handler runs between two bytecodes of the main thread, which
        # may hold the log's line lock at that moment. The main loop handles it.
        self.signals.append(signal.Signals(signum))
        self._wake()

    def _client_left(self) -> None:
        if self.pause.resume_at is not None:
            self.pause.resume_soon()
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is already pending
            self.wake_w.send(b"\0")

    # -- the loop ----------------------------------------------------------------------------

    def serve(self) -> None:
        """Accept clients on this thread until asked to stop; every wait is bounded."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.wake_r, selectors.EVENT_READ)
            selector.register(self.server.sock, selectors.EVENT_READ)
            listening = True
            next_watch = time.monotonic() + WATCH_INTERVAL
            tick = min(WATCH_INTERVAL, self.notifier.watchdog_interval or WATCH_INTERVAL)
            next_ping = 0.0
            while not self.stopping.is_set():
                now = time.monotonic()
                timeout = max(0.0, next_watch - now)
                if self.pause.resume_at is not None:
                    timeout = min(timeout, max(0.0, self.pause.resume_at - now))
                for key, _ in selector.select(min(timeout, tick)):
                    if key.fileobj is self.wake_r:
                        with contextlib.suppress(BlockingIOError):
                            self.wake_r.recv(64)
                    elif listening:
                        listening = self._accept(selector)
                self._handle_signals()
                now = time.monotonic()
                if not listening and self.pause.due(now):
                    selector.register(self.server.sock, selectors.EVENT_READ)  # try again
                    listening = True
                if self.notifier.watchdog_interval and now >= next_ping:
                    self.notifier.send("WATCHDOG=1")
                    next_ping = now + self.notifier.watchdog_interval
                if now >= next_watch:
                    next_watch = now + WATCH_INTERVAL
                    listening = self._check_home(selector, listening)

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept one client; False (and unregistered) when the process is out of descriptors."""
        try:
            self.server.accept()
        except OSError as exc:
            # Out of descriptors (or anything else accept can fail with): never retry at once.
            selector.unregister(self.server.sock)
            self.pause.failed(exc, time.monotonic())
            return False
        self.pause.succeeded(time.monotonic())
        return True

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig is signal.SIGHUP:
                if self.had_terminal and not any(_isatty(fd) for fd in (0, 1, 2)):
                    self.log.info("daemon.terminal_closed")
                    self.request_stop("SIGHUP (terminal closed)")
                else:
                    self._reload()
            elif sig is signal.SIGQUIT:
                self.log.warning("daemon.thread_dump", threads=_thread_dump())
                self.request_stop(sig.name)
            else:
                self.request_stop(sig.name)

    def _reload(self) -> None:
        """SIGHUP: read the settings again, apply what a running node can, say what waits."""
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
        try:
            if self.reload is None:
                raise ConfigError("this daemon was started without a settings source to read again")
            settings = self.reload()
            change = self.node.reconfigure(settings)
        except QuicpairError as exc:
            self.log.error("daemon.reload_failed", error=str(exc), kept="the running settings")
        else:
            if {"log.level", "log.format"} & change.applied.keys():
                configure_logging(level=change.settings.log.level, fmt=change.settings.log.format)
            self.log.info(
                "daemon.reloaded",
                applied={k: list(v) for k, v in change.applied.items()},
                needs_restart={k: list(v) for k, v in change.needs_restart.items()},
            )
        self.notifier.send("READY=1", "STATUS=running")

    def _check_home(self, selector: selectors.BaseSelector, listening: bool) -> bool:
        """The home and the registry still ours? The control socket still there? Returns ``listening``."""
        lost = self.watch.lost()
        if lost is None:
            try:
                self.node.check_registry(timeout=_REGISTRY_CHECK_TIMEOUT)
            except RegistryError as exc:
                lost = str(exc)
            except Exception:  # the registry is restarting or busy: ask again next time
                pass
        if lost is not None:
            self.log.critical("daemon.home_lost", what=lost, exit_status=EXIT_HOME_LOST)
            self.request_stop("home lost", EXIT_HOME_LOST)
            return listening
        gone = self.watch.socket_gone()
        if gone is None:
            return listening
        old = self.server.sock
        try:
            self.server.rebind()
        except QuicpairError as exc:
            self.log.error("control.socket_lost", reason=gone, error=str(exc))  # again next tick
            return listening
        if listening:
            selector.unregister(old)
        selector.register(self.server.sock, selectors.EVENT_READ)
        self.watch.socket_bound()
        self.log.warning("control.socket_recreated", reason=gone, path=str(self.server.path))
        return True

    def close(self) -> None:
        self.wake_r.close()
        self.wake_w.close()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _thread_dump() -> list[dict[str, Any]]:
    """Every thread's stack (innermost last), as data for one log event."""
    frames = sys._current_frames()
    dump = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is None:
            continue
        stack = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)]
        dump.append({"thread": thread.name, "daemon": thread.daemon, "stack": stack})
    return dump


def run_daemon(
    home: Path,
    settings: Settings,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    reload: Callable[[], Settings] | None = None,
) -> int:
    """Run a node for ``home`` until asked to stop; returns the exit status (0, 70 or 74).

    Raises QuicpairError (DaemonRunning, IdentityError, RegistryError,
    ConfigError...) if the node cannot start; nothing is left behind then.
    ``on_ready`` receives the node's ``info`` once the socket accepts requests;
    ``reload`` reads the settings again on SIGHUP (without it, SIGHUP only logs).
    Call it from the main thread: it installs the signal handlers.
    """
    configure_logging(level=settings.log.level, fmt=settings.log.format)
    log = get_logger(component="daemon")
    notifier = Notifier.from_environment()
    pending: list[signal.Signals] = []

    def early(signum: int, _: FrameType | None) -> None:
        pending.append(signal.Signals(signum))  # before the loop runs: handled once it does

    previous = {sig: signal.signal(sig, early) for sig in _SIGNALS}
    daemon: _Daemon | None = None
    try:
        with claim_home(home):
            path = control_socket_path(home)
            node = Node(home, settings, on_failure=lambda _: _stop(daemon, "node failed", EXIT_NODE_FAILED))
            node.start()
            try:
                controller = Controller(node, lambda: _stop(daemon, "stop"))
                extra = {"pid": os.getpid(), "home": str(home.absolute()), "control_socket": str(path)}
                server = _ControlServer(path, controller, extra, log)
                daemon = _Daemon(home, node, server, log, reload, notifier)
            except BaseException:
                node.stop()
                raise
            for sig in _SIGNALS:
                signal.signal(sig, daemon.on_signal)
            daemon.signals.extend(pending)
            try:
                info = controller.handle({"id": None, "op": "info"})["result"] | extra
                log.info("daemon.started", control_socket=str(path), pid=os.getpid())
                if node.failed is not None:  # it failed while we were getting ready
                    daemon.request_stop("node failed", EXIT_NODE_FAILED)
                if on_ready is not None:
                    on_ready(info)
                notifier.send(
                    "READY=1",
                    f"MAINPID={os.getpid()}",
                    f"STATUS=node {info['fingerprint']} on port {info['port']}",
                )
                daemon.serve()
            finally:
                notifier.send("STOPPING=1")
                server.stop_accepting()
                log.info("daemon.stopping", reasons=daemon.reasons)
                node.stop()
                server.drain(_DRAIN_TIMEOUT)
                daemon.close()
        if node.failed is not None:
            log.critical("daemon.node_failed", error=repr(node.failed), exit_status=EXIT_NODE_FAILED)
            return EXIT_NODE_FAILED
        log.info("daemon.stopped", exit_status=daemon.status)
        return daemon.status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        notifier.close()


def _stop(daemon: _Daemon | None, reason: str, status: int = 0) -> None:
    if daemon is not None:
        daemon.request_stop(reason, status)
