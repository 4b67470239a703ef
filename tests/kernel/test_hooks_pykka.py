"""pykka's private hooks that actors/ relies on: one test each, failing loudly if pykka changes.

quicpair pins pykka==4.5.0 (setup.cfg). LoopActor (actors/kernel/loopactor.py) and the
Supervised mixin / Supervisor (actors/kernel/supervisor.py) reuse pykka's envelope
handling through private attributes. If one of these tests fails after a
pykka upgrade, read the hook's new source before touching anything else.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import queue
from collections.abc import Iterator
from typing import Any

import pykka
import pytest
from pykka import messages

PINNED = "4.5.0"
INSTALLED = importlib.metadata.version("pykka")


@contextlib.contextmanager
def relied_on(hook: str, user: str) -> Iterator[None]:
    """Turn any surprise into a failure that names the hook, the pin and who depends on it."""
    try:
        yield
    except (AssertionError, AttributeError, TypeError, ImportError, ValueError) as exc:
        pytest.fail(
            f"pykka private hook `{hook}` no longer behaves as in pykka {PINNED} "
            f"(installed: {INSTALLED}); {user} relies on it. Details: {exc!r}",
            pytrace=False,
        )


class Bare(pykka.Actor):
    """An actor that is never started: the hooks are called by hand."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.Queue()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def _start_actor_loop(self) -> None:
        pass

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def on_start(self) -> None:
        self.calls.append("on_start")

    def on_stop(self) -> None:
        self.calls.append("on_stop")

    def on_failure(self, *exc_info: Any) -> None:
        self.calls.append("on_failure")

    def on_receive(self, message: Any) -> Any:
        self.calls.append(f"on_receive:{message}")
        return message

    def method(self, x: int) -> int:
        return x + 1


def test_pykka_version_is_the_pinned_one() -> None:
    assert INSTALLED == PINNED, (
        f"pykka {INSTALLED} is installed, quicpair pins {PINNED}: its private hooks "
        "(actors/kernel/loopactor.py, actors/kernel/supervisor.py) must be re-checked before upgrading"
    )


def test_envelope() -> None:
    with relied_on("pykka._envelope.Envelope(message, reply_to=None)", "LoopActor, ask_async, Supervisor"):
        from pykka._envelope import Envelope

        future: pykka.Future[Any] = pykka.ThreadingFuture()
        envelope = Envelope("m", reply_to=future)
        assert envelope.message == "m" and envelope.reply_to is future
        assert Envelope("m").reply_to is None
        assert set(Envelope.__slots__) == {"message", "reply_to"}


def test_create_actor_inbox() -> None:
    with relied_on("Actor._create_actor_inbox", "LoopActor (its inbox is a locked deque)"):
        assert isinstance(inspect.getattr_static(pykka.Actor, "_create_actor_inbox"), staticmethod)
        actor = Bare()
        assert isinstance(actor.actor_inbox, queue.Queue)
        assert actor.actor_ref.actor_inbox is actor.actor_inbox  # the ref captures it once


def test_create_future() -> None:
    with relied_on("Actor._create_future / ActorRef.ask / ActorRef.stop", "LoopActor's LoopFuture"):

        class MarkedFuture(pykka.ThreadingFuture[Any]):
            pass

        class Marked(Bare):
            @staticmethod
            def _create_future() -> pykka.Future[Any]:
                return MarkedFuture()

        ref = Marked().actor_ref
        assert isinstance(ref.ask("x", block=False), MarkedFuture)
        assert isinstance(ref.stop(block=False), MarkedFuture)  # stop() copies the ask future's class


def test_start_order_and_start_actor_loop() -> None:
    with relied_on("Actor.start -> __init__, ActorRegistry.register, _start_actor_loop",
                   "LoopActor.start_on (replays these steps)"):  # fmt: skip
        seen: list[bool] = []

        class Watching(Bare):
            def _start_actor_loop(self) -> None:
                seen.append(self.actor_ref in pykka.ActorRegistry.get_all())

        ref = Watching.start()
        try:
            assert seen == [True], "register must happen before _start_actor_loop"
            source = inspect.getsource(pykka.Actor.start)
            assert "ActorRegistry.register(obj.actor_ref)" in source
            assert "obj._start_actor_loop()" in source
        finally:
            pykka.ActorRegistry.unregister(ref)


def test_actor_loop_setup() -> None:
    with relied_on("Actor._actor_loop_setup", "LoopActor boot, Supervised (on_start failures)"):
        actor = Bare()
        actor._actor_loop_setup()
        assert actor.calls == ["on_start"]

        class FailingStart(Bare):
            def on_start(self) -> None:
                raise ValueError("on_start")

        failing = FailingStart()
        pykka.ActorRegistry.register(failing.actor_ref)
        failing._actor_loop_setup()  # Exception: _handle_failure, and NOT on_failure
        assert failing.actor_stopped.is_set() and failing.calls == []
        assert failing.actor_ref not in pykka.ActorRegistry.get_all()

        class ExitingStart(Bare):
            def on_start(self) -> None:
                raise SystemExit("escapes")

        with pytest.raises(SystemExit):  # BaseException escapes: Supervised catches it
            ExitingStart()._actor_loop_setup()


def test_actor_loop_running() -> None:
    with relied_on("Actor._actor_loop / _actor_loop_running", "Supervised, Supervisor (override it)"):
        order: list[str] = []

        class Recording(Bare):
            def _actor_loop_setup(self) -> None:
                order.append("setup")

            def _actor_loop_running(self) -> None:
                order.append("running")

            def _actor_loop_teardown(self) -> None:
                order.append("teardown")

        Recording()._actor_loop()
        assert order == ["setup", "running", "teardown"]
        running = inspect.getsource(pykka.Actor._actor_loop_running)
        # The reason for overriding it: pykka answers a BaseException with stop_all().
        assert "ActorRegistry.stop_all()" in running
        assert "self.actor_inbox.get()" in running
        assert pykka.ThreadingActor._start_actor_loop.__qualname__ == "ThreadingActor._start_actor_loop"
        assert "target=self._actor_loop" in inspect.getsource(pykka.ThreadingActor._start_actor_loop)


def test_actor_loop_teardown() -> None:
    with relied_on("Actor._actor_loop_teardown", "LoopActor finish, Supervised (reports after it)"):
        from pykka._envelope import Envelope

        actor = Bare()
        asked: pykka.Future[Any] = pykka.ThreadingFuture()
        stop_asked: pykka.Future[Any] = pykka.ThreadingFuture()
        actor.actor_inbox.put(Envelope("told"))
        actor.actor_inbox.put(Envelope("asked", reply_to=asked))
        actor.actor_inbox.put(Envelope(messages._ActorStop(), reply_to=stop_asked))
        actor._actor_loop_teardown()
        assert actor.actor_inbox.empty()
        with pytest.raises(pykka.ActorDeadError):
            asked.get(timeout=0)
        assert stop_asked.get(timeout=0) is None
        assert actor.calls == []  # nothing handled, only answered


def test_handle_receive() -> None:
    with relied_on("Actor._handle_receive", "handle_envelope, Supervised and LoopActor (extend it)"):
        actor = Bare()
        assert actor._handle_receive("hello") == "hello"
        assert actor._handle_receive(messages.ProxyCall(attr_path=("method",), args=(1,), kwargs={})) == 2
        assert actor._handle_receive(messages.ProxyGetAttr(attr_path=("calls",))) == ["on_receive:hello"]
        actor._handle_receive(messages.ProxySetAttr(attr_path=("extra",), value=5))
        assert actor.extra == 5  # type: ignore[attr-defined]
        assert actor._handle_receive(messages._ActorStop()) is None
        assert actor.actor_stopped.is_set() and actor.calls[-1] == "on_stop"


def test_handle_failure() -> None:
    with relied_on(
        "Actor._handle_failure(exc_type, exc_value, traceback)", "Supervised (records the reason)"
    ):
        params = list(inspect.signature(pykka.Actor._handle_failure).parameters)
        assert params == ["self", "exception_type", "exception_value", "traceback"]
        actor = Bare()
        pykka.ActorRegistry.register(actor.actor_ref)
        error = ValueError("x")
        actor._handle_failure(ValueError, error, None)
        assert actor.actor_stopped.is_set()
        assert actor.actor_ref not in pykka.ActorRegistry.get_all()
        assert actor.calls == []  # on_failure is the caller's job


def test_stop() -> None:
    with relied_on("Actor._stop", "Supervised (records a normal exit after it)"):
        actor = Bare()
        pykka.ActorRegistry.register(actor.actor_ref)
        actor._stop()
        assert actor.actor_stopped.is_set() and actor.calls == ["on_stop"]
        assert actor.actor_ref not in pykka.ActorRegistry.get_all()

        class FailingStop(Bare):
            def on_stop(self) -> None:
                raise ValueError("on_stop")

        failing = FailingStop()
        failures: list[BaseException | None] = []
        failing._handle_failure = lambda t, v, tb: failures.append(v)  # type: ignore[method-assign,assignment]
        failing._stop()
        assert len(failures) == 1 and isinstance(failures[0], ValueError)


def test_inbox_protocol_and_ref_delivery() -> None:
    with relied_on("ActorInbox put/get/empty + ActorRef.tell/ask", "LoopActor's _LoopInbox, ask_async"):
        from pykka._envelope import Envelope

        class Spy:
            def __init__(self) -> None:
                self.put_calls: list[Any] = []

            def put(self, envelope: Any, /) -> None:
                self.put_calls.append(envelope)

            def get(self) -> Any:
                raise AssertionError("not used here")

            def empty(self) -> bool:
                return not self.put_calls

        class Spied(Bare):
            @staticmethod
            def _create_actor_inbox() -> Any:
                return Spy()

        actor = Spied()
        spy = actor.actor_inbox
        assert isinstance(spy, Spy)
        actor.actor_ref.tell("t")
        future = actor.actor_ref.ask("a", block=False)
        assert [type(e) for e in spy.put_calls] == [Envelope, Envelope]
        assert spy.put_calls[0].message == "t" and spy.put_calls[0].reply_to is None
        assert spy.put_calls[1].reply_to is future
        actor.actor_stopped.set()
        with pytest.raises(pykka.ActorDeadError):
            actor.actor_ref.tell("dead")  # checked before put
        assert len(spy.put_calls) == 2


def test_threading_actor_inbox_is_a_queue() -> None:
    with relied_on("ThreadingActor._create_actor_inbox -> queue.Queue", "Supervisor (timed get for timers)"):
        inbox = pykka.ThreadingActor._create_actor_inbox()
        assert isinstance(inbox, queue.Queue)
        with pytest.raises(queue.Empty):
            inbox.get(timeout=0)


def test_threading_future_get_with_zero_timeout() -> None:
    with relied_on("ThreadingFuture.get(timeout=0) / set_exception(exc_info)", "LoopFuture, _AsyncReply"):
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        with pytest.raises(pykka.Timeout):
            future.get(timeout=0)
        future.set(3)
        assert future.get(timeout=0) == 3
        failed: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        failed.set_exception((pykka.ActorDeadError, pykka.ActorDeadError("gone"), None))
        with pytest.raises(pykka.ActorDeadError, match="gone"):
            failed.get(timeout=0)
        assert "exc_info" in inspect.signature(pykka.Future.set_exception).parameters
