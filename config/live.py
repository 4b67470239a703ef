"""Which settings a running node takes when its configuration is read again (SIGHUP), and which wait.

::

    change = apply_live(running, load_settings(path))
    change.settings          # what the node runs with now
    change.applied           # {"pairing.code_expiry": (300.0, 120.0)}: in effect at once
    change.needs_restart     # {"node.listen_port": (47470, 47471)}: kept as it was

A setting is live (:data:`LIVE`) when every place that reads it reads it again
each time it needs it: the name and limits a new pairing starts with, the life
and attempts of a new code, the time bounds of a new pairing step, and the
log. Everything else is bound when the node starts (the port, mDNS, the
link timers its workers and connections were made with, fault injection) and
keeps its running value until a restart; a reload says which.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from quicpair.config.settings import Settings

__all__ = ["LIVE", "SettingsChange", "apply_live"]

#: ``(section, key)`` of the settings a running node applies on a reload.
LIVE: frozenset[tuple[str, str]] = frozenset(
    {
        ("node", "name"),  # new pairings tell it; paired devices keep the name they were told
        ("node", "max_concurrent_pairings"),
        ("pairing", "code_expiry"),
        ("pairing", "max_attempts"),
        ("pairing", "step_timeout"),
        ("pairing", "resolve_timeout"),
        ("log", "level"),
        ("log", "format"),
    }
)


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """The outcome of a reload."""

    #: The settings to run with: the new value of every live setting, the running value of the rest.
    settings: Settings
    #: ``"section.key"`` -> (old, new) for each live setting that changed.
    applied: dict[str, tuple[Any, Any]]
    #: ``"section.key"`` -> (running, wanted) for each other setting that changed: kept until a restart.
    needs_restart: dict[str, tuple[Any, Any]]


def apply_live(running: Settings, new: Settings) -> SettingsChange:
    """Take the live settings of ``new`` over ``running``; say what changed and what waits for a restart."""
    applied: dict[str, tuple[Any, Any]] = {}
    needs_restart: dict[str, tuple[Any, Any]] = {}
    sections: dict[str, Any] = {}
    for field in dataclasses.fields(running):
        old_section, new_section = getattr(running, field.name), getattr(new, field.name)
        live: dict[str, Any] = {}
        for key in (f.name for f in dataclasses.fields(old_section)):
            old, wanted = getattr(old_section, key), getattr(new_section, key)
            if old == wanted:
                continue
            if (field.name, key) in LIVE:
                live[key] = wanted
                applied[f"{field.name}.{key}"] = (old, wanted)
            else:
                needs_restart[f"{field.name}.{key}"] = (old, wanted)
        sections[field.name] = dataclasses.replace(old_section, **live) if live else old_section
    return SettingsChange(Settings(**sections), applied, needs_restart)
