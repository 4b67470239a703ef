"""A real ``quicpair run`` daemon with ONE deliberate deviation from PROTOCOL.md, for the conformance tests.

Run as a script, it patches one function of the node, then runs the command
line exactly as ``python -m quicpair.tools.cli`` would::

    python tests/support/deviant_node.py accept_replay --home H run --init --json ...

:data:`DEVIATIONS` names each one and the kit check it must make fail
(tests/tools/test_conformance.py). :class:`DeviantDaemon` is a
:class:`support.daemons.Daemon` started through this script.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DEVIATIONS", "DeviantDaemon"]


def _accept_replay() -> None:
    """Section 9 broken: a box with an old sequence number is opened again instead of REPLAYED."""
    from quicpair.protocol import seal

    original = seal.Opener.open

    def open_replays_too(self: Any, seq: int, box: bytes) -> bytes:
        if seq < self._expected_seq:
            aad = self._context + seq.to_bytes(8, "big")
            plaintext: bytes = self._aead.decrypt(seal._nonce(seq), box, aad)
            return plaintext
        return original(self, seq, box)

    seal.Opener.open = open_replays_too  # type: ignore[method-assign]


def _skip_link_addresses() -> None:
    """Section 11.2 broken: no LinkAddresses after the hellos (nor ever): nothing sealed first."""
    from quicpair.protocol import link

    def nothing(self: Any, addresses: list[str]) -> bytes:
        return b""

    link.LinkChannel.send_addresses = nothing  # type: ignore[method-assign]


def _never_burn() -> None:
    """Section 10.7 broken: a code is never burned, however many wrong attempts it had."""
    from quicpair.protocol import codebook

    original = codebook.Codebook.open

    def open_unburnable(
        self: Any, now: float, rand: Any, expiry: float = 300.0, max_attempts: int = 3
    ) -> Any:
        return original(self, now, rand, expiry=expiry, max_attempts=1_000_000)

    codebook.Codebook.open = open_unburnable  # type: ignore[method-assign]


#: deviation -> (how to apply it, the name of the one kit check it must make fail)
DEVIATIONS: dict[str, tuple[Callable[[], None], str]] = {
    "accept_replay": (_accept_replay, "a replayed LinkSealed -> REPLAYED"),
    "never_burn": (_never_burn, "burned after 3 wrong attempts -> CODE_USED_UP"),
    "skip_link_addresses": (
        _skip_link_addresses,
        "first sealed message right after the hellos: LinkAddresses",
    ),
}


class DeviantDaemon:
    """One deviant ``run`` process with the parts of :class:`support.daemons.Daemon` the tests use."""

    def __init__(self, deviation: str, home: Path, log_path: Path, extra: list[str]) -> None:
        from support.daemons import ENV, FAST_LINKS, LOOPBACK, REPO

        self.home = home
        self.log_path = log_path
        argv = [sys.executable, __file__, deviation, "--home", str(home), "run", "--init", "--json"]
        argv += [*LOOPBACK, *FAST_LINKS, *extra]
        with open(log_path, "a", encoding="utf-8") as err:
            self.popen = subprocess.Popen(
                argv,
                cwd=REPO,
                env=ENV,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"test-deviant-{deviation}")
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ready(self, timeout: float = 30.0) -> str:
        """The ``ready`` line (JSON text); AssertionError if the process ended first."""
        line = self._lines.get(timeout=timeout)
        assert line is not None, self.log_path.read_text("utf-8", "replace")[-3000:]
        return line

    def end(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(10)


def main(argv: list[str]) -> int:
    deviation, *rest = argv
    DEVIATIONS[deviation][0]()
    from quicpair.tools.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
