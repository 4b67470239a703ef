"""argparse types shared by the tools' own command lines (relay, impairment)."""

from __future__ import annotations

import argparse

from quicpair.protocol.codes import split_address

__all__ = ["host_port"]


def host_port(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[addr]:port``); port 0 allowed (any free port), for --listen."""
    if text.endswith(":0"):
        return text[:-2].strip("[]"), 0
    try:
        return split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port ({exc})") from exc
