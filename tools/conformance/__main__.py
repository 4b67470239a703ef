"""``python -m quicpair.tools.conformance``: see :mod:`quicpair.tools.conformance.cli`."""

from __future__ import annotations

from quicpair.tools.conformance.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
