"""Checks: pairing with the node as joiner (the kit opens codes, the node joins), sections 10.2 and 10.6.

The kit listens on the pairing ALPN (quicpair's own transport listener, mutual
TLS) and runs the reference Initiator machine of ``quicpair.protocol`` for each
connection, except where a check makes it deviate on purpose: withholding its
PairCommit leaves the node in doubt, and the node must then ask with PairResolve
on a new connection (10.6). The node is told to join with ``--join-command``
and a pairing URI that pins the kit's NodeId and gives its address.

The pairings made here are unpaired at the end over a link the kit dials (its
NodeIds are below the node's, 12.1): that also shows the node holds them
CONFIRMED (a link listener admits only those, 3.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quicpair.actors.transport.listener import Listener, listen
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol.codebook import Codebook
from quicpair.protocol.codes import PairingCode, PairingUri, format_address
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import FrameDecoder, encode_frame
from quicpair.protocol.identity import Identity
from quicpair.protocol.keys import key_fingerprint
from quicpair.protocol.messages import ALPN_PAIR, DeviceInfo, LinkUnpair, Message, PairChallenge, PairCommit
from quicpair.protocol.pairing import (
    CommitRequested,
    Initiator,
    PairingFailed,
    PairingSucceeded,
    PeerVerified,
    ResolveAnswered,
    ResolveRequested,
)

from .joining import KIT_NAME, Paired
from .kit import Kit
from .linking import KitLink, expect_close
from .report import Failed
from .target import Command, join_command_line, lower_identity
from .wire import code_text

__all__ = ["SECTION", "run"]

SECTION = "pairing (the kit initiates, the node joins)"
#: The reference ends its session this long after sending its last frame (10.2).
_LINGER = 2.0
#: How long the node's join command may take to report its outcome.
_JOIN_WAIT = 40.0


@dataclass
class _Session:
    """What one pairing connection to the kit came to."""

    link: QuicLink
    machine: Initiator
    stream: int | None = None
    events: list[object] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    resolve: ResolveRequested | None = None
    #: How the connection ended: (code, closed by the node).
    closed: tuple[ErrorCode, bool] | None = None


class KitInitiator:
    """The kit's pairing listener: one identity, one codebook, sessions by arrival."""

    def __init__(self, identity: Identity, listener_host: str) -> None:
        self.identity = identity
        self.host = listener_host
        self.codebook = Codebook()
        self.listener: Listener | None = None
        self.sessions: list[_Session] = []
        self.arrived = asyncio.Event()
        #: Withhold the PairCommit of the next successful pairing (leave the joiner in doubt).
        self.withhold_commit = False
        #: Changes the next outgoing message it applies to (returns another message), then is dropped.
        self.mangle: Callable[[Message], Message | None] | None = None
        #: The pairing secrets the kit committed, by pairing id (to answer PairResolve).
        self.committed: dict[bytes, bytes] = {}

    async def start(self) -> None:
        self.listener = await listen(
            self.host,
            0,
            self.identity,
            alpns=[ALPN_PAIR],
            admit=lambda _p, _a: None,
            on_connection=self._accept,
        )

    @property
    def address(self) -> str:
        assert self.listener is not None
        return format_address(self.listener.address[0], self.listener.address[1])

    def uri(self, code: PairingCode) -> str:
        return PairingUri(code, node=self.identity.node_id, addresses=(self.address,)).text

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def _accept(self, link: QuicLink) -> None:
        machine = Initiator(
            local=self.identity.node_id,
            peer=link.peer,
            codebook=self.codebook,
            device_info=DeviceInfo(name=KIT_NAME, addresses=[]),
            now=time.time(),
            rand=os.urandom,
        )
        session = _Session(link, machine)
        self.sessions.append(session)
        self.arrived.set()
        link.set_handler(_Handler(self, session))

    def pump(self, session: _Session) -> None:
        machine, now = session.machine, time.time()
        while (event := machine.next_event()) is not None:
            session.events.append(event)
            if isinstance(event, PeerVerified):
                machine.pending_stored(now)
            elif isinstance(event, CommitRequested):
                machine.committed(now)
            elif isinstance(event, ResolveRequested):
                session.resolve = event
                secret = self.committed.get(event.pairing_id)
                machine.answer_resolve(secret is not None, secret, now)
            elif isinstance(event, PairingSucceeded):
                self.committed[event.keys.pairing_id] = event.keys.pairing_secret
        out = machine.data_to_send()
        link = session.link
        if link.is_closed or session.stream is None:
            return
        succeeded = any(isinstance(e, PairingSucceeded) for e in session.events)
        if succeeded and self.withhold_commit and not any(isinstance(e, _Withheld) for e in session.events):
            self.withhold_commit = False
            session.events.append(_Withheld())
            link.close(ErrorCode.GOING_AWAY, "kit: PairCommit withheld")  # the joiner has voted: in doubt
            session.ended.set()
            return
        if out and self.mangle is not None:
            out = self._mangled(out)
        if out:
            link.send(session.stream, out, end_stream=machine.is_finished)
        if machine.is_finished:
            if out:
                asyncio.get_running_loop().call_later(_LINGER, self._end, session)
            else:
                self._end(session)

    def _mangled(self, out: bytes) -> bytes:
        assert self.mangle is not None
        decoder = FrameDecoder()
        decoder.feed(out)
        frames = []
        for message in decoder:
            changed = self.mangle(message) if self.mangle is not None else None
            if changed is not None:
                self.mangle = None
            frames.append(encode_frame(changed or message))
        return b"".join(frames)

    def _end(self, session: _Session) -> None:
        if not session.link.is_closed:
            session.link.close(ErrorCode.NO_ERROR, "")
        session.ended.set()


def _bad_commit(message: Message) -> Message | None:
    """PairCommit with a wrong commit_mac: the joiner must stay in doubt (10.4), not commit or abort."""
    return PairCommit(mac=os.urandom(32)) if isinstance(message, PairCommit) else None


def _identity_pake(message: Message) -> Message | None:
    """PairChallenge whose PAKE message encodes the identity element (8.1 step 4 refuses it)."""
    if isinstance(message, PairChallenge):
        return PairChallenge(pake=b"A\x01" + bytes(31), confirm=message.confirm, flags=message.flags)
    return None


class _Withheld:
    """Marks a session whose PairCommit the kit kept to itself."""


class _Handler:
    def __init__(self, kit: KitInitiator, session: _Session) -> None:
        self.kit = kit
        self.session = session

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        session = self.session
        session.stream = stream_id
        if data:
            session.machine.receive_data(data, time.time())
        if ended and not session.machine.is_finished:
            session.machine.peer_closed(time.time())
        self.kit.pump(session)

    def stream_reset(self, stream_id: int, code: ErrorCode) -> None:
        if not self.session.machine.is_finished:
            self.session.machine.peer_closed(time.time(), int(code))
        self.kit.pump(self.session)

    def closed(self, code: ErrorCode, reason: str, by_peer: bool) -> None:
        self.session.closed = (code, by_peer)
        if not self.session.machine.is_finished:
            self.session.machine.peer_closed(time.time(), int(code))
            self.kit.pump(self.session)
        self.session.ended.set()


async def _next_session(kit_side: KitInitiator, seen: int, timeout: float, what: str) -> _Session:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(kit_side.sessions) <= seen:
        kit_side.arrived.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise Failed(f"{what}: the node did not connect to the kit within {timeout:g} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kit_side.arrived.wait(), remaining)
    return kit_side.sessions[seen]


async def _ended(session: _Session, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(session.ended.wait(), timeout)
    except TimeoutError:
        raise Failed(f"{what}: the pairing did not end within {timeout:g} s") from None


def _outcome(session: _Session) -> str:
    for event in session.events:
        if isinstance(event, PairingSucceeded):
            return "succeeded"
        if isinstance(event, PairingFailed):
            who = "the node" if event.remote else "the kit"
            return f"failed with {code_text(event.code)} (reported by {who}: {event.detail})"
    return "unfinished"


async def run(kit: Kit) -> None:
    target, report, step = kit.target, kit.report, kit.step
    sides: list[KitInitiator] = []
    commands: list[Command] = []

    async def side() -> KitInitiator:
        kit_side = KitInitiator(lower_identity(target.node_id), target.kit_host)
        await kit_side.start()
        sides.append(kit_side)
        return kit_side

    async def join(kit_side: KitInitiator, code: PairingCode, offered: PairingCode | None = None) -> Command:
        shown = offered or code
        line = join_command_line(
            target, kit_side.uri(shown), shown.text, kit_side.address, kit_side.identity.node_id
        )
        command = await Command.start(line)
        commands.append(command)
        return command

    def paired(kit_side: KitInitiator, session: _Session) -> Paired:
        for event in session.events:
            if isinstance(event, PairingSucceeded):
                return Paired(
                    kit_side.identity, event.keys.pairing_id, event.keys.pairing_secret, "initiator"
                )
        raise Failed(f"the pairing did not succeed: {_outcome(session)}")

    try:

        async def success() -> str:
            kit_side = await side()
            code = kit_side.codebook.open(time.time(), os.urandom)
            command = await join(kit_side, code)
            session = await _next_session(kit_side, 0, _JOIN_WAIT, "join")
            await _ended(session, step * 4, "pairing")
            done = paired(kit_side, session)
            status = await command.wait(_JOIN_WAIT)
            if status != 0:
                raise Failed(
                    f"the kit committed, but the join command exited {status}: {command.stderr_tail()}"
                )
            kit.initiated.append(done)
            if session.closed != (ErrorCode.NO_ERROR, True):
                raise Failed(
                    "committed, but the node (the joiner, closing after PairCommit) did not close the "
                    f"pairing connection with NO_ERROR (10.2): {session.closed}"
                )
            return (
                f"PairDone's done_mac verified, committed, the node closed with NO_ERROR; pairing id "
                f"{key_fingerprint(done.pairing_id)}"
            )

        await report.run(
            SECTION,
            "right code: the node joins, votes and commits",
            "10.2",
            success,
            timeout=_JOIN_WAIT + step * 6,
        )

        async def wrong_code() -> str:
            kit_side = await side()
            code = kit_side.codebook.open(time.time(), os.urandom)
            words = PairingCode.generate(os.urandom).words
            while words == code.words:
                words = PairingCode.generate(os.urandom).words
            command = await join(kit_side, code, PairingCode(code.nameplate, words))
            session = await _next_session(kit_side, 0, _JOIN_WAIT, "join")
            await _ended(session, step * 2, "pairing")
            failure = next((e for e in session.events if isinstance(e, PairingFailed)), None)
            if failure is None or failure.code != ErrorCode.WRONG_CODE or not failure.remote:
                raise Failed(
                    f"expected the node's PairReject(WRONG_CODE) after PairChallenge; {_outcome(session)}"
                )
            status = await command.wait(_JOIN_WAIT)
            if status == 0:
                raise Failed("the node sent PairReject(WRONG_CODE) but its join command reported success")
            return f"PairReject(0x20 WRONG_CODE) from the node; its join command exited {status}"

        await report.run(
            SECTION,
            "wrong code: the node sends PairReject WRONG_CODE",
            "10.2",
            wrong_code,
            timeout=_JOIN_WAIT * 2,
        )

        async def expired() -> str:
            kit_side = await side()
            code = kit_side.codebook.open(time.time(), os.urandom, expiry=0.001)
            await asyncio.sleep(0.01)  # expired before the node can claim it
            command = await join(kit_side, code)
            session = await _next_session(kit_side, 0, _JOIN_WAIT, "join")
            await _ended(session, step * 2, "pairing")
            failure = next((e for e in session.events if isinstance(e, PairingFailed)), None)
            if failure is None or failure.code != ErrorCode.CODE_EXPIRED or failure.remote:
                raise Failed(
                    f"expected the kit's PairReject(CODE_EXPIRED) to end the pairing; {_outcome(session)}"
                )
            status = await command.wait(_JOIN_WAIT)
            if status == 0:
                raise Failed(
                    "the kit answered PairReject(CODE_EXPIRED) but the join command reported success"
                )
            return (
                f"the kit's PairReject(0x21 CODE_EXPIRED) ended it; the node's join command exited {status}"
            )

        await report.run(
            SECTION,
            "an expired code: PairReject CODE_EXPIRED ends the node's join",
            "10.7",
            expired,
            timeout=_JOIN_WAIT * 2,
        )

        async def in_doubt(withhold: bool) -> str:
            kit_side = await side()
            if withhold:
                kit_side.withhold_commit = True
            else:
                kit_side.mangle = _bad_commit
            code = kit_side.codebook.open(time.time(), os.urandom)
            command = await join(kit_side, code)
            first = await _next_session(kit_side, 0, _JOIN_WAIT, "join")
            await _ended(first, step * 4, "pairing")
            if withhold and not any(isinstance(e, _Withheld) for e in first.events):
                raise Failed(f"the pairing did not reach the node's vote: {_outcome(first)}")
            second = await _next_session(kit_side, 1, step * 3, "resolution")
            await _ended(second, step * 2, "resolution")
            asked = second.resolve
            if asked is None:
                raise Failed(f"the node's second connection was not a PairResolve: {_outcome(second)}")
            done = paired(kit_side, first)
            if asked.pairing_id != done.pairing_id:
                raise Failed("the node's PairResolve names another pairing id")
            if not any(isinstance(e, ResolveAnswered) and e.committed for e in second.events):
                raise Failed(f"the kit could not answer PairCommit (bad mac?): {_outcome(second)}")
            status = await command.wait(_JOIN_WAIT)
            if status != 0:
                raise Failed(
                    f"resolved as committed, but the join command exited {status}: {command.stderr_tail()}"
                )
            kit.initiated.append(done)
            how = "PairCommit withheld" if withhold else "a PairCommit with a wrong commit_mac"
            return f"{how}; the node asked with PairResolve(pairing id, done_mac) and committed"

        for withhold, name in (
            (True, "in doubt: PairCommit withheld -> the node resolves with PairResolve"),
            (False, "in doubt: a wrong commit_mac -> the node resolves with PairResolve"),
        ):

            async def variant(withhold: bool = withhold) -> str:
                return await in_doubt(withhold)

            await report.run(SECTION, name, "10.6", variant, timeout=_JOIN_WAIT + step * 10)

        async def bad_pake() -> str:
            kit_side = await side()
            kit_side.mangle = _identity_pake
            code = kit_side.codebook.open(time.time(), os.urandom)
            command = await join(kit_side, code)
            session = await _next_session(kit_side, 0, _JOIN_WAIT, "join")
            await _ended(session, step * 2, "pairing")
            failure = next((e for e in session.events if isinstance(e, PairingFailed)), None)
            if failure is None or failure.code != ErrorCode.PROTOCOL_VIOLATION or not failure.remote:
                raise Failed(f"expected the node's PairReject(PROTOCOL_VIOLATION); {_outcome(session)}")
            status = await command.wait(_JOIN_WAIT)
            if status == 0:
                raise Failed("the node refused the PAKE message but its join command reported success")
            return f"PairReject(0x11 PROTOCOL_VIOLATION) from the node; its join command exited {status}"

        await report.run(
            SECTION,
            "a PairChallenge whose PAKE message is the identity -> PROTOCOL_VIOLATION",
            "8.1",
            bad_pake,
            timeout=_JOIN_WAIT * 2,
        )

        for number, done in enumerate(list(kit.initiated), 1):

            async def unpair(done: Paired = done) -> str:
                link = await KitLink.dial(target, done, step)
                await link.establish(step)
                link.send(LinkUnpair())
                return await expect_close(link.conn, ErrorCode.UNPAIRED, step, "after LinkUnpair")

            await report.run(
                SECTION,
                f"pairing {number} links (CONFIRMED at the node), LinkUnpair -> UNPAIRED",
                "11.4",
                unpair,
            )
    finally:
        for command in commands:
            await command.end()
        for kit_side in sides:
            kit_side.close()
