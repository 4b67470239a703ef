"""Node processes inside the network namespaces of a test (tests/support/netns.py Lans).

A test module subclasses :class:`NetNodes` with how it makes a node (``node()``), and
takes the ``net`` fixture from :func:`net_fixture` with its class::

    net = net_fixture(Net)   # at module level: the ``net`` fixture
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from support.netns import Lan, require_netns
from support.nodeproc import NodeProcess

__all__ = ["NetNodes", "net_fixture"]

N = TypeVar("N", bound="NetNodes")


class NetNodes:
    """The test's LANs and the nodes inside them; :meth:`close` ends all, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lans: list[Lan] = []
        self.nodes: list[NodeProcess] = []

    def lan(self, n: int, stack: str = "ipv4") -> Lan:
        """A new LAN of ``n`` hosts; FAILS the test (never skips) without root or `ip netns`."""
        require_netns()
        made = Lan(n, stack=stack)
        self.lans.append(made)
        return made.open()

    def add(self, node: NodeProcess) -> NodeProcess:
        """Keep ``node`` (not launched) to be ended with the rest; its home is created."""
        node.home.mkdir(mode=0o700, parents=True)
        self.nodes.append(node)
        return node

    def start(self, *nodes: NodeProcess) -> None:
        """Launch ``nodes`` in parallel; return when each is ready."""
        for node in nodes:
            node.launch()
        for node in nodes:
            node.wait_ready()

    def close(self, *, graceful: bool) -> None:
        try:
            errors = []
            for node in reversed(self.nodes):
                try:
                    node.close(graceful=graceful)
                except BaseException as exc:  # every node first, then report
                    errors.append(exc)
            if errors:
                raise errors[0]
        finally:
            for made in reversed(self.lans):
                made.close()  # kills anything left inside, deletes the namespaces


def net_fixture(cls: type[N]) -> Callable[..., Any]:
    """The ``net`` fixture of a test module, making a ``cls``."""

    @pytest.fixture(name="net")
    def net(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[N]:
        failed_before = request.session.testsfailed
        made = cls(tmp_path)
        try:
            yield made
        finally:
            # A failed test has been counted by now: its nodes are killed, not waited for.
            made.close(graceful=request.session.testsfailed == failed_before)

    return net
