"""What the daemon watches under itself: its home, its identity, its registry and its control socket.

A daemon whose home is removed (``rm -rf``), moved away, or whose identity key
or registry file is replaced under it must not run on as a ghost: it would
hold its port and its links while a new ``quicpair run`` on the same path
creates a new identity, two live nodes claiming one home. :class:`HomeWatch`
remembers what each of those was when the node started (device and inode;
the key's size and time too, it is never written) and
:meth:`HomeWatch.lost` says, with a sentence for the log, which is gone or
replaced. The daemon asks every :data:`WATCH_INTERVAL` seconds and stops
cleanly (exit status 74) when something is.

The control socket is only a way in: :meth:`HomeWatch.socket_gone` says when
the one the daemon bound is no longer at its path (deleted, or replaced), and
the daemon binds it again.

Only ``stat`` is used (no descriptor: it works when the process has none
left, and never opens the registry, whose POSIX locks any close would drop).
A ``stat`` that fails for another reason than "not there" (EACCES...) proves
nothing and is not reported.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["WATCH_INTERVAL", "HomeWatch"]

#: How often the daemon looks (seconds): a vanished home is noticed within about that.
WATCH_INTERVAL = 1.0
#: A path that is gone for good: it does not exist, or a part of it is no longer a directory.
_GONE = (errno.ENOENT, errno.ENOTDIR)


def _stat(path: Path) -> os.stat_result | None:
    """``stat`` of ``path``; None when it is gone; raises OSError when it cannot tell."""
    try:
        return os.stat(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _GONE:
            return None
        raise


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class HomeWatch:
    """The home of one running node, as it was when the node started."""

    def __init__(self, home: Path, identity: Path, registry: Path, control_socket: Path) -> None:
        self.home = home
        self._files = {"home": home, "identity": identity, "registry": registry}
        self._control = control_socket
        self._known: dict[str, tuple[int, ...]] = {}
        for what, path in self._files.items():
            st = _stat(path)
            if st is not None:
                self._known[what] = self._fingerprint(what, st)
        self._socket: tuple[int, int] | None = None

    @staticmethod
    def _fingerprint(what: str, st: os.stat_result) -> tuple[int, ...]:
        if what == "identity":  # never written by the node: any change is someone else's
            return (*_inode(st), st.st_size, st.st_mtime_ns)
        return _inode(st)

    def lost(self) -> str | None:
        """What of the home is gone or replaced since the start (a sentence), or None."""
        for what, path in self._files.items():
            known = self._known.get(what)
            if known is None:
                continue
            try:
                st = _stat(path)
            except OSError:
                continue  # cannot tell now (EACCES, EIO...): not proof of anything
            if st is None:
                return f"the node's home {self.home} vanished" if what == "home" else f"{path} was deleted"
            if self._fingerprint(what, st) != known:
                if what == "home":
                    return f"the node's home {self.home} was replaced by another directory"
                return f"{path} was replaced or changed under the running node"
        return None

    def socket_bound(self) -> None:
        """The daemon (re)bound its control socket: remember which one it is."""
        st = _stat(self._control)
        self._socket = None if st is None else _inode(st)

    def socket_gone(self) -> str | None:
        """Why the control socket the daemon bound is no longer reachable at its path, or None."""
        if self._socket is None:
            return None
        try:
            st = _stat(self._control)
        except OSError:
            return None
        if st is None:
            return "deleted"
        if _inode(st) != self._socket:
            return "replaced by another file"
        return None
