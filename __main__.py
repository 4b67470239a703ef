"""``python -m quicpair``: the command line (the same as the ``quicpair`` command)."""

from __future__ import annotations

from quicpair.tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
