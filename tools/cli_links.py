"""The command line's commands for paired links: ``links``, ``send``, ``receive``, ``unpair``.

    quicpair links                     # each paired device's link: role, state, connection
    quicpair send bob 'hello'          # PEER: a NodeId, a fingerprint (abcd-efgh) or a unique name
    quicpair send --queue bob 'later'  # kept durably until bob's node acknowledges it
    quicpair outbox                    # the queued messages still waiting
    quicpair receive --follow          # print messages as they arrive, until Ctrl-C
    quicpair unpair bob                # revoke; the peer is told now or at the next contact

They act on the daemon of the home (tools/daemon.py) through the control ops
of tools/control.py (``links``, ``send``, ``outbox``, ``messages``, ``unpair``,
and ``devices`` to resolve PEER); tools/cli.py registers them with
:func:`add_link_commands` and maps the errors raised here to exit statuses
(:class:`UnknownPeer` 9, :class:`MessageError` 2).

Text that comes from the other device (its name, its messages) is printed
with control characters escaped (``\\x1b``, ``\\n``...): a paired device
must not be able to drive the terminal, and one message stays one line.
``--json`` gives the exact data.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from quicpair.protocol.errors import QuicpairError

from .client import CALL_WAIT, MAX_REQUEST_LINE, ControlClient, DaemonError, NoDaemon

__all__ = [
    "EXIT_NOTHING_RECEIVED",
    "FOLLOW_POLL",
    "SEND_TIMEOUT",
    "UNPAIR_TIMEOUT",
    "CommandAdder",
    "MessageError",
    "UnknownPeer",
    "add_link_commands",
    "peer_completer",
    "printable",
    "resolve_peer",
]

# These commands only talk to the daemon, so this module imports no node, crypto or
# QUIC code (tools/cli.py's import rule); the node's own defaults are repeated here and
# tests/tools/test_cli.py checks they agree with actors/node.py and protocol/messages.py.
#: Node.send's default wait for a link that is down.
SEND_TIMEOUT = 10.0
#: Node.unpair's default wait for the peer's acknowledgement.
UNPAIR_TIMEOUT = 5.0
#: protocol/messages.py MAX_APP_PAYLOAD.
MAX_APP_PAYLOAD = 60_000
#: ``receive`` got nothing (tools/cli.py documents the exit statuses).
EXIT_NOTHING_RECEIVED = 11

#: How long one ``messages`` request of ``receive`` waits on the daemon. Ctrl-C is
#: deferred until the request in flight has answered, because the daemon hands it
#: the messages it takes from the queue whether or not we are still there to print
#: them: this bounds how long Ctrl-C takes, at two small requests a second while idle.
FOLLOW_POLL = 0.5
#: A fingerprint as NodeId.fingerprint writes it: two groups of four base32 characters.
_FINGERPRINT = re.compile(r"[a-z2-7]{4}-[a-z2-7]{4}")
#: A NodeId's text form: 52 lowercase base32 characters (protocol/identity.py).
_NODE_ID = re.compile(r"[a-z2-7]{52}")
#: Room in a control request line for everything but the payload (op, id, NodeId, timeout).
_REQUEST_OVERHEAD = 256


class UnknownPeer(QuicpairError):
    """PEER does not name exactly one paired device; `quicpair devices` lists them."""


class MessageError(QuicpairError):
    """The MESSAGE cannot be sent as given (not UTF-8, not base64, too large)."""


class CommandAdder(Protocol):
    """tools/cli.py's way to add a subcommand: a parser with the common options, bound to ``func``."""

    def __call__(
        self,
        name: str,
        func: Callable[[argparse.Namespace], int],
        text: str,
        parents: Sequence[argparse.ArgumentParser] = ...,
    ) -> argparse.ArgumentParser: ...


# -- helpers --------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` on one line, safe for a terminal: control characters and backslashes escaped."""
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text
    )


def resolve_peer(devices: Sequence[dict[str, Any]], peer: str) -> dict[str, Any]:
    """The one device of ``devices`` (as the ``devices`` op lists them) that ``peer`` names.

    ``peer`` is a NodeId (52 base32 characters), a fingerprint (``abcd-efgh``) or
    a name, tried in that order; a name matches exactly, else ignoring case.
    UnknownPeer when none matches or more than one does: a fingerprint is 40
    bits, which someone who wants to can match, and names are whatever each
    device calls itself, so an ambiguous PEER is refused, never guessed.
    """
    wanted = peer.strip()
    if _NODE_ID.fullmatch(wanted.lower()):
        for device in devices:
            if device["node_id"] == wanted.lower():
                return device
        raise UnknownPeer(f"no paired device has the NodeId {wanted.lower()}; `quicpair devices` lists them")
    if _FINGERPRINT.fullmatch(wanted.lower()):
        found = [d for d in devices if d["fingerprint"] == wanted.lower()]
        if len(found) > 1:
            ids = ", ".join(d["node_id"] for d in found)
            raise UnknownPeer(
                f"the fingerprint {wanted} matches {len(found)} paired devices; give the NodeId: {ids}"
            )
        if found:
            return found[0]
    found = [d for d in devices if d["name"] == wanted] or [
        d for d in devices if d["name"].casefold() == wanted.casefold()
    ]
    if len(found) > 1:
        fingerprints = ", ".join(d["fingerprint"] for d in found)
        raise UnknownPeer(
            f"{printable(wanted)!r} names {len(found)} paired devices ({fingerprints}); give the fingerprint"
        )
    if not found:
        kind = "fingerprint or name" if _FINGERPRINT.fullmatch(wanted.lower()) else "name"
        raise UnknownPeer(
            f"no paired device has the {kind} {printable(wanted)!r}; `quicpair devices` lists them"
        )
    return found[0]


def peer_completer(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Shell completion of PEER (argcomplete): the names and fingerprints the daemon knows."""
    home = getattr(parsed_args, "home", None) or os.environ.get("QUICPAIR_HOME") or "~/.quicpair"
    try:
        client = ControlClient(Path(os.path.expanduser(home)))
    except NoDaemon:
        return []
    try:
        devices = client.call("devices", wait=2.0)
    except QuicpairError:
        return []
    finally:
        client.close()
    found = [d["name"] for d in devices] + [d["fingerprint"] for d in devices]
    return [text for text in found if text.startswith(prefix)]


def _label(device: dict[str, Any]) -> str:
    return f"{printable(device['name'])} ({device['fingerprint']})"


@contextlib.contextmanager
def _daemon(args: argparse.Namespace) -> Iterator[ControlClient]:
    client = ControlClient(args.home)
    try:
        yield client
    finally:
        client.close()


def _resolve(node: ControlClient, peer: str) -> dict[str, Any]:
    return resolve_peer(node.call("devices"), peer)


def _call(node: ControlClient, op: str, wait: float, **fields: Any) -> Any:
    """A request about one peer; the node's "not paired" errors become UnknownPeer."""
    try:
        return node.call(op, wait=wait, **fields)
    except DaemonError as exc:
        if exc.code in ("UNKNOWN_PEER", "UNPAIRED"):  # unpaired between our lookup and the request
            raise UnknownPeer(str(exc)) from exc
        raise


class _Names:
    """NodeId -> name, from the ``devices`` op, asking ``device`` for one it did not list."""

    def __init__(self, node: ControlClient) -> None:
        self._node = node
        self._names: dict[str, str] = {
            d["node_id"]: d["name"] for d in node.call("devices", include_pending=True)
        }

    def __call__(self, node_id: str) -> str:
        if node_id not in self._names:  # paired since, or unpaired while its unpair is delivered
            device = self._node.call("device", node_id=node_id)
            self._names[node_id] = "?" if device is None else str(device["name"])
        return self._names[node_id]


def _out(args: argparse.Namespace, obj: Any, lines: Sequence[str]) -> None:
    """One JSON line with --json, else the human lines; flushed (a script may be waiting)."""
    text = json.dumps(obj, sort_keys=True) if args.json else "\n".join(lines)
    print(text, flush=True)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]


# -- commands -------------------------------------------------------------------------------


def cmd_links(args: argparse.Namespace) -> int:
    with _daemon(args) as node:
        names = _Names(node)
        links = [{**link, "name": names(link["node_id"])} for link in node.call("links")]
    if args.json:
        for link in links:
            print(json.dumps(link, sort_keys=True), flush=True)
        return 0
    rows = [("FINGERPRINT", "NAME", "ROLE", "STATE", "CONNECTION", "REMOTE")] + [
        (
            k["fingerprint"],
            printable(k["name"]),
            k["role"],
            k["state"],
            k["connection_id"] or "-",
            k["remote_address"] or "-",
        )
        for k in links
    ]
    _out(args, links, _table(rows) if links else ["No paired devices."])
    return 0


def _payload(args: argparse.Namespace) -> bytes:
    """The bytes to send: MESSAGE as UTF-8, or stdin as is; decoded from base64 with --base64."""
    if args.message == "-":
        # Base64 with line breaks takes at most ~4/3 x 1.03 of the payload: 4x bounds any
        # valid input and keeps a runaway pipe from filling memory.
        data = sys.stdin.buffer.read(4 * MAX_APP_PAYLOAD + 1)
        if len(data) > 4 * MAX_APP_PAYLOAD:
            raise MessageError(
                f"stdin holds more than {4 * MAX_APP_PAYLOAD} bytes; a message is at most {MAX_APP_PAYLOAD}"
            )
    else:
        try:
            data = args.message.encode("utf-8")
        except UnicodeEncodeError as exc:  # argv bytes that were not UTF-8 (surrogate escapes)
            raise MessageError(
                "MESSAGE is not UTF-8 text; pass the bytes on stdin (-) or with --base64"
            ) from exc
    if args.base64:
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MessageError(
                f"{'stdin' if args.message == '-' else 'MESSAGE'} is not base64: {exc}"
            ) from exc
    if len(data) > MAX_APP_PAYLOAD:
        raise MessageError(f"the message is {len(data)} bytes; at most {MAX_APP_PAYLOAD}")
    return data


def _payload_fields(payload: bytes) -> dict[str, Any]:
    """The ``send`` fields carrying ``payload``: text when it is UTF-8 and no longer so, else base64."""
    encoded = base64.b64encode(payload).decode("ascii")
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(json.dumps(text)) <= len(encoded) + 2:
        fields: dict[str, Any] = {"payload": text}
    else:
        fields = {"payload": encoded, "base64": True}
    size = len(json.dumps(fields)) + _REQUEST_OVERHEAD
    if size > MAX_REQUEST_LINE:
        # The control socket takes lines of at most 64 KiB: binary data, a third larger in
        # base64, fits up to ~48 KB; plain ASCII text up to the protocol's own limit.
        raise MessageError(
            f"the message needs a {size}-byte control request, more than the daemon takes "
            f"({MAX_REQUEST_LINE}); send less at a time"
        )
    return fields


def cmd_send(args: argparse.Namespace) -> int:
    fields = _payload_fields(_payload(args))
    timeout = args.timeout if args.timeout is not None else SEND_TIMEOUT
    if args.queue:
        fields["queue"] = True
    with _daemon(args) as node:
        device = _resolve(node, args.peer)
        result = _call(
            node, "send", timeout + CALL_WAIT, node_id=device["node_id"], timeout=timeout, **fields
        )
    kind = "queued" if args.queue else "sent"
    if args.json:
        fields_out = {kind: result[kind], "seq": result["seq"]}
        _out(args, {**fields_out, "node_id": device["node_id"], "fingerprint": device["fingerprint"]}, [])
    elif args.queue:
        # A sent message needs no words (it arrived); a queued one has not yet.
        _out(args, None, [f"Queued for {_label(device)}; it goes at the next contact (`quicpair outbox`)."])
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    with _daemon(args) as node:
        names = _Names(node)
        queued = [{**m, "name": names(m["node_id"])} for m in node.call("outbox")]
    now = time.time()
    rows = [("FINGERPRINT", "NAME", "SEQ", "BYTES", "QUEUED")] + [
        (
            m["fingerprint"],
            printable(m["name"]),
            str(m["seq"]),
            str(m["bytes"]),
            f"{max(now - m['queued_at'], 0.0):.0f} s ago",
        )
        for m in queued
    ]
    _out(args, queued, _table(rows) if queued else ["Nothing queued."])
    return 0


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C sets the event instead of raising (see FOLLOW_POLL); a second one raises at once."""
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_receive(args: argparse.Namespace) -> int:
    # Without --timeout: until Ctrl-C with --follow, else only what is queued now.
    default = math.inf if args.follow else 0.0
    limit: float = args.timeout if args.timeout is not None else default
    deadline = time.monotonic() + limit
    received = 0
    with _daemon(args) as node, _deferred_interrupt() as interrupted:
        names = _Names(node)
        while True:
            chunk = round(max(0.0, min(FOLLOW_POLL, deadline - time.monotonic())), 3)
            batch = node.call("messages", timeout=chunk, wait=chunk + CALL_WAIT)
            for message in batch:
                _print_message(args, message, names(message["node_id"]))
            received += len(batch)
            if interrupted.is_set():
                raise KeyboardInterrupt  # after printing what the daemon handed us: nothing lost
            if (batch and not args.follow) or time.monotonic() >= deadline:
                break
    if received:
        return 0
    waited = f"within {limit:g} s" if limit else "queued"
    if args.json:
        print(json.dumps({"received": 0, "waited": limit if limit != math.inf else None}), flush=True)
    else:
        print(f"quicpair: no message {waited}", file=sys.stderr, flush=True)
    return EXIT_NOTHING_RECEIVED


def _print_message(args: argparse.Namespace, message: dict[str, Any], name: str) -> None:
    fingerprint = message["fingerprint"]
    if message["text"] is not None:
        shown = printable(message["text"])
    else:
        size = len(base64.b64decode(message["base64"]))
        shown = f"[{size} bytes, not UTF-8; base64 {message['base64']}]"
    _out(
        args,
        {**message, "fingerprint": fingerprint, "name": name},
        [f"{fingerprint} {printable(name)}: {shown}"],
    )


def cmd_unpair(args: argparse.Namespace) -> int:
    timeout = args.timeout if args.timeout is not None else UNPAIR_TIMEOUT
    with _daemon(args) as node:
        device = _resolve(node, args.peer)
        result = _call(node, "unpair", timeout + CALL_WAIT, node_id=device["node_id"], timeout=timeout)
    delivered = bool(result["delivered"])
    told = (
        "it was told now and has removed this device too."
        if delivered
        else "it will be told at the next contact (kept until then, across restarts)."
    )
    _out(
        args,
        {"unpaired": device["node_id"], "fingerprint": device["fingerprint"], "delivered": delivered},
        [f"Unpaired {_label(device)}; {told}"],
    )
    return 0


# -- the parser -------------------------------------------------------------------------------

_PEER_HELP = "the paired device: its NodeId, its fingerprint (abcd-efgh) or its name if no other has it"


def add_link_commands(command: CommandAdder, seconds: Callable[[str], float]) -> None:
    """Add links, send, receive and unpair; ``seconds`` parses a --timeout value."""
    command("links", cmd_links, "show each paired device's link: role, state, connection, remote address")
    p = command("send", cmd_send, "send a message to a paired device over the link")
    peer = p.add_argument("peer", metavar="PEER", help=_PEER_HELP)
    peer.completer = peer_completer  # type: ignore[attr-defined]
    p.add_argument(
        "message",
        metavar="MESSAGE",
        help="the text (UTF-8); - reads the message from stdin, bytes as they are",
    )
    p.add_argument(
        "--base64", action="store_true", help="MESSAGE (or stdin) is base64: send the bytes it encodes"
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help=f"wait up to S seconds for the device to acknowledge it (default {SEND_TIMEOUT:g})",
    )
    p.add_argument(
        "--queue",
        action="store_true",
        help="queue it durably instead: kept (across restarts) until the device acknowledges it",
    )
    command("outbox", cmd_outbox, "list the queued messages (send --queue) still waiting for their device")
    p = command(
        "receive",
        cmd_receive,
        f"print the messages paired devices sent (what is queued now); exit {EXIT_NOTHING_RECEIVED} if none",
    )
    p.add_argument(
        "--follow", action="store_true", help="keep printing messages as they arrive, until Ctrl-C"
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help="wait up to S seconds for a first message; with --follow, stop after S seconds",
    )
    p = command("unpair", cmd_unpair, "remove a paired device, and tell it (now, or at the next contact)")
    peer = p.add_argument("peer", metavar="PEER", help=_PEER_HELP)
    peer.completer = peer_completer  # type: ignore[attr-defined]
    p.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help=f"wait up to S seconds for the device to acknowledge (default {UNPAIR_TIMEOUT:g})",
    )
