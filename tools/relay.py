"""A man-in-the-middle relay on the pairing ALPN, to prove that a relay cannot pair.

    python -m quicpair.tools.relay --listen 127.0.0.1:0 --target 127.0.0.1:47470

The relay listens on ``quicpair/pair/1`` with ITS OWN identity (a fresh
Ed25519 key: it cannot present anyone else's, the TLS handshake proves
possession). For every connection it accepts it dials the target (the real
initiator) with that same identity, and copies stream bytes both ways,
unchanged: data, FIN, stream resets and the connection close with its code.
It is the best an attacker in the middle can do without the code.

What the pairing guarantees against it (DESIGN.md, "The PAKE transcript binds
both NodeIds as seen in the QUIC/TLS handshake"): the joiner sees the relay's
NodeId as the initiator's and the initiator sees it as the joiner's, so the
two SPAKE2 transcripts differ, key confirmation fails (WRONG_CODE) and
nothing is stored. A joiner that pinned the initiator's NodeId (pairing URI
or QR code) does not even finish the handshake with the relay.

Output on stdout, JSON lines: ``{"event": "ready", "port": N, "host": H,
"node_id": ...}`` first, then one ``{"event": "relayed", "downstream": ...,
"upstream": ...}`` per connection piped (the NodeIds each side presented),
``{"event": "upstream_failed", ...}`` when the target cannot be reached, and
``{"event": "stopped"}``. Logs (JSON) go to stderr. It runs until stdin
ends or SIGTERM/SIGINT; exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from quicpair.actors.kernel.logs import configure_logging
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.listener import Listener, listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.errors import ErrorCode, ProtocolError, QuicpairError
from quicpair.protocol.identity import Identity
from quicpair.protocol.messages import ALPN_PAIR
from quicpair.tools.helper_process import emit, host_port, run_until_stopped

__all__ = ["Relay", "main"]

#: Bound on dialing the target for one accepted connection.
DIAL_TIMEOUT = 10.0
#: The pairing is short-lived; a relay connection idle this long is dropped.
IDLE_TIMEOUT = 30.0


class _Side:
    """Receives one link's events and replays them on the other link of the pipe."""

    def __init__(self, pipe: _Pipe, downstream: bool) -> None:
        self._pipe = pipe
        self._downstream = downstream

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        self._pipe.data(self._downstream, stream_id, data, ended)

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        self._pipe.reset(self._downstream, stream_id, code)

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        self._pipe.closed(self._downstream, code, reason)


class _Pipe:
    """One accepted connection (downstream) joined to one dialed connection (upstream)."""

    def __init__(self, down: QuicLink, up: QuicLink) -> None:
        self.down = down
        self.up = up
        #: downstream stream id <-> upstream stream id (the joiner opens streams).
        self._to_up: dict[int, int] = {}
        self._to_down: dict[int, int] = {}
        down.set_handler(_Side(self, downstream=True))
        up.set_handler(_Side(self, downstream=False))

    def _target(self, from_down: bool, stream_id: int) -> tuple[QuicLink, int | None]:
        if from_down:
            mapped = self._to_up.get(stream_id)
            if mapped is None and not self.up.is_closed:
                mapped = self.up.open_stream()
                self._to_up[stream_id] = mapped
                self._to_down[mapped] = stream_id
            return self.up, mapped
        return self.down, self._to_down.get(stream_id)

    def data(self, from_down: bool, stream_id: int, data: bytes, ended: bool) -> None:
        with contextlib.suppress(ProtocolError):  # the other side already closed: drop
            link, mapped = self._target(from_down, stream_id)
            if mapped is not None and not link.is_closed:
                link.send(mapped, data, end_stream=ended)

    def reset(self, from_down: bool, stream_id: int, code: ErrorCode) -> None:
        with contextlib.suppress(ProtocolError):
            link, mapped = self._target(from_down, stream_id)
            if mapped is not None and not link.is_closed:
                link.reset_stream(mapped, code)

    def closed(self, from_down: bool, code: ErrorCode, reason: str) -> None:
        other = self.up if from_down else self.down
        other.close(code, reason)


class Relay:
    """Accepts pairing connections and pipes each to the target; see the module docstring."""

    def __init__(self, identity: Identity, target: tuple[str, int]) -> None:
        self.identity = identity
        self.target = target
        self.listener: Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: set[QuicLink] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.listener = await listen(
            host,
            port,
            self.identity,
            alpns=[ALPN_PAIR],
            admit=lambda peer, alpn: None,  # anyone: the relay wants every joiner
            on_connection=self._accepted,
            idle_timeout=IDLE_TIMEOUT,
        )
        return self.listener.address

    def _accepted(self, down: QuicLink) -> None:
        # Events that arrive before set_handler wait for it: nothing is lost
        # while the upstream connection is being made.
        self._links.add(down)
        task = asyncio.get_running_loop().create_task(self._connect(down))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, down: QuicLink) -> None:
        host, port = self.target
        try:
            up = await dial(
                host,
                port,
                self.identity,
                alpn=ALPN_PAIR,
                timeout=DIAL_TIMEOUT,
                idle_timeout=IDLE_TIMEOUT,
            )
        except QuicpairError as exc:
            code = exc.code if isinstance(exc, ProtocolError) else ErrorCode.GOING_AWAY
            emit(event="upstream_failed", error=str(exc), code=code.name)
            down.close(code, "relay: target unreachable")
            return
        self._links.add(up)
        emit(event="relayed", downstream=down.peer.text, upstream=up.peer.text)
        _Pipe(down, up)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for link in list(self._links):
            link.close(ErrorCode.GOING_AWAY, "relay stopping")
        if self.listener is not None:
            self.listener.close(ErrorCode.GOING_AWAY, "relay stopping")
            await self.listener.wait_closed()
        for link in list(self._links):
            await link.wait_closed()


async def _run(listen_at: tuple[str, int], target: tuple[str, int]) -> None:
    relay = Relay(Identity.generate(), target)
    host, port = await relay.start(*listen_at)
    emit(event="ready", host=host, port=port, node_id=relay.identity.node_id.text)
    try:
        await run_until_stopped()
    finally:
        await relay.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicpair.tools.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--listen", type=host_port, required=True, help="host:port (port 0: any)")
    parser.add_argument("--target", type=host_port, required=True, help="the initiator's host:port")
    parser.add_argument("--log-level", default="warning", help="of the JSON logs on stderr")
    args = parser.parse_args(argv)
    # stdout carries our JSON lines only; the transport's logs go to stderr.
    configure_logging(level=args.log_level, fmt="json", stream=sys.stderr)
    try:
        asyncio.run(_run(args.listen, args.target))
    except QuicpairError as exc:
        emit(event="failed", error=str(exc))
        return 1
    emit(event="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
