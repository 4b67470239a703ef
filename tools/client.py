"""The command line's side of the daemon's control socket: connect, ask, read the reply.

    ControlClient(home).call("devices")     # one JSON request per line, one reply each

Kept apart from tools/daemon.py (which runs the node) so that the commands that
only talk to a running daemon (``status``, ``links``, ``send``...) import nothing
but the standard library and the error tree: no QUIC, no crypto, no actors. The
protocol itself is tools/control.py's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from quicpair.protocol.errors import ConfigError, QuicpairError

__all__ = [
    "CALL_WAIT",
    "CONTROL_SOCKET",
    "LOCK_FILE",
    "MAX_REQUEST_LINE",
    "PROBE_TIMEOUT",
    "ControlClient",
    "DaemonError",
    "DaemonUnreachable",
    "NoDaemon",
    "connect_control",
    "control_socket_path",
    "lock_holder",
    "unwrap_reply",
]

CONTROL_SOCKET = "control.sock"
#: The home's lock: held (flock) by the daemon, or a one-shot command, that uses the home.
LOCK_FILE = "daemon.lock"
#: A request is a few hundred bytes (a pairing URI is at most 8 KiB); anything
#: this long is garbage, refused before it costs memory.
MAX_REQUEST_LINE = 64 * 1024
#: sizeof(sockaddr_un.sun_path) is 108 on Linux, one byte of it for the NUL (unix(7)).
_SUN_PATH_MAX = 107
#: How long a quick request (info, devices, pair...) may take to be answered.
CALL_WAIT = 15.0
#: How long to wait for an existing socket to answer before calling it stale.
PROBE_TIMEOUT = 2.0


class NoDaemon(QuicpairError):
    """No quicpair daemon serves this home; start one with `quicpair run`."""


class DaemonUnreachable(NoDaemon):
    """A quicpair process holds this home, but its control socket does not answer."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        #: The process that holds the home's lock.
        self.pid = pid


def control_socket_path(home: Path) -> Path:
    """``<home>/control.sock``; ConfigError if the path is too long for a Unix socket."""
    path = home.absolute() / CONTROL_SOCKET
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigError(
            f"the control socket path {path} is longer than {_SUN_PATH_MAX} bytes, "
            "the limit of Unix sockets; use a shorter --home"
        )
    return path


def connect_control(home: Path, timeout: float = PROBE_TIMEOUT, *, explain: bool = True) -> socket.socket:
    """A connection to the daemon serving ``home``; NoDaemon when nothing answers there.

    ``explain``: when nothing answers, look whether a process still holds the home
    (DaemonUnreachable, with its pid). A daemon about to claim the home does not look:
    its own lock attempt answers that, without a moment where it holds the lock shared.
    """
    path = control_socket_path(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except OSError as exc:
        sock.close()
        why = "no socket" if isinstance(exc, FileNotFoundError) else exc.strerror or str(exc)
        holder = lock_holder(home) if explain else None
        if holder is not None:
            pid = str(holder) if holder else "?"
            raise DaemonUnreachable(
                f"a quicpair process (pid {pid}) is running for {home}, but its control socket "
                f"{path} does not answer ({why}); a daemon binds a deleted socket again within "
                f"seconds: try again, or stop it with: kill -TERM {pid}",
                holder,
            ) from exc
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            raise NoDaemon(
                f"no quicpair daemon is running for {home}; start one with: quicpair --home {home} run"
            ) from exc
        raise NoDaemon(f"cannot reach the daemon of {home} at {path}: {why}") from exc
    return sock


def lock_holder(home: Path) -> int | None:
    """The pid of the process holding ``home``'s lock (a daemon or a one-shot command), or None."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0  # 0: held, by a pid not written yet
        fcntl.flock(fd, fcntl.LOCK_UN)  # nobody holds it: we only looked
        return None
    finally:
        os.close(fd)


class DaemonError(QuicpairError):
    """The node reported an error; the message is the node's own."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "unknown error")))
        #: The class name of the error on the node's side (e.g. "PairingFailed").
        self.kind = str(error.get("type", "QuicpairError"))
        #: The wire code name, when the error has one (e.g. "WRONG_CODE").
        self.code: str | None = error.get("code")
        #: The peer reported it (a pairing error), rather than the node deciding it.
        self.remote = bool(error.get("remote", False))


def unwrap_reply(reply: Any) -> Any:
    """A reply's result; DaemonError if it reports an error."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise QuicpairError(f"unexpected reply from the node: {str(reply)[:200]}")
    if not reply["ok"]:
        raise DaemonError(reply.get("error") or {})
    return reply.get("result")


class ControlClient:
    """The daemon of a home, over its control socket; one request at a time."""

    def __init__(self, home: Path) -> None:
        self._sock = connect_control(home)
        self._stream = self._sock.makefile("rwb")
        self._next_id = 0

    def call(self, op: str, *, wait: float = CALL_WAIT, **fields: Any) -> Any:
        self._next_id += 1
        request_id = self._next_id
        deadline = time.monotonic() + wait
        try:
            self._stream.write((json.dumps({"id": request_id, "op": op, **fields}) + "\n").encode())
            self._stream.flush()
            while True:
                # Replies to earlier requests abandoned by an interrupt may come first.
                self._sock.settimeout(max(deadline - time.monotonic(), 0.001))
                line = self._stream.readline()  # our own daemon: a long device list is fine
                if not line:
                    raise NoDaemon("the daemon closed the connection (is it stopping?)")
                reply = json.loads(line)
                if isinstance(reply, dict) and reply.get("id") == request_id:
                    return unwrap_reply(reply)
        except TimeoutError as exc:
            raise QuicpairError(f"the daemon did not answer {op!r} within {wait:g} s") from exc
        except ValueError as exc:
            raise QuicpairError(f"the daemon sent a reply that is not JSON: {exc}") from exc
        except OSError as exc:
            raise NoDaemon(f"lost the connection to the daemon: {exc.strerror or exc}") from exc

    def wait_closed(self, timeout: float) -> bool:
        """True once the daemon closed the connection (it does so last when it stops)."""
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                self._sock.settimeout(remaining)
                if not self._stream.readline():
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
        self._sock.close()
