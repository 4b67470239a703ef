"""Suite-wide fixtures: every test proves it left no actor and no thread behind.

``no_leaks`` is autouse: after each test it waits (bounded) until pykka's
ActorRegistry is empty and every thread started during the test has ended.
A thread or actor that stays is a failure naming it; leaked actors are then
stopped so that one leak does not cascade into the following tests.

A test that legitimately leaves daemon threads running (a third-party
library's worker) marks itself ``@pytest.mark.allow_daemon_threads``; non-daemon
threads and actors are still checked.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pykka
import pytest

from support.waiting import wait_until

#: How long a test's actors and threads get to finish after the test body. A
#: stopped ThreadingActor's thread ends microseconds after stop() returns; a
#: loop thread joins within its stop(). Seconds here only matter on failure.
LEAK_WAIT = 5.0


def pytest_configure(config: pytest.Config) -> None:
    # In-process actors log through structlog from their own threads, after
    # pytest's capture: send those lines nowhere. The level stays at debug so
    # structlog.testing.capture_logs() sees every event in tests that assert on logs.
    import os

    from quicpair.actors.kernel.logs import configure_logging

    configure_logging(level="debug", fmt="json", stream=open(os.devnull, "w"))  # noqa: SIM115
    config.addinivalue_line(
        "markers", "allow_daemon_threads: the no_leaks fixture ignores daemon threads started by the test"
    )


def _leaked_threads(before: set[threading.Thread], allow_daemon: bool) -> list[threading.Thread]:
    return [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and thread.is_alive()
        and not isinstance(thread, threading._DummyThread)  # foreign threads seen by threading
        and not (allow_daemon and thread.daemon)
    ]


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if an actor or a thread it started is still alive after it."""
    before = set(threading.enumerate())
    allow_daemon = request.node.get_closest_marker("allow_daemon_threads") is not None
    yield
    deadline = time.monotonic() + LEAK_WAIT
    while True:
        actors = pykka.ActorRegistry.get_all()
        threads = _leaked_threads(before, allow_daemon)
        if not actors and not threads:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    for ref in actors:
        with contextlib.suppress(Exception):  # the report below is what matters
            ref.stop(block=True, timeout=1.0)
    lines = [f"actor still registered: {ref}" for ref in actors]
    lines += [f"thread still alive: {t.name} (daemon={t.daemon})" for t in threads]
    pytest.fail(f"leaked after {LEAK_WAIT} s:\n  " + "\n  ".join(lines), pytrace=False)


@pytest.fixture
def until() -> Callable[..., None]:
    """``wait_until(predicate, timeout=5.0, what=...)`` (tests/support/waiting.py), as a fixture."""
    return wait_until
