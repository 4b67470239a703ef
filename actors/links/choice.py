"""The connections with one peer, and which one is kept: :class:`LinkConns`.

A link worker normally holds one connection with its peer. It can hold two
for a moment: both nodes dialed at once (the test hook, or a rule-breaking
peer), or the dialer came back (restart, idle timeout, a peer that moved)
while this side still holds the old connection. Both ends must then keep the
SAME one (DESIGN.md failure #5), each deciding alone:

* **dialed by different nodes**: the one dialed by the lower NodeId;
* **dialed by the same node**: the newer one
  (both: :func:`protocol.dialrule.keep_connection`, given the order here). A node dials only when it holds
  no connection it dialed (or to probe a peer that announced a move), so the
  older connection is dead or dying on the dialer's side; a dialer restarted
  by SIGKILL does not even know it, so the dialer nonces dialrule would
  compare are not known on both ends. Both ends agree on "newer" because a
  worker runs one dial at a time and keeps one connection per dial.

**Retiring a connection loses no message.** A retired connection is not used
to send any more. Its dialer sends a FIN on the stream at once; its listener
sends its FIN only once the dialer's FIN arrived; the dialer closes the
connection with DUPLICATE_CONNECTION (not a fault) when the listener's FIN
arrives. Streams are ordered, so each end read everything the other sent
before deciding. A peer's FIN on a connection we still used means the peer
retired it: we retire it too. Whatever goes wrong (the other end is dead, or
never saw the duplicate), a retiring connection is closed after
:data:`RETIRE_LINGER` seconds.

Loop-confined; the worker (actors/links/worker.py) owns one and reads its
``primary`` (the kept connection, None when there is none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.links.conn import LinkConn
from quicpair.protocol.dialrule import ConnInfo, keep_connection
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import NodeId

__all__ = ["RETIRE_LINGER", "LinkConns", "OnRetired"]

#: A retiring connection must have exchanged FINs by then (a few round trips on any
#: LAN); otherwise it is closed anyway, possibly losing what the peer sent last.
RETIRE_LINGER = 2.0

#: ``on_retired(conn, kept, reason)``: a connection was retired (reason: "duplicate",
#: "superseded" or "retired_by_peer"; ``kept`` is None when the peer decided).
OnRetired = Callable[[LinkConn, "LinkConn | None", str], None]


class LinkConns:
    """One peer's connections and the kept one; see the module docstring."""

    def __init__(
        self, local: NodeId, peer: NodeId, call_later: Callable[..., ActorTimer], on_retired: OnRetired
    ) -> None:
        self._local = local
        self._peer = peer
        self._call_later = call_later
        self._on_retired = on_retired
        self._conns: dict[int, LinkConn] = {}
        self._order: list[int] = []  # keys in arrival order: "newer" in _better
        #: The kept connection (established, not retiring), if any.
        self.primary: LinkConn | None = None

    # -- the set ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[LinkConn]:
        return iter(list(self._conns.values()))

    def get(self, key: int) -> LinkConn | None:
        return self._conns.get(key)

    def add(self, conn: LinkConn) -> None:
        self._conns[conn.key] = conn
        self._order.append(conn.key)

    def remove(self, key: int) -> LinkConn | None:
        """Forget a closed connection (if it was the kept one, call :meth:`resolve` next)."""
        conn = self._conns.pop(key, None)
        if conn is None:
            return None
        self._order.remove(key)
        conn.cancel_timer()
        if conn is self.primary:
            self.primary = None  # the caller resolves again: another one may be kept now
        return conn

    def setting_up(self) -> bool:
        """A connection is open but its hellos are not done: it may take over."""
        return any(not c.established and c.is_open for c in self._conns.values())

    def dialed_any(self) -> bool:
        return any(c.dialed for c in self._conns.values())

    def open_count(self) -> int:
        return sum(1 for c in self._conns.values() if c.is_open)

    # -- which one is kept ----------------------------------------------------------

    def _info(self, conn: LinkConn) -> ConnInfo:
        assert conn.info is not None
        return dataclasses.replace(conn.info, sequence=self._order.index(conn.key))

    def _better(self, a: LinkConn, b: LinkConn) -> LinkConn:
        # The rule lives in protocol/dialrule.py; here we only know the order.
        return (
            a
            if keep_connection(self._local, self._peer, self._info(a), self._info(b)) == self._info(a)
            else b
        )

    def resolve(self) -> tuple[LinkConn | None, LinkConn | None]:
        """Keep one established connection, retire the others; ``(previous, kept)``."""
        previous = self.primary
        candidates = [c for c in self._conns.values() if c.established and not c.retiring and c.is_open]
        keep = None
        for conn in candidates:
            keep = conn if keep is None else self._better(keep, conn)
        for conn in candidates:
            if keep is not None and conn is not keep:
                self._retire(conn, keep, "superseded" if conn.dialer == keep.dialer else "duplicate")
        self.primary = keep
        return previous, keep

    def _retire(self, conn: LinkConn, keep: LinkConn | None, reason: str) -> None:
        conn.retiring = True
        self._on_retired(conn, keep, reason)
        if conn.dialed or conn.peer_fin:
            conn.finish()
        if conn.dialed and conn.peer_fin:
            conn.close(ErrorCode.DUPLICATE_CONNECTION, reason)
            return
        conn.cancel_timer()
        conn.timer = self._call_later(RETIRE_LINGER, self._linger_over, conn.key)

    def _linger_over(self, key: int) -> None:
        conn = self._conns.get(key)
        if conn is not None:
            conn.close(ErrorCode.DUPLICATE_CONNECTION, "retired")

    def peer_finished(self, conn: LinkConn) -> bool:
        """The peer sent its FIN on ``conn``; True when that cost us the kept connection."""
        conn.peer_fin = True
        if conn.retiring:
            if conn.dialed:  # the listener's FIN comes after ours: both sides read everything
                conn.close(ErrorCode.DUPLICATE_CONNECTION, "duplicate connection retired")
            else:
                conn.finish()
            return False
        # The peer retired a connection we still used: it keeps another one.
        self._retire(conn, None, "retired_by_peer")
        if conn is not self.primary:
            return False
        self.primary = None
        self.resolve()
        return self.primary is None

    def close_all(self, code: ErrorCode, reason: str, *, keep: Any = None) -> None:
        """Close every connection (but ``keep``) with ``code``; their ConnClosed follow."""
        for conn in list(self._conns.values()):
            if conn is not keep:
                conn.close(code, reason)
