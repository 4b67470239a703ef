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
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from quicpair.actors.kernel.logs import configure_logging
from quicpair.actors.node import IDENTITY_FILE, REGISTRY_FILE, Node
from quicpair.actors.pairing.device import Device
from quicpair.actors.registry.actor import DeviceState, RegistryStore
from quicpair.config.settings import Settings, load_settings
from quicpair.protocol.codes import PairingUri, parse_code_or_uri
from quicpair.protocol.errors import ConfigError, IdentityError, PeerUnreachable, QuicpairError
from quicpair.protocol.identity import Identity

from .cli_links import MessageError, UnknownPeer, add_link_commands, printable
from .control import Controller
from .daemon import (
    CALL_WAIT,
    ControlClient,
    DaemonError,
    DaemonUnreachable,
    NoDaemon,
    claim_home,
    prepare_home,
    run_daemon,
    unwrap_reply,
)

__all__ = ["EXIT_CODES", "build_parser", "exit_code_for", "main"]

#: Exit status of the command for each class of error (by class name, so that an
#: error reported by the daemon maps like the same error raised here).
EXIT_CODES: dict[str, int] = {
    "CodeFormatError": 3,
    "PairingFailed": 4,
    "PeerUnreachable": 5,
    "RegistryError": 6,
    "IdentityError": 6,
    "ConfigError": 6,
    "NoDaemon": 7,
    "DaemonRunning": 8,
    UnknownPeer.__name__: 9,
    MessageError.__name__: 2,  # a MESSAGE that is not UTF-8, not base64 or too large
}
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CONFIG_FILE = "config.toml"
#: Extra time a waiting request gets beyond its own timeout, for the reply to arrive.
_REPLY_SLACK = 5.0
#: The longest wait one control request may ask for (tools/control.py refuses more).
_MAX_REQUEST_TIMEOUT = 600.0
#: A join without --timeout: the node bounds it (6 steps + resolve, 90 s by default).
_JOIN_WAIT = 600.0

_EPILOG = """\
exit status:
  0    success
  1    any other error (including an unexpected reply from the daemon)
  2    usage: a wrong option or argument, or a `send` MESSAGE that cannot be sent as given
  3    the code or pairing URI is not valid (CodeFormatError)
  4    the pairing failed: wrong code, expired, used up, busy, timed out... (PairingFailed)
  5    the other device could not be reached (PeerUnreachable)
  6    the home cannot be used: identity, registry (also a failed write: disk full) or settings
  7    no daemon runs for this home (start one: quicpair run; or use --oneshot),
       or one holds it but its control socket does not answer (its pid is named)
  8    a daemon already serves this home (quicpair run refuses to start a second one)
  9    PEER is not one paired device: unknown, unpaired, or a name or fingerprint several have
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

    def __init__(self, home: Path, settings: Settings) -> None:
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


def _settings(args: argparse.Namespace, **overrides: dict[str, Any]) -> Settings:
    """The settings file (--config, else <home>/config.toml if present), then the options."""
    path = args.config
    if path is None and _is_file(args.home / CONFIG_FILE):
        path = args.home / CONFIG_FILE
    layered: dict[str, dict[str, Any]] = {}
    for section, key, value in getattr(args, "set", None) or []:
        layered.setdefault(section, {})[key] = value
    listen = getattr(args, "listen", None)
    if listen is not None:
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


def _device_lines(device: dict[str, Any], headline: str) -> list[str]:
    return [
        f"{headline} {printable(device['name'])} ({device['fingerprint']}), {device['state']}",
        f"  NodeId       {device['node_id']}",
        f"  Our role     {device['role']}",
        f"  Addresses    {', '.join(device['addresses']) or '-'}",
        f"  Send key     {device['send_key_fingerprint']}  (the other device shows it as its receive key)",
        f"  Receive key  {device['receive_key_fingerprint']}",
    ]


def _qr_text(uri: str) -> str:
    """The URI as a QR code made of Unicode half blocks (ANSI colours if the terminal lacks them)."""
    import segno  # only when asked for: it is the one dependency just for this

    code = segno.make(uri, error="m")
    out = io.StringIO()
    code.terminal(out=out, compact=True, border=2)
    text = out.getvalue()
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        out = io.StringIO()
        code.terminal(out=out, compact=False, border=2)
        text = out.getvalue()
    return text.rstrip("\n")


# -- commands -------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    prepare_home(args.home)
    path = args.home / IDENTITY_FILE
    created = not path.exists()
    identity = Identity.load_or_create(path)
    config = args.home / CONFIG_FILE
    if args.name is not None:
        load_settings(node={"name": args.name})  # validates the name before anything is written
        if not config.exists():
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
    settings = _settings(args)
    reread = lambda: _settings(args)  # noqa: E731 - SIGHUP reads the same file and options again

    def ready(info: dict[str, Any]) -> None:
        _say(
            args,
            {"event": "ready", **info},
            [
                f"quicpair: node {info['fingerprint']} ({info['name']}) listening on "
                f"{info['host']}:{info['port']}, announcing {', '.join(info['addresses']) or 'no address'}",
                f"quicpair: control socket {info['control_socket']}; stop with Ctrl-C or: quicpair stop",
            ],
        )

    status = run_daemon(args.home, settings, on_ready=ready, reload=reread)
    _say(args, {"event": "stopped"}, ["quicpair: stopped"])
    return status


def cmd_pair(args: argparse.Namespace) -> int:
    with _node(args) as node:
        offer = node.call("pair")
        nameplate = offer["nameplate"]
        addresses = PairingUri.parse(offer["uri"]).addresses
        lines = [
            f"Code  {offer['code']}   (single use, valid {offer['expires_in'] / 60:g} min)",
            f"URI   {offer['uri']}",
        ]
        if args.qr:
            lines += ["", _qr_text(offer["uri"]), ""]
        lines += [f"On the other device:  quicpair join '{offer['uri']}'"]
        if addresses:
            lines += [f"  or type the code:   quicpair join {offer['code']} --address {addresses[0]}"]
        lines += ["Waiting for the other device (Ctrl-C cancels the code)..."]
        _out(args, {"event": "code", **offer}, lines)
        limit = args.timeout if args.timeout is not None else offer["expires_in"] + 1.0
        settled = False
        try:
            device = _wait_offer(node, nameplate, limit)
            settled = True
        except DaemonError as exc:
            settled = exc.code != "TIMEOUT"
            raise
        finally:
            if not settled:  # nobody will read this code any more: close it now
                with contextlib.suppress(QuicpairError):
                    node.call("cancel_offer", nameplate=nameplate)
    _out(args, {"event": "paired", "device": device}, _device_lines(device, "Paired with"))
    return EXIT_OK


def _wait_offer(node: ControlClient | _InProcessNode, nameplate: int, limit: float) -> Any:
    """The device that used the code, waiting up to ``limit`` s in requests the node accepts."""
    deadline = time.monotonic() + limit
    remaining = limit
    while True:
        chunk = min(remaining, _MAX_REQUEST_TIMEOUT)
        try:
            return node.call("wait_offer", nameplate=nameplate, timeout=chunk, wait=chunk + _REPLY_SLACK)
        except DaemonError as exc:
            remaining = round(deadline - time.monotonic(), 3)  # ms: it shows in the final message
            if exc.code != "TIMEOUT" or remaining <= 0:
                raise


def cmd_join(args: argparse.Namespace) -> int:
    uri = parse_code_or_uri(args.code)  # a mistyped code fails here, daemon or not
    if not uri.addresses and args.address is None:
        raise PeerUnreachable(
            "a code alone does not say where the other device is: add --address HOST:PORT "
            "(shown next to the code), or use the pairing URI or QR code"
        )
    fields: dict[str, Any] = {"code": args.code}
    if args.address is not None:
        fields["address"] = args.address
    if args.timeout is not None:
        fields["timeout"] = args.timeout
    wait = args.timeout + _REPLY_SLACK if args.timeout is not None else _JOIN_WAIT
    with _node(args) as node:
        device = node.call("join", wait=wait, **fields)
    _out(args, {"event": "paired", "device": device}, _device_lines(device, "Paired with"))
    return EXIT_OK


def cmd_devices(args: argparse.Namespace) -> int:
    if args.oneshot:
        devices = _read_registry(args.home, args.pending)
    else:
        with _node(args) as node:
            devices = node.call("devices", include_pending=args.pending)
    rows = [("FINGERPRINT", "NAME", "STATE", "ROLE", "ADDRESSES")] + [
        (d["fingerprint"], printable(d["name"]), d["state"], d["role"], ", ".join(d["addresses"]) or "-")
        for d in devices
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4]]) for row in rows]
    _out(args, devices, table if devices else ["No paired devices."])
    return EXIT_OK


def _read_registry(home: Path, pending: bool) -> list[dict[str, Any]]:
    """The registry read directly, for ``devices --oneshot``: no node, no network."""
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


# -- the parser -------------------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
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

    parser = argparse.ArgumentParser(
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
    parser.add_argument(
        "--version", action="version", version=f"quicpair {_version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        func: Callable[[argparse.Namespace], int],
        text: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[common, *parents], epilog=_SUB_EPILOG)
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create the home and this device's identity; print its NodeId")
    p.add_argument("--name", help="the name paired devices see (written to <home>/config.toml)")
    command("id", cmd_id, "print this device's NodeId and fingerprint")
    command(
        "run",
        cmd_run,
        "run the node as a daemon in the foreground (Ctrl-C or `quicpair stop` ends it)",
        [node_opts],
    )
    p = command(
        "pair", cmd_pair, "open a pairing code, show it, and wait for the other device", [oneshot, node_opts]
    )
    p.add_argument("--qr", action="store_true", help="also draw the pairing URI as a QR code")
    p.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (default: the code's life)"
    )
    p = command(
        "join", cmd_join, "pair with the device that shows a code or pairing URI", [oneshot, node_opts]
    )
    p.add_argument(
        "code", metavar="CODE_OR_URI", help="the code (e.g. 42-apple-brave-zebra) or the pairing URI"
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
    return parser


def main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits 2 itself on usage errors)."""
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(argv)
    home = args.home or os.environ.get("QUICPAIR_HOME") or "~/.quicpair"
    args.home = Path(os.path.expanduser(home))
    try:
        _check_home_access(args.home)
        code: int = args.func(args)
        return code
    except QuicpairError as exc:
        print(f"quicpair: error: {exc}", file=err, flush=True)
        return exit_code_for(exc)
    except PermissionError as exc:  # a file of the home we may not use: one line, like the others
        print(f"quicpair: error: cannot use {exc.filename}: {exc.strerror}", file=err, flush=True)
        return EXIT_CODES["IdentityError"]
    except KeyboardInterrupt:
        print("quicpair: interrupted", file=err, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `quicpair devices | head`: the reader left, not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
