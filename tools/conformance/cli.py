"""``python -m quicpair.tools.conformance``: check a running node against PROTOCOL.md.

    python -m quicpair.tools.conformance --address 127.0.0.1:47470 --node-id <NodeId text> \\
        --offer-command "quicpair --home H --json pair --timeout 120" \\
        --join-command "quicpair --home H join {uri} --timeout 30"

Prints a pass/fail/skip table by section (``--json``: one JSON document);
exits 0 only when no check failed, 1 when one did, 2 on bad arguments.
docs/CONFORMANCE.md lists every check: what it sends, what it expects, and why.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from quicpair.protocol.codes import split_address
from quicpair.protocol.errors import CodeFormatError, QuicpairError
from quicpair.protocol.identity import NodeId

from . import admission, framing, initiating, link, pairing
from .kit import Kit
from .report import Report
from .target import Target
from .wire import resolve

__all__ = ["build_parser", "main", "run"]

SECTIONS = ("admission", "framing", "pairing", "link", "initiator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.conformance",
        description="Check a running quicpair node (one the kit did not start) against docs/PROTOCOL.md, "
        "over the wire only.",
        epilog="docs/CONFORMANCE.md describes every check.",
    )
    parser.add_argument("--address", required=True, metavar="HOST:PORT", help="where the node listens")
    parser.add_argument("--node-id", required=True, metavar="NODEID", help="the node's NodeId (text form)")
    parser.add_argument(
        "--offer-command",
        metavar="CMD",
        help="shell command that makes the node offer a pairing code and prints it (code or URI); "
        "it keeps running while the code is in use, the kit ends it",
    )
    parser.add_argument(
        "--join-command",
        metavar="CMD",
        help="shell command that makes the node join a code the kit offers: {uri}, {code}, {address}, {node} "
        "are replaced (quoted)",
    )
    parser.add_argument(
        "--code-expiry",
        type=float,
        metavar="S",
        help="the node's code lifetime, to check expiry (wait S+1 s)",
    )
    parser.add_argument(
        "--max-attempts", type=int, default=3, metavar="N", help="the node's attempts per code (default 3)"
    )
    parser.add_argument(
        "--kit-listen", default="127.0.0.1", metavar="HOST", help="where the kit listens when the node joins"
    )
    parser.add_argument(
        "--vectors", type=Path, metavar="FILE", help="docs/vectors.json (default: the source tree's)"
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)"
    )
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="wait for each answer of the node (default 5)",
    )
    parser.add_argument(
        "--check-timeout", type=float, default=30.0, metavar="S", help="bound on one check (default 30)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of kit errors")
    return parser


async def run(kit: Kit, sections: Sequence[str], vectors_path: Path | None) -> None:
    """Run the sections in their fixed order (later ones use the pairings earlier ones made)."""
    vectors: list[framing.Vector] | None = None
    why = "no vectors file: give --vectors docs/vectors.json"
    if vectors_path is not None:
        try:
            vectors = framing.load_vectors(vectors_path)
        except (OSError, ValueError, KeyError) as exc:
            why = f"cannot read {vectors_path}: {exc}"
    if "admission" in sections:
        await admission.run(kit)
    if "framing" in sections:
        await framing.run_pair(kit, vectors, why)
    if "pairing" in sections or "link" in sections:
        await pairing.run(kit)
    if "link" in sections:
        await link.run(
            kit, vectors if "framing" in sections else None, why if "framing" in sections else "--only"
        )
    if "initiator" in sections:
        await initiating.run(kit)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = split_address(args.address)
        node_id = NodeId.from_text(args.node_id)
    except (CodeFormatError, QuicpairError, ValueError) as exc:
        parser.error(str(exc))
    try:
        address = resolve(host, port)
    except OSError as exc:
        parser.error(f"cannot resolve {host}: {exc}")
    target = Target(
        host=host,
        port=port,
        node_id=node_id,
        address=address,
        offer_command=args.offer_command,
        join_command=args.join_command,
        code_expiry=args.code_expiry,
        max_attempts=args.max_attempts,
        kit_host=args.kit_listen,
    )
    # aioquic and quicpair log to stdlib loggers: keep the kit's output to its table.
    logging.getLogger("quic").setLevel(logging.CRITICAL)
    logging.getLogger("quicpair").setLevel(logging.CRITICAL)
    report = Report(check_timeout=args.check_timeout, verbose=args.verbose)
    kit = Kit(target=target, report=report, step=args.step_timeout)
    sections = args.only or SECTIONS
    started = time.monotonic()
    asyncio.run(run(kit, sections, args.vectors or framing.default_vectors()))
    elapsed = time.monotonic() - started
    shown = {"address": target.shown, "node_id": node_id.text, "seconds": f"{elapsed:.1f}"}
    if args.json:
        print(report.to_json(shown))
    else:
        print(f"quicpair conformance kit: node {node_id.text} at {target.shown} ({elapsed:.1f} s)")
        print(report.table())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
