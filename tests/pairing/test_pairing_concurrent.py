"""200 pairings at once against one initiator, all behind one address: every one succeeds.

Real processes over real QUIC on loopback: the initiator is a node process
(tools/nodehost.py), the 200 joiners are nodes in 4 other processes
(``python -m quicpair.tools.bench joiners``), all dialing from 127.0.0.1, so
the listener sees one source address doing 200 handshakes at once. Its flood
protections stay on, with their defaults (tests/transport/test_transport.py
checks what they promise): the joiners prove their address with a Retry and
hold their quarter of the table. The initiator is given room for the burst
(200 open codes, 200 sessions, a table of 800), and both sides a generous step
bound (a slow machine is not a failure: a step that timed out would be a failed claim,
and enough of them from one address would make its next claims BUSY). No timing is asserted: the benchmark
measures it (``python -m quicpair.tools.bench``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from quicpair.tools.bench import pair_at_once

pytestmark = pytest.mark.integration

JOINERS = 200
PROCESSES = 4


@pytest.mark.timeout(900)
def test_200_joiners_behind_one_address_all_pair_at_once(tmp_path: Path) -> None:
    run = pair_at_once(JOINERS, PROCESSES, tmp_path, step_timeout=60.0)

    failures = Counter(r["error"] for r in run.results if r["error"])
    assert len(run.results) == JOINERS
    assert not failures, f"{sum(failures.values())} of {JOINERS} failed: {dict(failures)}"
    counters = run.initiator_counters
    assert counters.get("pair.completed.initiator") == JOINERS
    # One connection and one stream per pairing, none refused for load.
    assert counters.get("pair.connections.initiator") == JOINERS
    assert counters.get("pair.streams.initiator") == JOINERS
    assert counters.get("pair.shed", 0) == 0
