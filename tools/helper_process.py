"""What the tools that tests start as helper processes share (tools/relay.py, tools/impairment.py).

Their stdout carries JSON lines only (:func:`emit`); ``--listen``/``--target`` take
``host:port`` (:func:`host_port`); they run until stdin ends (whoever started them is gone)
or SIGTERM/SIGINT (:func:`run_until_stopped`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from quicpair.protocol.codes import split_address

__all__ = ["emit", "host_port", "run_until_stopped"]


def emit(**fields: Any) -> None:
    """One JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def host_port(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[addr]:port``); port 0 allowed (any free port), for --listen."""
    if text.endswith(":0"):
        return text[:-2].strip("[]"), 0
    try:
        return split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port ({exc})") from exc


async def run_until_stopped(on_line: Callable[[], None] | None = None) -> None:
    """Return when stdin ends or SIGTERM/SIGINT comes; ``on_line()`` for each line read meanwhile."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stdin = sys.stdin.fileno()
    each_line = on_line or (lambda: None)

    def on_stdin() -> None:
        data = os.read(stdin, 4096)
        if not data:  # end of stdin: whoever started us is gone
            loop.remove_reader(stdin)
            stop.set()
            return
        for _ in range(data.count(b"\n")):
            each_line()

    # A file or /dev/null on stdin cannot be watched (epoll refuses them): signals stop us then.
    with contextlib.suppress(OSError):
        loop.add_reader(stdin, on_stdin)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(stdin)
