"""A tiny process around quicpair.actors.discovery.mdns: advertise, resolve and watch from a shell.

For people debugging a LAN::

    python -m quicpair.tools.mdns_probe watch --duration 30
    python -m quicpair.tools.mdns_probe resolve-node <nodeid> --timeout 5
    python -m quicpair.tools.mdns_probe resolve-nameplate 42
    python -m quicpair.tools.mdns_probe advertise --node <nodeid> --port 4433 \
        --address 192.0.2.7 --nameplate 42

For tests (one process per network namespace, see tests/discovery/test_discovery.py):
``serve`` reads one JSON request per line on stdin and writes one JSON object
per line on stdout: replies ``{"id": .., "ok": true, ...}`` (or ``"ok": false,
"error": ..``), and events ``{"event": "watch", "node": .., "endpoints": ..}``.
Requests (``op``): ``start`` {node, port, addresses, interfaces?, advertise?,
wait? (for the name probe, default true)},
``nameplates`` {nameplates}, ``addresses`` {addresses}, ``resolve_node`` {node,
timeout}, ``resolve_nameplate`` {nameplate, timeout}, ``watch``, ``rogue``
{name, port, addresses, txt_hex} (advertise one more service with arbitrary
TXT bytes, as a misbehaving or hostile host would), ``unrogue`` (withdraw
them all), ``stop``.

Logs (structlog JSON) go to stderr; stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from quicpair.actors.discovery.mdns import SERVICE_TYPE, Discovery
from quicpair.actors.kernel.logs import configure_logging
from quicpair.protocol.errors import QuicpairError
from quicpair.protocol.identity import Identity, NodeId

__all__ = ["Probe", "main"]

#: One-shot commands need some identity to filter "ourselves" out; it is never advertised.
_LOOKER_PORT = 9


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


class Probe:
    """Runs the ``serve`` protocol: one Discovery, plus an optional rogue advertiser."""

    def __init__(self, *, interfaces: Sequence[str] | None = None) -> None:
        self._interfaces = list(interfaces) if interfaces is not None else None
        self.discovery: Discovery | None = None
        self._rogue: AsyncZeroconf | None = None

    def _need(self) -> Discovery:
        if self.discovery is None:
            raise RuntimeError("send start first")
        return self.discovery

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        started = time.monotonic()
        if op == "start":
            self.discovery = Discovery(interfaces=request.get("interfaces", self._interfaces))
            advertise = bool(request.get("advertise", True))
            await self.discovery.start(
                NodeId.from_text(request["node"]),
                int(request["port"]),
                request.get("addresses", []),
                advertise=advertise,
            )
            if advertise and request.get("wait", True):
                await self.discovery.advertised()
            return {"advertised_ms": _ms(started)}
        if op == "nameplates":
            await self._need().set_nameplates({int(n) for n in request["nameplates"]})
            return {}
        if op == "addresses":
            await self._need().update_addresses(list(request["addresses"]))
            return {}
        if op == "resolve_node":
            node = NodeId.from_text(request["node"])
            found = await self._need().resolve_node(node, float(request["timeout"]))
            return {"endpoints": found, "elapsed_ms": _ms(started)}
        if op == "resolve_nameplate":
            nodes = await self._need().resolve_nameplate(int(request["nameplate"]), float(request["timeout"]))
            return {"nodes": [[n.text, eps] for n, eps in nodes], "elapsed_ms": _ms(started)}
        if op == "watch":
            self._need().watch(_emit_watch)
            return {}
        if op == "rogue":
            await self._start_rogue(request)
            return {}
        if op == "unrogue":
            await self._stop_rogue()
            return {}
        if op == "stop":
            await self.close()
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def _start_rogue(self, request: dict[str, Any]) -> None:
        """Add one service with whatever TXT bytes the request carries (raw zeroconf)."""
        if self._rogue is None:
            self._rogue = AsyncZeroconf(interfaces=self._interfaces) if self._interfaces else AsyncZeroconf()
        name = str(request["name"])
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=int(request["port"]),
            properties=bytes.fromhex(request["txt_hex"]),
            server=f"{name}.local.",
            parsed_addresses=list(request["addresses"]),
        )
        # No probe: a rogue does not care about name conflicts, and tests need no 1 s wait.
        await self._rogue.async_register_service(info, cooperating_responders=True)

    async def _stop_rogue(self) -> None:
        rogue, self._rogue = self._rogue, None
        if rogue is not None:
            await rogue.async_close()

    async def close(self) -> None:
        await self._stop_rogue()
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None


def _emit_watch(peer: NodeId, endpoints: list[str]) -> None:
    _emit({"event": "watch", "node": peer.text, "endpoints": endpoints})


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


async def serve(interfaces: Sequence[str] | None) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    probe = Probe(interfaces=interfaces)
    try:
        while line := await reader.readline():
            if not line.strip():
                continue
            request: dict[str, Any] = {}
            try:
                request = json.loads(line)
                reply = await probe.handle(request)
                _emit({"id": request.get("id"), "ok": True, **reply})
            except (QuicpairError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                _emit({"id": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            if request.get("op") == "stop":
                break
    finally:
        await probe.close()
    return 0


async def _one_shot(args: argparse.Namespace) -> int:
    discovery = Discovery(interfaces=args.interface or None)
    if args.command == "advertise":
        node = NodeId.from_text(args.node)
        await discovery.start(node, args.port, args.address)
        await discovery.advertised()
        if args.nameplate:
            await discovery.set_nameplates(set(args.nameplate))
    else:
        node = Identity.generate().node_id
        await discovery.start(node, _LOOKER_PORT, [], advertise=False)
    try:
        if args.command == "resolve-node":
            print("\n".join(await discovery.resolve_node(NodeId.from_text(args.node), args.timeout)))
        elif args.command == "resolve-nameplate":
            for peer, endpoints in await discovery.resolve_nameplate(args.nameplate, args.timeout):
                print(peer.text, " ".join(endpoints))
        else:
            if args.command == "watch":
                discovery.watch(lambda peer, eps: print(peer.text, " ".join(eps), flush=True))
            await asyncio.sleep(args.duration)
    finally:
        await discovery.stop()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdns_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--interface", action="append", default=[], help="an interface address (repeatable)")
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="JSON lines on stdin/stdout (tests)")
    p = sub.add_parser("advertise", help="advertise a node until --duration ends")
    p.add_argument("--node", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--address", action="append", default=[])
    p.add_argument("--nameplate", action="append", type=int, default=[])
    p.add_argument("--duration", type=float, default=3600.0)
    p = sub.add_parser("resolve-node", help="print a node's endpoints")
    p.add_argument("node")
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("resolve-nameplate", help="print nodes with this nameplate open")
    p.add_argument("nameplate", type=int)
    p.add_argument("--timeout", type=float, default=5.0)
    p = sub.add_parser("watch", help="print nodes as they announce themselves")
    p.add_argument("--duration", type=float, default=3600.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level=args.log_level, fmt="json", stream=sys.stderr)
    try:
        if args.command == "serve":
            return asyncio.run(serve(args.interface or None))
        return asyncio.run(_one_shot(args))
    except KeyboardInterrupt:
        return 130
    except QuicpairError as exc:
        print(f"mdns_probe: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
