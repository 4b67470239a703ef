"""The systemd units in docs/systemd/ say what the daemon does (Type=notify, SIGHUP, exit 74).

How the daemon behaves under them (READY/RELOADING/STOPPING/WATCHDOG sent to
``$NOTIFY_SOCKET``, SIGHUP reloads, SIGTERM stops gracefully) is tested with a
real daemon in test_daemon_faults.py; here the unit files themselves are
checked, and verified by systemd's own ``systemd-analyze verify`` (.ci/run installs it).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quicpair.tools.daemon import EXIT_HOME_LOST

UNITS = Path(__file__).resolve().parents[2] / "docs" / "systemd"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.mark.parametrize("name", ["quicpair.service", "quicpair-user.service"])
def test_the_units_run_the_daemon_as_the_code_expects(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"].endswith("/quicpair run")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == str(EXIT_HOME_LOST)
    assert service["Environment"].startswith("QUICPAIR_HOME=")
    assert int(service["WatchdogSec"]) >= 2  # the main loop pings every second


def test_systemd_accepts_the_system_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, (
        "systemd-analyze is missing: install the Debian package systemd (.ci/run does) to verify the unit"
    )
    quicpair = Path(sys.executable).with_name("quicpair")
    unit = tmp_path / "quicpair.service"
    text = (UNITS / "quicpair.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/quicpair", str(quicpair)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
