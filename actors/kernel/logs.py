"""Structured logging: one event per line, JSON when not on a terminal.

Event names are stable and documented in docs/ARCHITECTURE.md ("Events");
tests and operators grep for them, so renaming one is a breaking change.
Context (node, peer, session, conn) is bound with ``log.bind(...)`` by the
actor that owns it; nothing here knows about actors. No event name can grow
the log faster than a fixed rate (actors/kernel/logbound.py), and a stream
that fails (a closed terminal, a full disk) loses lines, never stops a caller.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from quicpair.actors.kernel.logbound import EventRateBound

__all__ = ["configure_logging", "get_logger"]

_lock = threading.Lock()


class _LineWriter:
    """Writes whole lines under a lock, so events from threads never interleave."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        with _lock:
            try:
                self._stream.write(message + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                # A closed terminal (EIO after a hang-up), a full disk, a closed pipe: the
                # line is lost, but logging must never be what stops the node.
                pass

    log = debug = info = warning = warn = error = critical = exception = msg


class _LineWriterFactory:
    def __init__(self, stream: TextIO) -> None:
        self._writer = _LineWriter(stream)

    def __call__(self, *args: Any) -> _LineWriter:
        return self._writer


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None, **context: Any
) -> None:
    """Configure structlog for this process.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a terminal, JSON
    otherwise). ``context`` (e.g. ``node=...``) is bound to every event.
    """
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")

    def add_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in context.items():
            event.setdefault(key, value)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_context,
            EventRateBound(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LineWriterFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A bound structlog logger (typed Any: structlog's bound loggers are dynamic)."""
    return structlog.get_logger().bind(**context)
