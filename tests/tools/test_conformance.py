"""The conformance kit (quicpair.tools.conformance) against real node processes, and its parts.

Integration: the kit runs as its own process against a ``quicpair run`` daemon
that the test started as another process (real QUIC over loopback, a real
registry file). Against our node every check passes and none is skipped; against
a node with one deliberate deviation (tests/support/deviant_node.py) exactly the
matching check fails. Unit: how the kit reads an offer command's output, and
how its report turns outcomes into statuses and an exit status.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quicpair.protocol.codes import PairingCode
from quicpair.tools.conformance.report import Failed, Report, Skipped
from quicpair.tools.conformance.target import _offered
from quicpair.tools.conformance.wire import Timeout
from support.daemons import ENV, REPO, Daemons
from support.daemons import daemons_fixture as daemons_fixture
from support.deviant_node import DEVIATIONS, DeviantDaemon

#: The code lifetime the nodes under test get, so that the kit can check expiry (it waits this + 1 s).
CODE_EXPIRY = 6
#: Bounds a whole kit run (it takes ~15-25 s; this only stops a hang).
KIT_RUN_LIMIT = 240


def cli(home: Path) -> str:
    return f"{shlex.quote(sys.executable)} -m quicpair.tools.cli --home {shlex.quote(str(home))}"


def run_kit(home: Path, port: int, node_id: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """The kit as a process against the node of ``home``; its exit status and JSON report."""
    argv = [
        sys.executable, "-m", "quicpair.tools.conformance",
        "--address", f"127.0.0.1:{port}", "--node-id", node_id,
        "--offer-command", f"{cli(home)} --json pair --timeout 120",
        "--join-command", f"{cli(home)} join {{uri}} --timeout 40",
        "--json", *extra,
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        cwd=REPO,
        env=ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=KIT_RUN_LIMIT,
    )
    assert "Traceback" not in done.stderr, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def statuses(report: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for result in report["results"]:
        found.setdefault(result["status"], []).append(result["check"])
    return found


def details(report: dict[str, Any], status: str) -> str:
    return "\n".join(
        f"{r['section']}: {r['check']}: {r['detail']}" for r in report["results"] if r["status"] == status
    )


@pytest.mark.integration
def test_every_check_passes_against_our_node(daemons: Daemons) -> None:
    (node,) = daemons.start("node", extra=("--set", f"pairing.code_expiry={CODE_EXPIRY}"))
    status, report = run_kit(
        node.home, node.info["port"], node.info["node_id"], "--code-expiry", str(CODE_EXPIRY)
    )
    found = statuses(report)
    assert found.get("fail", []) == [], details(report, "fail")
    assert found.get("skip", []) == [], details(report, "skip")
    assert status == 0
    sections = {r["section"] for r in report["results"]}
    for section in (
        "admission",
        "framing on a pairing stream",
        "framing on a link stream",
        "duplicate connections",
    ):
        assert section in sections
    assert any("initiates" in s and "kit joins" in s for s in sections)
    assert any("kit initiates" in s for s in sections)
    assert len(found["pass"]) >= 70
    # The node stays healthy: it still answers the kit's admission checks, then stops cleanly.
    status, again = run_kit(node.home, node.info["port"], node.info["node_id"], "--only", "admission")
    assert status == 0, details(again, "fail")


@pytest.mark.integration
@pytest.mark.parametrize("deviation", sorted(DEVIATIONS))
def test_a_deviant_node_fails_exactly_the_matching_check(deviation: str, tmp_path: Path) -> None:
    node = DeviantDaemon(deviation, tmp_path / "node", tmp_path / "node.log", [])
    try:
        ready = json.loads(node.ready())
        status, report = run_kit(node.home, ready["port"], ready["node_id"])
    finally:
        node.end()
    found = statuses(report)
    assert found.get("fail", []) == [DEVIATIONS[deviation][1]], details(report, "fail")
    assert status == 1
    # Without --code-expiry the expiry check is the one skip: the kit does not pretend it passed.
    assert found.get("skip", []) == ["an expired code -> PairReject CODE_EXPIRED"], details(report, "skip")


@pytest.mark.integration
def test_the_kit_never_hangs_on_a_silent_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound: datagrams vanish, no ICMP
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        argv = [
            sys.executable, "-m", "quicpair.tools.conformance", "--address", f"127.0.0.1:{port}",
            "--node-id", "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena",
            "--only", "admission", "--step-timeout", "0.5", "--json",
        ]  # fmt: skip
        done = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout)
    assert done.returncode == 1
    fails = [r for r in report["results"] if r["status"] == "fail"]
    assert len(fails) == len(report["results"]) >= 8, report["results"]
    assert all("timeout" in r["detail"] for r in fails), fails


def test_bad_arguments_are_a_usage_error() -> None:
    argv = [sys.executable, "-m", "quicpair.tools.conformance", "--address", "nowhere", "--node-id", "x"]
    done = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr


# -- units ------------------------------------------------------------------------------


def test_an_offer_is_read_from_json_a_uri_or_a_bare_code() -> None:
    code = PairingCode.generate(lambda n: bytes(range(n)))
    uri = f"quicpair:pair?code={code.text}&addr=127.0.0.1:9"
    for line in (
        json.dumps({"event": "code", "uri": uri}),
        json.dumps({"code": code.text}),
        f"URI   {uri}",
        f"Code  {code.text}   (single use, valid 5 min)",
    ):
        offered = _offered(line)
        assert offered is not None and offered.code == code, line
    assert _offered("Waiting for the other device") is None
    assert _offered('{"event": "paired"}') is None


def test_report_statuses_and_exit() -> None:
    async def scenario() -> Report:
        report = Report(check_timeout=0.2)

        async def passes() -> str:
            return "fine"

        async def fails() -> str:
            raise Failed("the node said no")

        async def skips() -> str:
            raise Skipped("cannot")

        async def hangs() -> str:
            await asyncio.sleep(10)
            return ""

        async def times_out() -> str:
            raise Timeout("the node's next message: not within 1 s")

        async def breaks() -> str:
            report.chose("section", "b's choice", "1", "listed after b's own row")
            raise KeyError("kit bug")

        for name, body in (
            ("p", passes), ("f", fails), ("s", skips), ("h", hangs), ("t", times_out), ("b", breaks)
        ):  # fmt: skip
            await report.run("section", name, "1", body)
        report.chose("section", "c", "1", "what it chose")
        return report

    report = asyncio.run(scenario())
    assert [(r.check, r.status) for r in report.results] == [
        ("p", "pass"), ("f", "fail"), ("s", "skip"), ("h", "fail"),
        ("t", "fail"), ("b", "fail"), ("b's choice", "chose"), ("c", "chose"),
    ]  # fmt: skip
    assert "timeout" in report.results[3].detail and "kit error: KeyError" in report.results[5].detail
    assert report.counts() == {"pass": 1, "fail": 4, "skip": 1, "chose": 2}
    table = report.table()
    assert "== section" in table and "1 passed, 4 failed, 1 skipped, 2 choices reported" in table
    assert json.loads(report.to_json({"address": "x"}))["counts"]["fail"] == 4
