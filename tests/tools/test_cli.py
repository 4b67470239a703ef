"""The ``quicpair`` command line, run for real: subprocesses, real daemons, real QUIC on 127.0.0.1.

Each test gets its own homes under ``tmp_path``; daemons listen on port 0 with
mDNS off (nothing leaves loopback). Every wait is bounded, and every process
a test starts is stopped at teardown (SIGTERM, then SIGKILL), pass or fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ)  # quicpair comes from the install (tools/setup-venv), not the checkout
ENV.pop("QUICPAIR_HOME", None)
#: A CLI command answers in well under a second; this only bounds a hang.
COMMAND_TIMEOUT = 30.0
LOOPBACK = ["--listen", "127.0.0.1:0", "--set", "discovery.mdns=false"]


def quicpair(
    *args: str, home: Path | None = None, timeout: float = COMMAND_TIMEOUT, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m quicpair.tools.cli [--home HOME] ARGS`` to completion (``stdin``: its input)."""
    return quicpair_all([list(args)], home=home, timeout=timeout, stdin=stdin)[0]


def quicpair_all(
    argvs: list[list[str]],
    home: Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
    stdin: str | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run several commands at once (each start costs ~0.3 s of imports), all to completion."""
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "quicpair.tools.cli", *(["--home", str(home)] if home else []), *args],
            cwd=REPO,
            env=ENV,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in argvs
    ]
    results = []
    try:
        for proc in started:
            out, err = proc.communicate(stdin, timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def assert_clean_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    """Exit ``status``, one ``quicpair: error:`` line naming ``fragments``, no traceback."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("quicpair: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


class Proc:
    """A long-running CLI process (``run``, ``pair``): stdout read line by line, with bounds."""

    def __init__(self, name: str, argv: list[str], stderr_path: Path, *, stdin: bool = False) -> None:
        self.name = name
        self.stderr_path = stderr_path
        with open(stderr_path, "w", encoding="utf-8") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "quicpair.tools.cli", *argv],
                cwd=REPO, env=ENV, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"test-{name}-stdout")
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout: float = COMMAND_TIMEOUT) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.name}: no output line within {timeout} s; stderr:\n{self.stderr()}")
        if line is None:
            pytest.fail(
                f"{self.name}: exited ({self.popen.poll()}) before the line; stderr:\n{self.stderr()}"
            )
        return line

    def answer(self, text: str) -> None:
        """Type a line on the command's stdin (started with ``stdin=True``)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def json_line(self, timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.line(timeout))
        return parsed

    def wait(self, timeout: float = COMMAND_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name}: still running after {timeout} s; stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8")[-3000:]

    def end(self) -> None:
        """Teardown: SIGTERM, then SIGKILL; always joins the reader."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """Starts CLI processes for a test and ends every one of them afterwards."""
    started: list[Proc] = []

    class Starter:
        def start(self, name: str, *argv: str, stdin: bool = False) -> Proc:
            proc = Proc(name, list(argv), tmp_path / f"{name}.stderr", stdin=stdin)
            started.append(proc)
            return proc

        def daemon(self, name: str, home: Path, *extra: str) -> tuple[Proc, dict[str, Any]]:
            return self.daemons((name, home, *extra))[0]

        def daemons(self, *specs: tuple[Any, ...]) -> list[tuple[Proc, dict[str, Any]]]:
            """Start ``quicpair run`` for each (name, home, *options) at once; wait until each is ready."""
            started = [
                self.start(name, "--home", str(home), "run", "--init", "--json", *LOOPBACK, *extra)
                for name, home, *extra in specs
            ]
            ready = [(proc, proc.json_line()) for proc in started]
            assert all(info["event"] == "ready" for _, info in ready), ready
            return ready

    yield Starter()
    for proc in reversed(started):
        proc.end()


# -- identity ------------------------------------------------------------------------------------


def test_init_creates_a_private_home_and_id_shows_the_same_identity(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    created = quicpair("init", "--name", "alice", home=home)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"Created {home}")
    assert "Name         alice" in created.stdout
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "identity.pem").stat().st_mode) == 0o600

    shown = quicpair("id", "--json", home=home)
    assert shown.returncode == 0, shown.stderr
    identity = json.loads(shown.stdout)
    assert identity["name"] == "alice" and len(identity["node_id"]) == 52
    assert f"NodeId       {identity['node_id']}" in created.stdout
    assert f"Fingerprint  {identity['fingerprint']}" in created.stdout

    again = quicpair("--json", "init", home=home)  # idempotent: the identity is never replaced
    assert again.returncode == 0 and json.loads(again.stdout) == {
        **identity,
        "home": str(home),
        "created": False,
    }
    renamed = quicpair("init", "--name", "bob", home=home)
    assert_clean_error(renamed, 6, "config.toml already exists")


def test_id_without_an_identity_says_to_run_init(tmp_path: Path) -> None:
    assert_clean_error(quicpair("id", home=tmp_path / "nobody"), 6, "has no identity yet", "init")


def test_init_refuses_a_home_other_users_can_enter(tmp_path: Path) -> None:
    home = tmp_path / "open"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    assert_clean_error(quicpair("init", home=home), 6, "accessible by other users", "chmod 700")
    assert list(home.iterdir()) == []


# -- usage and format errors ------------------------------------------------------------------------


def json_lines(text: str) -> list[Any]:
    """``--json`` output: one JSON object per line."""
    return [json.loads(line) for line in text.splitlines()]


USAGE_ERRORS = [
    ([], "the following arguments are required: COMMAND"),
    (["fly"], "invalid choice: 'fly'"),
    (["join"], "give CODE_OR_URI"),
    (["pair", "--timeout", "soon"], "'soon': expected seconds"),
    (["join", "1-a-b-c", "--timeout", "3600"], "at most 600"),
    (["run", "--set", "nonsense"], "expected SECTION.KEY=VALUE"),
    (["run", "--listen", "127.0.0.1"], "expected HOST:PORT"),
    (["devices", "--colour"], "unrecognized arguments: --colour"),
    (["send", "bob"], "the following arguments are required: MESSAGE"),
    (["receive", "--timeout", "0"], "'0': expected seconds"),
    (["unpair"], "the following arguments are required: PEER"),
]


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    results = quicpair_all([argv for argv, _ in USAGE_ERRORS], home=tmp_path / "home")
    for (argv, message), result in zip(USAGE_ERRORS, results, strict=True):
        assert_clean_error(result, 2, message)
        assert len(result.stderr.splitlines()) == 1, (argv, result.stderr)
    assert not (tmp_path / "home").exists()
    # Under --json the error is one JSON object too.
    as_json = quicpair("--json", "devices", "--colour", home=tmp_path / "home")
    assert as_json.returncode == 2 and len(as_json.stderr.splitlines()) == 1
    error = json.loads(as_json.stderr)
    assert error["exit_status"] == 2 and "unrecognized arguments: --colour" in error["error"]["message"]


def test_a_mistyped_code_exits_3_naming_the_word(tmp_path: Path) -> None:
    result = quicpair("join", "42-apple-brave-zebar", "--address", "127.0.0.1:9", home=tmp_path / "h")
    assert_clean_error(result, 3, "word 3", "zebar", "zebra")
    assert not (tmp_path / "h").exists()  # refused before touching anything


def test_commands_that_need_a_daemon_say_how_to_start_one(tmp_path: Path) -> None:
    home = tmp_path / "idle"
    commands = [["devices"], ["pair"], ["join", "1-abandon-ability-able", "--address", "127.0.0.1:9"]]
    link_commands = [["links"], ["send", "bob", "hi"], ["receive"], ["unpair", "bob"]]
    results = quicpair_all([*commands, ["status"], ["stop"], *link_commands], home=home)
    for result in results:
        assert_clean_error(result, 7, "no quicpair daemon is running", "run")
    as_json = json.loads(quicpair("status", "--json", home=home).stderr)
    assert as_json["exit_status"] == 7 and as_json["error"]["type"] == "NoDaemon"
    assert as_json["error"]["message"].startswith("no quicpair daemon is running")
    for result in results[: len(commands)]:
        assert "(or add --oneshot" in result.stderr


# -- the daemon ------------------------------------------------------------------------------------------


def test_two_daemons_pair_through_the_cli(tmp_path: Path, procs: Any) -> None:
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    assert quicpair("init", "--name", "alice", home=alice_home).returncode == 0
    (alice_run, alice), (bob_run, bob) = procs.daemons(
        ("alice-run", alice_home), ("bob-run", bob_home, "--set", 'node.name="bob"')
    )
    assert stat.S_IMODE((alice_home / "control.sock").stat().st_mode) == 0o600
    assert alice["name"] == "alice" and alice["host"] == "127.0.0.1" and alice["pid"] == alice_run.popen.pid

    status = quicpair("status", home=alice_home)
    assert status.returncode == 0, status.stderr
    assert f"Node       {alice['fingerprint']} (alice)" in status.stdout
    assert "Devices    0 paired, 0 pending" in status.stdout

    pair = procs.start("alice-pair", "--home", str(alice_home), "pair", "--json", "--timeout", "30")
    offer = pair.json_line()
    assert offer["event"] == "code" and f"node={alice['node_id']}" in offer["uri"]

    # Through the daemon: a bad --address is a format error (3), a wrong code a failed pairing (4).
    bad_address = quicpair("join", offer["code"], "--address", "nowhere", home=bob_home)
    assert_clean_error(bad_address, 3, "nowhere", "host:port")
    nameplate, *_ = offer["code"].split("-")
    wrong = quicpair(
        "join", f"{nameplate}-abandon-ability-able", "--address", alice["addresses"][0], home=bob_home
    )
    assert_clean_error(wrong, 4, "pairing failed", "[WRONG_CODE]")

    joined = quicpair("join", offer["uri"], "--timeout", "20", home=bob_home)
    assert joined.returncode == 0, joined.stderr
    assert f"Paired with alice ({alice['fingerprint']}), confirmed" in joined.stdout
    paired = pair.json_line()
    assert paired["event"] == "paired" and paired["device"]["node_id"] == bob["node_id"]
    assert pair.wait() == 0

    a_devices = json_lines(quicpair("devices", "--json", home=alice_home).stdout)
    b_devices = json_lines(quicpair("--json", "devices", home=bob_home).stdout)
    assert [(d["node_id"], d["state"], d["role"]) for d in a_devices] == [
        (bob["node_id"], "confirmed", "initiator")
    ]
    assert [(d["node_id"], d["state"], d["role"]) for d in b_devices] == [
        (alice["node_id"], "confirmed", "joiner")
    ]
    a_dev, b_dev = a_devices[0], b_devices[0]
    assert (
        a_dev["send_key_fingerprint"] == b_dev["receive_key_fingerprint"] != a_dev["receive_key_fingerprint"]
    )
    assert b_dev["send_key_fingerprint"] == a_dev["receive_key_fingerprint"]
    # The SAS words: printed by join, stored on both sides, shown by devices.
    assert len(a_dev["sas"]) == 4 and a_dev["sas"] == b_dev["sas"] == paired["device"]["sas"]
    assert f"SAS          {' '.join(a_dev['sas'])}" in joined.stdout
    assert set(bob["addresses"]) <= set(a_dev["addresses"]) and set(alice["addresses"]) <= set(
        b_dev["addresses"]
    )
    table = quicpair("devices", home=alice_home).stdout
    header = ["FINGERPRINT", "NAME", "STATE", "PAIRED", "AS", "SAS", "ADDRESSES"]
    assert table.splitlines()[0].split() == header
    assert bob["fingerprint"] in table and "confirmed" in table and " ".join(a_dev["sas"]) in table

    counters = json_lines(quicpair("status", "--json", home=bob_home).stdout)[0]["counters"]
    assert (
        counters["pair.connections.joiner"] == 2 and counters["pair.completed.joiner"] == 1
    )  # wrong + right

    for home, run in ((alice_home, alice_run), (bob_home, bob_run)):
        stopped = quicpair("stop", home=home)
        assert stopped.returncode == 0 and "Stopped the daemon" in stopped.stdout, stopped.stderr
        assert run.json_line() == {"event": "stopped"}
        assert run.wait() == 0
        assert not (home / "control.sock").exists()


@pytest.mark.parametrize("bob_says", ["y", "n"])
def test_verify_shows_the_sas_on_both_sides_and_pairs_only_when_both_confirm(
    tmp_path: Path, procs: Any, bob_says: str
) -> None:
    homes = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    procs.daemons(*((f"{name}-run", home, "--set", f'node.name="{name}"') for name, home in homes.items()))
    pair = procs.start("alice-pair", "--home", str(homes["alice"]), "pair", "--verify", "--json", stdin=True)
    offer = pair.json_line()
    join = procs.start("bob-join", "--home", str(homes["bob"]), "join", offer["uri"], "--json", stdin=True)
    a_check, b_check = pair.json_line(), join.json_line()
    assert a_check["event"] == b_check["event"] == "sas_check"
    assert len(a_check["sas"]) == 4 and a_check["sas"] == b_check["sas"]
    assert a_check["name"] == "bob"
    # Nothing is stored while the people compare the words.
    for home in homes.values():
        assert quicpair("devices", "--pending", "--json", home=home).stdout == ""
    pair.answer("y")
    join.answer(bob_says)
    if bob_says == "y":
        assert pair.json_line()["event"] == join.json_line()["event"] == "paired"
        assert pair.wait() == join.wait() == 0
        for home in homes.values():
            (device,) = json_lines(quicpair("devices", "--json", home=home).stdout)
            assert device["sas"] == a_check["sas"] and device["state"] == "confirmed"
        return
    assert (pair.wait(), join.wait()) == (4, 4), (pair.stderr(), join.stderr())
    for proc in (pair, join):
        error = json.loads(proc.stderr().splitlines()[-1])["error"]
        assert error["code"] == "SAS_REFUSED" and "nothing was stored" in error["message"]
    for home in homes.values():
        assert quicpair("devices", "--pending", "--json", home=home).stdout == ""
    # The code may be known to someone in the middle: it is closed.
    again = quicpair("join", offer["uri"], home=homes["bob"])
    assert_clean_error(again, 4, "cancelled", "[CODE_CANCELLED]")


def test_a_second_run_on_the_same_home_refuses(tmp_path: Path, procs: Any) -> None:
    home = tmp_path / "alice"
    run, first = procs.daemon("first", home)
    second = quicpair("run", *LOOPBACK, home=home)
    assert_clean_error(second, 8, "already serves", first["fingerprint"], str(first["pid"]))
    assert quicpair("status", home=home).returncode == 0  # the first one is unharmed
    run.popen.send_signal(signal.SIGTERM)
    assert run.json_line() == {"event": "stopped"} and run.wait() == 0
    assert not (home / "control.sock").exists()


def _wait_offer(home: Path, nameplate: int) -> dict[str, Any]:
    """Ask the daemon, on a connection of our own, for the outcome of an offer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(COMMAND_TIMEOUT)
        sock.connect(str(home / "control.sock"))
        sock.sendall(
            json.dumps({"id": 1, "op": "wait_offer", "nameplate": nameplate, "timeout": 5}).encode() + b"\n"
        )
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return reply


def test_pair_cancels_its_code_when_interrupted_or_timed_out(tmp_path: Path, procs: Any) -> None:
    home = tmp_path / "alice"
    procs.daemon("alice", home)
    pair = procs.start("pair", "--home", str(home), "pair", "--json")
    offer = pair.json_line()
    pair.popen.send_signal(signal.SIGINT)
    assert pair.wait() == 130 and json.loads(pair.stderr())["exit_status"] == 130
    assert _wait_offer(home, offer["nameplate"])["error"]["message"].endswith(
        "the code was cancelled [CODE_CANCELLED]"
    )

    # Killed outright, it cannot cancel: the daemon does, when the connection that opened the code ends.
    killed = procs.start("killed-pair", "--home", str(home), "pair", "--json")
    orphan = killed.json_line()
    killed.popen.kill()
    assert _wait_offer(home, orphan["nameplate"])["error"]["message"].endswith(
        "the code was cancelled [CODE_CANCELLED]"
    )

    timed_out = quicpair("pair", "--timeout", "0.3", home=home)
    assert_clean_error(timed_out, 4, "nobody paired within 0.3 s [TIMEOUT]")
    nameplate = int(timed_out.stdout.split()[1].split("-")[0])  # "Code  NNNN-word-word-word ..."
    assert _wait_offer(home, nameplate)["error"]["code"] == "CODE_CANCELLED"


def test_a_killed_daemon_leaves_a_stale_socket_that_the_next_run_replaces(tmp_path: Path, procs: Any) -> None:
    home = tmp_path / "alice"
    run, _ = procs.daemon("killed", home)
    run.popen.kill()
    assert run.wait() == -signal.SIGKILL
    assert (home / "control.sock").exists()
    assert_clean_error(quicpair("status", home=home), 7, "no quicpair daemon is running")
    again, _ = procs.daemon("again", home)
    assert quicpair("status", home=home).returncode == 0
    again.popen.send_signal(signal.SIGINT)
    assert again.wait() == 0 and not (home / "control.sock").exists()


def test_run_with_a_corrupt_registry_exits_6_and_leaves_the_file_alone(tmp_path: Path) -> None:
    home = tmp_path / "alice"
    assert quicpair("init", home=home).returncode == 0
    registry = home / "registry.sqlite3"
    garbage = b"this is not a quicpair registry\n" * 64
    registry.write_bytes(garbage)
    registry.chmod(0o600)
    before = registry.stat()
    result = quicpair("run", *LOOPBACK, home=home)
    assert_clean_error(result, 6, str(registry))
    assert registry.read_bytes() == garbage and registry.stat().st_mtime_ns == before.st_mtime_ns
    assert not (home / "control.sock").exists()


def test_the_daemon_answers_bad_requests_precisely_and_goes_on(tmp_path: Path, procs: Any) -> None:
    home = tmp_path / "alice"
    procs.daemon("alice", home)
    with socket.socket(socket.AF_UNIX) as waiting, socket.socket(socket.AF_UNIX) as other:
        waiting.settimeout(COMMAND_TIMEOUT)
        other.settimeout(COMMAND_TIMEOUT)
        waiting.connect(str(home / "control.sock"))
        other.connect(str(home / "control.sock"))
        w, o = waiting.makefile("rwb"), other.makefile("rwb")

        def ask(stream: Any, line: bytes) -> dict[str, Any]:
            stream.write(line + b"\n")
            stream.flush()
            reply: dict[str, Any] = json.loads(stream.readline())
            return reply

        assert ask(o, b"garbage")["error"]["message"].startswith("not JSON")
        unknown = ask(o, b'{"id": 3, "op": "fly"}')
        assert unknown["id"] == 3 and unknown["error"]["message"].startswith("unknown op 'fly'")
        assert ask(o, b'{"id": 4, "op": "join"}')["error"]["message"] == "op 'join' needs 'code'"
        assert ask(o, b"\xff")["error"]["message"].startswith("not UTF-8")
        # A long request on one connection does not hold up another one.
        offer = ask(w, b'{"id": 1, "op": "pair"}')["result"]
        w.write(
            json.dumps({"id": 2, "op": "wait_offer", "nameplate": offer["nameplate"], "timeout": 20}).encode()
        )
        w.write(b"\n")
        w.flush()
        assert ask(o, b'{"id": 5, "op": "devices"}') == {"id": 5, "ok": True, "result": []}
        cancelled = ask(
            o, json.dumps({"id": 6, "op": "cancel_offer", "nameplate": offer["nameplate"]}).encode()
        )
        assert cancelled["result"] == {"cancelled": True}
        ended = json.loads(w.readline())
        assert ended["id"] == 2 and ended["error"]["code"] == "CODE_CANCELLED"
        w.close()
        o.close()
    assert quicpair("status", home=home).returncode == 0


def test_oneshot_pairs_without_daemons(tmp_path: Path, procs: Any) -> None:
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    pair = procs.start("pair", "--home", str(alice_home), "--json", "pair", "--oneshot", *LOOPBACK)
    offer = pair.json_line()
    joined = quicpair("join", offer["uri"], "--oneshot", *LOOPBACK, home=bob_home)
    assert joined.returncode == 0, joined.stderr
    assert pair.json_line()["event"] == "paired" and pair.wait() == 0
    devices = quicpair("devices", "--oneshot", "--json", home=alice_home)
    assert devices.returncode == 0, devices.stderr
    assert [d["state"] for d in json_lines(devices.stdout)] == ["confirmed"]


# -- paired links ------------------------------------------------------------------------------


def wait_until(what: str, check: Any, timeout: float = 15.0) -> Any:
    """Call ``check()`` (a few CLI runs) until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)  # between polls only: each one runs the CLI (~0.3 s)


def test_paired_daemons_link_send_receive_and_unpair_through_the_cli(tmp_path: Path, procs: Any) -> None:
    homes = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    started = procs.daemons(
        *((f"{name}-run", home, "--set", f'node.name="{name}"') for name, home in homes.items())
    )
    info = {name: ready for name, (_, ready) in zip(homes, started, strict=True)}
    pair = procs.start("alice-pair", "--home", str(homes["alice"]), "pair", "--json", "--timeout", "30")
    joined = quicpair("join", pair.json_line()["uri"], "--timeout", "20", home=homes["bob"])
    assert joined.returncode == 0, joined.stderr
    assert pair.json_line()["event"] == "paired" and pair.wait() == 0

    def links_up() -> list[list[dict[str, Any]]] | None:
        results = quicpair_all([["--home", str(home), "links", "--json"] for home in homes.values()])
        tables = [json_lines(result.stdout) for result in results]
        return tables if all(t and t[0]["state"] == "up" for t in tables) else None

    a_links, b_links = wait_until("the link up on both sides", links_up)
    (a_link,), (b_link,) = a_links, b_links
    assert (a_link["node_id"], a_link["name"]) == (info["bob"]["node_id"], "bob")
    assert (b_link["fingerprint"], b_link["name"]) == (info["alice"]["fingerprint"], "alice")
    assert {a_link["role"], b_link["role"]} == {"dialer", "listener"}
    assert a_link["connection_id"] == b_link["connection_id"] is not None
    table = quicpair("links", home=homes["alice"]).stdout.splitlines()
    assert table[0].split() == ["FINGERPRINT", "NAME", "ROLE", "STATE", "CONNECTION", "REMOTE"]
    assert table[1].split()[:5] == [
        info["bob"]["fingerprint"],
        "bob",
        a_link["role"],
        "up",
        a_link["connection_id"],
    ]

    # Bob follows his messages; Alice sends by fingerprint and by name, Bob by NodeId and by name (stdin).
    follow = procs.start("bob-receive", "--home", str(homes["bob"]), "receive", "--follow", "--json")
    sends = quicpair_all(
        [
            ["--home", str(homes["alice"]), "send", info["bob"]["fingerprint"], "hello bob"],
            ["--home", str(homes["bob"]), "send", "--json", info["alice"]["node_id"], "hello \x1b[31malice"],
        ]
    )
    sends += [
        quicpair("send", "BOB", "again, bob", home=homes["alice"]),
        quicpair("send", "alice", "-", home=homes["bob"], stdin="two\nlines\n"),
    ]
    assert [(r.returncode, r.stderr) for r in sends] == [(0, "")] * 4
    assert sends[0].stdout == sends[2].stdout == sends[3].stdout == ""
    sent = json.loads(sends[1].stdout)
    assert isinstance(sent.pop("seq"), int), "the message's delivery number (docs/LINKS.md)"
    assert sent == {
        "sent": 16, "node_id": info["alice"]["node_id"], "fingerprint": info["alice"]["fingerprint"]
    }  # fmt: skip
    got = [follow.json_line(), follow.json_line()]
    assert [(m["text"], m["name"], m["fingerprint"]) for m in got] == [
        ("hello bob", "alice", info["alice"]["fingerprint"]),
        ("again, bob", "alice", info["alice"]["fingerprint"]),
    ]
    assert got[0]["base64"] == "aGVsbG8gYm9i" and got[0]["node_id"] == info["alice"]["node_id"]
    follow.popen.send_signal(signal.SIGINT)
    assert follow.wait() == 130 and json.loads(follow.stderr())["error"]["message"] == "interrupted"
    assert "Traceback" not in follow.stderr()

    lines: list[str] = []

    def alice_received_two() -> bool:
        lines.extend(quicpair("receive", "--timeout", "5", home=homes["alice"]).stdout.splitlines())
        return len(lines) >= 2

    wait_until("Alice's two messages", alice_received_two)
    fingerprint = info["bob"]["fingerprint"]
    assert lines == [f"{fingerprint} bob: hello \\x1b[31malice", f"{fingerprint} bob: two\\nlines\\n"]

    # A peer that is not paired is a one-line error, exit 9; a base64 mistake is a usage error, 2.
    unknown = quicpair_all(
        [["send", "carol", "hi"], ["send", "zzzz-zzzz", "hi"], ["unpair", info["alice"]["node_id"]]],
        home=homes["alice"],
    )
    assert_clean_error(unknown[0], 9, "no paired device has the name 'carol'")
    assert_clean_error(unknown[1], 9, "has the fingerprint or name 'zzzz-zzzz'")
    assert_clean_error(unknown[2], 9, "no paired device has the NodeId")
    assert_clean_error(quicpair("send", "bob", "***", "--base64", home=homes["alice"]), 2, "not base64")

    unpaired = quicpair("unpair", "bob", "--json", home=homes["alice"])
    assert unpaired.returncode == 0, unpaired.stderr
    assert json.loads(unpaired.stdout) == {
        "unpaired": info["bob"]["node_id"], "fingerprint": fingerprint, "delivered": True
    }  # fmt: skip

    def both_forgot() -> bool:
        results = quicpair_all([["--home", str(home), "devices", "--json"] for home in homes.values()])
        return all(json_lines(result.stdout) == [] for result in results)

    wait_until("both sides forget the pairing", both_forgot)
    after = quicpair_all(
        [
            ["--home", str(homes["alice"]), "send", "bob", "still there?"],
            ["--home", str(homes["bob"]), "send", info["alice"]["fingerprint"], "still there?"],
            ["--home", str(homes["alice"]), "links"],
        ]
    )
    assert_clean_error(after[0], 9, "no paired device has the name 'bob'")
    assert_clean_error(after[1], 9, f"fingerprint or name '{info['alice']['fingerprint']}'")
    assert after[2].stdout == "No paired devices.\n"


def test_unpair_reports_a_peer_that_is_told_later(tmp_path: Path, procs: Any) -> None:
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    _, (bob_run, bob) = procs.daemons(("alice-run", alice_home), ("bob-run", bob_home))
    pair = procs.start("alice-pair", "--home", str(alice_home), "pair", "--json", "--timeout", "30")
    assert quicpair("join", pair.json_line()["uri"], home=bob_home).returncode == 0
    assert pair.wait() == 0
    bob_run.popen.send_signal(signal.SIGTERM)
    assert bob_run.wait() == 0
    unpaired = quicpair("unpair", bob["fingerprint"], "--timeout", "0.5", home=alice_home)
    assert unpaired.returncode == 0, unpaired.stderr
    assert unpaired.stdout.startswith(f"Unpaired {bob['name']} ({bob['fingerprint']}); it will be told")
    sent = quicpair("send", bob["node_id"], "hi", home=alice_home)
    assert_clean_error(sent, 9, "no paired device has the NodeId")


def test_peer_resolution_and_escaping() -> None:
    from quicpair.protocol.identity import Identity
    from quicpair.tools.cli_links import UnknownPeer, printable, resolve_peer

    ids = [Identity.generate().node_id for _ in range(4)]
    devices = [
        {"node_id": i.text, "fingerprint": i.fingerprint, "name": name}
        for i, name in zip(ids, ["bob", "Phone", "phone", "x"], strict=True)
    ]
    assert resolve_peer(devices, ids[0].text.upper())["name"] == "bob"
    assert resolve_peer(devices, f" {ids[3].fingerprint.upper()} ")["name"] == "x"
    assert resolve_peer(devices, "Bob")["name"] == "bob"  # ignoring case when no exact match
    assert resolve_peer(devices, "phone")["node_id"] == ids[2].text  # exact beats ignoring case
    with pytest.raises(UnknownPeer, match="'PHONE' names 2 paired devices"):
        resolve_peer(devices, "PHONE")
    twin = {"node_id": "q" * 52, "fingerprint": ids[0].fingerprint, "name": "twin"}
    with pytest.raises(UnknownPeer, match="matches 2 paired devices; give the NodeId"):
        resolve_peer([*devices, twin], ids[0].fingerprint)
    with pytest.raises(UnknownPeer, match="no paired device has the NodeId"):
        resolve_peer(devices[1:], ids[0].text)
    assert printable("a\x1b[2Jb\n\\ é\t") == "a\\x1b[2Jb\\n\\\\ é\\t"


# -- the demo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dialer", ["alice", "bob"])
def test_the_demo_runs_end_to_end(dialer: str) -> None:
    """``--dialer`` fixes who holds the lower NodeId, so both restart paths run: Bob waits or Bob dials."""
    from quicpair.protocol.identity import NodeId

    result = subprocess.run(
        [sys.executable, "-m", "quicpair.tools.demo", "--dialer", dialer],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[FAIL]" not in out and "Traceback" not in result.stderr
    # The dialer the demo names is the lower NodeId of the two it printed at the start.
    ids: dict[str, str] = {}
    for words in (line.split() for line in out.splitlines()):
        if len(words) > 2 and words[0] in ("alice", "bob") and words[1] == "NodeId":
            ids.setdefault(words[0], words[2])
    lower, higher = sorted(ids, key=lambda name: NodeId.from_text(ids[name]).raw)
    assert lower == dialer
    low, high = lower.capitalize(), higher.capitalize()
    for line in (
        "link.idle_timeout=3 (9)  link.keepalive_interval=1 (6)  link.backoff_min=0.2 (0.5)",
        "[ok] same SAS words on both sides",
        "[ok] Alice (initiator) used 1 QUIC connection and 1 stream",
        "[ok] Bob (joiner) used 1 QUIC connection and 1 stream",
        "[ok] on each side the send key differs from the receive key",
        # 4. the link comes up by itself, dialed by the lower NodeId
        f"so {low} dials and {high} only accepts",
        "[ok] link up on both sides (`links`): 1 connection each, the same connection id ",
        f"[ok] {low}: role dialer, dialed by local; {high}: role listener, dialed by peer",
        f"[ok] {low} dialed ",
        f"{high}: link.dials 0, link.connections_accepted 1",
        # 5. a message each way, zero reconnects while both are up
        '[ok] Alice -> Bob: "hello from Alice", received from NodeId',
        '[ok] Bob -> Alice: "hello from Bob", received from NodeId',
        "idle for 4 s, longer than the 3 s idle timeout",
        "[ok] still up on both sides, on the same connection ",
        "[ok] Alice's counters: link.up 1, link.down 0, link.reconnects 0, link.messages_sent 1, "
        "link.messages_received 1",
        "[ok] Bob's counters: link.up 1, link.down 0, link.reconnects 0, link.messages_sent 1, "
        "link.messages_received 1",
        # 6. Bob restarts: the pairing persisted, the link comes back from the stored address
        "[ok] Bob's process stopped cleanly (exit status 0)",
        "[ok] Alice saw the link go down: link.down GOING_AWAY from Bob",
        "[ok] Bob came back with the same NodeId",
        "[ok] Bob's registry still holds Alice, confirmed",
        "[ok] link up again on both sides: 1 connection each, the same new connection id ",
        "ms after Bob's node.started; Alice's link was down ",
        f"[ok] {low} redialed {high}'s stored address ",
        "[ok] no mDNS lookup on either side",
        '[ok] Alice -> Bob: "hello again from Alice"',
        '[ok] Bob -> Alice: "hello again from Bob"',
        "[ok] Alice (her process ran throughout): link.up 2, link.down 1, link.reconnects 1",
        f"[ok] Bob's new process: link.up 1, link.down 0, link.reconnects 0; {high} never dialed",
    ):
        assert line in out, out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("All ") and " checks passed in " in last, out


# -- errors that say what happened -------------------------------------------------------------


def test_what_a_joiner_is_told_names_what_happened(tmp_path: Path, procs: Any) -> None:
    homes = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    _, (_, bob) = procs.daemons(
        ("alice-run", homes["alice"], "--set", "pairing.code_expiry=1"), ("bob-run", homes["bob"])
    )
    own = quicpair("join", "1-abandon-ability-able", "--address", bob["addresses"][0], home=homes["bob"])
    assert_clean_error(own, 2, "this device's own address")
    bare = quicpair("join", "1-abandon-ability-able", home=homes["bob"])
    assert_clean_error(bare, 2, "mDNS) is off", "--address HOST:PORT")
    typo = quicpair("join", "1-wya-abandon-able", home=homes["bob"])
    assert_clean_error(typo, 3, "'wya'", "did you mean 'way'")

    pair = procs.start("pair", "--home", str(homes["alice"]), "pair", "--json")
    offer = pair.json_line()
    assert pair.wait() == 4
    assert json.loads(pair.stderr())["error"]["code"] == "CODE_EXPIRED"
    expired = quicpair("join", offer["uri"], home=homes["bob"])
    assert_clean_error(expired, 4, "expired", "[CODE_EXPIRED]")
    own_code = quicpair("join", offer["uri"], home=homes["alice"])
    assert_clean_error(own_code, 2, "opened by this device itself")


def test_a_burned_code_says_why_once_with_a_count(tmp_path: Path, procs: Any) -> None:
    homes = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    (_, alice), _ = procs.daemons(("alice-run", homes["alice"]), ("bob-run", homes["bob"]))
    pair = procs.start("pair", "--home", str(homes["alice"]), "pair")
    nameplate = pair.line().split()[1].split("-")[0]  # "Code  NNNN-word-word-word ..."
    wrong = [f"{nameplate}-zoo-zoo-{word}" for word in ("zero", "zone", "zebra")]
    for code in wrong:
        failed = quicpair("join", code, "--address", alice["addresses"][0], home=homes["bob"])
        assert_clean_error(failed, 4, "[WRONG_CODE]")
    assert pair.wait() == 4
    error = pair.stderr().strip().splitlines()[-1]
    assert error == (
        "quicpair: error: pairing failed: the code was burned after 3 failed attempts "
        "(wrong code (or someone in the middle) x3) [CODE_USED_UP]"
    )


def test_run_refuses_a_missing_home_a_taken_port_and_conflicting_options(
    tmp_path: Path, procs: Any
) -> None:
    missing = quicpair("run", *LOOPBACK, home=tmp_path / "typo")
    assert_clean_error(missing, 6, "does not exist", "init", "--init")
    assert not (tmp_path / "typo").exists()
    clash = quicpair("run", "--init", *LOOPBACK, "--set", "node.listen_port=5", home=tmp_path / "a")
    assert_clean_error(clash, 2, "--listen and --set node.listen_port")

    run = procs.start("alice-run", "--home", str(tmp_path / "alice"), "run", "--init", *LOOPBACK)
    ready = run.line()
    assert ready.startswith("quicpair: node ") and " listening on 127.0.0.1:" in ready
    port = int(ready.split(" listening on 127.0.0.1:")[1].split(",")[0])
    assert run.line().rstrip().endswith(f"stop with Ctrl-C or: quicpair --home {tmp_path / 'alice'} stop")
    taken = quicpair(
        "run", "--init", "--listen", f"127.0.0.1:{port}", "--set", "discovery.mdns=false", home=tmp_path / "b"
    )
    assert_clean_error(taken, 10, f"UDP port {port} on 127.0.0.1 is already in use")
    assert taken.stderr.count("\n") == 1  # before any log line
    assert quicpair("--home", str(tmp_path / "alice"), "stop").returncode == 0


def test_receive_that_got_nothing_says_so_and_addresses_are_added_by_hand(
    tmp_path: Path, procs: Any
) -> None:
    homes = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    _, (_, bob) = procs.daemons(("alice-run", homes["alice"]), ("bob-run", homes["bob"]))
    nothing = quicpair("receive", "--timeout", "0.2", home=homes["alice"])
    assert nothing.returncode == 11 and nothing.stdout == ""
    assert nothing.stderr == "quicpair: no message within 0.2 s\n"
    assert quicpair("receive", "--json", home=homes["alice"]).returncode == 11

    pair = procs.start("pair", "--home", str(homes["alice"]), "pair", "--json")
    assert quicpair("join", pair.json_line()["uri"], home=homes["bob"]).returncode == 0
    assert pair.wait() == 0
    added = quicpair("address", bob["fingerprint"], "add", "192.0.2.77:4747", home=homes["alice"])
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"Added 192.0.2.77:4747 to {bob['name']} ({bob['fingerprint']})")
    (device,) = json_lines(quicpair("devices", "--json", home=homes["alice"]).stdout)
    assert "192.0.2.77:4747" in device["addresses"]
    removed = quicpair(
        "address", bob["fingerprint"], "remove", "192.0.2.77:4747", "--json", home=homes["alice"]
    )
    assert json.loads(removed.stdout)["action"] == "remove"
    assert_clean_error(
        quicpair("address", bob["fingerprint"], "remove", "192.0.2.77:4747", home=homes["alice"]),
        2,
        "is not a stored address",
    )
    assert_clean_error(quicpair("address", "carol", "add", "192.0.2.1:1", home=homes["alice"]), 9, "carol")
    assert_clean_error(quicpair("address", bob["fingerprint"], "add", "nowhere", home=homes["alice"]), 2)


def test_nodehost_never_outlives_its_parent(tmp_path: Path) -> None:
    """A parent that dies before "ready" (killed outright) takes its node host with it."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'quicpair.tools.nodehost',"
            " '--home', sys.argv[1],"
            " '--listen', '127.0.0.1:0', '--set', 'discovery.mdns=false'],"
            " stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path / "node"),
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{child}/stat") as stat_file:
            if stat_file.read().split()[2] == "Z":  # exited, waiting for init to reap it
                return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the node host outlived its parent by 20 s")


# -- hardening ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["daemon.lock", "identity.pem", "registry.sqlite3", "registry.sqlite3-wal", "config.toml"]
)
def test_a_symlink_in_the_home_is_never_followed(tmp_path: Path, name: str) -> None:
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.mkdir()
    assert quicpair("init", home=home).returncode == 0
    if name.startswith("registry"):
        assert quicpair("devices", "--oneshot", home=home).returncode == 0  # creates the registry
    victim = outside / "precious"
    victim.write_bytes(b"precious data, not quicpair's\n")
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    target = home / name
    if target.exists():
        target.unlink()
    target.symlink_to(victim)
    result = quicpair("run", *LOOPBACK, home=home)
    assert_clean_error(result, 6, name, "symbolic link")
    assert victim.read_bytes() == b"precious data, not quicpair's\n"
    assert victim.stat().st_mtime == 1_000_000_000 and sorted(os.listdir(outside)) == ["precious"]
    assert not (home / "control.sock").exists()


def test_a_home_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    assert quicpair("init", home=home).returncode == 0
    os.chown(home, 54321, 54321)
    assert_clean_error(quicpair("run", *LOOPBACK, home=home), 6, "belongs to user id 54321", "not to you")
    assert_clean_error(quicpair("devices", "--oneshot", home=home), 6, "belongs to user id 54321")


# -- feedback ----------------------------------------------------------------------------------

#: xterm's 256-colour palette entries the QR code uses.
PALETTE = {16: 0, 231: 255}


def render_terminal(text: str, *, background: int, foreground: int) -> tuple[int, int, bytes]:
    """A grayscale image of ANSI ``text`` as a terminal with those default colours shows it:
    each character cell 2x2 pixels, U+2580 painting its top half in the foreground colour."""
    rows: list[list[int]] = []
    for line in text.splitlines():
        fg, bg = foreground, background
        top: list[int] = []
        bottom: list[int] = []
        i = 0
        while i < len(line):
            if line[i] == "\x1b":
                end = line.index("m", i)
                params = [int(p) for p in line[i + 2 : end].split(";") if p]
                if params in ([0], []):
                    fg, bg = foreground, background
                elif params[:2] == [38, 5]:
                    fg = PALETTE[params[2]]
                elif params[:2] == [48, 5]:
                    bg = PALETTE[params[2]]
                i = end + 1
                continue
            upper = fg if line[i] == "\u2580" else bg
            top += [upper, upper]
            bottom += [bg, bg]
            i += 1
        rows += [top, bottom]
    width = max(len(r) for r in rows)
    margin = 8  # the terminal's own background around the output
    image = [[background] * (width + 2 * margin) for _ in range(margin)]
    image += [[background] * margin + r + [background] * (width - len(r) + margin) for r in rows]
    image += [[background] * (width + 2 * margin) for _ in range(margin)]
    return len(image[0]), len(image), bytes(v for r in image for v in r)


def read_png(path: Path) -> tuple[int, int, bytes]:
    """A grayscale image from the PNG segno writes (palette or gray, 1 or 8 bits, filter 0)."""
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, {}, b""
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        chunks[kind] = body
        idat += body if kind == b"IDAT" else b""
        pos += 12 + size
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    raw = zlib.decompress(idat)
    stride = (width * depth + 7) // 8
    palette = chunks.get(b"PLTE", b"")
    pixels = bytearray()
    previous = bytes(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):  # RFC 2083 6: the five filters, one byte per pixel step
            left, up, corner = line[i - 1] if i else 0, previous[i], previous[i - 1] if i else 0
            guess = left + up - corner
            far = (abs(guess - left), abs(guess - up), abs(guess - corner))
            paeth = left if far[0] <= min(far[1:]) else up if far[1] <= far[2] else corner
            line[i] = (line[i] + (0, left, up, (left + up) // 2, paeth)[kind]) & 0xFF
        previous = bytes(line)
        for x in range(width):
            value = (line[x // 8] >> (7 - x % 8)) & 1 if depth == 1 else line[x]
            gray = palette[3 * value] if colour == 3 else value * (255 if depth == 1 else 1)
            pixels.append(gray)
    return width, height, bytes(pixels)


def decode(width: int, height: int, pixels: bytes) -> list[str]:
    import zxingcpp

    view = memoryview(pixels).cast("B", (height, width))
    # try_invert=False: like the phone scanners that do not look for light-on-dark codes.
    return [r.text for r in zxingcpp.read_barcodes(view, try_invert=False)]


def test_the_qr_code_scans_on_dark_and_light_terminals_and_as_a_png(tmp_path: Path, procs: Any) -> None:
    home = tmp_path / "alice"
    procs.daemon("alice", home)
    png = tmp_path / "code.png"
    pair = procs.start("pair", "--home", str(home), "pair", "--qr", "--qr-png", str(png), "--timeout", "20")
    lines = [pair.line() for _ in range(3)]
    uri = lines[1].split()[1]
    assert lines[0].startswith("Code  ") and uri.startswith("quicpair:pair?code=") and lines[2] == "\n"
    art = []
    while (line := pair.line()).strip() != "":
        art.append(line.rstrip("\n"))
    text = "\n".join(art)
    for background, foreground in ((0, 255), (255, 0)):  # a dark terminal, a light one
        assert decode(*render_terminal(text, background=background, foreground=foreground)) == [uri]
    assert decode(*read_png(png)) == [uri]
    pair.popen.send_signal(signal.SIGINT)
    assert pair.wait() == 130


def test_on_a_terminal_join_asks_for_the_code_with_completion_and_shows_what_it_does(
    tmp_path: Path, procs: Any
) -> None:
    import pty

    homes = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    (_, alice), _ = procs.daemons(("alice-run", homes["alice"]), ("bob-run", homes["bob"]))
    pair = procs.start("pair", "--home", str(homes["alice"]), "pair", "--json", "--timeout", "30")
    code = pair.json_line()["code"]
    nameplate, *words = code.split("-")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command line on a terminal
        os.execvpe(
            sys.executable,
            [sys.executable, "-m", "quicpair.tools.cli", "--home", str(homes["bob"]), "join",
             "--address", alice["addresses"][0]],
            {**ENV, "TERM": "xterm"},
        )  # fmt: skip
    seen = b""

    def read_until(marker: bytes, timeout: float = COMMAND_TIMEOUT) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            if time.monotonic() > deadline:
                pytest.fail(f"no {marker!r} on the terminal within {timeout} s: {seen[-500:]!r}")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    try:
        read_until(b"Code (Tab completes the words): ")
        # Each word typed by its first four letters and Tab: readline completes the rest.
        os.write(fd, nameplate.encode() + b"-")
        for i, word in enumerate(words):
            os.write(fd, word[:4].encode() + b"\t")
            read_until(word.encode())
            os.write(fd, b"-" if i < 2 else b"\r")
        read_until(b"Paired with")
        assert b"Joining: " in seen  # the status line said what it was doing
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, seen[-800:]
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert pair.wait() == 0


def test_shell_completion_lists_commands_and_paired_devices(tmp_path: Path) -> None:
    script = quicpair("completion", "bash")
    assert script.returncode == 0 and "complete" in script.stdout and "quicpair" in script.stdout
    line = "quicpair sta"
    result = subprocess.run(
        [sys.executable, "-m", "quicpair.tools.cli"],
        cwd=REPO,
        env={**ENV, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
             "_ARGCOMPLETE_STDOUT_FILENAME": str(tmp_path / "out"), "_ARGCOMPLETE_IFS": "\n"},
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").read_text().split() == ["status"]


def test_the_parser_for_one_command_is_the_full_parsers_for_that_command() -> None:
    from quicpair.tools import cli

    full = cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == cli._COMMANDS
    argv = ["--home", "/h", "status", "--json"]
    assert cli._command_in(argv) == "status" and cli._command_in(["--help"]) is None
    assert vars(cli.build_parser("status").parse_args(argv)) == vars(full.parse_args(argv))
