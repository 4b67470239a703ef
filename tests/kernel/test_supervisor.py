"""Supervisor: OTP strategies, restart types, intensity and escalation, ordered start and stop."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from structlog.testing import capture_logs

from quicpair.actors.kernel.backoff import Backoff
from quicpair.actors.kernel.exits import ChildExited, Supervised
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.actors.kernel.loopactor import LoopActor
from quicpair.actors.kernel.supervisor import ChildInfo, ChildSpec, Restart, Strategy, Supervisor
from quicpair.protocol.errors import QuicpairError

T = 5.0  # every wait in this file is bounded by this


class Probe:
    """What the test actors did, in order, across threads."""

    def __init__(self) -> None:
        self._events: queue.Queue[tuple[str, str]] = queue.Queue()

    def put(self, what: str, tag: str) -> None:
        self._events.put((what, tag))

    def take(self, n: int) -> list[tuple[str, str]]:
        return [self._events.get(timeout=T) for _ in range(n)]

    def is_empty(self) -> bool:
        return self._events.empty()


class Worker(Supervised, pykka.ThreadingActor):
    """Records init/start/stop in the probe; crashes with the exception it is told."""

    def __init__(self, tag: str, probe: Probe) -> None:
        super().__init__()
        self.tag = tag
        self.probe = probe
        probe.put("init", tag)

    def on_start(self) -> None:
        self.probe.put("start", self.tag)

    def on_stop(self) -> None:
        self.probe.put("stop", self.tag)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, BaseException):
            raise message
        if message == "stop":
            self.stop()
        return message


def spec(tag: str, probe: Probe, restart: Restart = Restart.PERMANENT, **kwargs: Any) -> ChildSpec:
    return ChildSpec(tag, lambda: Worker.start(tag, probe), restart=restart, **kwargs)


def child_ref(sup: pykka.ActorRef[Supervisor], name: str) -> pykka.ActorRef[Any] | None:
    children: list[ChildInfo] = sup.proxy().which_children().get(timeout=T)
    for info in children:
        if info.name == name:
            return info.ref
    raise AssertionError(f"no child {name!r}")


def names(sup: pykka.ActorRef[Supervisor]) -> list[str]:
    return [info.name for info in sup.proxy().which_children().get(timeout=T)]


def crash(sup: pykka.ActorRef[Supervisor], name: str) -> None:
    ref = child_ref(sup, name)
    assert ref is not None
    ref.tell(RuntimeError(f"{name} crashed"))


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def lt() -> Iterator[EventLoopThread]:
    loop_thread = EventLoopThread("sup-loop").start()
    yield loop_thread
    loop_thread.stop()


def start_sup(probe: Probe, tags: str, **kwargs: Any) -> pykka.ActorRef[Supervisor]:
    sup = Supervisor.start("sup", [spec(tag, probe) for tag in tags], **kwargs)
    assert probe.take(2 * len(tags)) == [(what, tag) for tag in tags for what in ("init", "start")]
    return sup


def test_children_start_in_order_and_stop_in_reverse(probe: Probe) -> None:
    sup = start_sup(probe, "abc")  # asserts init+on_start of a, then b, then c
    assert sup.stop(timeout=T) is True
    assert probe.take(3) == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert pykka.ActorRegistry.get_all() == []


def test_one_for_one_restarts_only_the_dead_child(probe: Probe) -> None:
    sup = start_sup(probe, "abc", strategy=Strategy.ONE_FOR_ONE)
    before = {name: child_ref(sup, name) for name in "abc"}
    crash(sup, "b")
    assert probe.take(2) == [("init", "b"), ("start", "b")]
    after = {name: child_ref(sup, name) for name in "abc"}
    assert after["a"] is before["a"] and after["c"] is before["c"]
    assert after["b"] is not None and after["b"] is not before["b"]
    sup.stop(timeout=T)


def test_rest_for_one_restarts_the_dead_child_and_those_started_after_it(probe: Probe) -> None:
    sup = start_sup(probe, "abcd", strategy=Strategy.REST_FOR_ONE)
    a = child_ref(sup, "a")
    crash(sup, "b")
    assert probe.take(8) == [
        ("stop", "d"), ("stop", "c"),
        ("init", "b"), ("start", "b"), ("init", "c"), ("start", "c"), ("init", "d"), ("start", "d"),
    ]  # fmt: skip
    assert child_ref(sup, "a") is a
    sup.stop(timeout=T)


def test_one_for_all_restarts_every_child_in_order(probe: Probe) -> None:
    sup = start_sup(probe, "abc", strategy=Strategy.ONE_FOR_ALL)
    crash(sup, "b")
    assert probe.take(8) == [
        ("stop", "c"), ("stop", "a"),
        ("init", "a"), ("start", "a"), ("init", "b"), ("start", "b"), ("init", "c"), ("start", "c"),
    ]  # fmt: skip
    sup.stop(timeout=T)


def test_one_for_all_drops_temporary_siblings(probe: Probe) -> None:
    sup = Supervisor.start(
        "sup", [spec("a", probe), spec("t", probe, Restart.TEMPORARY)], strategy=Strategy.ONE_FOR_ALL
    )
    probe.take(4)
    crash(sup, "a")
    assert probe.take(3) == [("stop", "t"), ("init", "a"), ("start", "a")]
    assert names(sup) == ["a"]
    sup.stop(timeout=T)


def test_permanent_child_is_restarted_even_after_a_normal_stop(probe: Probe) -> None:
    sup = Supervisor.start("sup", [spec("p", probe, Restart.PERMANENT)])
    probe.take(2)
    ref = child_ref(sup, "p")
    assert ref is not None
    ref.tell("stop")
    assert probe.take(3) == [("stop", "p"), ("init", "p"), ("start", "p")]
    sup.stop(timeout=T)


def test_transient_child_is_restarted_after_a_crash_only(probe: Probe, until: Callable[..., None]) -> None:
    sup = Supervisor.start("sup", [spec("t", probe, Restart.TRANSIENT)])
    probe.take(2)
    crash(sup, "t")
    assert probe.take(2) == [("init", "t"), ("start", "t")]
    ref = child_ref(sup, "t")
    assert ref is not None
    ref.tell("stop")
    assert probe.take(1) == [("stop", "t")]
    until(lambda: names(sup) == [], what="the transient child to be forgotten")
    assert probe.is_empty()
    sup.stop(timeout=T)


def test_temporary_child_is_never_restarted(probe: Probe, until: Callable[..., None]) -> None:
    sup = Supervisor.start("sup", [spec("tmp", probe, Restart.TEMPORARY), spec("other", probe)])
    probe.take(4)
    crash(sup, "tmp")
    until(lambda: names(sup) == ["other"], what="the temporary child to be forgotten")
    assert probe.is_empty()
    sup.stop(timeout=T)


def test_exceeding_the_intensity_stops_children_in_reverse_and_fails(probe: Probe) -> None:
    escalations: list[BaseException] = []
    sup = start_sup(probe, "abc", max_restarts=2, period=60.0, clock=lambda: 0.0,
                    on_escalate=escalations.append)  # fmt: skip
    for _ in range(2):
        crash(sup, "a")
        assert probe.take(2) == [("init", "a"), ("start", "a")]
    with capture_logs() as logs:
        crash(sup, "a")
        assert sup.actor_stopped.wait(T)
    assert probe.take(2) == [("stop", "c"), ("stop", "b")]
    (error,) = escalations
    assert isinstance(error, QuicpairError)
    assert "more than 2 restarts within 60.0 s" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    escalated = [e for e in logs if e["event"] == "supervisor.escalated"]
    assert len(escalated) == 1 and escalated[0]["supervisor"] == "sup" and escalated[0]["actor"] == "a"


def test_restarts_older_than_the_period_are_forgotten(probe: Probe) -> None:
    now = [0.0]
    sup = start_sup(probe, "a", max_restarts=1, period=10.0, clock=lambda: now[0])
    crash(sup, "a")
    probe.take(2)
    now[0] = 10.0  # the first restart leaves the window
    crash(sup, "a")
    assert probe.take(2) == [("init", "a"), ("start", "a")]
    assert sup.is_alive()
    sup.stop(timeout=T)


def test_max_restarts_zero_escalates_on_the_first_death(probe: Probe) -> None:
    sup = start_sup(probe, "a", max_restarts=0)
    crash(sup, "a")
    assert sup.actor_stopped.wait(T)
    assert probe.is_empty()


def test_escalation_reaches_the_parent_as_a_child_death(probe: Probe) -> None:
    def inner() -> pykka.ActorRef[Any]:
        return Supervisor.start("inner", [spec("w", probe)], max_restarts=0)

    with capture_logs() as logs:
        parent = Supervisor.start("parent", [ChildSpec("inner", inner)], max_restarts=5)
        assert probe.take(2) == [("init", "w"), ("start", "w")]
        first_inner = child_ref(parent, "inner")
        assert first_inner is not None
        crash(first_inner, "w")
        assert probe.take(2) == [("init", "w"), ("start", "w")]  # a new inner, a new w
        (info,) = parent.proxy().which_children().get(timeout=T)
        assert info.restarts == 1 and info.ref is not first_inner
        parent.stop(timeout=T)
    assert probe.take(1) == [("stop", "w")]
    events = [(e["event"], e.get("supervisor"), e.get("actor")) for e in logs]
    assert events.count(("supervisor.escalated", "inner", "w")) == 1
    assert events.count(("actor.restarted", "parent", "inner")) == 1
    exited = [e for e in logs if e["event"] == "actor.exited" and e["actor"] == "inner"]
    assert "QuicpairError" in exited[0]["reason"]  # the first inner's death: the escalation


def test_a_restart_whose_start_fails_is_retried_and_counted(probe: Probe) -> None:
    calls = [0]

    def flaky() -> pykka.ActorRef[Any]:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError("port busy")
        return Worker.start("f", probe)

    with capture_logs() as logs:
        sup = Supervisor.start("sup", [ChildSpec("f", flaky)], max_restarts=5)
        probe.take(2)
        crash(sup, "f")
        assert probe.take(2) == [("init", "f"), ("start", "f")]
        (info,) = sup.proxy().which_children().get(timeout=T)
        sup.stop(timeout=T)
    assert calls[0] == 3 and info.restarts == 1
    assert [e["event"] for e in logs].count("actor.start_failed") == 1


def test_a_failing_initial_child_fails_the_supervisor_and_stops_the_started_ones(probe: Probe) -> None:
    def broken() -> pykka.ActorRef[Any]:
        raise OSError("cannot bind")

    sup = Supervisor.start("sup", [spec("a", probe), spec("b", probe), ChildSpec("bad", broken)])
    assert sup.actor_stopped.wait(T)
    assert probe.take(6) == [
        ("init", "a"), ("start", "a"), ("init", "b"), ("start", "b"), ("stop", "b"), ("stop", "a"),
    ]  # fmt: skip


def test_a_child_that_does_not_stop_in_time_is_reported_and_abandoned(probe: Probe) -> None:
    entered, release = threading.Event(), threading.Event()

    class Stuck(Worker):
        def on_receive(self, message: Any) -> Any:
            if message == "block":
                entered.set()
                assert release.wait(T)
            return super().on_receive(message)

    sup = Supervisor.start(
        "sup",
        [spec("a", probe), ChildSpec("stuck", lambda: Stuck.start("stuck", probe), shutdown_timeout=0.05)],
    )
    probe.take(4)
    stuck = child_ref(sup, "stuck")
    assert stuck is not None
    stuck.tell("block")
    assert entered.wait(T)
    with capture_logs() as logs:
        assert sup.stop(timeout=T) is True  # did not hang on the stuck child
    assert probe.take(1) == [("stop", "a")]  # a was still stopped, after stuck was abandoned
    timeouts = [e for e in logs if e["event"] == "actor.shutdown_timeout"]
    assert len(timeouts) == 1 and timeouts[0]["actor"] == "stuck"
    release.set()  # the abandoned child stops when it reaches the Shutdown message
    assert probe.take(1) == [("stop", "stuck")]


def test_dynamic_children(probe: Probe) -> None:
    sup = Supervisor.start("sup", [spec("a", probe)])
    probe.take(2)
    proxy = sup.proxy()
    ref = proxy.start_child(spec("dyn", probe, Restart.TEMPORARY)).get(timeout=T)
    assert probe.take(2) == [("init", "dyn"), ("start", "dyn")]
    assert [(i.name, i.ref, i.restart) for i in proxy.which_children().get(timeout=T)][1] == (
        "dyn", ref, Restart.TEMPORARY,
    )  # fmt: skip
    with pytest.raises(ValueError, match="already has a child named 'dyn'"):
        proxy.start_child(spec("dyn", probe)).get(timeout=T)
    assert proxy.terminate_child("dyn").get(timeout=T) is True
    assert probe.take(1) == [("stop", "dyn")]
    assert proxy.terminate_child("dyn").get(timeout=T) is False
    assert names(sup) == ["a"]
    sup.stop(timeout=T)


def test_a_child_that_is_not_supervised_is_refused_and_stopped() -> None:
    class Plain(pykka.ThreadingActor):
        pass

    sup = Supervisor.start("sup")
    with pytest.raises(TypeError, match="not a Supervised actor"):
        sup.proxy().start_child(ChildSpec("plain", Plain.start)).get(timeout=T)
    assert names(sup) == []
    sup.stop(timeout=T)


def test_backoff_delays_restarts_and_grows(probe: Probe) -> None:
    def backoff() -> Backoff:
        return Backoff(0.02, 1.0, 0.5, reset_after=60.0, rand=lambda: 0.5)

    with capture_logs() as logs:
        sup = Supervisor.start("sup", [spec("b", probe, backoff=backoff)], max_restarts=10, clock=lambda: 0.0)
        probe.take(2)
        for _ in range(2):
            crash(sup, "b")
            assert probe.take(2) == [("init", "b"), ("start", "b")]
        sup.stop(timeout=T)
    delays = [e["delay"] for e in logs if e["event"] == "actor.restart_scheduled"]
    assert delays == [0.02 * 1.25, 0.04 * 1.25]


def test_terminating_a_child_that_waits_for_its_restart_cancels_it(
    probe: Probe, until: Callable[..., None]
) -> None:
    def slow() -> Backoff:
        return Backoff(3600.0, 3600.0, 0.0, reset_after=60.0, rand=lambda: 0.0)

    sup = Supervisor.start("sup", [spec("b", probe, backoff=slow)])
    probe.take(2)
    crash(sup, "b")
    until(lambda: child_ref(sup, "b") is None, what="the restart to be scheduled")
    assert sup.proxy().terminate_child("b").get(timeout=T) is True
    assert sup.stop(timeout=T) is True
    assert probe.is_empty()


class LoopWorker(Supervised, LoopActor):
    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def on_start(self) -> None:
        self.probe.put("start", threading.current_thread().name)

    def on_stop(self) -> None:
        self.probe.put("stop", threading.current_thread().name)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, BaseException):
            raise message
        return message


def test_loop_actor_children_are_supervised_on_their_loop(probe: Probe, lt: EventLoopThread) -> None:
    sup = Supervisor.start("sup", [ChildSpec("l", lambda: LoopWorker.start_on(lt, probe))])
    assert probe.take(1) == [("start", "sup-loop")]
    crash(sup, "l")
    assert probe.take(1) == [("start", "sup-loop")]
    ref = child_ref(sup, "l")
    assert ref is not None
    ref.tell(SystemExit("on the loop"))  # the loop survives, the child is restarted
    assert probe.take(1) == [("start", "sup-loop")]
    assert lt.is_running()
    sup.stop(timeout=T)
    assert probe.take(1) == [("stop", "sup-loop")]


def test_lifecycle_events_carry_names(probe: Probe) -> None:
    with capture_logs() as logs:
        sup = Supervisor.start("root", [spec("a", probe)])
        probe.take(2)
        crash(sup, "a")
        probe.take(2)
        sup.stop(timeout=T)
    seen = [(e["event"], e.get("supervisor"), e["actor"], e.get("reason")) for e in logs]
    assert seen == [  # a supervisor has started once its children have
        ("actor.started", "root", "a", None),
        ("actor.started", "", "root", None),
        ("actor.exited", "root", "a", "RuntimeError('a crashed')"),
        ("actor.started", "root", "a", None),
        ("actor.restarted", "root", "a", None),
        ("actor.exited", "root", "a", "shutdown"),
        ("actor.exited", "", "root", "normal"),
    ]


def test_child_exited_is_a_frozen_message(probe: Probe) -> None:
    sup = start_sup(probe, "a")
    ref = child_ref(sup, "a")
    assert ref is not None
    notice = ChildExited("a", ref, "normal")
    with pytest.raises(AttributeError):
        notice.name = "b"  # type: ignore[misc]
    sup.stop(timeout=T)


def test_stopping_the_loop_under_a_live_supervisor_escalates_loudly(probe: Probe) -> None:
    lt = EventLoopThread("doomed").start()
    escalations: list[BaseException] = []
    with capture_logs() as logs:
        sup = Supervisor.start(
            "sup", [ChildSpec("l", lambda: LoopWorker.start_on(lt, probe))], on_escalate=escalations.append
        )
        assert probe.take(1) == [("start", "doomed")]
        lt.stop()  # wrong order (stop supervisors first): the child cannot come back
        assert sup.actor_stopped.wait(T)
    assert probe.take(1) == [("stop", "doomed")]
    assert len(escalations) == 1 and isinstance(escalations[0], QuicpairError)
    events = [e["event"] for e in logs]
    # death 1: the shutdown; deaths 2-4: three failed restarts; the 4th death exceeds 3 restarts
    assert events.count("actor.start_failed") == 3 and events.count("supervisor.escalated") == 1
