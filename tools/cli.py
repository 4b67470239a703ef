"""The ``quicpair`` command: set up a node, run it as a daemon, pair devices, look at them.

    quicpair init --name laptop        # create ~/.quicpair and this device's identity
    quicpair run                       # the node, in the foreground (logs on stderr)
    quicpair pair --qr                 # on one device: shows a code, waits for the other
    quicpair join 'quicpair:pair?...'  # on the other: pairs with it
    quicpair devices                   # who this device is paired with
    quicpair send laptop 'hello'       # and links, receive, unpair (tools/cli_links.py)

Commands that act on the node (pair, join, devices, status, stop, and the link
commands) talk to the daemon of the home over its control socket (tools/daemon.py); ``--oneshot``
runs a temporary node in this process instead, for one command. Every
QuicpairError ends the command with one line, ``quicpair: error: <message>``,
and an exit status that tells its class (:data:`EXIT_CODES`); never a
traceback for something a person can fix.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

from quicpair.protocol.errors import ConfigError, IdentityError, QuicpairError, UsageError

from .cli_links import MessageError, UnknownPeer, add_link_commands, peer_completer, printable, resolve_peer
from .client import CALL_WAIT, ControlClient, DaemonError, DaemonUnreachable, NoDaemon, unwrap_reply

# argparse looks up every message's translation on disk (gettext.find stats the locale
# directories at each call, ~40 calls per command line): the same translations, remembered.
setattr(argparse, "_", functools.lru_cache(maxsize=None)(getattr(argparse, "_")))  # noqa: B009, B010

# Only what every command needs is imported above: the standard library, the control
# client and the error tree. A command that needs a node, the settings or the crypto
# imports them itself, so `quicpair status` answers in tens of milliseconds
# (docs/BENCHMARKS.md, "Command line").

__all__ = ["EXIT_CODES", "StatusLine", "build_parser", "exit_code_for", "main"]

#: Exit status of the command for each class of error (by class name, so that an
#: error reported by the daemon maps like the same error raised here).
EXIT_CODES: dict[str, int] = {
    "UsageError": 2,
    "CodeFormatError": 3,
    "PairingFailed": 4,
    "PeerUnreachable": 5,
    "NotTransmitted": 5,  # a PeerUnreachable: the daemon reports the subclass by name
    "NotAcknowledged": 5,
    "RegistryError": 6,
    "IdentityError": 6,
    "ConfigError": 6,
    "NoDaemon": 7,
    "DaemonRunning": 8,
    UnknownPeer.__name__: 9,
    MessageError.__name__: 2,  # a MESSAGE that is not UTF-8, not base64 or too large
    "AddressInUse": 10,
}
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``receive`` got no message (within --timeout, or none was queued).
EXIT_NOTHING_RECEIVED = 11
CONFIG_FILE = "config.toml"
IDENTITY_FILE = "identity.pem"  # actors/node.py's name, repeated: importing it costs the whole node
REGISTRY_FILE = "registry.sqlite3"
#: Extra time a waiting request gets beyond its own timeout, for the reply to arrive.
_REPLY_SLACK = 5.0
#: The longest wait one control request may ask for (tools/control.py refuses more).
_MAX_REQUEST_TIMEOUT = 600.0
#: A join without --timeout: the node's own bound (6 steps + resolve, 90 s by default).
_JOIN_WAIT = 90.0
#: How often a status line on a terminal is redrawn.
_TICK = 0.25

_EPILOG = """\
exit status:
  0    success
  1    any other error (including an unexpected reply from the daemon)
  2    usage: a wrong option or argument, a request that cannot work as given (a bare code
       with no address and no mDNS, this device's own address), or a `send` MESSAGE that
       cannot be sent as given
  3    the code or pairing URI is not valid (CodeFormatError)
  4    the pairing failed: wrong code, expired, used up, cancelled, busy, SAS refused,
       timed out... (PairingFailed)
  5    the other device could not be reached (PeerUnreachable)
  6    the home cannot be used: missing, not yours, identity, registry (also a failed
       write: disk full) or settings (IdentityError, RegistryError, ConfigError)
  7    no daemon runs for this home (start one: quicpair run; or use --oneshot),
       or one holds it but its control socket does not answer (its pid is named)
  8    a daemon already serves this home (quicpair run refuses to start a second one)
  9    PEER is not one paired device: unknown, unpaired, or a name or fingerprint several have
  10   the UDP port is in use by another program (choose another with --listen HOST:PORT)
  11   receive: no message arrived
  70   run: the node failed (an actor kept crashing; supervision gave up)
  74   run: the home, identity key or registry vanished or was replaced under the daemon
  130  interrupted (Ctrl-C); an open code is cancelled

The home is $QUICPAIR_HOME, or ~/.quicpair. Settings are read from --config, or
<home>/config.toml when it exists, over the built-in defaults (config/defaults.toml).
"""
_SUB_EPILOG = "exit status: 0 on success; `quicpair --help` lists the others."


#: A pairing that failed because this device could not store it is a registry write
#: failure (6), like every other one; the other device's failure stays a failed pairing (4).
_STORAGE_ERROR = "STORAGE_ERROR"


def exit_code_for(exc: BaseException) -> int:
    """The documented exit status for an error raised here or reported by the daemon."""
    code = getattr(exc, "code", None)
    if (getattr(code, "name", code) == _STORAGE_ERROR) and not getattr(exc, "remote", False):
        return EXIT_CODES["RegistryError"]
    if isinstance(exc, DaemonError):
        return EXIT_CODES.get(exc.kind, EXIT_ERROR)
    for cls in type(exc).__mro__:
        if cls.__name__ in EXIT_CODES:
            return EXIT_CODES[cls.__name__]
    return EXIT_ERROR


# -- talking to a node ------------------------------------------------------------------


class _InProcessNode:
    """A temporary node in this process (``--oneshot``), behind the same requests as the daemon."""

    def __init__(self, home: Path, settings: Any) -> None:
        from quicpair.actors.node import Node

        from .control import Controller
        from .daemon import claim_home

        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(claim_home(home))
            node = Node(home, settings).start()
            self._stack.callback(node.stop)
        except BaseException:
            self._stack.close()
            raise
        self._controller = Controller(node, lambda: None)

    def call(self, op: str, *, wait: float = CALL_WAIT, **fields: Any) -> Any:
        return unwrap_reply(self._controller.handle({"id": None, "op": op, **fields}))

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def _node(args: argparse.Namespace) -> Iterator[ControlClient | _InProcessNode]:
    if getattr(args, "oneshot", False):
        from quicpair.actors.kernel.logs import configure_logging

        settings = _settings(args, log={"level": "error"})
        configure_logging(level=settings.log.level, fmt=settings.log.format)
        node: ControlClient | _InProcessNode = _InProcessNode(args.home, settings)
    else:
        try:
            node = ControlClient(args.home)
        except DaemonUnreachable:
            raise  # a daemon holds the home: --oneshot would be refused too
        except NoDaemon as exc:
            hint = " (or add --oneshot to run a node just for this command)" if "oneshot" in args else ""
            raise NoDaemon(f"{exc}{hint}") from None
    try:
        yield node
    finally:
        node.close()


def _settings(args: argparse.Namespace, **overrides: dict[str, Any]) -> Any:
    """The settings file (--config, else <home>/config.toml if present), then the options."""
    from quicpair.config.settings import load_settings

    path = args.config
    if path is None and (args.home / CONFIG_FILE).is_symlink():
        # Files in the home are never followed (a link could expose another file in errors).
        raise IdentityError(f"{args.home / CONFIG_FILE} is a symbolic link; not following it")
    if path is None and _is_file(args.home / CONFIG_FILE):
        path = args.home / CONFIG_FILE
    layered: dict[str, dict[str, Any]] = {}
    for section, key, value in getattr(args, "set", None) or []:
        layered.setdefault(section, {})[key] = value
    listen = getattr(args, "listen", None)
    if listen is not None:
        given = layered.get("node", {})
        clash = sorted({"listen_host", "listen_port"} & set(given))
        if clash:
            raise UsageError(
                f"--listen and --set node.{clash[0]} both say where to listen; give one of them"
            )
        layered.setdefault("node", {}).update(listen_host=listen[0], listen_port=listen[1])
    for section, values in overrides.items():
        layered.setdefault(section, {}).update(values)
    return load_settings(path, **layered)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but a file we may not look at is a ConfigError, not a traceback."""
    try:
        return path.is_file()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _check_home_access(home: Path) -> None:
    """IdentityError (one line, exit 6) for a home this user cannot read, write or enter."""
    try:
        os.stat(home)
    except FileNotFoundError:
        return  # init creates it; the other commands say it has no identity or no daemon
    except OSError as exc:
        raise IdentityError(f"cannot use {home} as the node's home: {exc.strerror}") from exc
    if not os.access(home, os.R_OK | os.W_OK | os.X_OK):
        raise IdentityError(
            f"cannot use {home} as the node's home: permission denied (run quicpair as the user who owns it)"
        )


# -- output ---------------------------------------------------------------------------------


def _out(args: argparse.Namespace, obj: Any, lines: Sequence[str]) -> None:
    """One JSON line with --json, else the human lines; flushed (a script may be waiting)."""
    text = json.dumps(obj, sort_keys=True) if args.json else "\n".join(lines)
    print(text, flush=True)


class StatusLine:
    """One line on a terminal that says what a waiting command is doing, redrawn in place.

    Only on a terminal and never with --json: scripts and logs get no carriage returns.
    """

    def __init__(self, args: argparse.Namespace, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.active = not args.json and self._stream.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        if self.active:
            self._stream.write("\r\x1b[K" + text)
            self._stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False


def _device_lines(device: dict[str, Any], headline: str) -> list[str]:
    lines = [
        f"{headline} {printable(device['name'])} ({device['fingerprint']}), {device['state']}",
        f"  NodeId       {device['node_id']}",
        f"  Paired as    {device['role']}",
        f"  Addresses    {', '.join(device['addresses']) or '-'}",
        f"  Send key     {device['send_key_fingerprint']}  (the other device shows it as its receive key)",
        f"  Receive key  {device['receive_key_fingerprint']}",
    ]
    if device.get("sas"):
        lines.insert(2, f"  SAS          {' '.join(device['sas'])}  (the other device shows the same words)")
    return lines


def _ask_sas(args: argparse.Namespace, check: dict[str, Any], status: StatusLine) -> bool:
    """Show the SAS words and read the person's answer (y/N) from stdin; EOF is no."""
    status.clear()
    name = printable(check["name"]) if check.get("name") else "the other device"
    who = f"{name} ({check['fingerprint']})"
    if args.json:
        print(json.dumps({"event": "sas_check", **check}, sort_keys=True), flush=True)
    else:
        print(f"SAS   {' '.join(check['sas'])}", flush=True)
        sys.stdout.write(f"Does {who} show these same four words? [y/N] ")
        sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes", "true")


# -- commands -------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from quicpair.actors.node import prepare_home
    from quicpair.config.settings import load_settings
    from quicpair.protocol.identity import Identity

    prepare_home(args.home)
    path = args.home / IDENTITY_FILE
    created = not path.exists()
    identity = Identity.load_or_create(path)
    config = args.home / CONFIG_FILE
    if args.name is not None:
        load_settings(node={"name": args.name})  # validates the name before anything is written
        if not config.exists():
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                # JSON's string escapes are TOML's for every name the check above lets through.
                file.write(f"[node]\nname = {json.dumps(args.name, ensure_ascii=False)}\n")
        elif _settings(args).node.name != args.name:
            raise ConfigError(f"{config} already exists; change the name in its [node] section")
    name = _settings(args).node.name
    node_id = identity.node_id
    _out(
        args,
        {
            "home": str(args.home),
            "created": created,
            "node_id": node_id.text,
            "fingerprint": node_id.fingerprint,
            "name": name,
        },
        [
            f"{'Created' if created else 'Already set up:'} {args.home}",
            f"NodeId       {node_id.text}",
            f"Fingerprint  {node_id.fingerprint}",
            f"Name         {name}",
        ],
    )
    return EXIT_OK


def cmd_id(args: argparse.Namespace) -> int:
    from quicpair.protocol.identity import Identity

    path = args.home / IDENTITY_FILE
    if not path.exists():
        raise IdentityError(
            f"{args.home} has no identity yet; create one with: quicpair --home {args.home} init"
        )
    node_id = Identity.load(path).node_id
    name = _settings(args).node.name
    _out(
        args,
        {"node_id": node_id.text, "fingerprint": node_id.fingerprint, "name": name},
        [f"NodeId       {node_id.text}", f"Fingerprint  {node_id.fingerprint}", f"Name         {name}"],
    )
    return EXIT_OK


def _say(args: argparse.Namespace, obj: Any, lines: Sequence[str]) -> None:
    """``_out`` for the daemon: a terminal that hung up (EIO) must not end it; nobody reads it now."""
    try:
        _out(args, obj, lines)
    except OSError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences later lines and the flush at exit


def cmd_run(args: argparse.Namespace) -> int:
    if not args.init and not (args.home / IDENTITY_FILE).exists():
        # A mistyped --home must not quietly become a new device with a new identity.
        what = "does not exist" if not args.home.exists() else "has no identity"
        raise IdentityError(
            f"{args.home} {what}; create it with: quicpair --home {args.home} init "
            "(or start with: quicpair run --init)"
        )
    settings = _settings(args)
    key_log = settings.log.tls_key_log or os.environ.get("SSLKEYLOGFILE", "")
    if key_log:
        print(
            f"quicpair: WARNING: TLS secrets are written to {key_log} (tls_key_log / SSLKEYLOGFILE): "
            "anyone who reads it can decrypt this node's captured traffic",
            file=sys.stderr,
            flush=True,
        )
    from .daemon import run_daemon

    reread = lambda: _settings(args)  # noqa: E731 - SIGHUP reads the same file and options again

    def ready(info: dict[str, Any]) -> None:
        stop = f"quicpair --home {info['home']} stop"
        _say(
            args,
            {"event": "ready", **info, "stop_command": stop},
            [
                f"quicpair: node {info['fingerprint']} ({info['name']}) listening on "
                f"{info['host']}:{info['port']}, announcing {', '.join(info['addresses']) or 'no address'}",
                f"quicpair: control socket {info['control_socket']}; stop with Ctrl-C or: {stop}",
            ],
        )

    status = run_daemon(args.home, settings, on_ready=ready, reload=reread)
    _say(args, {"event": "stopped"}, ["quicpair: stopped"])
    return status


def _qr_text(uri: str, *, unicode: bool) -> str:
    """The URI as a QR code for a terminal: black modules on white, quiet zone included,
    with explicit ANSI colours so it scans on dark and light terminals alike."""
    import segno  # only when asked for: the one dependency just for this

    code = segno.make(uri, error="m")
    rows = [[bool(cell) for cell in row] for row in code.matrix_iter(scale=1, border=4)]
    lines = []
    if unicode:
        if len(rows) % 2:
            rows.append([False] * len(rows[0]))
        for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
            # Upper half block: foreground paints the top module, background the bottom one.
            cells = "".join(
                f"\x1b[38;5;{16 if t else 231}m\x1b[48;5;{16 if b else 231}m\u2580"
                for t, b in zip(top, bottom, strict=True)
            )
            lines.append(cells + "\x1b[0m")
    else:
        for row in rows:
            cells = "".join("\x1b[48;5;16m  " if dark else "\x1b[48;5;231m  " for dark in row)
            lines.append(cells + "\x1b[0m")
    return "\n".join(lines)


def _save_qr_png(uri: str, path: Path) -> None:
    import segno

    try:
        code = segno.make(uri, error="m")
        code.save(os.fspath(path), kind="png", scale=8, border=4, dark="#000000", light="#ffffff")
    except OSError as exc:
        raise UsageError(f"cannot write the QR code to {path}: {exc.strerror or exc}") from exc


def _clock(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 60}:{seconds % 60:02d}"


def cmd_pair(args: argparse.Namespace) -> int:
    from quicpair.protocol.codes import PairingUri

    status = StatusLine(args)
    with _node(args) as node:
        offer = node.call("pair", **({"verify": True} if args.verify else {}))
        nameplate = offer["nameplate"]
        addresses = PairingUri.parse(offer["uri"]).addresses
        if args.qr_png is not None:
            _save_qr_png(offer["uri"], args.qr_png)
        lines = [
            f"Code  {offer['code']}   (single use, valid {offer['expires_in'] / 60:g} min)",
            f"URI   {offer['uri']}",
        ]
        if args.qr:
            unicode = _can_encode("\u2580")
            lines += ["", _qr_text(offer["uri"], unicode=unicode), ""]
        if args.qr_png is not None:
            lines += [f"QR    saved to {args.qr_png}"]
        lines += [f"On the other device:  quicpair join '{offer['uri']}'"]
        if addresses:
            lines += [f"  or type the code:   quicpair join {offer['code']} --address {addresses[0]}"]
        if not status.active:
            lines += ["Waiting for the other device (Ctrl-C cancels the code)..."]
        _out(args, {"event": "code", **offer}, lines)
        limit = args.timeout if args.timeout is not None else offer["expires_in"] + 1.0
        expires = time.monotonic() + offer["expires_in"]
        settled = False
        try:
            device = _wait_offer(args, node, nameplate, limit, expires, status)
            settled = True
        except DaemonError as exc:
            settled = exc.code != "TIMEOUT"
            raise
        finally:
            status.clear()
            if not settled:  # nobody will read this code any more: close it now
                with contextlib.suppress(QuicpairError):
                    node.call("cancel_offer", nameplate=nameplate)
    _out(args, {"event": "paired", "device": device}, _device_lines(device, "Paired with"))
    return EXIT_OK


def _can_encode(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except UnicodeEncodeError:
        return False
    return True


def _wait_offer(
    args: argparse.Namespace,
    node: ControlClient | _InProcessNode,
    nameplate: int,
    limit: float,
    expires: float,
    status: StatusLine,
) -> Any:
    """The device that used the code, waiting up to ``limit`` s in requests the node accepts,
    answering SAS checks on the way."""
    deadline = time.monotonic() + limit
    remaining = limit
    while True:
        chunk = min(remaining, _TICK if status.active else _MAX_REQUEST_TIMEOUT)
        status.show(
            f"Waiting for the other device; the code expires in {_clock(expires - time.monotonic())} "
            "(Ctrl-C cancels it)"
        )
        try:
            result = node.call("wait_offer", nameplate=nameplate, timeout=chunk, wait=chunk + _REPLY_SLACK)
        except DaemonError as exc:
            remaining = round(deadline - time.monotonic(), 3)  # ms: it shows in the final message
            if exc.code != "TIMEOUT" or remaining <= 0:
                raise
            continue
        if "sas_check" not in result:
            return result
        check = result["sas_check"]
        node.call("confirm", session=check["session"], accept=_ask_sas(args, check, status))
        remaining = round(deadline - time.monotonic(), 3)


def _prompt_code() -> str:
    """Ask for the code on a terminal, the BIP39 words completed with Tab (readline)."""
    from quicpair.protocol.codes import WORDS

    try:
        import readline
    except ImportError:  # pragma: no cover - every Linux Python has it
        readline = None  # type: ignore[assignment]
    if readline is not None:

        def complete(text: str, state: int) -> str | None:
            found = [w for w in WORDS if w.startswith(text.lower())] if text and not text.isdigit() else []
            return found[state] if state < len(found) else None

        readline.set_completer(complete)
        readline.set_completer_delims(" -_.,")
        readline.parse_and_bind("tab: complete")
    try:
        return input("Code (Tab completes the words): ")
    except EOFError:
        raise UsageError("no code was entered") from None


def cmd_join(args: argparse.Namespace) -> int:
    from quicpair.protocol.codes import parse_code_or_uri

    code = args.code
    if code is None:
        if not sys.stdin.isatty():
            raise UsageError("give CODE_OR_URI (asked for only on a terminal)")
        code = _prompt_code()
    parse_code_or_uri(code)  # a mistyped code fails here, daemon or not
    fields: dict[str, Any] = {"code": code}
    if args.address is not None:
        fields["address"] = args.address
    if args.verify:
        fields["verify"] = True
    limit = args.timeout if args.timeout is not None else _JOIN_WAIT
    status = StatusLine(args)
    with _node(args) as node:
        session = node.call("join_start", **fields)["session"]
        try:
            device = _wait_join(args, node, session, limit, status)
        except BaseException:
            status.clear()
            with contextlib.suppress(QuicpairError):
                node.call("join_cancel", session=session)
            raise
        status.clear()
    _out(args, {"event": "paired", "device": device}, _device_lines(device, "Paired with"))
    return EXIT_OK


def _wait_join(
    args: argparse.Namespace,
    node: ControlClient | _InProcessNode,
    session: str,
    limit: float,
    status: StatusLine,
) -> Any:
    started = time.monotonic()
    deadline = started + limit
    status.show("Joining: starting")
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            from quicpair.protocol.errors import ErrorCode, PairingFailed

            raise PairingFailed(ErrorCode.TIMEOUT, f"no result within {limit:g} s")
        chunk = round(min(remaining, _TICK if status.active else _MAX_REQUEST_TIMEOUT), 3)
        result = node.call("join_wait", session=session, timeout=chunk, wait=chunk + _REPLY_SLACK)
        if result.get("pending"):
            status.show(f"Joining: {result['progress']} ({time.monotonic() - started:.0f} s)")
            continue
        if "sas_check" not in result:
            return result
        check = result["sas_check"]
        node.call("confirm", session=check["session"], accept=_ask_sas(args, check, status))
        deadline = time.monotonic() + limit  # the person's time does not count


def cmd_devices(args: argparse.Namespace) -> int:
    if args.oneshot:
        devices = _read_registry(args.home, args.pending)
    else:
        with _node(args) as node:
            devices = node.call("devices", include_pending=args.pending)
    if args.json:
        for device in devices:
            print(json.dumps(device, sort_keys=True), flush=True)
        return EXIT_OK
    rows = [("FINGERPRINT", "NAME", "STATE", "PAIRED AS", "SAS", "ADDRESSES")] + [
        (
            d["fingerprint"],
            printable(d["name"]),
            d["state"],
            d["role"],
            " ".join(d.get("sas") or ()) or "-",
            ", ".join(d["addresses"]) or "-",
        )
        for d in devices
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    table = ["  ".join([*(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)), row[5]]) for row in rows]
    print("\n".join(table if devices else ["No paired devices."]), flush=True)
    return EXIT_OK


def _read_registry(home: Path, pending: bool) -> list[dict[str, Any]]:
    """The registry read directly, for ``devices --oneshot``: no node, no network."""
    from quicpair.actors.pairing.device import Device
    from quicpair.actors.registry.actor import DeviceState, RegistryStore

    from .daemon import claim_home

    path = home / REGISTRY_FILE
    with claim_home(home):
        if not path.exists():
            return []
        states = [DeviceState.CONFIRMED] + ([DeviceState.PENDING] if pending else [])
        with RegistryStore(path) as store:
            return [Device.from_record(r).to_dict() for r in store.list(states)]


def cmd_status(args: argparse.Namespace) -> int:
    with _node(args) as node:
        info = node.call("info")
        counters = node.call("counters")
        devices = node.call("devices", include_pending=True)
        try:
            links: list[dict[str, Any]] | None = node.call("links")
        except DaemonError as exc:
            if exc.kind != "RequestError":
                raise
            links = None  # a node of a build without links
    confirmed = sum(d["state"] == "confirmed" for d in devices)
    names = {d["node_id"]: d["name"] for d in devices}
    lines = [
        f"Node       {info['fingerprint']} ({printable(info['name'])}), pid {info.get('pid', '?')}",
        f"NodeId     {info['node_id']}",
        f"Listening  {info['host']}:{info['port']}",
        f"Announces  {', '.join(info['addresses']) or '-'}",
        f"Devices    {confirmed} paired, {len(devices) - confirmed} pending",
    ]
    if links is not None:
        shown = [
            f"{printable(names.get(k['node_id'], '?'))} ({k['fingerprint']}) {k['state']}" for k in links
        ]
        lines.append(f"Links      {', '.join(shown) or '-'}")
    lines.append("Counters   " + (", ".join(f"{k}={v}" for k, v in counters.items()) or "-"))
    summary = {"confirmed": confirmed, "pending": len(devices) - confirmed}
    _out(args, {"info": info, "counters": counters, "devices": summary, "links": links}, lines)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    node = ControlClient(args.home)
    try:
        node.call("stop")
        if not node.wait_closed(CALL_WAIT + 5.0):
            raise QuicpairError(f"the daemon of {args.home} accepted stop but is still running")
    finally:
        node.close()
    _out(args, {"stopped": True}, [f"Stopped the daemon of {args.home}."])
    return EXIT_OK


def cmd_address(args: argparse.Namespace) -> int:
    with _node(args) as node:
        device = resolve_peer(node.call("devices"), args.peer)
        try:
            result = node.call("address", node_id=device["node_id"], action=args.action, address=args.address)
        except DaemonError as exc:
            if exc.code in ("UNKNOWN_PEER", "UNPAIRED"):
                raise UnknownPeer(str(exc)) from exc
            raise
    done = "Added" if args.action == "add" else "Removed"
    where = "to" if args.action == "add" else "from"
    _out(
        args,
        {**result, "fingerprint": device["fingerprint"]},
        [f"{done} {result['address']} {where} {printable(device['name'])} ({device['fingerprint']})."],
    )
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    script: str = argcomplete.shellcode(["quicpair"], shell=args.shell)  # type: ignore[attr-defined]
    print(script, end="", flush=True)
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------------


class _UsageProblem(Exception):
    """argparse found a usage error; main() prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`quicpair: error: ...`), raised, not printed."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("quicpair").strip()
        hint = f"quicpair {command} --help" if command else "quicpair --help"
        raise _UsageProblem(f"{message} (see: {hint})")


def _setting(text: str) -> tuple[str, str, Any]:
    key, sep, raw = text.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or not section or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.KEY=VALUE, e.g. pairing.step_timeout=5")
    try:
        value: Any = json.loads(raw)  # numbers, true/false, "strings"
    except json.JSONDecodeError:
        value = raw  # a bare string
    return section, name, value


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 0.0.0.0:47470 or [::]:0")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= _MAX_REQUEST_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected seconds, above 0 and at most {_MAX_REQUEST_TIMEOUT:g}"
        )
    return value


def _version() -> str:
    """The installed distribution's version (its metadata; the source of truth is setup.cfg)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quicpair")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """--version, reading the package metadata only when asked (it costs ~10 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"quicpair {_version()}", flush=True)
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``only``: build just that command's subparser (argparse costs ~3 ms a
    subparser, most of it gettext look-ups, and a command that answers at once has no time
    to spare). The full parser serves --help, completion and unknown commands."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given after the command must not be reset by the command's default.
    common.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="the node's home directory")
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="a settings file (TOML)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="output for scripts")
    node_opts = argparse.ArgumentParser(add_help=False)
    node_opts.add_argument(
        "--listen", type=_listen, metavar="HOST:PORT", help="where to listen (port 0: any)"
    )
    node_opts.add_argument(
        "--set",
        type=_setting,
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable)",
    )
    oneshot = argparse.ArgumentParser(add_help=False)
    oneshot.add_argument(
        "--oneshot",
        action="store_true",
        help="no daemon: run a temporary node in this process for this command",
    )
    stand_in = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    verify = argparse.ArgumentParser(add_help=False)
    verify.add_argument(
        "--verify",
        action="store_true",
        help="show the SAS words on both devices and pair only once both people confirm them "
        "(default: [pairing] verify)",
    )

    parser = _Parser(
        prog="quicpair",
        description="Pair two devices with a short code, then keep an authenticated, encrypted QUIC link.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--home", type=Path, help="the node's home (default: $QUICPAIR_HOME or ~/.quicpair)")
    parser.add_argument(
        "--config", type=Path, help="a settings file (default: <home>/config.toml if present)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (JSON lines)")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    # One-line usage errors in the subcommands too (parser_class).
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str,
        func: Callable[[argparse.Namespace], int],
        text: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return stand_in  # not built: its arguments go to a parser nobody uses
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            parents=cast(list[_Parser], [common, *parents]),
            epilog=_SUB_EPILOG,
        )
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create the home and this device's identity; print its NodeId")
    p.add_argument("--name", help="the name paired devices see (written to <home>/config.toml)")
    command("id", cmd_id, "print this device's NodeId and fingerprint")
    p = command(
        "run",
        cmd_run,
        "run the node as a daemon in the foreground (Ctrl-C or `quicpair stop` ends it)",
        [node_opts],
    )
    p.add_argument("--init", action="store_true", help="create the home and identity if there are none")
    p = command(
        "pair",
        cmd_pair,
        "open a pairing code, show it, and wait for the other device",
        [oneshot, node_opts, verify],
    )
    p.add_argument("--qr", action="store_true", help="also draw the pairing URI as a QR code")
    p.add_argument("--qr-png", type=Path, metavar="FILE", help="also save the QR code as a PNG image")
    p.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (default: the code's life)"
    )
    p = command(
        "join",
        cmd_join,
        "pair with the device that shows a code or pairing URI",
        [oneshot, node_opts, verify],
    )
    p.add_argument(
        "code",
        nargs="?",
        metavar="CODE_OR_URI",
        help="the code (e.g. 42-apple-brave-zebra) or the pairing URI; asked for when left out",
    )
    p.add_argument(
        "--address", metavar="HOST:PORT", help="where the other device listens (needed with a bare code)"
    )
    p.add_argument("--timeout", type=_seconds, metavar="S", help="give up after S seconds")
    p = command("devices", cmd_devices, "list paired devices", [oneshot])
    p.add_argument("--pending", action="store_true", help="include pairings not yet committed")
    command("status", cmd_status, "show the running node: identity, addresses, devices, counters")
    command("stop", cmd_stop, "stop the daemon of the home")
    add_link_commands(command, _seconds)
    p = command("address", cmd_address, "add or remove a stored address of a paired device by hand")
    peer = p.add_argument("peer", metavar="PEER", help="the paired device: NodeId, fingerprint or name")
    peer.completer = peer_completer  # type: ignore[attr-defined]
    p.add_argument("action", choices=("add", "remove"), help="add or remove the address")
    p.add_argument("address", metavar="HOST:PORT", help="where the device can be reached")
    p = command("completion", cmd_completion, "print the shell completion script (argcomplete)")
    p.add_argument("shell", nargs="?", default="bash", choices=("bash", "zsh", "fish", "tcsh"))
    return parser


_COMMANDS = frozenset(
    {"init", "id", "run", "pair", "join", "devices", "status", "stop"}
    | {"links", "send", "outbox", "receive", "unpair", "address", "completion"}
)


def _command_in(arguments: Sequence[str]) -> str | None:
    """The command word of ``arguments`` when it is a known one, past the global options."""
    takes_value = {"--home", "--config"}
    skip = False
    for word in arguments:
        if skip:
            skip = False
        elif word in takes_value:
            skip = True
        elif word.startswith("-"):
            if word in ("-h", "--help", "--version"):
                return None
        else:
            return word if word in _COMMANDS else None
    return None


def _print_error(err: TextIO, json_mode: bool, exc: BaseException, status: int) -> None:
    if json_mode:
        error: dict[str, Any] = {"type": getattr(exc, "kind", type(exc).__name__), "message": str(exc)}
        code = getattr(exc, "code", None)
        if code is not None:
            error["code"] = getattr(code, "name", code)
        print(json.dumps({"error": error, "exit_status": status}, sort_keys=True), file=err, flush=True)
    else:
        print(f"quicpair: error: {exc}", file=err, flush=True)


def main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status. Every error is one line on stderr."""
    err = stderr if stderr is not None else sys.stderr
    arguments = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in arguments
    parser = build_parser(None if "_ARGCOMPLETE" in os.environ else _command_in(arguments))
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: nothing else runs
        import argcomplete

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(arguments)
    except _UsageProblem as exc:
        _print_error(err, json_mode, UsageError(str(exc)), EXIT_USAGE)
        return EXIT_USAGE
    home = args.home or os.environ.get("QUICPAIR_HOME") or "~/.quicpair"
    args.home = Path(os.path.expanduser(home))
    try:
        _check_home_access(args.home)
        code: int = args.func(args)
        return code
    except QuicpairError as exc:
        status = exit_code_for(exc)
        _print_error(err, bool(args.json), exc, status)
        return status
    except PermissionError as exc:  # a file of the home we may not use: one line, like the others
        status = EXIT_CODES["IdentityError"]
        unusable = QuicpairError(f"cannot use {exc.filename}: {exc.strerror}")
        _print_error(err, bool(args.json), unusable, status)
        return status
    except KeyboardInterrupt:
        if args.json:
            _print_error(err, True, QuicpairError("interrupted"), EXIT_INTERRUPTED)
        else:
            print("\r\x1b[Kquicpair: interrupted" if err.isatty() else "quicpair: interrupted", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `quicpair devices | head`: the reader left, not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
