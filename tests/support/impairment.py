"""A lossy, slow path between two nodes for the tests: tools/impairment.py in a child process.

    path = ImpairedPath(tmp_path, target=waiter_address, loss=5, delay=0.05, netns=host.ns)
    path.start(listen=f"{host.address}:0")
    ...  # give the dialer path.address as the peer's address
    stats = path.stats()   # {"up_forwarded", "up_dropped", "down_forwarded", "down_dropped", "clients"}
    path.close()

Inside a namespace of tests/support/netns.py (``netns=``) when the nodes run there;
:meth:`close` ends it (end of stdin, SIGKILL after a bound), and the Lan kills
anything left in its namespaces anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.nodeproc import REPLY_TIMEOUT, STOP_TIMEOUT, ChildProcess, poll

__all__ = ["ImpairedPath"]


class ImpairedPath(ChildProcess):
    """``python -m quicpair.tools.impairment``: drops ``loss`` % and delays ``delay`` s, each way."""

    def __init__(
        self,
        workdir: Path,
        *,
        target: str,
        loss: float,
        delay: float,
        seed: int = 1,
        netns: str | None = None,
        name: str = "impairment",
    ) -> None:
        super().__init__(name, workdir)
        self.target = target
        self.loss, self.delay, self.seed = loss, delay, seed
        if netns is not None:
            self.command_prefix = ["ip", "netns", "exec", netns]

    def start(self, listen: str = "127.0.0.1:0") -> ImpairedPath:
        args = ["--listen", listen, "--target", self.target]
        args += ["--loss", str(self.loss), "--delay", str(self.delay), "--seed", str(self.seed)]
        self._spawn("quicpair.tools.impairment", args)
        self.wait_ready()
        return self

    def stats(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The datagrams forwarded and dropped so far, each way (a fresh ``stats`` line)."""
        assert self.proc is not None and self.proc.stdin is not None
        before = len(self.printed("stats"))
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        poll(
            lambda: len(self.printed("stats")) > before,
            timeout=timeout,
            what="a stats line",
            fail=self._fail,
        )
        return self.printed("stats")[before]

    def close(self, timeout: float = STOP_TIMEOUT) -> int:
        """End stdin (its stop signal); its exit status (SIGKILL after ``timeout``)."""
        return self.end_stdin(timeout)
