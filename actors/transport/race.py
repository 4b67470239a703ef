"""Happy Eyeballs (RFC 8305 5): dial several addresses of one node, staggered; the first wins.

:func:`first_answer` starts the dial to the first address, and the next one
``stagger`` seconds later, or at once when every running attempt has failed.
The first handshake that completes wins; the other attempts are cancelled,
and one that completes anyway is closed with GOING_AWAY before anything was
sent on it. So a blackholed address (an IPv4 network behind a captive
portal, a stale address) costs one ``stagger``, not a whole dial timeout::

    link, address = await first_answer(["10.0.0.7:47470", "[fd00::7]:47470"], dial_one, stagger=0.25)

The addresses come in the order to try them (protocol/addresses.py's
``dial_order`` interleaves the families). Pairing uses it for the initiator's
addresses; paired links race theirs in actors/links/dial.py, which adds the
mDNS fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.errors import ErrorCode, PeerUnreachable, QuicpairError

__all__ = ["first_answer"]


def _close_late(task: asyncio.Task[QuicLink]) -> None:
    """Done callback of an abandoned attempt: close a link that completed after all; eat errors."""
    if task.cancelled():
        return
    if task.exception() is None and not task.result().is_closed:
        task.result().close(ErrorCode.GOING_AWAY, "dial race lost")


async def first_answer(
    addresses: Sequence[str],
    dial_one: Callable[[str], Awaitable[QuicLink]],
    *,
    stagger: float,
    on_attempt: Callable[[str], None] | None = None,
    on_failure: Callable[[str, QuicpairError], None] | None = None,
) -> tuple[QuicLink, str]:
    """The first of ``addresses`` whose dial completes, and its link; see the module docstring.

    ``on_attempt(address)`` is called as each attempt starts, ``on_failure``
    as each one fails. Raises the last attempt's QuicpairError when none
    answered (PeerUnreachable when there was nothing to dial).
    """
    if stagger < 0:
        raise ValueError(f"stagger must be >= 0 seconds, not {stagger!r}")
    queue = list(dict.fromkeys(addresses))
    running: dict[asyncio.Task[QuicLink], str] = {}
    last_error: QuicpairError | None = None
    try:
        while True:
            if queue:
                address = queue.pop(0)
                if on_attempt is not None:
                    on_attempt(address)
                running[asyncio.ensure_future(dial_one(address))] = address
            if not running:
                raise last_error or PeerUnreachable("no address to dial")
            done, _ = await asyncio.wait(
                set(running), timeout=stagger if queue else None, return_when=asyncio.FIRST_COMPLETED
            )
            order = list(running)
            for task in sorted(done, key=order.index):  # several in one tick: in the order started
                address = running.pop(task)
                try:
                    return task.result(), address
                except QuicpairError as exc:
                    last_error = exc
                    if on_failure is not None:
                        on_failure(address, exc)
            # Back to the top: the stagger passed, or an attempt failed; either starts the next.
    finally:
        for task in running:
            task.cancel()
            task.add_done_callback(_close_late)
