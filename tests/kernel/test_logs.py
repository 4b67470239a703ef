"""Logs worth reading: stdlib logging for an embedded node, and a bound on what strangers cost.

* An embedded Node writes nothing to stdout, honours ``[log] level`` through the
  ``quicpair`` logger, and a stdout that is a closed pipe does not stop it.
* A burst of 1,000 bad pairing connections from one address (real QUIC against a
  real node process) costs its log a fixed number of lines, and the address is
  refused (BUSY) after its burst of failed claims.
* RateLimitedLog's summary, with a clock of the test's own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from quicpair.actors.kernel.logs import RateLimitedLog
from quicpair.actors.transport.dial import dial
from quicpair.protocol.claims import DEFAULT_BURST, DEFAULT_INTERVAL
from quicpair.protocol.errors import ErrorCode, QuicpairError
from quicpair.protocol.framing import FrameDecoder, encode_frame
from quicpair.protocol.identity import Identity
from quicpair.protocol.messages import ALPN_PAIR, PairReject, PairRequest
from support.nodeproc import nodes_fixture as nodes_fixture  # the ``nodes`` fixture

REPO = Path(__file__).resolve().parents[2]

EMBEDDED = r"""
import json, logging, sys
from quicpair import Node, load_settings
seen = []
class Keep(logging.Handler):
    def emit(self, record):
        seen.append((record.levelname, record.getMessage().split()[0]))
logging.getLogger().addHandler(Keep())
def settings(name):
    return load_settings(node={"listen_host": "127.0.0.1", "listen_port": 0, "name": name},
                         discovery={"mdns": False}, log={"level": sys.argv[2]})
with Node(sys.argv[1] + "/a", settings("a")) as a, Node(sys.argv[1] + "/b", settings("b")) as b:
    offer = a.pair()
    b.join(offer.uri, timeout=15)
    offer.wait(timeout=15)
sys.stderr.write("RESULT " + json.dumps(seen) + "\n")
"""


def run_embedded(tmp_path: Path, level: str, *, close_stdout: bool) -> tuple[int, str, list[Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", EMBEDDED, str(tmp_path), level],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    if close_stdout:
        proc.stdout.close()  # every write to stdout now fails with EPIPE
        out = ""
        err = proc.stderr.read()
        proc.wait(60)
    else:
        out, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.startswith("RESULT ")]
    return proc.returncode, out, json.loads(lines[-1].removeprefix("RESULT ")) if lines else []


def test_an_embedded_node_logs_through_logging_only_and_honours_its_level(tmp_path: Path) -> None:
    status, out, seen = run_embedded(tmp_path, "info", close_stdout=False)
    assert status == 0 and out == ""
    names = [name for _, name in seen]
    assert "node.started" in names and "pairing.completed" in names
    assert "actor.started" not in names  # no per-actor start lines at info
    status, out, seen = run_embedded(tmp_path, "warning", close_stdout=True)
    assert status == 0, "a closed stdout must not stop or hang the node"
    assert all(level in ("WARNING", "ERROR", "CRITICAL") for level, _ in seen), seen


def test_the_summary_says_how_many_events_were_held_back() -> None:
    now = [0.0]
    lines: list[tuple[str, dict[str, Any]]] = []

    class Sink:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

        info = warning

    log = RateLimitedLog(Sink(), per_window=3, window=60.0, clock=lambda: now[0])
    for _ in range(1000):
        log.warning("pairing.failed", code="NO_SUCH_CODE")
    assert [e for e, _ in lines] == ["pairing.failed"] * 3
    now[0] = 61.0
    log.flush()
    assert lines[-1] == ("log.suppressed", {"event_name": "pairing.failed", "count": 997, "window": 60.0})
    log.flush()
    assert len(lines) == 4


async def bad_pairings(port: int, count: int) -> list[str]:
    """``count`` pairing connections from 127.0.0.1 asking for nameplates nobody opened."""
    identity = Identity.generate()
    answers: list[str] = []
    gate = asyncio.Semaphore(6)

    async def one(i: int) -> None:
        async with gate:
            try:
                link = await dial("127.0.0.1", port, identity, alpn=ALPN_PAIR, timeout=10.0)
            except QuicpairError as exc:
                answers.append(f"dial:{exc}")
                return
            got: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            decoder = FrameDecoder()

            class Handler:
                def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
                    decoder.feed(data)
                    for message in decoder:
                        if isinstance(message, PairReject) and not got.done():
                            got.set_result(ErrorCode(message.code).name)

                def stream_reset(self, stream_id: int, code: int) -> None:
                    pass

                def closed(self, code: Any, reason: str, by_peer: bool) -> None:
                    if not got.done():
                        got.set_result(f"closed:{code}")

            link.set_handler(Handler())
            stream = link.open_stream()
            link.send(stream, encode_frame(PairRequest(nameplate=9000 + i % 999, pake=b"B" + bytes(32))))
            try:
                answers.append(await asyncio.wait_for(got, 10.0))
            finally:
                link.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return answers


def test_a_burst_of_bad_pairing_connections_costs_the_log_a_fixed_number_of_lines(
    tmp_path: Path, nodes: Any
) -> None:
    (alice,) = nodes.start(("alice", ["log.level=info"]))  # what a daemon logs by default
    before = len(alice.log_path.read_text(encoding="utf-8").splitlines())
    started = time.monotonic()
    answers = asyncio.run(bad_pairings(alice.port, 1000))
    elapsed = time.monotonic() - started
    assert len(answers) == 1000
    # The address gets its burst of failed claims plus one per interval, then BUSY without
    # touching the codebook (protocol/claims.py; PROTOCOL.md section 13).
    claimed = answers.count("NO_SUCH_CODE")
    shown = {a: answers.count(a) for a in set(answers)}
    assert DEFAULT_BURST <= claimed <= DEFAULT_BURST + elapsed / DEFAULT_INTERVAL + 1, (shown, elapsed)
    assert answers.count("BUSY") == 1000 - claimed, shown
    lines = alice.log_path.read_text(encoding="utf-8").splitlines()[before:]
    size = sum(len(line) + 1 for line in lines)
    # ~1.1 KB per bad connection before: 1,000 would have been over a megabyte.
    assert len(lines) <= 40 and size <= 16_000, (len(lines), size, lines[-5:])
    assert alice.call("info").ok  # the node is unharmed
    assert os.path.exists(alice.home / "registry.sqlite3")


KEY_LOG = r"""
import json, logging, sys
from quicpair import Node, load_settings
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage().split()[0])
logging.getLogger().addHandler(Keep())
def settings(name, key_log):
    return load_settings(node={"listen_host": "127.0.0.1", "listen_port": 0, "name": name},
                         discovery={"mdns": False}, log={"tls_key_log": key_log})
home = sys.argv[1]
with Node(home + "/a", settings("a", sys.argv[2])) as a, Node(home + "/b", settings("b", "")) as b:
    offer = a.pair()
    b.join(offer.uri, timeout=15)
sys.stderr.write("RESULT " + json.dumps(warnings) + "\n")
"""


def test_the_tls_key_log_is_opt_in_and_warned_about(tmp_path: Path) -> None:
    """Run in a process of its own: the key log is process-wide, like OpenSSL's SSLKEYLOGFILE."""
    key_log = tmp_path / "keys.log"
    env = {k: v for k, v in os.environ.items() if k != "SSLKEYLOGFILE"}
    result = subprocess.run(
        [sys.executable, "-c", KEY_LOG, str(tmp_path), str(key_log)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = json.loads(result.stderr.splitlines()[-1].removeprefix("RESULT "))
    assert "tls.key_log_enabled" in warnings
    text = key_log.read_text(encoding="ascii")
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in text and "SERVER_TRAFFIC_SECRET_0" in text
    assert oct(key_log.stat().st_mode & 0o777) == "0o600"
