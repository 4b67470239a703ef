"""A daemon that survives its own machine: real ``quicpair run`` daemons, faults from outside.

Each test starts real daemons on 127.0.0.1 (mDNS off) and breaks something
under one of them the way a person, a tool or the machine would: signals, a
closed terminal, its home removed or replaced, its control socket deleted,
descriptors exhausted, its disk full, its registry overwritten, its actors
crashed on purpose. What is checked is what a person sees: exit statuses,
one-line errors, the peer told GOING_AWAY, nothing left behind, the log
bounded, and the supervision events in the log. Every wait is bounded and
every process is ended at teardown (tests/support/daemons.py).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from support.daemons import (
    ENV,
    Daemon,
    Daemons,
    control,
    eventually,
    quicpair,
)
from support.daemons import daemons_fixture as daemons_fixture  # the ``daemons`` fixture

pytestmark = pytest.mark.timeout(180)


def _same_port(daemon: Daemon) -> tuple[str, ...]:
    """Options that restart ``daemon`` where its peer stored it: the same port."""
    return ("--listen", f"127.0.0.1:{daemon.info['port']}")


def _went_away(peer: Daemon, before: int) -> dict[str, Any]:
    """The first ``link.down`` the peer logged after ``before`` of them: the reason it saw."""
    downs: list[dict[str, Any]] = eventually(
        "the peer sees the link go down", lambda: peer.events("link.down")[before:]
    )
    return downs[0]


# -- signals ---------------------------------------------------------------------------------


def test_sigterm_sigint_and_sigquit_stop_gracefully_and_the_peer_sees_going_away(daemons: Daemons) -> None:
    alice, bob = daemons.start("alice", "bob")
    daemons.pair(alice, bob)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        downs = len(bob.events("link.down"))
        alice.signal(sig)
        assert alice.line() == {"event": "stopped"}
        assert alice.wait() == 0, alice.log_tail()
        assert not (alice.home / "control.sock").exists()
        down = _went_away(bob, downs)
        assert (down["code"], down["fault"]) == ("GOING_AWAY", False), down
        assert alice.events("daemon.stopping")[-1]["reasons"] == [sig.name]
        if sig is signal.SIGQUIT:  # a thread dump first, as one event
            dump = alice.events("daemon.thread_dump")[-1]["threads"]
            names = {thread["thread"] for thread in dump}
            assert "MainThread" in names and any(n.startswith("quicpair-loop-") for n in names), names
            assert all(thread["stack"] for thread in dump)
        # The same home and port: the pairing persisted, the link comes back.
        alice = daemons.spawn("alice", *_same_port(alice), home=alice.home)
        alice.ready()
        eventually("the link up again", lambda a=alice: a.link_up() and bob.link_up())
    assert "Traceback" not in alice.log_tail() + bob.log_tail()


def test_sighup_reloads_what_it_can_says_what_waits_and_systemd_hears_of_it(
    daemons: Daemons, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(20)

    def notified() -> set[str]:
        return set(notify.recv(4096).decode().split("\n"))

    def until(field: str) -> None:
        for _ in range(10):
            if field in notified():
                return
        pytest.fail(f"no {field} notification")

    home = tmp_path / "alice"
    assert quicpair("init", home=home).returncode == 0
    alice = daemons.spawn("alice", home=home, env={**ENV, "NOTIFY_SOCKET": str(notify_path)})
    alice.ready()
    ready = notified()
    assert {"READY=1", f"MAINPID={alice.pid}"} <= ready and any(f.startswith("STATUS=") for f in ready)

    (home / "config.toml").write_text("[pairing]\ncode_expiry = 60.0\n[link]\nidle_timeout = 25.0\n")
    alice.signal(signal.SIGHUP)
    reloading = notified()
    assert "RELOADING=1" in reloading and any(f.startswith("MONOTONIC_USEC=") for f in reloading)
    assert "READY=1" in notified()
    reloaded = alice.wait_event("daemon.reloaded")
    assert reloaded["applied"] == {"pairing.code_expiry": [300.0, 60.0]}
    assert reloaded["needs_restart"] == {"link.idle_timeout": [30.0, 25.0]}
    offer = control(home, "pair")
    assert offer["ok"] and offer["result"]["expires_in"] == 60.0

    # A file with a mistake: said, and the running settings stay.
    (home / "config.toml").write_text("[pairing]\ncode_expiry = -1\n")
    alice.signal(signal.SIGHUP)
    until("READY=1")  # a failed reload is over too
    failed = alice.wait_event("daemon.reload_failed")
    assert "code_expiry = -1 is out of range" in failed["error"]
    assert control(home, "pair")["result"]["expires_in"] == 60.0

    alice.signal(signal.SIGTERM)
    assert "STOPPING=1" in notified()
    assert alice.wait() == 0 and not (home / "control.sock").exists()
    notify.close()


def test_a_closed_terminal_stops_the_daemon_gracefully(daemons: Daemons, tmp_path: Path) -> None:
    """SIGHUP because the terminal hung up is a stop, not a reload: nothing would see the node."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the child: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    alice = daemons.spawn(
        "alice", stdin=slave, stdout=slave, start_new_session=True, preexec_fn=controlling_terminal
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    while b'"ready"' not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            seen += os.read(master, 4096)
    assert b'"ready"' in seen, alice.log_tail()
    os.close(master)  # the terminal hangs up: SIGHUP to its session leader
    assert alice.wait() == 0, alice.log_tail()
    assert alice.events("daemon.terminal_closed")
    assert alice.events("daemon.stopping")[-1]["reasons"] == ["SIGHUP (terminal closed)"]
    assert not (alice.home / "control.sock").exists()
