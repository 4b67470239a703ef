"""The link channel: the hello exchange and the sealed messages of one link connection.

A link connection (ALPN ``quicpair/link/1``) joins two paired nodes; the
dialer opens its one bidirectional stream. Both sides first send a
:class:`~protocol.messages.LinkHello` with a fresh nonce, the key id of the
pairing they link with and their current addresses. Two different key ids
mean the two sides hold different pairings (a re-pair one side has not seen
decided yet): no key could match, so the channel fails at once with
PAIRING_MISMATCH instead of at the first box. From the two nonces and the
pairing secret each side derives this connection's directional keys
(:func:`protocol.keys.link_keys`); everything after the hellos is a
:class:`~protocol.messages.LinkSealed` box holding one inner message
(application data with its delivery number, an acknowledgement, new
addresses, or unpair), sealed with box numbers 0, 1, 2... in each direction
(:mod:`protocol.seal`). What the delivery numbers mean (acknowledged,
exactly-once delivery across connections) is :mod:`protocol.delivery`'s.

Style (sans-I/O, like h11):

* **input**: ``receive_data(bytes)``, then drain ``next_event()`` until it
  returns None. Errors in the peer's bytes are raised by ``next_event``, after
  the events of every message before them.
* **output**: ``hello()``, ``send_app()``, ``send_ack()``, ``send_addresses()``
  and ``send_unpair()`` return the bytes to write on the stream. The channel never
  writes on its own accord, so there is no ``data_to_send()``: nothing is ever
  waiting in it to be sent.

The two hellos may cross in either order: a listener can only answer once it
has seen the dialer's stream, so it usually receives before it sends.

States and moves (:data:`_TRANSITIONS`, the only table)::

    S0_start          --hello()-------------> S1_hello_sent
    S0_start          --peer hello----------> S1_hello_received
    S1_hello_sent     --peer hello----------> S2_established   (LinkEstablished)
    S1_hello_received --hello()-------------> S2_established   (LinkEstablished)
    S2_established    --send/receive sealed-> S2_established   (AppDataReceived, AckReceived,
                                                                  AddressesReceived)
    S2_established    --send/receive unpair-> S_closed         (UnpairReceived)
    any but S_failed  --close()-------------> S_closed

Any other peer message is a RemoteProtocolError (``PROTOCOL_VIOLATION``: a
sealed message before both hellos, a second hello, a pairing message;
``PAIRING_MISMATCH``: a hello naming another pairing than ours); a
replayed, reordered or tampered box is a SealError (``REPLAYED``,
``DECRYPT_FAILED``); bad framing is a FrameError. Each of these fails the
channel for good (``S_failed``): every later call raises an error of the same
class and code. A wrong local call (sending before the hellos, a second
``hello()``) raises LocalProtocolError and changes nothing. In ``S_closed``
input is discarded (the peer may have sent before it saw our unpair or close)
and sending is refused.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass

from .delivery import MAX_SEQ
from .errors import ErrorCode, FrameError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import FrameDecoder, decode_body, encode_body, encode_frame
from .identity import NodeId
from .keys import DirectionalKeys, link_keys
from .messages import (
    KEY_ID_SIZE,
    NONCE_SIZE,
    LinkAck,
    LinkAddresses,
    LinkAppData,
    LinkHello,
    LinkSealed,
    LinkUnpair,
    Message,
)
from .seal import CONTEXT_LINK, Opener, Sealer

__all__ = [
    "AckReceived",
    "AddressesReceived",
    "AppDataReceived",
    "LinkChannel",
    "LinkEstablished",
    "LinkEvent",
    "LinkState",
    "UnpairReceived",
]


# -- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    """Both hellos were exchanged; sealed messages may flow both ways."""

    #: This connection's keys as the local side uses them (repr shows fingerprints only).
    keys: DirectionalKeys
    #: The addresses the peer announced in its hello; persist them with its record.
    peer_addresses: tuple[str, ...]
    #: The dialer's hello nonce: with the dialer's NodeId it names this connection
    #: for :func:`protocol.dialrule.keep_connection`.
    dialer_nonce: bytes


@dataclass(frozen=True, slots=True)
class AppDataReceived:
    """The peer sent an application payload."""

    #: Its delivery number (protocol/delivery.py: a duplicate has one already taken).
    seq: int
    #: The payload, exactly as the peer's application passed it to its node.
    data: bytes


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The peer's node took (durably) every payload we sent numbered up to ``upto``."""

    #: The highest delivery number the peer acknowledges, cumulatively.
    upto: int


@dataclass(frozen=True, slots=True)
class AddressesReceived:
    """The peer's direct addresses changed; persist them with its record."""

    #: The peer's complete current list of ``host:port`` addresses.
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnpairReceived:
    """The peer removed this pairing: remove the peer too, and close the connection."""


LinkEvent = LinkEstablished | AppDataReceived | AckReceived | AddressesReceived | UnpairReceived


# -- the state machine ---------------------------------------------------------------


class LinkState(enum.Enum):
    S0_start = "S0_start"
    S1_hello_sent = "S1_hello_sent"
    S1_hello_received = "S1_hello_received"
    S2_established = "S2_established"
    S_failed = "S_failed"
    S_closed = "S_closed"


class _Move(enum.Enum):
    SEND_HELLO = "send hello"
    RECEIVE_HELLO = "receive hello"
    SEND_SEALED = "send sealed"
    RECEIVE_SEALED = "receive sealed"
    SEND_UNPAIR = "send unpair"
    RECEIVE_UNPAIR = "receive unpair"
    CLOSE = "close"


_S = LinkState
_M = _Move

#: Every legal move. Missing pairs are illegal: a local move raises
#: LocalProtocolError, a peer's move RemoteProtocolError and fails the channel.
_TRANSITIONS: dict[tuple[LinkState, _Move], LinkState] = {
    (_S.S0_start, _M.SEND_HELLO): _S.S1_hello_sent,
    (_S.S0_start, _M.RECEIVE_HELLO): _S.S1_hello_received,
    (_S.S1_hello_sent, _M.RECEIVE_HELLO): _S.S2_established,
    (_S.S1_hello_received, _M.SEND_HELLO): _S.S2_established,
    (_S.S2_established, _M.SEND_SEALED): _S.S2_established,
    (_S.S2_established, _M.RECEIVE_SEALED): _S.S2_established,
    (_S.S2_established, _M.SEND_UNPAIR): _S.S_closed,
    (_S.S2_established, _M.RECEIVE_UNPAIR): _S.S_closed,
    (_S.S0_start, _M.CLOSE): _S.S_closed,
    (_S.S1_hello_sent, _M.CLOSE): _S.S_closed,
    (_S.S1_hello_received, _M.CLOSE): _S.S_closed,
    (_S.S2_established, _M.CLOSE): _S.S_closed,
    (_S.S_closed, _M.CLOSE): _S.S_closed,
}


class LinkChannel:
    """One side of one link connection: hellos, keys, sealed messages.

    ``local_is_dialer`` says who opened this connection (usually, but not
    always, the node :func:`protocol.dialrule.should_dial` names);
    ``pairing_secret`` is the secret stored with the peer's record and
    ``key_id`` its pairing's key id (:func:`protocol.keys.key_id`);
    ``addresses`` go into our hello; ``rand`` supplies the hello nonce.
    """

    __slots__ = (
        "_addresses",
        "_decoder",
        "_failure",
        "_key_id",
        "_local",
        "_local_is_dialer",
        "_nonce",
        "_opener",
        "_peer",
        "_peer_hello",
        "_pending",
        "_rand",
        "_sealer",
        "_secret",
        "_state",
    )

    def __init__(
        self,
        *,
        local: NodeId,
        peer: NodeId,
        local_is_dialer: bool,
        pairing_secret: bytes,
        key_id: bytes,
        addresses: list[str],
        rand: Callable[[int], bytes],
    ) -> None:
        if local == peer:
            raise ValueError("a link joins two different nodes")
        if not isinstance(pairing_secret, bytes) or len(pairing_secret) != 32:
            raise ValueError("the pairing secret is 32 bytes")
        if not isinstance(key_id, bytes) or len(key_id) != KEY_ID_SIZE:
            raise ValueError(f"a key id is {KEY_ID_SIZE} bytes")
        self._local = local
        self._peer = peer
        self._local_is_dialer = local_is_dialer
        self._secret = pairing_secret
        self._key_id = key_id
        self._addresses = list(addresses)
        self._rand = rand
        self._state = LinkState.S0_start
        self._decoder = FrameDecoder()
        self._pending: collections.deque[LinkEvent] = collections.deque()
        self._failure: ProtocolError | None = None
        self._nonce: bytes | None = None
        self._peer_hello: LinkHello | None = None
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None

    def __repr__(self) -> str:
        return f"LinkChannel({self._role} {self._local!r} -> {self._peer!r}, {self._state.value})"

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def local_is_dialer(self) -> bool:
        return self._local_is_dialer

    @property
    def dialer(self) -> NodeId:
        """The node that opened this connection."""
        return self._local if self._local_is_dialer else self._peer

    @property
    def _role(self) -> str:
        return "dialer" if self._local_is_dialer else "listener"

    # -- output ------------------------------------------------------------------

    def hello(self) -> bytes:
        """Our LinkHello frame, with a fresh nonce; call exactly once."""
        new_state = self._check_local(_Move.SEND_HELLO)
        nonce = self._rand(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"rand({NONCE_SIZE}) returned {len(nonce)} bytes")
        frame = encode_frame(LinkHello(nonce=nonce, pairing=self._key_id, addresses=list(self._addresses)))
        self._nonce = nonce
        self._state = new_state
        if new_state is LinkState.S2_established:
            self._pending.append(self._establish())
        return frame

    def send_app(self, seq: int, data: bytes) -> bytes:
        """A LinkSealed frame carrying ``data`` (at most MAX_APP_PAYLOAD bytes), delivery number ``seq``."""
        return self._send_sealed(_Move.SEND_SEALED, LinkAppData(seq=seq, data=data))

    def send_ack(self, upto: int) -> bytes:
        """A LinkSealed frame acknowledging the peer's payloads numbered up to ``upto``."""
        return self._send_sealed(_Move.SEND_SEALED, LinkAck(upto=upto))

    def send_addresses(self, addresses: list[str]) -> bytes:
        """A LinkSealed frame announcing our complete, current address list."""
        return self._send_sealed(_Move.SEND_SEALED, LinkAddresses(addresses=list(addresses)))

    def send_unpair(self) -> bytes:
        """A LinkSealed frame telling the peer we removed the pairing; the channel closes."""
        return self._send_sealed(_Move.SEND_UNPAIR, LinkUnpair())

    def close(self) -> None:
        """We stop using this connection (going away, duplicate): discard input from now on."""
        self._state = self._check_local(_Move.CLOSE)
        self._pending.clear()

    # -- input -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes that arrived on the link stream; then drain :meth:`next_event`."""
        self._raise_if_failed()
        if self._state is LinkState.S_closed or self._decoder.failed:
            # Closed: nothing more is read. Decoder failed: next_event raises it.
            return
        self._decoder.feed(data)

    def next_event(self) -> LinkEvent | None:
        """The next event, or None until more data arrives.

        Raises RemoteProtocolError (FrameError, SealError) when the peer's
        bytes break the protocol; the channel is then failed.
        """
        self._raise_if_failed()
        if self._pending:
            return self._pending.popleft()
        while self._state is not LinkState.S_closed:
            try:
                message = self._decoder.next_message()
            except FrameError as exc:
                raise self._fail(exc) from None
            if message is None:
                return None
            try:
                event = self._handle(message)
            except RemoteProtocolError as exc:
                raise self._fail(exc) from None
            if event is not None:
                return event
        return None

    # -- internals -----------------------------------------------------------------

    def _check_local(self, move: _Move) -> LinkState:
        self._raise_if_failed()
        new_state = _TRANSITIONS.get((self._state, move))
        if new_state is None:
            raise LocalProtocolError(
                ErrorCode.PROTOCOL_VIOLATION,
                f"link {self._role} in state {self._state.value}: cannot {move.value}",
            )
        return new_state

    def _check_remote(self, move: _Move, what: str) -> LinkState:
        new_state = _TRANSITIONS.get((self._state, move))
        if new_state is None:
            raise RemoteProtocolError(
                ErrorCode.PROTOCOL_VIOLATION,
                f"link {self._role} in state {self._state.value}: peer sent {what}",
            )
        return new_state

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            error = self._failure
            raise type(error)(error.code, f"link {self._role} in state S_failed after: {error.args[0]}")

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._state = LinkState.S_failed
        self._failure = error
        self._pending.clear()
        return error

    def _send_sealed(self, move: _Move, inner: LinkAppData | LinkAck | LinkAddresses | LinkUnpair) -> bytes:
        new_state = self._check_local(move)
        body = encode_body(inner)  # LocalProtocolError if over its limits: nothing changed yet
        assert self._sealer is not None  # established implies keys
        seq, box = self._sealer.seal(body)
        self._state = new_state
        return encode_frame(LinkSealed(seq=seq, box=box))

    def _handle(self, message: Message) -> LinkEvent | None:
        if isinstance(message, LinkHello):
            what = "a second LinkHello" if self._peer_hello is not None else "a LinkHello"
            self._state = self._check_remote(_Move.RECEIVE_HELLO, what)
            if message.pairing != self._key_id:
                raise RemoteProtocolError(
                    ErrorCode.PAIRING_MISMATCH,
                    f"link {self._role}: the peer links with pairing {message.pairing.hex()},"
                    f" this side with {self._key_id.hex()}",
                )
            self._peer_hello = message
            if self._state is LinkState.S2_established:
                return self._establish()
            return None
        if isinstance(message, LinkSealed):
            return self._handle_sealed(message)
        raise RemoteProtocolError(
            ErrorCode.PROTOCOL_VIOLATION,
            f"link {self._role} in state {self._state.value}: peer sent {type(message).__name__},"
            " which does not belong on a link stream (unsealed)",
        )

    def _handle_sealed(self, message: LinkSealed) -> LinkEvent:
        self._check_remote(_Move.RECEIVE_SEALED, "a sealed message before both hellos")
        assert self._opener is not None  # established implies keys
        inner = decode_body(self._opener.open(message.seq, message.box))
        if isinstance(inner, LinkAppData | LinkAck):
            number = inner.seq if isinstance(inner, LinkAppData) else inner.upto
            if number > MAX_SEQ:
                raise RemoteProtocolError(
                    ErrorCode.MALFORMED_MESSAGE,
                    f"link {self._role}: delivery number {number} is above 2^63-1",
                )
            if isinstance(inner, LinkAppData):
                return AppDataReceived(seq=inner.seq, data=inner.data)
            return AckReceived(upto=inner.upto)
        if isinstance(inner, LinkAddresses):
            return AddressesReceived(addresses=tuple(inner.addresses))
        if isinstance(inner, LinkUnpair):
            self._state = self._check_remote(_Move.RECEIVE_UNPAIR, "LinkUnpair")
            return UnpairReceived()
        raise RemoteProtocolError(
            ErrorCode.PROTOCOL_VIOLATION,
            f"link {self._role}: peer sealed a {type(inner).__name__}, which is not a link inner message",
        )

    def _establish(self) -> LinkEstablished:
        assert self._nonce is not None and self._peer_hello is not None
        peer_nonce = self._peer_hello.nonce
        if self._local_is_dialer:
            dialer, listener = self._local, self._peer
            dialer_nonce, listener_nonce = self._nonce, peer_nonce
        else:
            dialer, listener = self._peer, self._local
            dialer_nonce, listener_nonce = peer_nonce, self._nonce
        keys = link_keys(
            self._secret,
            dialer=dialer,
            listener=listener,
            dialer_nonce=dialer_nonce,
            listener_nonce=listener_nonce,
            local_is_dialer=self._local_is_dialer,
        )
        self._sealer = Sealer(keys.send, CONTEXT_LINK)
        self._opener = Opener(keys.receive, CONTEXT_LINK)
        return LinkEstablished(
            keys=keys, peer_addresses=tuple(self._peer_hello.addresses), dialer_nonce=dialer_nonce
        )
