"""The kit as a pairing joiner, one step at a time: :class:`KitJoiner`.

Built from the sans-I/O primitives of ``quicpair.protocol`` (SPAKE2, the
transcript hash, the key schedule, sealing, the frame codec) rather than the
reference Joiner machine, so that a check can stop anywhere, send something a
correct joiner never would (a PairResponse under the wrong key, a PairResolve
for another pairing) and read exactly what the node answered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import decode_body, encode_body, encode_frame
from quicpair.protocol.identity import Identity
from quicpair.protocol.keys import (
    PairingKeys,
    Role,
    commit_mac,
    derive_pairing_keys,
    done_mac,
    transcript_hash,
    verify_mac,
)
from quicpair.protocol.messages import (
    ALPN_PAIR,
    PROTOCOL_VERSION,
    DeviceInfo,
    Message,
    PairChallenge,
    PairCommit,
    PairComplete,
    PairDone,
    PairReject,
    PairRequest,
    PairResolve,
    PairResponse,
)
from quicpair.protocol.pake import spake2_for
from quicpair.protocol.seal import CONTEXT_PAIR, Opener, Sealer

from .report import Failed
from .target import Target
from .wire import Conn, client_quic, code_text, connect

__all__ = ["KIT_NAME", "KitJoiner", "Paired", "expect_reject", "open_pairing"]

KIT_NAME = "quicpair-conformance-kit"


@dataclass(frozen=True, slots=True)
class Paired:
    """A pairing the kit holds with the node: enough to link, resolve and unpair."""

    identity: Identity
    pairing_id: bytes
    pairing_secret: bytes
    #: The kit's role in the pairing: "joiner" or "initiator".
    role: str


async def open_pairing(target: Target, identity: Identity, timeout: float, source: str | None = None) -> Conn:
    """A pairing connection to the node (ALPN quicpair/pair/1, the node pinned); Failed if refused."""
    conn = await connect(target.address, client_quic(identity, ALPN_PAIR, target.node_id), timeout, source)
    if not conn.established:
        raise Failed(f"the node refused the pairing connection: {conn.ending.describe()}")
    return conn


def show(message: Message) -> str:
    if isinstance(message, PairReject):
        return f"PairReject({code_text(message.code)}, {message.reason!r})"
    return type(message).__name__


async def expect_reject(conn: Conn, code: ErrorCode, timeout: float, after: str) -> str:
    """The node's next message must be PairReject(``code``); the detail of a pass."""
    try:
        message = await conn.message(timeout)
    except EOFError as exc:
        raise Failed(f"{after}: expected PairReject({code_text(code)}), but {exc}") from None
    if not isinstance(message, PairReject):
        raise Failed(f"{after}: expected PairReject({code_text(code)}), got {show(message)}")
    if message.code != code:
        raise Failed(f"{after}: expected PairReject({code_text(code)}), got {show(message)}")
    return f"PairReject({code_text(code)})"


class KitJoiner:
    """One pairing attempt of the kit against the node, step by step, on one connection."""

    def __init__(self, target: Target, identity: Identity, conn: Conn, code: PairingCode) -> None:
        self.target = target
        self.identity = identity
        self.conn = conn
        self.code = code
        self._pake = spake2_for(Role.JOINER, code.secret, target.node_id, identity.node_id, os.urandom)
        self.pake_joiner = self._pake.start()
        self.keys: PairingKeys | None = None
        self.node_info: DeviceInfo | None = None

    @classmethod
    async def start(
        cls,
        target: Target,
        identity: Identity,
        code: PairingCode,
        timeout: float,
        source: str | None = None,
        pake: bytes | None = None,
    ) -> KitJoiner:
        """Open a pairing connection and send PairRequest (section 10.2, joiner start).

        ``pake`` replaces the kit's SPAKE2 message (a check of section 8.1 step 4).
        """
        conn = await open_pairing(target, identity, timeout, source)
        joiner = cls(target, identity, conn, code)
        conn.send(encode_frame(PairRequest(nameplate=code.nameplate, pake=pake or joiner.pake_joiner)))
        return joiner

    async def next(self, timeout: float, expected: type[Message], after: str) -> Message:
        try:
            message = await self.conn.message(timeout)
        except EOFError as exc:
            raise Failed(f"{after}: expected {expected.__name__}, but {exc}") from None
        if not isinstance(message, expected):
            raise Failed(f"{after}: expected {expected.__name__}, got {show(message)}")
        return message

    async def challenge(self, timeout: float) -> bool:
        """Read PairChallenge, derive the keys; True when the node's confirm_i verifies."""
        challenge = await self.next(timeout, PairChallenge, "after PairRequest")
        assert isinstance(challenge, PairChallenge)
        pake_key = self._pake.finish(challenge.pake)
        pairing_id = transcript_hash(
            version=PROTOCOL_VERSION,
            nameplate=self.code.nameplate,
            initiator=self.target.node_id,
            joiner=self.identity.node_id,
            pake_initiator=challenge.pake,
            pake_joiner=self.pake_joiner,
        )
        self.keys = derive_pairing_keys(pake_key, pairing_id)
        return verify_mac(self.keys.confirm_initiator, challenge.confirm)

    def respond(self) -> None:
        """Send PairResponse with our confirm_j and sealed DeviceInfo (whatever our key is)."""
        assert self.keys is not None
        info = encode_body(DeviceInfo(name=KIT_NAME, addresses=[]))
        _, box = Sealer(self.keys.joiner_to_initiator, CONTEXT_PAIR).seal(info)
        self.conn.send(encode_frame(PairResponse(confirm=self.keys.confirm_joiner, sealed=box, flags=0)))

    async def complete(self, timeout: float) -> DeviceInfo:
        """Read PairComplete and open the node's DeviceInfo (k_i2j, context pair, seq 0)."""
        assert self.keys is not None
        complete = await self.next(timeout, PairComplete, "after PairResponse")
        assert isinstance(complete, PairComplete)
        try:
            plain = Opener(self.keys.initiator_to_joiner, CONTEXT_PAIR).open(0, complete.sealed)
            info = decode_body(plain)
        except Exception as exc:
            raise Failed(f"the node's PairComplete box does not open as a DeviceInfo: {exc}") from None
        if not isinstance(info, DeviceInfo):
            raise Failed(f"the node's PairComplete box holds a {type(info).__name__}, not a DeviceInfo")
        self.node_info = info
        return info

    def vote(self, mac: bytes | None = None) -> None:
        """Send PairDone(done_mac): the kit's vote to commit (``mac`` replaces done_mac)."""
        assert self.keys is not None
        mac = mac or done_mac(self.keys.pairing_secret, self.keys.pairing_id)
        self.conn.send(encode_frame(PairDone(mac=mac)))

    async def decision(self, timeout: float) -> None:
        """Read PairCommit and check commit_mac."""
        assert self.keys is not None
        commit = await self.next(timeout, PairCommit, "after PairDone")
        assert isinstance(commit, PairCommit)
        if not verify_mac(commit_mac(self.keys.pairing_secret, self.keys.pairing_id), commit.mac):
            raise Failed("the node's PairCommit carries a commit_mac that does not verify (section 8.4)")

    def paired(self) -> Paired:
        assert self.keys is not None
        return Paired(self.identity, self.keys.pairing_id, self.keys.pairing_secret, "joiner")

    async def pair(self, timeout: float) -> Paired:
        """The whole successful pairing (section 10.1) after PairRequest; closes with NO_ERROR."""
        if not await self.challenge(timeout):
            raise Failed("the node's confirm_i does not verify under the code it offered (section 8.3)")
        self.respond()
        await self.complete(timeout)
        self.vote()
        await self.decision(timeout)
        self.conn.close(ErrorCode.NO_ERROR, "paired")
        return self.paired()


def resolve_frame(pairing_id: bytes, mac: bytes) -> bytes:
    return encode_frame(PairResolve(pairing_id=pairing_id, mac=mac))
