"""systemd's readiness protocol, without a dependency: one datagram to ``$NOTIFY_SOCKET``.

::

    notifier = Notifier.from_environment()      # does nothing when not run by systemd
    notifier.send("READY=1", "STATUS=listening on 0.0.0.0:47470")
    notifier.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
    notifier.send("STOPPING=1")
    if notifier.watchdog_interval: notifier.send("WATCHDOG=1")   # at least that often

A unit with ``Type=notify`` (docs/systemd/) is started once the daemon sends
``READY=1`` (its control socket accepts requests), reloaded with SIGHUP
(``RELOADING=1`` then ``READY=1`` again, sd_notify(3)), and with
``WatchdogSec=`` it is restarted when the daemon's main loop stops sending
``WATCHDOG=1``. The socket is opened once, at start: a daemon out of file
descriptors can still tell systemd how it is.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "monotonic_usec"]


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, what ``RELOADING=1`` carries (sd_notify(3))."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state changes to the service manager, if one asked for them; never raises."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | None = None
        self._sock: socket.socket | None = None
        #: Seconds between two ``WATCHDOG=1`` (half of ``WatchdogSec=``); None without a watchdog.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        if not address or address[0] not in "/@":
            return
        # "@name" is Linux's abstract namespace (unix(7)): a leading NUL byte.
        self._address = "\0" + address[1:] if address[0] == "@" else address
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError:
            self._sock = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """What systemd set for this process (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``/``WATCHDOG_PID``)."""
        env = os.environ if environ is None else environ
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (pid is None or pid == str(os.getpid())):
            watchdog = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET"), watchdog)

    @property
    def active(self) -> bool:
        """True when a service manager listens."""
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False if nobody listens or it failed."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), self._address)
        except OSError:
            return False  # the manager went away; the daemon runs on regardless
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
