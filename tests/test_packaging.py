"""Packaging: one ``quicpair`` package that stands on its own, installed or unpacked from its sdist.

The repository's root is the package ``quicpair`` (setup.cfg maps the
directories), so installed nothing is a generic top-level name: a user's own
``config.py`` or ``tools/`` never collides. The integration test builds the
sdist, builds the wheel from it (as pip does), installs that wheel into a
fresh venv outside the repository, pairs two nodes with the installed
``quicpair`` command, and runs the sdist's own unit tests against it.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import venv
from pathlib import Path

import pytest

import quicpair

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("protocol", "config", "actors", "tools")
LOOPBACK = ["--listen", "127.0.0.1:0", "--set", "discovery.mdns=false"]


def run(
    *args: str | Path, cwd: Path | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_setup_cfg_lists_every_package_directory() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {"quicpair"} | {
        "quicpair." + ".".join(p.parent.relative_to(ROOT).parts)
        for d in SOURCE_DIRS
        for p in (ROOT / d).rglob("__init__.py")
    }
    assert listed == on_disk, "setup.cfg [options] packages must name every package directory, and only those"
    assert cfg["options"]["package_dir"].split() == ["quicpair", "=", "."]


def test_python_dash_m_quicpair_is_the_command_line() -> None:
    out = run(sys.executable, "-m", "quicpair", "--version").stdout
    assert out.strip() == f"quicpair {quicpair.__version__}"
    usage = subprocess.run([sys.executable, "-m", "quicpair"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "COMMAND" in usage.stderr


def test_a_project_with_its_own_config_and_tools_pairs_two_nodes(tmp_path: Path) -> None:
    project = tmp_path / "app"
    (project / "tools").mkdir(parents=True)
    (project / "config.py").write_text("WHOSE = 'the application'\n")
    (project / "tools" / "__init__.py").write_text("WHOSE = 'the application'\n")
    (project / "protocol.py").write_text("WHOSE = 'the application'\n")
    (project / "main.py").write_text(
        textwrap.dedent(
            """
            import json, sys
            import config, protocol, tools  # the application's own modules, first on sys.path
            from quicpair import Node, load_settings

            assert config.WHOSE == tools.WHOSE == protocol.WHOSE == "the application"
            settings = load_settings(
                node={"listen_host": "127.0.0.1", "listen_port": 0}, discovery={"mdns": False}
            )
            with Node(sys.argv[1], settings) as alice, Node(sys.argv[2], settings) as bob:
                offer = alice.pair()
                alices_view = bob.join(offer.uri, timeout=20)
                bobs_view = offer.wait(timeout=20)
                # A file, not stdout: the nodes log to stdout by default, and a log line
                # written by another thread meanwhile can land inside a printed line.
                with open(sys.argv[3], "w") as out:
                    json.dump({"sas_equal": alices_view.sas == bobs_view.sas,
                               "alice": alices_view.node_id.text == alice.node_id.text}, out)
            """
        )
    )
    result = tmp_path / "result.json"
    run(sys.executable, "main.py", tmp_path / "alice", tmp_path / "bob", result, cwd=project)
    assert json.loads(result.read_text()) == {"sas_equal": True, "alice": True}


def tracked_files() -> set[str]:
    """What git tracks, minus what only the repository needs (its CI script and git files)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist): the sdist contents were checked upstream")
    return {f for f in listed.stdout.split() if not f.startswith((".ci/", ".git"))}


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_sdist_builds_a_wheel_that_installs_pairs_and_tests_itself(tmp_path: Path) -> None:
    expected = tracked_files()
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--sdist", "--outdir", dist, ROOT, timeout=300)
    (sdist,) = dist.glob("quicpair-*.tar.gz")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        tar.extractall(tmp_path / "unpacked", filter="data")
    missing = sorted(expected - members)
    assert not missing, f"the sdist lacks tracked files: {missing}"
    unpacked = tmp_path / "unpacked" / top

    # The wheel is built from the sdist, as pip builds it for users.
    run(sys.executable, "-m", "build", "--wheel", "--outdir", dist, unpacked, timeout=300)
    (wheel,) = dist.glob("quicpair-*.whl")

    env_dir = tmp_path / "venv"  # outside the repository
    venv.create(env_dir, with_pip=True)
    py, qp = env_dir / "bin" / "python", env_dir / "bin" / "quicpair"
    run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{wheel}[test]", timeout=600)
    version = quicpair.__version__
    assert run(qp, "--version").stdout.strip() == f"quicpair {version}"
    assert run(py, "-m", "quicpair", "--version").stdout.strip() == f"quicpair {version}"
    where = run(py, "-c", "import quicpair; print(quicpair.__file__)", cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(env_dir), where

    # Two nodes pair with the installed command (no daemon: --oneshot), one code each way.
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    pair = subprocess.Popen(
        [str(qp), "--home", str(tmp_path / "alice"), "--json", "pair", "--oneshot", *LOOPBACK],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert pair.stdout is not None
        offer = json.loads(pair.stdout.readline())
        joined = subprocess.run(
            [str(qp), "--home", str(tmp_path / "bob"), "join", offer["uri"], "--oneshot", *LOOPBACK],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=90,
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        assert json.loads(pair.stdout.readline())["event"] == "paired"
        assert pair.wait(timeout=30) == 0
    finally:
        if pair.poll() is None:
            pair.kill()
            pair.wait(timeout=10)
        for stream in (pair.stdout, pair.stderr):
            if stream is not None:
                stream.close()

    # The unpacked sdist's own tests pass against the installed wheel (its unit tests:
    # the protocol core, the kernel, the layering and API rules, the settings).
    tests = run(
        py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
        "tests/protocol", "tests/kernel", "tests/config", "tests/test_layers.py", "tests/test_public_api.py",
        cwd=unpacked, timeout=600,
    )  # fmt: skip
    assert " passed" in tests.stdout and "failed" not in tests.stdout, tests.stdout[-2000:]
