"""InjectedCrash: a Supervised actor told it crashes as a bug would, and is restarted (fault injection)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pykka
import pytest

from quicpair.actors.kernel.exits import InjectedCrash, InjectedFault, Supervised
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.loopactor import LoopActor
from quicpair.actors.kernel.supervisor import ChildSpec, Supervisor
from support.waiting import wait_until

T = 5.0  # every wait in this file is bounded by this


@pytest.fixture
def lt() -> Iterator[EventLoopThread]:
    with EventLoopThread("test-injected-crash") as loop:
        yield loop


class OnThread(Supervised, pykka.ThreadingActor):
    failures: ClassVar[list[str]] = []

    def on_failure(self, *exc_info: Any) -> None:
        OnThread.failures.append(repr(exc_info[1]))


class OnLoop(Supervised, LoopActor):
    pass


def test_a_told_injected_crash_is_a_crash_that_the_supervisor_restarts(lt: EventLoopThread) -> None:
    OnThread.failures = []
    sup = Supervisor.start(
        "sup",
        [ChildSpec("thread", lambda: OnThread.start()), ChildSpec("loop", lambda: OnLoop.start_on(lt))],
        max_restarts=10,
    )
    try:
        for name in ("thread", "loop"):
            (old,) = [c.ref for c in sup.proxy().which_children().get(timeout=T) if c.name == name]
            assert old is not None
            old.tell(InjectedCrash("from the test"))
            wait_until(lambda o=old: not o.is_alive(), timeout=T)

            def restarted(n: str = name, o: Any = old) -> bool:
                (info,) = [c for c in sup.proxy().which_children().get(timeout=T) if c.name == n]
                return info.ref is not None and info.ref is not o and info.restarts == 1

            wait_until(restarted, timeout=T)
        assert OnThread.failures == ["InjectedFault('thread: from the test')"]
    finally:
        sup.stop(timeout=T)


def test_the_fault_is_its_own_kind_of_error() -> None:
    assert issubclass(InjectedFault, RuntimeError)
    assert InjectedCrash().reason == "fault injection"
