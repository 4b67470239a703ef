"""Settings: the built-in defaults, a user file, overrides, and a precise error for every mistake."""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from quicpair.config import Settings, load_settings
from quicpair.protocol.errors import ConfigError
from quicpair.protocol.messages import MAX_NAME_LEN


def write(tmp_path: Path, text: str, name: str = "quicpair.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- what loads ------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings()
    assert settings.node.listen_host == "::", "dual-stack by default (issue 12)"
    assert (settings.node.listen_port, settings.node.max_concurrent_pairings) == (47470, 32)
    assert dataclasses.astuple(settings.pairing) == (300.0, 3, 10.0, 30.0, 32, False, 120.0)
    assert dataclasses.astuple(settings.link) == (
        *(9.0, 6.0, 5, 1.0),  # dead peer: idle timeout, keep-alive, probe timeouts, liveness check
        *(256, 4 << 20, 1024, 16 << 20),  # acknowledged delivery: window and outbox
        *(4096, 64 << 20),  # received messages the application has not taken, and their bytes
        *(0.5, 30.0, 0.2, 10.0, 0.25, 5.0),  # reconnection
    )
    assert settings.discovery.mdns is True
    assert (settings.log.level, settings.log.format, settings.log.tls_key_log) == ("info", "auto", "")
    testing = dataclasses.astuple(settings.testing)
    assert testing == (False, False, "", False, False, "", False, 3, 5.0), "fault injection is off"
    assert settings.node.name, "an empty name in the defaults becomes the host name"
    assert settings.node.name == (platform.node() or "quicpair")[:MAX_NAME_LEN]


def test_every_number_is_of_its_declared_type() -> None:
    settings = load_settings(pairing={"code_expiry": 60})
    assert type(settings.pairing.code_expiry) is float
    assert type(settings.pairing.max_attempts) is int
    assert type(settings.link.stagger) is float


def test_defaults_file_has_exactly_the_settings() -> None:
    text = resources.files("quicpair.config").joinpath("defaults.toml").read_text("utf-8")
    data = tomllib.loads(text)
    assert {s: set(keys) for s, keys in data.items()} == {
        s: set(keys) for s, keys in load_settings().to_dict().items()
    }


def test_settings_are_frozen_and_to_dict_is_plain_data() -> None:
    settings = load_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.node.listen_port = 1  # type: ignore[misc]
    as_dict = settings.to_dict()
    assert as_dict["link"]["keepalive_interval"] == 6.0
    assert json.loads(json.dumps(as_dict)) == as_dict
    overrides: dict[str, Any] = as_dict
    assert load_settings(**overrides) == settings, "to_dict round-trips through overrides"


def test_a_user_file_changes_only_what_it_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        # my node
        [node]
        name = "alice-laptop"
        listen_port = 50000

        [link]
        idle_timeout = 60          # an int where seconds are expected is fine
        keepalive_interval = 20.5

        [log]
        level = "DEBUG"
        """,
    )
    settings = load_settings(path)
    assert (settings.node.name, settings.node.listen_port) == ("alice-laptop", 50000)
    assert settings.node.listen_host == "::"
    assert (settings.link.idle_timeout, settings.link.keepalive_interval) == (60.0, 20.5)
    assert settings.link.backoff_max == 30.0
    assert settings.log.level == "debug", "levels are case-insensitive, stored in lowercase"
    assert load_settings(str(path)) == settings


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nlisten_host = "::"\nlisten_port = 50000\n')
    settings = load_settings(
        path,
        node={"listen_host": "127.0.0.1", "listen_port": 0},
        testing={"drop_pair_commit": True, "crash_session_after": "PairDone"},
    )
    assert (settings.node.listen_host, settings.node.listen_port) == ("127.0.0.1", 0)
    assert settings.testing == dataclasses.replace(
        load_settings().testing, drop_pair_commit=True, crash_session_after="PairDone"
    )


def test_a_long_or_controlled_name_is_refused() -> None:
    assert load_settings(node={"name": "é" * (MAX_NAME_LEN // 2)}).node.name == "é" * (MAX_NAME_LEN // 2)
    with pytest.raises(ConfigError, match=f"longer than {MAX_NAME_LEN} bytes"):
        load_settings(node={"name": "é" * (MAX_NAME_LEN // 2 + 1)})
    with pytest.raises(ConfigError, match="control characters"):
        load_settings(node={"name": "bad\nname"})


def test_settings_is_the_public_type() -> None:
    assert isinstance(load_settings(), Settings)


# -- every way a file can be wrong ---------------------------------------------------------------

FILE_ERRORS: dict[str, tuple[str, str]] = {
    "unknown section": (
        "[node]\nlisten_port = 1\n\n[nodes]\nx = 1\n",
        r"line 4: unknown section \[nodes\] \(did you mean 'node'\?\); sections are \[node\], \[pairing\]",
    ),
    "unknown key": (
        "[link]\nidle_timeout = 30\nkeepalive_intervall = 5\n",
        r"line 3: unknown key 'keepalive_intervall' in \[link\] \(did you mean 'keepalive_interval'\?\)"
        r"; keys of \[link\] are idle_timeout, keepalive_interval",
    ),
    "string for an int": (
        '[node]\nlisten_port = "47470"\n',
        r"line 2: \[node\] listen_port = '47470' is a string, not an integer; "
        r"allowed: an integer from 0 to 65535",
    ),
    "bool for an int": (
        "[pairing]\nmax_attempts = true\n",
        r"line 2: \[pairing\] max_attempts = True is a boolean, not an integer; "
        r"allowed: an integer from 1 to 100",
    ),
    "float for an int": (
        "[node]\nlisten_port = 1.5\n",
        r"line 2: \[node\] listen_port = 1.5 is a number, not an integer",
    ),
    "int for a bool": (
        "[discovery]\nmdns = 1\n",
        r"line 2: \[discovery\] mdns = 1 is an integer, not true or false; allowed: true or false",
    ),
    "port out of range": (
        "[node]\nlisten_port = 70000\n",
        r"line 2: \[node\] listen_port = 70000 is out of range; allowed: an integer from 0 to 65535",
    ),
    "zero timeout": (
        "[pairing]\nstep_timeout = 0\n",
        r"line 2: \[pairing\] step_timeout = 0 is out of range; allowed: a number above 0 up to 600",
    ),
    "negative stagger": (
        "[link]\nstagger = -0.1\n",
        r"line 2: \[link\] stagger = -0.1 is out of range; allowed: a number from 0 to 10",
    ),
    "random factor above 1": (
        "[link]\nbackoff_random_factor = 1.5\n",
        r"line 2: \[link\] backoff_random_factor = 1.5 is out of range; allowed: a number from 0 to 1",
    ),
    "infinite": (
        "[pairing]\nresolve_timeout = inf\n",
        r"line 2: \[pairing\] resolve_timeout = inf is not a finite number",
    ),
    "unknown choice": (
        '[log]\nformat = "xml"\n',
        r"line 2: \[log\] format = 'xml' is not allowed; allowed: one of 'auto', 'json', 'console'",
    ),
    "host name for an address": (
        '[node]\nlisten_host = "localhost"\n',
        r"line 2: \[node\] listen_host = 'localhost' is not an IP address; allowed: an IP address such as",
    ),
    "link-local address without its interface": (
        '[node]\nlisten_host = "fe80::1"\n',
        r"line 2: \[node\] listen_host = 'fe80::1' is link-local: it needs its interface, like fe80::1%eth0",
    ),
    "multicast address": (
        '[node]\nlisten_host = "ff02::fb"\n',
        r"line 2: \[node\] listen_host = 'ff02::fb' is a multicast address",
    ),
    "unknown message name": (
        '[testing]\ncrash_session_after = "PairDune"\n',
        r"line 2: \[testing\] crash_session_after = 'PairDune' is not a message name; "
        r"allowed: \"\" or one of .*PairDone",
    ),
    "keepalive too close to the idle timeout": (
        "[link]\nidle_timeout = 15\nkeepalive_interval = 11\n",
        r"line 3: \[link\] keepalive_interval = 11.0 must be at most 2/3 of idle_timeout = 10 "
        r"\(idle_timeout from .*quicpair.toml, line 2\)",
    ),
    "backoff upside down": (
        "[link]\nbackoff_min = 5\nbackoff_max = 1\n",
        r"line 3: \[link\] backoff_max = 1.0 is below backoff_min = 5.0; allowed: at least backoff_min",
    ),
    "section that is a value": (
        "node = 3\n",
        r"line 1: \[node\] must be a section of keys, not an integer",
    ),
    "dotted key": (
        "node.listen_port = 70000\n",
        r"line 1: \[node\] listen_port = 70000 is out of range",
    ),
    "same key name in another section": (
        "[pairing]\nstep_timeout = 5\n\n[link]\nidle_timeout = 30\nstagger = 99\n",
        r"line 6: \[link\] stagger = 99",
    ),
    "not TOML": (
        "[node\nlisten_port = 1\n",
        r": not valid TOML: .*line 1",
    ),
}


@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_a_bad_file_gives_a_precise_error(tmp_path: Path, case: str) -> None:
    text, message = FILE_ERRORS[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(str(path)), "the error names the file"
    assert re.search(message, str(info.value)), f"{info.value!s} !~ {message}"


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml does not exist"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path)  # a directory
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_settings(path)


# -- every way an override can be wrong ------------------------------------------------------------

OVERRIDE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"nod": {"listen_port": 1}}, r"^override: unknown section \[nod\] \(did you mean 'node'\?\)"),
    ({"node": {"port": 1}}, r"^override: unknown key 'port' in \[node\]"),
    ({"node": 5}, r"^override: \[node\] must be a section of keys, not an integer"),
    ({"node": {"listen_port": -1}}, r"^override: \[node\] listen_port = -1 is out of range"),
    ({"log": {"level": None}}, r"^override: \[log\] level = None is None, not a string"),
    ({"discovery": {"mdns": "yes"}}, r"^override: \[discovery\] mdns = 'yes' is a string, not true or false"),
]


@pytest.mark.parametrize(("overrides", "message"), OVERRIDE_ERRORS, ids=[m for _, m in OVERRIDE_ERRORS])
def test_a_bad_override_gives_a_precise_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)


def test_a_cross_check_names_where_each_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[link]\n\nidle_timeout = 12\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, link={"keepalive_interval": 9})
    text = str(info.value)
    expected = "override: [link] keepalive_interval = 9.0 must be at most 2/3 of idle_timeout = 8"
    assert text.startswith(expected)
    assert f"(idle_timeout from {path}, line 3)" in text
