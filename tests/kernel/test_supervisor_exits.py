"""Supervision: exactly one ChildExited per death, whatever killed the actor."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from quicpair.actors.kernel.exits import ChildExited, Supervised
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.loopactor import LoopActor

T = 5.0  # every wait in this file is bounded by this


@pytest.fixture
def lt() -> Iterator[EventLoopThread]:
    with EventLoopThread("test-supervisor-exits") as loop:
        yield loop


# -- exactly one ChildExited per death, whatever killed the actor ----------------------------


class ExitRecorder(pykka.ThreadingActor):
    """Stands in for a supervisor: keeps every ChildExited it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.notices: list[ChildExited] = []

    def on_receive(self, message: Any) -> None:
        self.notices.append(message)


class Mortal(Supervised, pykka.ThreadingActor):
    def __init__(self, *, on_start: BaseException | None = None, on_stop: BaseException | None = None,
                 on_failure: BaseException | None = None) -> None:  # fmt: skip
        super().__init__()
        self.raise_on_start, self.raise_on_stop, self.raise_on_failure = on_start, on_stop, on_failure

    def on_start(self) -> None:
        if self.raise_on_start is not None:
            raise self.raise_on_start

    def on_stop(self) -> None:
        if self.raise_on_stop is not None:
            raise self.raise_on_stop

    def on_failure(self, *exc_info: Any) -> None:
        if self.raise_on_failure is not None:
            raise self.raise_on_failure

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, BaseException):
            raise message
        return message


class LoopMortal(Supervised, LoopActor):
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, BaseException):
            raise message
        return message


@pytest.fixture
def recorder() -> Iterator[pykka.ActorRef[ExitRecorder]]:
    ref = ExitRecorder.start()
    yield ref
    ref.stop(timeout=T)


def only_notice(
    recorder: pykka.ActorRef[ExitRecorder], until: Callable[..., None], baseline: int
) -> ChildExited:
    """The one notice, checked after the child's thread is gone (a second one would be in by then)."""
    until(lambda: threading.active_count() == baseline, what="the child's thread to end")
    notices: list[ChildExited] = recorder.proxy().notices.get(timeout=T)
    assert len(notices) == 1, notices
    return notices[0]


def start_mortal(recorder: pykka.ActorRef[ExitRecorder], **kwargs: Any) -> pykka.ActorRef[Mortal]:
    from quicpair.actors.kernel.exits import supervised_by

    with supervised_by(recorder, "m", "rec") as attachment:
        ref = Mortal.start(**kwargs)
    assert attachment.claimed_urn == ref.actor_urn
    return ref


@pytest.mark.parametrize(
    ("how", "kwargs", "message", "expected"),
    [
        ("told exception", {}, ValueError("told"), ValueError),
        ("on_start exception (pykka skips on_failure)", {"on_start": ValueError("start")}, None, ValueError),
        ("on_failure raises too", {"on_failure": KeyError("again")}, ValueError("first"), ValueError),
        ("on_stop raises", {"on_stop": ValueError("stop")}, "stop", ValueError),
        ("normal stop", {}, "stop", "normal"),
        ("told SystemExit", {}, SystemExit("bye"), SystemExit),
        ("KeyboardInterrupt in on_start", {"on_start": KeyboardInterrupt()}, None, KeyboardInterrupt),
        ("GeneratorExit in on_failure", {"on_failure": GeneratorExit()}, ValueError("x"), ValueError),
    ],
)
def test_every_death_is_reported_exactly_once(
    recorder: pykka.ActorRef[ExitRecorder], until: Callable[..., None],
    how: str, kwargs: dict[str, Any], message: Any, expected: Any,
) -> None:  # fmt: skip
    baseline = threading.active_count()
    ref = start_mortal(recorder, **kwargs)
    if message == "stop":
        ref.stop(timeout=T)
    elif message is not None:
        ref.tell(message)
    notice = only_notice(recorder, until, baseline)
    assert notice.name == "m" and notice.ref is ref
    if isinstance(expected, str):
        assert notice.reason == expected, how
    else:
        assert isinstance(notice.reason, expected), how
    assert pykka.ActorRegistry.get_all() == [recorder]


def test_shutdown_by_the_supervisor_is_reported_as_shutdown(
    recorder: pykka.ActorRef[ExitRecorder], until: Callable[..., None]
) -> None:
    from quicpair.actors.kernel.loopactor import Shutdown

    baseline = threading.active_count()
    ref = start_mortal(recorder)
    ref.ask(Shutdown(), timeout=T)
    assert only_notice(recorder, until, baseline).reason == "shutdown"


def test_a_base_exception_in_an_ask_kills_only_that_actor(
    recorder: pykka.ActorRef[ExitRecorder], until: Callable[..., None]
) -> None:
    class Bystander(pykka.ThreadingActor):
        pass

    bystander = Bystander.start()
    baseline = threading.active_count()
    ref = start_mortal(recorder)
    with pytest.raises(pykka.ActorDeadError, match="SystemExit"):
        ref.ask(SystemExit("in an ask"), timeout=T)
    assert isinstance(only_notice(recorder, until, baseline).reason, SystemExit)
    assert bystander.is_alive() and recorder.is_alive()  # pykka's default would have stopped all
    bystander.stop(timeout=T)


@pytest.mark.parametrize("message", [ValueError("told"), SystemExit("bye"), "stop"])
def test_loop_actor_deaths_are_reported_exactly_once(
    recorder: pykka.ActorRef[ExitRecorder], lt: EventLoopThread, message: Any
) -> None:
    from quicpair.actors.kernel.exits import supervised_by

    with supervised_by(recorder, "lm"):
        ref = LoopMortal.start_on(lt)
    if message == "stop":
        ref.stop(timeout=T)
    else:
        ref.tell(message)
    assert ref.actor_stopped.wait(T)

    async def flush() -> None:
        return None

    lt.submit(flush()).result(T)  # the report runs in the same loop callback as the death
    notices = recorder.proxy().notices.get(timeout=T)
    assert len(notices) == 1 and notices[0].name == "lm"
    expected = "normal" if message == "stop" else type(message)
    assert notices[0].reason == expected or isinstance(notices[0].reason, type(message))


def test_supervised_must_come_first_in_the_bases() -> None:
    with pytest.raises(TypeError, match="list Supervised before LoopActor"):

        class Wrong(LoopActor, Supervised):
            pass
