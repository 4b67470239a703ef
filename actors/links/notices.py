"""Restart notices a waiting node sends when it starts: "I am back, check your connection".

The node with the higher NodeId never dials (protocol/dialrule.py). When it restarts, its
peer, the dialer, still holds the connection of its previous incarnation and would learn of
the restart only at its next packet (a stateless reset) or, worse, at the dead-peer bound.
So, as its link worker starts, the waiting node sends the peer a restart notice
(protocol/notice.py) to every address it knows for it, from its own port (the one the peer
reaches it at), a few times until the link is up: :data:`SCHEDULE`. The dialer checks its
connection at once (one PING, answered here by a stateless reset) and dials. A notice is
one datagram of 62 bytes: a handful per peer per start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.protocol.codes import split_address
from quicpair.protocol.identity import NodeId
from quicpair.protocol.notice import make_notice

__all__ = ["PORT_WAIT", "SCHEDULE", "NoticeSender"]

#: Seconds after the start at which notices go out (again), while the link is not up: the
#: first one is usually enough; the others cover a lost datagram or a dialer that was busy.
SCHEDULE = (0.0, 0.5, 2.0)
#: The links start before the listener binds the port; the first notice waits for it.
PORT_WAIT = 0.05
_PORT_TRIES = 100


class NoticeSender:
    """The notices of one start, to one peer; :meth:`start` once, :meth:`stop` when the link is up."""

    def __init__(
        self,
        *,
        local: NodeId,
        peer: NodeId,
        secret: bytes,
        boot: bytes,
        port: Callable[[], Any],
        call_later: Callable[..., ActorTimer],
        log: Any,
        count: Callable[[], None],
    ) -> None:
        self._notice = make_notice(secret, local, peer, boot)
        self._port = port
        self._call_later = call_later
        self._log = log
        self._count = count
        self._targets: list[tuple[str, int]] = []
        self._timer: ActorTimer | None = None
        self._step = 0
        self._port_tries = 0

    def start(self, addresses: Sequence[str]) -> None:
        """Send the notices to ``addresses`` (``host:port``; bad ones skipped), per :data:`SCHEDULE`."""
        for address in dict.fromkeys(addresses):
            with contextlib.suppress(ValueError):
                self._targets.append(split_address(address))
        if self._targets:
            self._timer = self._call_later(SCHEDULE[0], self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        port = self._port()
        if port is None:  # not bound yet
            self._port_tries += 1
            if self._port_tries <= _PORT_TRIES:
                self._timer = self._call_later(PORT_WAIT, self._tick)
            return
        for host, number in self._targets:
            try:
                port.send_to(self._notice, (host, number))
            except OSError as exc:  # an address of a family our socket does not speak
                self._log.debug("link.notice_unsendable", address=f"{host}:{number}", error=str(exc))
                continue
            self._count()
        self._log.info("link.notice_sent", addresses=len(self._targets), round=self._step + 1)
        self._step += 1
        if self._step < len(SCHEDULE):
            delay = SCHEDULE[self._step] - SCHEDULE[self._step - 1]
            self._timer = self._call_later(delay, self._tick)
