"""Structured logging through the standard ``logging`` module: one event per line.

A node logs with structlog bound loggers (:func:`get_logger`) whose events go to
the stdlib logger ``quicpair`` (and its children): a program that embeds a Node
decides where they go, with ordinary ``logging`` handlers. quicpair itself never
writes to stdout and never configures the root logger. The record's message is
the event rendered as ``event key=value ...``; the whole event dict rides along
as ``record.quicpair_event`` for handlers that want the fields.

The daemon and the tools call :func:`configure_logging`, which puts one handler
on ``quicpair`` writing whole lines (JSON when not on a terminal) to a stream.
Logging never stops a node: an exception while rendering or writing an event is
swallowed (a handler whose stream broke, a closed pipe...), never raised into an
actor.

:class:`RateLimitedLog` bounds what strangers can make a node write: events
caused by unauthenticated peers pass at most ``per_window`` times per window
and name, and the rest are summarised once per window (``log.suppressed``).

No event name can grow what the handler writes faster than a fixed rate
(actors/kernel/logbound.py): a failure that repeats in a loop costs the log
a bounded number of lines, whatever its cause.

Event names are stable and documented in docs/ARCHITECTURE.md ("Events");
tests and operators grep for them, so renaming one is a breaking change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog
import structlog.testing

from quicpair.actors.kernel.logbound import EventRateBound

__all__ = [
    "LOGGER_NAME",
    "RateLimitedLog",
    "configure_logging",
    "get_logger",
    "set_level",
]

#: The stdlib logger every quicpair event goes to.
LOGGER_NAME = "quicpair"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS |= {"error": logging.ERROR, "critical": logging.CRITICAL}


def _level_number(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


def set_level(level: str) -> None:
    """The lowest level quicpair logs (``[log] level``), on the ``quicpair`` logger."""
    logging.getLogger(LOGGER_NAME).setLevel(_level_number(level))


def _to_stdlib(_: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    """The last processor: a readable message, and the event dict for structured handlers."""
    name = str(event.get("event", ""))
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "level", "timestamp"))
    message = f"{name} {fields}".rstrip()
    return (message,), {"extra": {"quicpair_event": dict(event)}}


class _SafeLogger(structlog.stdlib.BoundLogger):
    """A bound logger whose calls never raise into the caller (an actor)."""

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: str, **event_kw: Any
    ) -> Any:
        try:
            return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)
        except Exception:
            return None


def _feed_capture(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Under ``structlog.testing.capture_logs`` (tests), the captured list sees every event too."""
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, structlog.testing.LogCapture):
            with contextlib.suppress(structlog.DropEvent):
                processor(logger, method, dict(event))
    return event


_PROCESSORS: list[Any] = [
    _feed_capture,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.filter_by_level,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    _to_stdlib,
]


def get_logger(**context: Any) -> Any:
    """A bound logger on ``quicpair`` (typed Any: structlog's bound loggers are dynamic)."""
    logger = structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        processors=_PROCESSORS,
        wrapper_class=_SafeLogger,
        cache_logger_on_first_use=False,
    )
    return logger.bind(**context)


class _LineHandler(logging.Handler):
    """Whole lines (JSON or key=value) on a stream, under one lock; failures are dropped."""

    def __init__(self, stream: TextIO, fmt: str, context: dict[str, Any]) -> None:
        super().__init__()
        self._stream = stream
        self._json = fmt == "json"
        self._context = context
        self._console = structlog.dev.ConsoleRenderer(colors=False) if not self._json else None
        self._bound = EventRateBound()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = dict(getattr(record, "quicpair_event", None) or {"event": record.getMessage()})
            event.setdefault("level", record.levelname.lower())
            for key, value in self._context.items():
                event.setdefault(key, value)
            try:
                event = dict(self._bound(None, "", event))
            except structlog.DropEvent:
                return  # over its event name's rate: counted, said on the next line that passes
            if self._json:
                line = json.dumps(event, default=str)
            else:
                assert self._console is not None
                line = str(self._console(None, "", event))
            with _write_lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        except Exception:
            # A closed terminal (EIO after a hang-up), a full disk, a closed pipe: the line
            # is lost, but logging must never be what stops the node.
            pass

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # never print "--- Logging error ---" tracebacks on behalf of a broken stream


_write_lock = threading.Lock()


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None, **context: Any
) -> None:
    """Send quicpair's events to ``stream`` (default stderr), one per line, from ``level`` up.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a terminal, JSON
    otherwise). ``context`` (e.g. ``node=...``) is added to every event. For the
    daemon and the tools; a program embedding a Node configures ``logging`` itself.
    """
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        if isinstance(old, _LineHandler):
            logger.removeHandler(old)
    logger.addHandler(_LineHandler(out, fmt, context))
    logger.propagate = False
    set_level(level)


class RateLimitedLog:
    """Events caused by unauthenticated peers: each name at most ``per_window`` times a window.

    What is held back is counted and summarised once per window as
    ``log.suppressed`` (``event``, ``count``, ``window``), so a flood of bad
    connections costs the log a fixed number of lines per minute.
    """

    def __init__(
        self,
        log: Any,
        *,
        per_window: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._per_window = per_window
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._passed: dict[str, int] = {}
        self._held: dict[str, int] = {}

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        with self._lock:
            summary = self._roll()
            passed = self._passed.get(event, 0)
            if passed < self._per_window:
                self._passed[event] = passed + 1
                allowed = True
            else:
                self._held[event] = self._held.get(event, 0) + 1
                allowed = False
        for name, count in summary:
            self._log.warning("log.suppressed", event_name=name, count=count, window=self._window)
        if allowed:
            getattr(self._log, level)(event, **fields)

    def flush(self) -> None:
        """Say now what was held back in a window that has ended."""
        with self._lock:
            summary = self._roll()
        for name, count in summary:
            self._log.warning("log.suppressed", event_name=name, count=count, window=self._window)

    def _roll(self) -> list[tuple[str, int]]:
        now = self._clock()
        if now - self._start < self._window:
            return []
        summary = sorted(self._held.items())
        self._start, self._passed, self._held = now, {}, {}
        return summary
