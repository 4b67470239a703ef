"""``python -m quicpair.tools.conformance``: see :mod:`quicpair.tools.conformance.cli`."""

import sys

from quicpair.tools.conformance.cli import main

sys.exit(main())
