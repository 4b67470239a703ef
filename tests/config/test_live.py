"""What a reload (SIGHUP) applies to a running node and what waits for a restart (config/live.py)."""

from __future__ import annotations

from quicpair.config.live import LIVE, apply_live
from quicpair.config.settings import load_settings


def test_live_settings_are_applied_and_the_others_keep_their_running_value() -> None:
    running = load_settings(node={"listen_port": 0})
    wanted = load_settings(
        node={"listen_port": 4000, "name": "renamed"},
        pairing={"code_expiry": 60.0},
        link={"idle_timeout": 25.0},
        log={"level": "debug"},
    )
    change = apply_live(running, wanted)
    assert change.applied == {
        "node.name": (running.node.name, "renamed"),
        "pairing.code_expiry": (300.0, 60.0),
        "log.level": ("info", "debug"),
    }
    idle = running.link.idle_timeout
    assert change.needs_restart == {"node.listen_port": (0, 4000), "link.idle_timeout": (idle, 25.0)}
    now = change.settings
    assert (now.node.name, now.pairing.code_expiry, now.log.level) == ("renamed", 60.0, "debug")
    assert (now.node.listen_port, now.link.idle_timeout) == (0, idle)  # until a restart


def test_nothing_changed_is_nothing_to_say() -> None:
    running = load_settings()
    change = apply_live(running, load_settings())
    assert change.applied == {} and change.needs_restart == {} and change.settings == running


def test_every_live_setting_exists() -> None:
    settings = load_settings()
    for section, key in LIVE:
        assert hasattr(getattr(settings, section), key), (section, key)
