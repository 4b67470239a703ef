"""Reaching a paired peer: its addresses raced Happy-Eyeballs style, discovery as the fallback.

One dial *round* of a link worker (actors/links/worker.py) is one call to
:func:`race`. The candidates come in the order the worker trusts them
(DESIGN.md failure #2: stored addresses first, discovery only as the
fallback):

1. the peer's persisted direct addresses, as the registry orders them: the
   one that last worked first, then the ones it announced, then where it was
   last seen connecting from;
2. endpoints an mDNS announcement of the peer just told us (a hint);
3. only then an mDNS lookup of the peer's NodeId (``resolve``), whose new
   endpoints join the race.

A refusal (ICMP port unreachable: the host is there, nothing listens on that
port, e.g. the peer stopped) ends an attempt at once; when every attempt of a
round was refused, the round ends without waiting for the mDNS lookup, so the
worker moves to its backoff at once. The lookup still runs, in the
background (:class:`DialLoop`): if it finds the peer somewhere else (it moved
and its old address now refuses), :class:`Found` tells the worker, which dials
there at once.

Like Happy Eyeballs (RFC 8305 5), attempts do not wait for each other: the
next one starts ``stagger`` seconds after the previous one, or at once when
every running attempt has failed. The first handshake that completes wins;
every other attempt is cancelled, and a handshake that completed too late is
closed with GOING_AWAY before a single link message was sent on it (the
peer drops such a connection quietly). So a dead first address costs
``stagger``, not a whole dial timeout, and the mDNS lookup only starts once
every stored address had its chance: on a healthy LAN a reconnection never
touches mDNS (the two-process tests assert it from the logs).

Each attempt is bounded by ``[link] dial_timeout`` and so is the lookup, so
a round is bounded by ``n * stagger + 2 * dial_timeout``. Plain asyncio, no
actor: the worker runs :func:`dial_peer` as one task and gets a
:class:`Dialed` or the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pykka import ActorDeadError

from quicpair.actors.context import NodeContext
from quicpair.actors.kernel.backoff import Backoff
from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.transport.dial import dial
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.codes import split_address
from quicpair.protocol.errors import ErrorCode, PeerUnreachable, QuicpairError
from quicpair.protocol.identity import NodeId
from quicpair.protocol.messages import ALPN_LINK

__all__ = [
    "SOURCE_HINT",
    "SOURCE_MDNS",
    "SOURCE_STORED",
    "DialDone",
    "DialLoop",
    "DialOne",
    "Dialed",
    "Finder",
    "Found",
    "OnAttempt",
    "Resolve",
    "dial_peer",
    "race",
]

#: Where a candidate address came from (logged with every ``link.dial``).
SOURCE_STORED = "stored"
SOURCE_HINT = "hint"
SOURCE_MDNS = "mdns"

#: ``dial_one(address)``: one bounded QUIC dial to ``host:port``, pinned to the peer.
DialOne = Callable[[str], Awaitable[QuicLink]]
#: ``resolve()``: the peer's endpoints according to discovery (``[]`` if none), bounded.
Resolve = Callable[[], Awaitable[list[str]]]
#: ``on_attempt(address, source)``: called as each attempt starts (logs, counters).
OnAttempt = Callable[[str, str], None]


class Finder(Protocol):
    """What the links need from discovery (actors/discovery/mdns.py's Discovery has it)."""

    async def resolve_node(self, node_id: NodeId, timeout: float) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Dialed:
    """A dial round succeeded."""

    #: The connection, handshake done, peer identity pinned and checked.
    link: QuicLink
    #: The ``host:port`` that answered (as the candidate list spelled it).
    address: str
    #: Where that address came from: SOURCE_STORED, SOURCE_HINT or SOURCE_MDNS.
    source: str


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


def _close_late(task: asyncio.Task[QuicLink]) -> None:
    """Done callback of an abandoned attempt: close a link that won after all; eat errors."""
    if task.cancelled():
        return
    error = task.exception()
    if error is None:
        link = task.result()
        if not link.is_closed:
            link.close(ErrorCode.GOING_AWAY, "dial race lost")


async def race(
    candidates: Iterable[tuple[str, str]],
    dial_one: DialOne,
    *,
    stagger: float,
    resolve: Resolve | None = None,
    on_attempt: OnAttempt | None = None,
    on_resolve: Callable[[], None] | None = None,
) -> Dialed:
    """Dial ``candidates`` (``(address, source)`` pairs, best first); see the module docstring.

    ``resolve`` runs once, after every candidate has been started (and
    ``stagger`` has passed, or all of them failed); ``on_resolve`` is called
    as it starts. Raises the last attempt's QuicpairError when nothing
    answered (PeerUnreachable when there was nothing to dial).
    """
    if stagger < 0:
        raise ValueError(f"stagger must be >= 0 seconds, not {stagger!r}")
    queue: deque[tuple[str, str]] = deque(candidates)
    tried: set[str] = set()
    running: dict[asyncio.Task[QuicLink], tuple[str, str]] = {}
    lookup: asyncio.Task[list[str]] | None = None
    lookup_pending = resolve is not None
    last_error: QuicpairError | None = None
    all_refused = True  # every attempt so far ended with "nothing listens there"
    try:
        while True:
            started = False
            while queue and not started:
                address, source = queue.popleft()
                if address in tried:
                    continue
                tried.add(address)
                if on_attempt is not None:
                    on_attempt(address, source)
                running[asyncio.ensure_future(dial_one(address))] = (address, source)
                started = True
            if not started and not running and tried and all_refused and last_error is not None:
                raise last_error  # refused everywhere: end the round now, lookup or not (docstring)
            if not started and lookup_pending and resolve is not None:
                lookup_pending = False
                if on_resolve is not None:
                    on_resolve()
                lookup = asyncio.ensure_future(resolve())
            waiting: set[asyncio.Future[Any]] = set(running)
            if lookup is not None:
                waiting.add(lookup)
            if not waiting:
                raise last_error or PeerUnreachable("no address to dial")
            more = bool(queue) or lookup_pending
            done, _ = await asyncio.wait(
                waiting, timeout=stagger if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            # Several may finish in one tick: take them in the order they were started.
            order = list(running)
            for future in sorted(done, key=lambda f: order.index(f) if f in running else -1):
                if future is lookup:
                    lookup = None
                    try:
                        found = future.result()
                    except QuicpairError as exc:  # a broken lookup is a failed lookup
                        last_error = last_error or exc
                        found = []
                    queue.extend((endpoint, SOURCE_MDNS) for endpoint in found if endpoint not in tried)
                    continue
                task: asyncio.Task[QuicLink] = future  # type: ignore[assignment]
                address, source = running.pop(task)
                try:
                    link = task.result()
                except QuicpairError as exc:
                    last_error = exc
                    all_refused = all_refused and isinstance(exc, PeerUnreachable) and exc.refused
                    continue
                return Dialed(link, address, source)
    finally:
        for task in running:
            task.cancel()
            task.add_done_callback(_close_late)
        if lookup is not None:
            lookup.cancel()
            lookup.add_done_callback(_consume)


async def dial_peer(
    ctx: NodeContext,
    peer: NodeId,
    candidates: Iterable[tuple[str, str]],
    *,
    on_attempt: OnAttempt | None = None,
    on_resolve: Callable[[], None] | None = None,
) -> Dialed:
    """One dial round to the paired ``peer``: pinned QUIC dials on the link ALPN, raced.

    The keep-alive and idle timeout are the node's ``[link]`` settings (the
    listener side uses the same ones); ``ctx.discovery`` (a :class:`Finder`,
    when mDNS runs) supplies the fallback lookup.
    """
    settings = ctx.settings.link
    finder: Finder | None = ctx.discovery

    async def dial_one(address: str) -> QuicLink:
        try:
            host, port = split_address(address)
        except ValueError as exc:
            raise PeerUnreachable(f"cannot dial {address!r}: {exc}") from exc
        return await dial(
            host,
            port,
            ctx.identity,
            alpn=ALPN_LINK,
            expect=peer,
            timeout=settings.dial_timeout,
            idle_timeout=settings.idle_timeout,
            keepalive_interval=settings.keepalive_interval,
            dead_after_ptos=settings.dead_after_ptos,
            reset_key=ctx.reset_key,
            source=ctx.dial_source(),  # a node bound to one address dials from it
        )

    async def resolve() -> list[str]:
        assert finder is not None
        return ctx.dial_order(await finder.resolve_node(peer, settings.dial_timeout))

    return await race(
        candidates,
        dial_one,
        stagger=settings.stagger,
        resolve=resolve if finder is not None else None,
        on_attempt=on_attempt,
        on_resolve=on_resolve,
    )


@dataclass(frozen=True, slots=True)
class DialDone:
    """A dial round ended (a message to the worker that started it)."""

    #: Which round (a stale one is ignored).
    round: int
    #: The connection, or None.
    dialed: Dialed | None
    #: Why it failed, when it did.
    error: QuicpairError | None


@dataclass(frozen=True, slots=True)
class Found:
    """A background mDNS lookup (after a refused round) found the peer at these endpoints."""

    #: Its ``host:port`` endpoints.
    endpoints: tuple[str, ...]


class DialLoop:
    """One peer's dial rounds and the backoff between them; the worker decides *whether* to dial.

    A round runs as one task and ends with a :class:`DialDone` told to the
    worker (``tell``). At most one round runs at a time, and a retry timer
    fires ``redial("backoff")`` on the worker. ``backoff`` follows
    actors/kernel/backoff.py (``[link] backoff_*``, reset after ``stable_after``).
    """

    def __init__(
        self,
        ctx: NodeContext,
        peer: NodeId,
        *,
        role: str,
        log: Any,
        call_later: Callable[..., ActorTimer],
        tell: Callable[[Any], None],
    ) -> None:
        settings = ctx.settings.link
        self.backoff = Backoff(
            settings.backoff_min,
            settings.backoff_max,
            settings.backoff_random_factor,
            max(settings.stable_after, 1e-3),  # 0 means "any up resets"; Backoff needs > 0
        )
        self._ctx, self._peer, self._role, self._log = ctx, peer, role, log
        self._call_later, self._tell = call_later, tell
        self._round = 0
        self._task: asyncio.Task[None] | None = None
        self._lookup: asyncio.Task[None] | None = None
        self._retry: ActorTimer | None = None

    @property
    def running(self) -> bool:
        """A round is in flight."""
        return self._task is not None

    @property
    def retry_pending(self) -> bool:
        return self._retry is not None and not self._retry.cancelled()

    def retry_at(self) -> float | None:
        """The loop time of the pending retry, if one is pending."""
        return self._retry.when() if self.retry_pending and self._retry is not None else None

    def cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def schedule(self, delay: float, after: str, redial: Callable[[str], None]) -> None:
        """Call ``redial("backoff")`` in ``delay`` seconds (replacing a pending retry)."""
        self.cancel_retry()
        self._log.info("link.retry_scheduled", delay=round(delay, 3), after=after)
        self._retry = self._call_later(delay, redial, "backoff")

    def start(self, candidates: list[tuple[str, str]], why: str) -> None:
        """Start a round now over ``candidates`` (``(address, source)``, best first)."""
        self.cancel_retry()
        self._round += 1
        round_, ctx, log, role, tell = self._round, self._ctx, self._log, self._role, self._tell

        def on_attempt(address: str, source: str) -> None:
            ctx.counters.incr("link.dials")
            ctx.counters.incr(f"link.dials.{role}")
            log.info("link.dial", address=address, source=source, why=why)

        async def run() -> None:
            try:
                dialed = await dial_peer(
                    ctx,
                    self._peer,
                    candidates,
                    on_attempt=on_attempt,
                    on_resolve=lambda: log.info("link.mdns_lookup"),
                )
            except QuicpairError as exc:
                _tell_or_close(tell, DialDone(round_, None, exc), None)
                if isinstance(exc, PeerUnreachable) and exc.refused:
                    self._look_up_in_background()
                return
            except Exception as exc:  # a bug: fail the round loudly, keep the worker going
                log.exception("link.dial_crashed")
                _tell_or_close(tell, DialDone(round_, None, QuicpairError(repr(exc))), None)
                return
            _tell_or_close(tell, DialDone(round_, dialed, None), dialed.link)

        self._task = asyncio.get_running_loop().create_task(run())

    def _look_up_in_background(self) -> None:
        """After a refused round: ask mDNS where the peer is, without holding the next round."""
        finder: Finder | None = self._ctx.discovery
        if finder is None or (self._lookup is not None and not self._lookup.done()):
            return
        peer, tell, log = self._peer, self._tell, self._log
        timeout = self._ctx.settings.link.dial_timeout
        log.info("link.mdns_lookup", background=True)

        async def look() -> None:
            try:
                found = await finder.resolve_node(peer, timeout)
            except QuicpairError:
                return
            if found:
                with contextlib.suppress(ActorDeadError):
                    tell(Found(tuple(found)))

        self._lookup = asyncio.get_running_loop().create_task(look())

    def finished(self, done: DialDone) -> bool:
        """Take a round's end; False (and its link closed) for a stale or abandoned round."""
        if done.round != self._round or self._task is None:
            if done.dialed is not None:
                done.dialed.link.close(ErrorCode.GOING_AWAY, "stale dial")
            return False
        self._task = None
        return True

    def stop(self) -> None:
        """Abandon the running round, the background lookup and the pending retry."""
        self.cancel_retry()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._lookup is not None:
            self._lookup.cancel()
            self._lookup = None


def _tell_or_close(tell: Callable[[Any], None], message: Any, link: QuicLink | None) -> None:
    """Tell a worker that may have stopped meanwhile; a link nobody will own is closed."""
    try:
        tell(message)
    except ActorDeadError:
        if link is not None and not link.is_closed:
            link.close(ErrorCode.GOING_AWAY, "link worker stopped")
