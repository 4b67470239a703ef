"""The kit's side of a link connection, by hand: :class:`KitLink`.

The kit dials (its NodeId is below the node's, section 12.1), sends its
LinkHello, reads the node's, derives the connection's keys (section 8.5) and
seals and opens LinkSealed boxes itself (section 9), so that a check can also
send what a correct peer never sends: a replayed or tampered box, a second
hello, a sealed message before the hellos, another pairing's key id.
"""

from __future__ import annotations

import os

from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import decode_body, encode_body, encode_frame
from quicpair.protocol.keys import DirectionalKeys, key_id, link_keys
from quicpair.protocol.messages import (
    ALPN_LINK,
    LinkAck,
    LinkAddresses,
    LinkAppData,
    LinkHello,
    LinkSealed,
    LinkUnpair,
    Message,
)
from quicpair.protocol.seal import CONTEXT_LINK, Opener, Sealer

from .joining import Paired, show
from .report import Failed
from .target import Target
from .wire import Conn, Ending, Timeout, client_quic, code_text, connect

__all__ = ["Inner", "KitLink", "expect_close"]

Inner = LinkAppData | LinkAck | LinkAddresses | LinkUnpair


async def expect_close(conn: Conn, code: ErrorCode, timeout: float, after: str) -> str:
    """The node must close the connection with the application code ``code``."""
    try:
        ending: Ending = await conn.closed(timeout)
    except Timeout:
        conn.close(ErrorCode.GOING_AWAY, "kit: check over")
        raise Failed(
            f"{after}: expected CONNECTION_CLOSE {code_text(code)}, but the node kept the connection "
            f"open for {timeout:g} s"
        ) from None
    conn.close()
    if ending.application_code != code:
        raise Failed(f"{after}: expected CONNECTION_CLOSE {code_text(code)}, got {ending.describe()}")
    return f"CONNECTION_CLOSE {code_text(code)}"


class KitLink:
    """One link connection the kit dialed to the node."""

    def __init__(self, target: Target, paired: Paired, conn: Conn) -> None:
        self.target = target
        self.paired = paired
        self.conn = conn
        self.nonce = os.urandom(32)
        self.keys: DirectionalKeys | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None
        self.node_hello: LinkHello | None = None
        #: Inner messages read from the node so far, in order.
        self.received: list[Message] = []

    @classmethod
    async def dial(cls, target: Target, paired: Paired, timeout: float) -> KitLink:
        conn = await connect(target.address, client_quic(paired.identity, ALPN_LINK, target.node_id), timeout)
        if not conn.established:
            raise Failed(f"the node refused the link connection: {conn.ending.describe()}")
        return cls(target, paired, conn)

    def hello_frame(self, pairing: bytes | None = None) -> bytes:
        return encode_frame(
            LinkHello(nonce=self.nonce, pairing=pairing or key_id(self.paired.pairing_id), addresses=[])
        )

    def hello(self, pairing: bytes | None = None) -> None:
        self.conn.send(self.hello_frame(pairing))

    async def read_hello(self, timeout: float) -> LinkHello:
        """The node's first frame must be its LinkHello; derive this connection's keys from it."""
        try:
            message = await self.conn.message(timeout)
        except EOFError as exc:
            raise Failed(f"expected the node's LinkHello, but {exc}") from None
        if not isinstance(message, LinkHello):
            raise Failed(f"the node's first frame is {show(message)}, not LinkHello")
        self.node_hello = message
        self.keys = link_keys(
            self.paired.pairing_secret,
            dialer=self.paired.identity.node_id,
            listener=self.target.node_id,
            dialer_nonce=self.nonce,
            listener_nonce=message.nonce,
            local_is_dialer=True,
        )
        self._sealer = Sealer(self.keys.send, CONTEXT_LINK)
        self._opener = Opener(self.keys.receive, CONTEXT_LINK)
        return message

    async def establish(self, timeout: float) -> LinkHello:
        """Both hellos; then our LinkAddresses, as section 11.2 asks of each side."""
        self.hello()
        hello = await self.read_hello(timeout)
        if hello.pairing != key_id(self.paired.pairing_id):
            raise Failed(f"the node's LinkHello names key id {hello.pairing.hex()}, not this pairing's")
        self.send(LinkAddresses(addresses=[]))
        return hello

    def sealed_frame(self, inner: Inner) -> bytes:
        assert self._sealer is not None, "the hellos come first"
        seq, box = self._sealer.seal(encode_body(inner))
        return encode_frame(LinkSealed(seq=seq, box=box))

    def send_plain(self, plaintext: bytes) -> bytes:
        """Seal any plaintext (a check sends what is not an inner message) and send it."""
        assert self._sealer is not None, "the hellos come first"
        seq, box = self._sealer.seal(plaintext)
        frame = encode_frame(LinkSealed(seq=seq, box=box))
        self.conn.send(frame)
        return frame

    def send(self, inner: Inner) -> bytes:
        frame = self.sealed_frame(inner)
        self.conn.send(frame)
        return frame

    async def inner(self, timeout: float) -> Message:
        """The node's next sealed message, opened and decoded (Failed if it does not open)."""
        assert self._opener is not None, "the hellos come first"
        try:
            message = await self.conn.message(timeout)
        except EOFError as exc:
            raise Failed(f"expected a LinkSealed from the node, but {exc}") from None
        if not isinstance(message, LinkSealed):
            raise Failed(f"expected a LinkSealed from the node, got {show(message)}")
        try:
            plain = self._opener.open(message.seq, message.box)
            inner = decode_body(plain)
        except Exception as exc:
            raise Failed(f"the node's LinkSealed seq {message.seq} does not open: {exc}") from None
        self.received.append(inner)
        return inner

    async def wait_for(self, kind: type[Message], timeout: float, what: str) -> Message:
        """Read sealed messages until one of ``kind`` (others are kept in ``received``)."""
        while True:
            try:
                message = await self.inner(timeout)
            except Timeout:
                raise Failed(f"{what}: no {kind.__name__} from the node within {timeout:g} s") from None
            if isinstance(message, kind):
                return message

    def close(self, code: ErrorCode = ErrorCode.GOING_AWAY, reason: str = "kit: check over") -> None:
        self.conn.close(code, reason)
