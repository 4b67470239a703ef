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

Shutdown, on SIGTERM, SIGINT or the ``stop`` op: stop accepting and remove the
socket, stop the node (which fails every open offer with GOING_AWAY, so waiting
clients get a reply), give running requests a bounded time to reply, close the
connections, release the lock; exit status 0.
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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from quicpair.actors.kernel.logs import configure_logging, get_logger
from quicpair.actors.node import Node, prepare_home
from quicpair.config.settings import Settings
from quicpair.protocol.errors import IdentityError, QuicpairError

from .client import (
    CALL_WAIT,
    CONTROL_SOCKET,
    MAX_REQUEST_LINE,
    ControlClient,
    DaemonError,
    NoDaemon,
    connect_control,
    control_socket_path,
    unwrap_reply,
)
from .control import Controller, RequestError, decode_request, error_reply

__all__ = [
    "CALL_WAIT",
    "CONTROL_SOCKET",
    "LOCK_FILE",
    "MAX_REQUEST_LINE",
    "ControlClient",
    "DaemonError",
    "DaemonRunning",
    "NoDaemon",
    "claim_home",
    "connect_control",
    "control_socket_path",
    "prepare_home",
    "run_daemon",
    "unwrap_reply",
]

LOCK_FILE = "daemon.lock"
#: How long running requests get to send their reply once the node has stopped;
#: after node.stop() every node call returns at once, so this only bounds a bug.
_DRAIN_TIMEOUT = 5.0


class DaemonRunning(QuicpairError):
    """Another quicpair daemon already serves this home; stop it first with `quicpair stop`."""


# -- the home ------------------------------------------------------------------------


def _daemon_answers(home: Path) -> dict[str, Any] | None:
    """The ``info`` of the daemon serving ``home``, or None if none answers."""
    try:
        sock = connect_control(home)
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

    def reply(self, reply: dict[str, Any]) -> None:
        data = (json.dumps(reply, sort_keys=True) + "\n").encode("utf-8")
        with self._write_lock:
            try:
                self.conn.sendall(data)
            except OSError as exc:  # the client left; its request still ran
                self.log.info("control.reply_lost", error=str(exc))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        self.conn.close()


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
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A stale socket from a dead daemon: the home lock, held by us, proves nobody serves it.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0o177)  # born 0600: no moment where others could connect
        try:
            self.sock.bind(os.fspath(path))
        except OSError as exc:
            self.sock.close()
            raise IdentityError(f"cannot create the control socket {path}: {exc.strerror}") from exc
        finally:
            os.umask(old_umask)
        self.sock.listen(16)

    def accept(self) -> None:
        conn, _ = self.sock.accept()
        with self._lock:
            self._count += 1
            client = _Client(self, conn, self._count)
            self._clients.add(client)
        threading.Thread(target=client.serve, name=f"control-client-{self._count}", daemon=True).start()

    def run_request(self, client: _Client, request: dict[str, Any]) -> None:
        thread = threading.Thread(
            target=self._run, args=(client, request), name=f"control-{request['op']}", daemon=True
        )
        with self._lock:
            self._running.add(thread)
        thread.start()

    def _run(self, client: _Client, request: dict[str, Any]) -> None:
        try:
            op = request["op"]
            reply = self.controller.handle(request)
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
            client.reply(reply)
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
        self.closing = True
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
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


def run_daemon(
    home: Path, settings: Settings, *, on_ready: Callable[[dict[str, Any]], None] | None = None
) -> int:
    """Run a node for ``home`` until SIGTERM, SIGINT or the ``stop`` op; returns 0 (1 if the node failed).

    Raises QuicpairError (DaemonRunning, IdentityError, RegistryError,
    ConfigError...) if the node cannot start; nothing is left behind then.
    ``on_ready`` receives the node's ``info`` once the socket accepts requests.
    Call it from the main thread: it installs the signal handlers.
    """
    configure_logging(level=settings.log.level, fmt=settings.log.format)
    log = get_logger(component="daemon")
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    stopping = threading.Event()
    received: list[str] = []

    def request_stop() -> None:
        stopping.set()
        with contextlib.suppress(OSError):  # BlockingIOError: a wake-up is already pending
            wake_w.send(b"\0")

    def on_signal(signum: int, _: FrameType | None) -> None:
        # No logging here: the handler runs between two bytecodes of the main thread, which
        # may hold the log's line lock at that moment. The main loop logs the stop instead.
        received.append(signal.Signals(signum).name)
        request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with claim_home(home):
            path = control_socket_path(home)
            # A node whose supervision gave up stops the daemon (exit status 1).
            node = Node(home, settings, on_failure=lambda _: request_stop()).start()
            try:
                controller = Controller(node, request_stop)
                extra = {"pid": os.getpid(), "home": str(home.absolute()), "control_socket": str(path)}
                server = _ControlServer(path, controller, extra, log)
            except BaseException:
                node.stop()
                raise
            try:
                info = controller.handle({"id": None, "op": "info"})["result"] | extra
                log.info("daemon.started", control_socket=str(path), pid=os.getpid())
                if on_ready is not None:
                    on_ready(info)
                _serve_until(server, wake_r, stopping)
            finally:
                server.stop_accepting()
                log.info("daemon.stopping", signals=received)
                node.stop()
                server.drain(_DRAIN_TIMEOUT)
        if node.failed is not None:
            log.critical("daemon.node_failed", error=repr(node.failed))
            return 1
        log.info("daemon.stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wake_r.close()
        wake_w.close()


def _serve_until(server: _ControlServer, wake: socket.socket, stopping: threading.Event) -> None:
    """Accept clients on this thread until asked to stop (a byte on ``wake``)."""
    with selectors.DefaultSelector() as selector:
        selector.register(server.sock, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        while not stopping.is_set():
            for key, _ in selector.select():
                if key.fileobj is wake:
                    with contextlib.suppress(BlockingIOError):
                        wake.recv(64)
                else:
                    try:
                        server.accept()
                    except OSError as exc:  # e.g. EMFILE: log, keep serving the others
                        server.log.warning("control.accept_failed", error=str(exc))
