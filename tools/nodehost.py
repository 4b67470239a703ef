"""Run one node in this process, controlled by JSON lines on stdin (tools/control.py).

    python -m quicpair.tools.nodehost --home /tmp/alice --listen 127.0.0.1:0 --name alice

The first line on stdout is ``{"event": "ready", ...}`` with the node's id and
address, or ``{"event": "failed", "error": {...}}`` and exit status 1. Then
one reply line per request line. Logs go to stderr (JSON, one event per
line) or to ``--log FILE``. The node stops on the ``stop`` op, on end of
stdin, or on SIGTERM/SIGINT, and the process exits 0 once everything is
released. The two-process tests and the demo drive nodes this way.

It never outlives its parent: when the parent goes away (even before "ready",
even killed), the process is re-parented, which a watcher notices within
:data:`PARENT_POLL`, and a stdout nobody reads any more stops it too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from quicpair.actors.kernel.logs import configure_logging
from quicpair.actors.node import Node
from quicpair.config.settings import load_settings
from quicpair.protocol.codes import split_address
from quicpair.protocol.errors import QuicpairError

from .control import Controller, decode_request, error_reply

__all__ = ["main", "parse_overrides"]


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` items (value in TOML/JSON syntax, or a bare string) -> overrides."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise SystemExit(f"--set {item!r}: expected section.key=value, e.g. pairing.step_timeout=5")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


#: How often the process checks that its parent is still there.
PARENT_POLL = 0.2


class _Writer:
    """JSON lines to stdout; a reader that went away (EPIPE) asks the process to stop."""

    def __init__(self, stream: TextIO, gone: threading.Event) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._gone = gone

    def write(self, obj: Any) -> None:
        with self._lock:
            try:
                self._stream.write(json.dumps(obj, sort_keys=True) + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._gone.set()


def _watch_parent(stopping: threading.Event) -> None:
    """Set ``stopping`` once this process's parent has gone (it was re-parented)."""
    parent = os.getppid()

    def watch() -> None:
        while not stopping.wait(PARENT_POLL):
            if os.getppid() != parent:
                stopping.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


#: Bound on the wait for actor threads to end after Node.stop() (they end within microseconds).
STOP_JOIN_TIMEOUT = 5.0


def _join_actor_threads(timeout: float) -> None:
    """Wait for the actor threads still finishing after Node.stop() returned.

    pykka answers a stop before the actor's thread runs its teardown, where a
    supervised actor logs ``actor.exited``; closing the log file under it lost
    that line and printed a ValueError traceback on stderr. "stopped" means
    every thread is gone.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.nodehost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--home", required=True, type=Path, help="the node's home directory")
    parser.add_argument("--config", type=Path, help="a settings file (TOML)")
    parser.add_argument("--listen", help="host:port to listen on (port 0: any)")
    parser.add_argument("--name", help="the device name peers see")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--log", type=Path, help="append logs here instead of stderr")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    _watch_parent(stopping)
    out = _Writer(sys.stdout, stopping)
    log_stream: TextIO = open(args.log, "a", encoding="utf-8") if args.log else sys.stderr  # noqa: SIM115
    try:
        overrides = parse_overrides(args.set)
        node_section = overrides.setdefault("node", {})
        if args.listen:
            host, port = (
                split_address(args.listen) if not args.listen.endswith(":0") else (args.listen[:-2], 0)
            )
            node_section.update(listen_host=host.strip("[]"), listen_port=port)
        if args.name:
            node_section["name"] = args.name
        settings = load_settings(args.config, **overrides)
        configure_logging(level=settings.log.level, fmt="json", stream=log_stream)
        node = Node(args.home, settings).start()
    except (QuicpairError, ValueError) as exc:
        out.write({"event": "failed", "error": error_reply(None, exc)["error"]})
        return 1

    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    controller = Controller(node, stopping.set)
    ready = Controller(node, stopping.set).handle({"id": None, "op": "info"})["result"]
    out.write({"event": "ready", **ready})

    def serve(request: dict[str, Any]) -> None:
        out.write(controller.handle(request))

    def read_stdin() -> None:
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                request = decode_request(line)
            except QuicpairError as exc:
                out.write(error_reply(None, exc))
                continue
            pool.submit(serve, request)
        stopping.set()

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="control") as pool:
        threading.Thread(target=read_stdin, name="control-stdin", daemon=True).start()
        stopping.wait()
        node.stop()
    _join_actor_threads(STOP_JOIN_TIMEOUT)
    out.write({"event": "stopped"})
    if args.log:
        log_stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
