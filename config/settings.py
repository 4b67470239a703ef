"""Node settings: built-in defaults, then the user's file, then keyword overrides.

::

    settings = load_settings()                                   # defaults.toml only
    settings = load_settings(Path("~/.config/quicpair.toml").expanduser())
    settings = load_settings(node={"listen_host": "127.0.0.1", "listen_port": 0})

The defaults live in ``config/defaults.toml`` (package data, the one place their
values and reasons are written); the user file has the same sections and keys and only
needs what it changes; an override keyword is a section name and its value a mapping of
keys. Everything is validated once, here, into a frozen :class:`Settings`; anything
wrong raises :class:`ConfigError` naming the setting, where it came from (file and line
when it is known) and what is allowed. Unknown sections and keys are errors: a typo must
never leave a default silently in place.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import platform
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from quicpair.protocol.errors import ConfigError
from quicpair.protocol.messages import MAX_NAME_LEN, MESSAGE_TYPES

__all__ = [
    "KILL_POINTS",
    "DiscoverySettings",
    "LinkSettings",
    "LogSettings",
    "NodeSettings",
    "PairingSettings",
    "Settings",
    "TestingSettings",
    "load_settings",
]

_DAY = 86_400.0


def _rule(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] = (),
    check: Callable[[Any], str | None] | None = None,
    allowed: str = "",
) -> Any:
    """A field's validation rule: bounds, choices, or a ``check`` returning a problem."""
    return field(
        metadata={"ge": ge, "gt": gt, "le": le, "choices": choices, "check": check, "allowed": allowed}
    )


def _check_host(value: str) -> str | None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "is not an IP address"
    if ip.is_multicast:
        return "is a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local and not ip.scope_id:
        return f"is link-local: it needs its interface, like {value}%eth0"
    return None


def _check_name(value: str) -> str | None:
    if len(value.encode("utf-8")) > MAX_NAME_LEN:
        return f"is longer than {MAX_NAME_LEN} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains control characters"
    return None


#: Where ``[testing] kill_at`` may kill a node during a pairing (actors/pairing/session.py).
KILL_POINTS = (
    "initiator_before_complete",
    "initiator_before_confirm",
    "initiator_before_decision",
    "joiner_before_vote",
    "joiner_before_confirm",
    "joiner_after_confirm",
)
_MESSAGE_NAMES = tuple(sorted(cls.__name__ for cls in MESSAGE_TYPES.values()))


def _check_message(value: str) -> str | None:
    return None if value == "" or value in _MESSAGE_NAMES else "is not a message name"


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """``[node]``: who this node is and where it listens."""

    #: The name paired devices see (the host name when the file leaves it empty).
    name: str = _rule(check=_check_name, allowed=f"a name of at most {MAX_NAME_LEN} UTF-8 bytes")
    #: The IP address to listen on ("::" both families, "0.0.0.0" IPv4 only, "127.0.0.1" local only).
    listen_host: str = _rule(
        check=_check_host, allowed='an IP address such as "::", "0.0.0.0" or "127.0.0.1"'
    )
    #: The UDP port; 0 lets the system pick one.
    listen_port: int = _rule(ge=0, le=65535)
    #: Pairing sessions at once; more are refused with BUSY.
    max_concurrent_pairings: int = _rule(ge=1, le=1024)
    #: QUIC connections the listener holds at once (links, pairings, handshakes).
    max_connections: int = _rule(ge=8, le=65536)


@dataclass(frozen=True, slots=True)
class PairingSettings:
    """``[pairing]``: codes and the time bounds of a pairing (seconds)."""

    #: How long a code stays valid.
    code_expiry: float = _rule(gt=0, le=_DAY)
    #: Counted wrong attempts before a code is burned.
    max_attempts: int = _rule(ge=1, le=100)
    #: Deadline of each pairing step.
    step_timeout: float = _rule(gt=0, le=600)
    #: How long an in-doubt joiner keeps trying to learn the outcome.
    resolve_timeout: float = _rule(gt=0, le=_DAY)
    #: Codes open at once on this node; opening more is refused with BUSY.
    max_open_codes: int = _rule(ge=1, le=4096)
    #: Ask both people to confirm the SAS before anything is stored.
    verify: bool = _rule()
    #: How long the people have to compare the SAS words and answer.
    verify_timeout: float = _rule(gt=0, le=3600)


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """``[link]``: keeping a paired link up, and bringing it back (seconds)."""

    #: QUIC idle timeout.
    idle_timeout: float = _rule(gt=0, le=3600)
    #: The dialing side's PING interval; at most 2/3 of idle_timeout.
    keepalive_interval: float = _rule(gt=0, le=2400)
    #: Probe timeouts in a row, unanswered, after which the peer is taken for gone.
    dead_after_ptos: int = _rule(ge=2, le=20)
    #: Bound on the liveness check before an announcement may replace a connection.
    liveness_timeout: float = _rule(gt=0, le=60)
    #: Payloads in flight, unacknowledged, on a link at most.
    send_window: int = _rule(ge=1, le=65536)
    #: Bytes of payload in flight, unacknowledged, on a link at most.
    send_window_bytes: int = _rule(ge=65536, le=1 << 30)
    #: Payloads waiting behind the window, per peer, at most.
    outbox_limit: int = _rule(ge=1, le=1 << 20)
    #: Bytes of payload waiting behind the window, per peer, at most.
    outbox_limit_bytes: int = _rule(ge=65536, le=1 << 32)
    #: Received messages the application has not taken, at most (then the peers' senders wait).
    inbox_limit: int = _rule(ge=1, le=1 << 20)
    #: And bytes of their payloads, at most (plus one message).
    inbox_limit_bytes: int = _rule(ge=65536, le=1 << 32)
    #: First reconnection delay.
    backoff_min: float = _rule(gt=0, le=3600)
    #: Longest reconnection delay; at least backoff_min.
    backoff_max: float = _rule(gt=0, le=_DAY)
    #: Each delay is scaled by 1 + random(0, this).
    backoff_random_factor: float = _rule(ge=0, le=1)
    #: A link up this long resets the backoff.
    stable_after: float = _rule(ge=0, le=3600)
    #: Delay between dialling successive addresses of a peer.
    stagger: float = _rule(ge=0, le=10)
    #: Bound on one link dial (QUIC handshake) and on the link hello after it.
    dial_timeout: float = _rule(gt=0, le=600)


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """``[discovery]``: finding paired devices whose stored addresses fail."""

    #: Announce and browse with mDNS.
    mdns: bool = _rule()


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``[log]``: what the node logs and how."""

    #: The lowest level logged (lowercase).
    level: str = _rule(choices=("debug", "info", "warning", "error", "critical"))
    #: auto (console on a terminal, JSON otherwise), json or console.
    format: str = _rule(choices=("auto", "json", "console"))
    #: Append TLS secrets here for Wireshark ("" = off; SSLKEYLOGFILE also turns it on).
    tls_key_log: str = _rule()


@dataclass(frozen=True, slots=True)
class TestingSettings:
    """``[testing]``: fault injection for tests; all off by default, never on a real device."""

    #: The joiner drops its PairDone instead of sending it.
    drop_pair_done: bool = _rule()
    #: The initiator drops its PairCommit instead of sending it.
    drop_pair_commit: bool = _rule()
    #: The session actor crashes when this message arrives, before handling it ("" = never).
    crash_session_after: str = _rule(
        check=_check_message, allowed=f'"" or one of {", ".join(_MESSAGE_NAMES)}'
    )
    #: Both nodes of a pair dial each other (not only the lower NodeId), to force duplicates.
    force_simultaneous_dial: bool = _rule()
    #: The waiting side sends no restart notices (as if every one were lost).
    drop_restart_notice: bool = _rule()
    #: The node SIGKILLs itself at this step of a pairing ("" = never): the crash tests.
    kill_at: str = _rule(choices=("", *KILL_POINTS))
    #: The ``crash`` control request (Node.crash_actor) may crash an actor of the node.
    fault_injection: bool = _rule()
    #: Restarts the node's root supervisor allows within restart_period before the node fails.
    max_restarts: int = _rule(ge=0, le=1_000_000)
    #: The window of max_restarts (seconds).
    restart_period: float = _rule(gt=0, le=3600)


@dataclass(frozen=True, slots=True)
class Settings:
    """All of a node's settings, validated."""

    #: ``[node]``
    node: NodeSettings
    #: ``[pairing]``
    pairing: PairingSettings
    #: ``[link]``
    link: LinkSettings
    #: ``[discovery]``
    discovery: DiscoverySettings
    #: ``[log]``
    log: LogSettings
    #: ``[testing]``
    testing: TestingSettings

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every setting by section, for a log line (nothing in here is secret)."""
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeSettings,
    "pairing": PairingSettings,
    "link": LinkSettings,
    "discovery": DiscoverySettings,
    "log": LogSettings,
    "testing": TestingSettings,
}
_TYPES: dict[str, dict[str, type]] = {name: typing.get_type_hints(cls) for name, cls in _SECTIONS.items()}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


# -- reading a layer ---------------------------------------------------------------


@dataclass(slots=True)
class _Layer:
    """Values from one place, and how to tell a person where each one came from."""

    data: Mapping[str, Any]
    label: str  # "/home/a/quicpair.toml", "built-in defaults", "override"
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def where(self, section: str, key: str | None = None) -> str:
        line = self.lines.get((section, key) if key else (section,)) or self.lines.get((section,))
        return f"{self.label}, line {line}" if line else self.label


_HEADER = re.compile(r"^\s*\[\s*([^\[\]#]+?)\s*\]")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_\-"'. ]+?)\s*=""")


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Best effort: the line of each ``[section]`` and ``key =`` (tomllib gives none)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(line)
        if match:
            table = tuple(p.strip().strip("\"'") for p in match.group(1).split("."))
            lines.setdefault(table, number)
            continue
        match = _KEY.match(line)
        if match:
            path = table + tuple(p.strip().strip("\"'") for p in match.group(1).split("."))
            for end in range(1, len(path) + 1):
                lines.setdefault(path[:end], number)
    return lines


def _parse(text: str, label: str) -> _Layer:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from exc
    return _Layer(data, label, _key_lines(text))


def _read_file(path: Path) -> _Layer:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc
    return _parse(text, str(path))


def _hint(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_word(value: Any) -> str:
    words = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    return words.get(type(value), f"a {type(value).__name__}")


def _merge(into: dict[str, dict[str, tuple[Any, _Layer]]], layer: _Layer) -> None:
    """Add a layer's values over the ones below it, refusing unknown names."""
    for section, table in layer.data.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{layer.where(section)}: unknown section [{section}]{_hint(section, _SECTIONS)}; "
                f"sections are {', '.join(f'[{s}]' for s in _SECTIONS)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(
                f"{layer.where(section)}: [{section}] must be a section of keys, not {_type_word(table)}"
            )
        known = _TYPES[section]
        for key, value in table.items():
            if key not in known:
                raise ConfigError(
                    f"{layer.where(section, key)}: unknown key {key!r} in [{section}]{_hint(key, known)}; "
                    f"keys of [{section}] are {', '.join(known)}"
                )
            into.setdefault(section, {})[key] = (value, layer)


# -- validating -------------------------------------------------------------------------


def _allowed(kind: type, meta: Mapping[str, Any]) -> str:
    if meta["allowed"]:
        return str(meta["allowed"])
    if meta["choices"]:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    bounds = []
    if meta["gt"] is not None:
        bounds.append(f"above {meta['gt']:g}")
    if meta["ge"] is not None:
        bounds.append(f"from {meta['ge']:g}")
    if meta["le"] is not None:
        bounds.append(f"{'up ' if meta['ge'] is None else ''}to {meta['le']:g}")
    return " ".join([_TYPE_WORDS[kind], *bounds])


def _validate(section: str, key: str, value: Any, layer: _Layer) -> Any:
    kind: Any = _TYPES[section][key]
    meta = next(f for f in dataclasses.fields(_SECTIONS[section]) if f.name == key).metadata
    problem, shown = None, value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        problem = f"is {_type_word(value)}, not {_TYPE_WORDS[kind]}"
    elif kind is float and not math.isfinite(value):
        problem = "is not a finite number"
    elif kind is str and meta["choices"] and value.lower() not in meta["choices"]:
        problem = "is not allowed"
    elif kind in (int, float) and (
        (meta["gt"] is not None and not value > meta["gt"])
        or (meta["ge"] is not None and not value >= meta["ge"])
        or (meta["le"] is not None and not value <= meta["le"])
    ):
        problem = "is out of range"
    elif meta["check"] is not None:
        problem = meta["check"](value)
    if problem:
        raise ConfigError(
            f"{layer.where(section, key)}: [{section}] {key} = {shown!r} {problem}; "
            f"allowed: {_allowed(kind, meta)}"
        )
    return value.lower() if kind is str and meta["choices"] else value


def _default_name() -> str:
    """This computer's host name, cut to what a DeviceInfo carries."""
    name = "".join(c for c in platform.node() if c.isprintable()) or "quicpair"
    return name.encode("utf-8")[:MAX_NAME_LEN].decode("utf-8", "ignore")


def _cross_check(
    values: dict[str, dict[str, tuple[Any, _Layer]]], checked: dict[str, dict[str, Any]]
) -> None:
    link = checked["link"]
    idle_layer = values["link"]["idle_timeout"][1]
    if not link["keepalive_interval"] <= link["idle_timeout"] * 2 / 3:
        raise ConfigError(
            f"{values['link']['keepalive_interval'][1].where('link', 'keepalive_interval')}: [link] "
            f"keepalive_interval = {link['keepalive_interval']!r} must be at most 2/3 of idle_timeout = "
            f"{link['idle_timeout'] * 2 / 3:g} "
            f"(idle_timeout from {idle_layer.where('link', 'idle_timeout')}), "
            "so that a lost PING and its probes arrive before the peer's idle timeout"
        )
    if not link["backoff_max"] >= link["backoff_min"]:
        raise ConfigError(
            f"{values['link']['backoff_max'][1].where('link', 'backoff_max')}: [link] backoff_max = "
            f"{link['backoff_max']!r} is below backoff_min = {link['backoff_min']!r}; "
            "allowed: at least backoff_min"
        )


def load_settings(path: Path | str | None = None, **overrides: Mapping[str, Any]) -> Settings:
    """Load and validate the node's settings.

    ``path``: an optional user file (TOML) over the built-in defaults. ``overrides``:
    section name -> {key: value}, over both (e.g. ``node={"listen_port": 0}``).
    Raises ConfigError naming the setting, where it came from and what is allowed.
    """
    defaults_file = resources.files(__package__ or "quicpair.config").joinpath("defaults.toml")
    defaults_text = defaults_file.read_text("utf-8")
    values: dict[str, dict[str, tuple[Any, _Layer]]] = {}
    _merge(values, _parse(defaults_text, "built-in defaults (config/defaults.toml)"))
    if path is not None:
        _merge(values, _read_file(Path(path)))
    _merge(values, _Layer(overrides, "override"))
    checked: dict[str, dict[str, Any]] = {}
    for section, types in _TYPES.items():
        for key in types:
            if key not in values.get(section, {}):
                raise ConfigError(f"built-in defaults lack [{section}] {key} (a packaging bug)")
            value, layer = values[section][key]
            checked.setdefault(section, {})[key] = _validate(section, key, value, layer)
    if not checked["node"]["name"]:
        checked["node"]["name"] = _default_name()
    _cross_check(values, checked)
    return Settings(**{section: _SECTIONS[section](**keys) for section, keys in checked.items()})
