"""Two link channels joined by bytes: hellos, directional keys, sealed traffic, attacks."""

from __future__ import annotations

import random

import pytest

from quicpair.protocol.errors import (
    ErrorCode,
    FrameError,
    LocalProtocolError,
    RemoteProtocolError,
    SealError,
)
from quicpair.protocol.framing import FrameDecoder, encode_body, encode_frame
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import key_id
from quicpair.protocol.link import (
    AckReceived,
    AddressesReceived,
    AppDataReceived,
    LinkChannel,
    LinkEstablished,
    LinkEvent,
    LinkState,
    UnpairReceived,
)
from quicpair.protocol.messages import MAX_APP_PAYLOAD, LinkHello, LinkSealed, LinkUnpair, PairDone
from quicpair.protocol.seal import CONTEXT_LINK, Sealer

ALICE = NodeId(bytes([0x10]) * 32)  # lower: the dialer by the rule
BOB = NodeId(bytes([0x20]) * 32)
SECRET = bytes(range(32))
KEY_ID = key_id(bytes(32))


def channels(seed: int = 1, secret_b: bytes = SECRET) -> tuple[LinkChannel, LinkChannel]:
    rng = random.Random(seed)
    dialer = LinkChannel(
        local=ALICE,
        peer=BOB,
        local_is_dialer=True,
        pairing_secret=SECRET,
        key_id=KEY_ID,
        addresses=["127.0.0.1:4433"],
        rand=rng.randbytes,
    )
    listener = LinkChannel(
        local=BOB,
        peer=ALICE,
        local_is_dialer=False,
        pairing_secret=secret_b,
        key_id=KEY_ID,
        addresses=["[::1]:5544", "10.0.0.2:5544"],
        rand=rng.randbytes,
    )
    return dialer, listener


def deliver(receiver: LinkChannel, data: bytes) -> list[LinkEvent]:
    receiver.receive_data(data)
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def established() -> tuple[LinkChannel, LinkChannel, LinkEstablished, LinkEstablished]:
    dialer, listener = channels()
    assert deliver(listener, dialer.hello()) == []  # the listener sees the stream first
    assert listener.state is LinkState.S1_hello_received
    hello_back = listener.hello()
    [on_listener] = deliver(listener, b"")
    [on_dialer] = deliver(dialer, hello_back)
    assert isinstance(on_dialer, LinkEstablished) and isinstance(on_listener, LinkEstablished)
    return dialer, listener, on_dialer, on_listener


def test_hellos_establish_directional_keys() -> None:
    dialer, listener, on_dialer, on_listener = established()
    assert dialer.state is listener.state is LinkState.S2_established
    assert on_dialer.keys.send == on_listener.keys.receive
    assert on_listener.keys.send == on_dialer.keys.receive
    assert on_dialer.keys.send != on_dialer.keys.receive
    assert on_dialer.dialer_nonce == on_listener.dialer_nonce
    assert on_dialer.peer_addresses == ("[::1]:5544", "10.0.0.2:5544")
    assert on_listener.peer_addresses == ("127.0.0.1:4433",)
    assert dialer.dialer == listener.dialer == ALICE


def test_hellos_may_cross_in_either_order() -> None:
    dialer, listener = channels()
    hello_d, hello_l = dialer.hello(), listener.hello()
    [on_dialer] = deliver(dialer, hello_l)
    [on_listener] = deliver(listener, hello_d)
    assert isinstance(on_dialer, LinkEstablished) and isinstance(on_listener, LinkEstablished)
    assert on_dialer.keys.send == on_listener.keys.receive


def test_every_connection_gets_fresh_keys() -> None:
    *_, first, _ = established()
    dialer, listener = channels(seed=2)
    deliver(listener, dialer.hello())
    [second] = deliver(dialer, listener.hello())
    assert isinstance(second, LinkEstablished)
    assert second.keys.send != first.keys.send


def test_app_data_addresses_and_unpair_flow_both_ways() -> None:
    dialer, listener, *_ = established()
    assert deliver(listener, dialer.send_app(1, b"ping")) == [AppDataReceived(1, b"ping")]
    assert deliver(dialer, listener.send_app(1, b"pong")) == [AppDataReceived(1, b"pong")]
    wire = (
        dialer.send_app(1, b"")
        + dialer.send_app(1, bytes(MAX_APP_PAYLOAD))
        + dialer.send_addresses(["[::1]:1"])
    )
    assert deliver(listener, wire) == [
        AppDataReceived(1, b""),
        AppDataReceived(1, bytes(MAX_APP_PAYLOAD)),
        AddressesReceived(("[::1]:1",)),
    ]
    assert deliver(dialer, listener.send_unpair()) == [UnpairReceived()]
    assert dialer.state is listener.state is LinkState.S_closed


def test_bytes_may_arrive_one_at_a_time() -> None:
    dialer, listener, *_ = established()
    wire = dialer.send_app(1, b"split") + dialer.send_app(1, b"again")
    events: list[LinkEvent] = []
    for i in range(len(wire)):
        events += deliver(listener, wire[i : i + 1])
    assert events == [AppDataReceived(1, b"split"), AppDataReceived(1, b"again")]


def test_a_different_pairing_secret_fails_on_the_first_box() -> None:
    dialer, listener = channels(secret_b=bytes(32))
    deliver(listener, dialer.hello())
    deliver(dialer, listener.hello())
    deliver(listener, b"")
    with pytest.raises(SealError) as info:
        deliver(listener, dialer.send_app(1, b"hi"))
    assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_replayed_frame_is_rejected_and_the_channel_stays_failed() -> None:
    dialer, listener, *_ = established()
    frame = dialer.send_app(1, b"pay 10")
    assert deliver(listener, frame) == [AppDataReceived(1, b"pay 10")]
    with pytest.raises(SealError) as info:
        deliver(listener, frame)
    assert info.value.code is ErrorCode.REPLAYED
    assert listener.state is LinkState.S_failed
    for call in (
        lambda: deliver(listener, dialer.send_app(1, b"next")),
        listener.next_event,
        lambda: listener.send_app(1, b"x"),
    ):
        with pytest.raises(SealError) as again:
            call()
        assert again.value.code is ErrorCode.REPLAYED
        assert "S_failed" in str(again.value)


def test_reordered_frames_are_rejected() -> None:
    dialer, listener, *_ = established()
    first, second = dialer.send_app(1, b"1"), dialer.send_app(1, b"2")
    with pytest.raises(SealError) as info:
        deliver(listener, second + first)
    assert info.value.code is ErrorCode.REPLAYED


def test_events_before_a_bad_frame_are_still_delivered() -> None:
    dialer, listener, *_ = established()
    good = dialer.send_app(1, b"good")
    listener.receive_data(good + good)
    assert listener.next_event() == AppDataReceived(1, b"good")
    with pytest.raises(SealError):
        listener.next_event()


def test_tampered_frames_are_rejected_at_every_sampled_position() -> None:
    probe_dialer, *_ = established()
    frame = probe_dialer.send_app(1, b"a payload that someone would like to change")
    # Body bytes only: a changed length prefix may just make the receiver wait for more.
    positions = [*random.Random(3).sample(range(4, len(frame)), 24), 4, len(frame) - 1]
    for pos in positions:
        dialer, listener, *_ = established()
        genuine = dialer.send_app(1, b"a payload that someone would like to change")
        assert genuine == frame  # same seeds, same keys: the same bytes
        tampered = bytearray(genuine)
        tampered[pos] ^= 0x01
        with pytest.raises(RemoteProtocolError) as info:
            deliver(listener, bytes(tampered))
        # A flipped box byte fails authentication; a flipped header byte breaks the frame
        # or the sequence number; none gets through.
        assert info.value.code in {
            ErrorCode.DECRYPT_FAILED,
            ErrorCode.REPLAYED,
            ErrorCode.MALFORMED_MESSAGE,
            ErrorCode.UNKNOWN_MESSAGE,
            ErrorCode.UNSUPPORTED_VERSION,
            ErrorCode.FRAME_TOO_LARGE,
        }, pos
        assert listener.state is LinkState.S_failed


def test_a_flipped_box_byte_is_decrypt_failed() -> None:
    dialer, listener, *_ = established()
    frame = dialer.send_app(1, b"change me")
    tampered = bytearray(frame)
    tampered[-1] ^= 0x80  # last byte of the Poly1305 tag
    with pytest.raises(SealError) as info:
        deliver(listener, bytes(tampered))
    assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_a_reflected_frame_does_not_open() -> None:
    dialer, _listener, *_ = established()
    with pytest.raises(SealError) as info:
        deliver(dialer, dialer.send_app(1, b"echo"))  # our own box sent back to us
    assert info.value.code is ErrorCode.DECRYPT_FAILED


def test_sealed_message_before_both_hellos_is_a_violation() -> None:
    _, listener = channels()
    sealed = encode_frame(LinkSealed(seq=0, box=bytes(40)))
    with pytest.raises(RemoteProtocolError) as info:
        deliver(listener, sealed)
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION
    assert "listener" in str(info.value) and "S0_start" in str(info.value)
    assert listener.state is LinkState.S_failed


def test_sealed_message_right_after_the_peer_hello_is_a_violation() -> None:
    dialer, listener = channels()
    # The peer cannot have our nonce yet, so it cannot have keys.
    with pytest.raises(RemoteProtocolError) as info:
        deliver(listener, dialer.hello() + encode_frame(LinkSealed(seq=0, box=bytes(40))))
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_second_hello_is_a_violation() -> None:
    dialer, _listener, *_ = established()
    hello = encode_frame(LinkHello(nonce=bytes(32), pairing=KEY_ID, addresses=[]))
    with pytest.raises(RemoteProtocolError) as info:
        deliver(dialer, hello)
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION
    assert "second LinkHello" in str(info.value)


def test_pairing_message_on_a_link_is_a_violation() -> None:
    _, listener = channels()
    with pytest.raises(RemoteProtocolError) as info:
        deliver(listener, encode_frame(PairDone(mac=bytes(32))))
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_unsealed_inner_message_is_a_violation() -> None:
    _dialer, listener, *_ = established()
    with pytest.raises(RemoteProtocolError) as info:
        deliver(listener, encode_frame(LinkUnpair()))
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_a_sealed_hello_is_a_violation() -> None:
    _dialer, listener, on_dialer, _ = established()
    sealer = Sealer(on_dialer.keys.send, CONTEXT_LINK)  # the peer's genuine keys
    seq, box = sealer.seal(encode_body(LinkHello(nonce=bytes(32), pairing=KEY_ID, addresses=[])))
    with pytest.raises(RemoteProtocolError) as info:
        deliver(listener, encode_frame(LinkSealed(seq=seq, box=box)))
    assert info.value.code is ErrorCode.PROTOCOL_VIOLATION


def test_garbage_inside_a_genuine_box_is_malformed() -> None:
    _dialer, listener, on_dialer, _ = established()
    seq, box = Sealer(on_dialer.keys.send, CONTEXT_LINK).seal(b"\xc1 not msgpack")
    with pytest.raises(FrameError) as info:
        deliver(listener, encode_frame(LinkSealed(seq=seq, box=box)))
    assert info.value.code is ErrorCode.MALFORMED_MESSAGE


def test_bad_framing_fails_the_channel() -> None:
    _, listener = channels()
    with pytest.raises(FrameError) as info:
        deliver(listener, (70000).to_bytes(4, "big"))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(FrameError):
        listener.receive_data(b"more")


def test_local_misuse_raises_and_changes_nothing() -> None:
    dialer, listener = channels()
    with pytest.raises(LocalProtocolError) as info:
        dialer.send_app(1, b"too early")
    assert "dialer" in str(info.value) and "S0_start" in str(info.value)
    hello = dialer.hello()
    with pytest.raises(LocalProtocolError):
        dialer.hello()
    assert dialer.state is LinkState.S1_hello_sent
    deliver(listener, hello)
    deliver(dialer, listener.hello())
    assert [type(e) for e in deliver(listener, b"")] == [LinkEstablished]
    with pytest.raises(LocalProtocolError):
        dialer.send_app(1, bytes(MAX_APP_PAYLOAD + 1))
    # Nothing was sealed for the refused payload: the peer still sees seq 0 next.
    assert deliver(listener, dialer.send_app(1, b"ok")) == [AppDataReceived(1, b"ok")]


def test_closed_channel_discards_input_and_refuses_output() -> None:
    dialer, listener, *_ = established()
    late = listener.send_app(1, b"sent before the peer saw the unpair")
    deliver(listener, dialer.send_unpair())
    assert deliver(dialer, late) == []
    with pytest.raises(LocalProtocolError):
        dialer.send_app(1, b"after unpair")
    listener.close()
    assert listener.state is LinkState.S_closed


def test_close_before_the_hellos_drops_everything() -> None:
    dialer, listener = channels()
    deliver(listener, dialer.hello())
    listener.hello()  # established: a LinkEstablished is waiting
    listener.close()
    assert listener.next_event() is None
    with pytest.raises(LocalProtocolError):
        listener.send_app(1, b"closed")
    fresh, _ = channels()
    fresh.close()
    with pytest.raises(LocalProtocolError):
        fresh.hello()


def test_unpair_ends_reading_even_mid_buffer() -> None:
    dialer, listener, *_ = established()
    wire = dialer.send_unpair()
    assert deliver(listener, wire + b"anything after it") == [UnpairReceived()]


def test_hello_is_a_well_formed_frame() -> None:
    dialer, _ = channels(seed=9)
    decoder = FrameDecoder()
    decoder.feed(dialer.hello())
    hello = decoder.next_message()
    assert isinstance(hello, LinkHello)
    assert hello.nonce == random.Random(9).randbytes(32)
    assert hello.addresses == ["127.0.0.1:4433"]


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        LinkChannel(
            local=ALICE,
            peer=ALICE,
            local_is_dialer=True,
            pairing_secret=SECRET,
            key_id=KEY_ID,
            addresses=[],
            rand=random.Random(1).randbytes,
        )
    with pytest.raises(ValueError):
        LinkChannel(
            local=ALICE,
            peer=BOB,
            local_is_dialer=True,
            pairing_secret=bytes(16),
            key_id=KEY_ID,
            addresses=[],
            rand=random.Random(1).randbytes,
        )
    with pytest.raises(ValueError, match="key id"):
        LinkChannel(
            local=ALICE,
            peer=BOB,
            local_is_dialer=True,
            pairing_secret=SECRET,
            key_id=bytes(4),
            addresses=[],
            rand=random.Random(1).randbytes,
        )


def test_repr_names_role_and_state_only() -> None:
    dialer, *_ = established()
    text = repr(dialer)
    assert "dialer" in text and "S2_established" in text and SECRET.hex()[:8] not in text


def test_payloads_carry_their_delivery_number_and_acks_flow_back() -> None:
    dialer, listener, *_ = established()
    wire = dialer.send_app(7, b"seven") + dialer.send_app(9, b"nine")
    assert deliver(listener, wire) == [AppDataReceived(7, b"seven"), AppDataReceived(9, b"nine")]
    assert deliver(dialer, listener.send_ack(9)) == [AckReceived(9)]
    # The channel carries numbers; ordering and duplicates are protocol/delivery.py's.
    assert deliver(listener, dialer.send_app(3, b"old")) == [AppDataReceived(3, b"old")]


def test_a_hello_naming_another_pairing_fails_with_pairing_mismatch() -> None:
    rng = random.Random(5)
    common = {"pairing_secret": SECRET, "addresses": [], "rand": rng.randbytes}
    dialer = LinkChannel(local=ALICE, peer=BOB, local_is_dialer=True, key_id=KEY_ID, **common)
    listener = LinkChannel(
        local=BOB, peer=ALICE, local_is_dialer=False, key_id=key_id(bytes([1]) * 32), **common
    )
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(listener, dialer.hello())
    assert caught.value.code is ErrorCode.PAIRING_MISMATCH
    assert KEY_ID.hex() in str(caught.value)
    assert listener.state is LinkState.S_failed
    with pytest.raises(RemoteProtocolError) as again:
        listener.hello()
    assert again.value.code is ErrorCode.PAIRING_MISMATCH


@pytest.mark.parametrize("frame", ["app", "ack"])
def test_delivery_numbers_above_2_63_are_malformed(frame: str) -> None:
    dialer, listener, *_ = established()
    big = 2**63
    wire = dialer.send_app(big, b"x") if frame == "app" else dialer.send_ack(big)
    with pytest.raises(RemoteProtocolError) as caught:
        deliver(listener, wire)
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE
    assert listener.state is LinkState.S_failed
