"""Noticing that the registry file was replaced or damaged under a running node, and keeping what is valid.

SQLite notices nothing when someone moves another file over the registry, truncates it or
writes over it while a connection is open: reads come from its cache and its write-ahead
log, and at the last close it checkpoints the WAL into whatever the file now is and
*deletes the WAL*, which may hold the only valid copy of what was written since the node
started. :class:`FileGuard` watches for that:

* :meth:`FileGuard.problem` tells whether the file at the registry's path is still the one
  that was opened (same inode) and still looks like it (the SQLite header with the page
  size, WAL mode and application id it had). It costs a ``stat`` and a 100-byte ``pread``;
  the store runs it before every operation and the daemon every few seconds.
* :meth:`FileGuard.keep_aside`, called instead of a plain close once a problem is seen,
  keeps what is valid before SQLite's close can lose it: a full copy of the registry as
  the open connection still sees it (the SQLite backup API, checked with
  ``integrity_check``; kept only if it passes) and the WAL itself, moved aside so that it
  is neither deleted nor ever applied to a file it does not belong to. A file that
  replaced the registry (another inode) is never written; one overwritten in place is
  the same inode SQLite writes to, and its close still checkpoints into it (Python 3.11's
  sqlite3 has no switch for SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE): that file is no registry
  any more either way, the copy is.

The guard holds one read-only descriptor on the file from before SQLite opens it until
after SQLite closed it: closing any descriptor of a file releases every POSIX lock the
process holds on it (fcntl(2)), SQLite's included, so the header is read through that one
descriptor rather than by opening the path again.

Not detected: another quicpair registry copied *in place* over the open one (same inode,
same kind of header). Stop the node before restoring a backup.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from quicpair.actors.registry.file import APPLICATION_ID, SQLITE_ERRORS
from quicpair.protocol.errors import RegistryError

__all__ = ["FileGuard"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100  # the SQLite database header (https://www.sqlite.org/fileformat.html 1.3)
#: Header fields that stay the same for the life of a registry: the page size (16-17) and
#: the file format versions (18-19: 2 for WAL); and the application id (68-71), 0 in a new
#: file's header until SQLite's first checkpoint writes ours there.
_STABLE = slice(16, 20)
_APP_ID = slice(68, 72)


class FileGuard:
    """One registry file, as it was when opened; see the module docstring."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` read-only (before SQLite does); RegistryError if it cannot be opened."""
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise RegistryError(f"cannot open registry {path}: {exc.strerror}") from exc
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)
        self._header: bytes | None = None

    def settle(self) -> None:
        """Remember the header as it is now (after SQLite opened, initialised or migrated the file)."""
        self._header = self._read_header()

    def problem(self) -> str | None:
        """What happened to the file at the path since it was opened (``"was deleted"``...), or None."""
        if self._fd is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "was deleted"
        except OSError:
            return None  # cannot tell (e.g. the home became unreadable): not proof of anything
        if (st.st_dev, st.st_ino) != self._identity:
            return "was replaced by another file"
        header = self._read_header()
        known = self._header
        if header is None or known is None or len(known) < _HEADER_SIZE:
            return None  # cannot read it now, or nothing to compare with yet
        if len(header) < _HEADER_SIZE:
            return f"was truncated (to {st.st_size} bytes)"
        if not header.startswith(_SQLITE_MAGIC):
            return "was overwritten: it is no longer an SQLite database"
        if header[_STABLE] != known[_STABLE] or header[_APP_ID] not in (
            known[_APP_ID],
            APPLICATION_ID.to_bytes(4, "big"),
        ):
            return "was overwritten by another SQLite database"
        return None

    def keep_aside(self, conn: sqlite3.Connection) -> list[str]:
        """Save what is valid before ``conn`` is closed: a checked copy, and the WAL moved aside.

        Returns a sentence per thing kept (or that could not be), for the error a person reads.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        said = []
        copy = self.path.with_name(f"{self.path.name}.rescued-{stamp}")
        try:
            self._copy(conn, copy)
        except (OSError, *SQLITE_ERRORS) as exc:
            with contextlib.suppress(OSError):
                copy.unlink()
            said.append(f"no complete copy could be made ({exc})")
        else:
            said.append(f"its last valid state was copied to {copy}")
        wal = self.path.with_name(self.path.name + "-wal")
        kept = self.path.with_name(f"{self.path.name}-wal.kept-{stamp}")
        try:
            os.rename(wal, kept)
        except FileNotFoundError:
            pass
        except OSError as exc:
            said.append(f"its write-ahead log {wal} could not be moved aside ({exc.strerror})")
        else:
            said.append(f"its write-ahead log was kept at {kept}")
        return said

    def _copy(self, conn: sqlite3.Connection, copy: Path) -> None:
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
        target = sqlite3.connect(copy, isolation_level=None)
        try:
            conn.backup(target)
            problems = [row[0] for row in target.execute("PRAGMA integrity_check(5)")]
            app_id = target.execute("PRAGMA application_id").fetchone()[0]
            # A rollback journal: the copy is one self-contained file, nothing beside it.
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
        if problems != ["ok"] or app_id != APPLICATION_ID:
            checks = "; ".join(problems)
            raise RegistryError(f"the copy fails its checks: {checks}, application_id {app_id:#x}")

    def close(self) -> None:
        """Release the descriptor; only once SQLite's connection to the file is closed."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _read_header(self) -> bytes | None:
        if self._fd is None:
            return None
        try:
            return os.pread(self._fd, _HEADER_SIZE, 0)
        except OSError:
            return None
