"""The link vectors: the hellos, the link keys, and sealed inner messages both ways (section 11)."""

from __future__ import annotations

from quicpair.protocol import keys as ks
from quicpair.protocol import messages as m
from quicpair.protocol.dialrule import dialer_of
from quicpair.protocol.framing import encode_body
from quicpair.protocol.identity import NodeId
from quicpair.protocol.link import LinkChannel, LinkEstablished
from quicpair.protocol.seal import CONTEXT_LINK
from quicpair.tools.vectors.base import (
    INITIATOR_INFO,
    JOINER_INFO,
    Json,
    check,
    decode_frame,
    fields_of,
    frame_entry,
    hexed,
    identities,
    label,
    seeded_rand,
)

__all__ = ["link"]


# -- link ----------------------------------------------------------------------------------

_WAYS = ("dialer to listener", "listener to dialer")
#: The first delivery number of a node's first run (protocol/delivery.py: epoch 1).
_FIRST = 1 << 32
#: Each side's first sealed message is its LinkAddresses (section 11.2); then a payload each
#: way, each acknowledged, and an unpair.
_LINK_PLAN: list[tuple[str, str, m.LinkInner]] = [
    ("dialer", "listener", m.LinkAddresses(addresses=["198.51.100.8:47470"])),
    ("listener", "dialer", m.LinkAddresses(addresses=["203.0.113.9:47470"])),
    ("dialer", "listener", m.LinkAppData(seq=_FIRST, data=b"ping")),
    ("listener", "dialer", m.LinkAck(upto=_FIRST)),
    ("listener", "dialer", m.LinkAppData(seq=_FIRST, data=b"pong")),
    ("dialer", "listener", m.LinkAck(upto=_FIRST)),
    ("listener", "dialer", m.LinkUnpair()),
]


def _channel(name: str, me: NodeId, peer: NodeId, secret: bytes, kid: bytes) -> LinkChannel:
    addr = INITIATOR_INFO.addresses if me == identities()[0].node_id else JOINER_INFO.addresses
    d, r = name == "dialer", seeded_rand(name)
    return LinkChannel(
        local=me, peer=peer, local_is_dialer=d, pairing_secret=secret, key_id=kid, addresses=addr, rand=r
    )


def link(secret: bytes, pairing_id: bytes) -> Json:
    """A link connection after the pairing: the hellos, then the sealed inner messages of _LINK_PLAN."""
    ini, joi = (identity.node_id for identity in identities())
    dialer = dialer_of(ini, joi)
    listener = joi if dialer == ini else ini
    pairs = (("dialer", dialer, listener), ("listener", listener, dialer))
    kid = ks.key_id(pairing_id)
    side = {name: _channel(name, me, peer, secret, kid) for name, me, peer in pairs}
    hello_d = side["dialer"].hello()
    side["listener"].receive_data(hello_d)
    check((side["listener"].next_event(), None, "the listener's event before its own hello"))
    hello_l = side["listener"].hello()
    side["dialer"].receive_data(hello_l)
    up_d, up_l = side["dialer"].next_event(), side["listener"].next_event()
    assert isinstance(up_d, LinkEstablished) and isinstance(up_l, LinkEstablished)
    nonce_d, nonce_l = (fields_of(decode_frame(hello))["nonce"] for hello in (hello_d, hello_l))
    salt = bytes.fromhex(nonce_d + nonce_l)
    info = {way: label(f"link {way}") + dialer.raw + listener.raw for way in _WAYS}
    prk = ks.hkdf_extract(salt, secret)
    d2l, l2d = (ks.hkdf_expand(prk, info[way], 32) for way in _WAYS)
    both = (up_d.keys.send, up_d.keys.receive, up_l.keys.send, up_l.keys.receive)
    check((both, (d2l, l2d, l2d, d2l), "the link keys"))

    sealed = []
    for sender, receiver, inner in _LINK_PLAN:
        if isinstance(inner, m.LinkAppData):
            frame = side[sender].send_app(inner.seq, inner.data)
        elif isinstance(inner, m.LinkAck):
            frame = side[sender].send_ack(inner.upto)
        elif isinstance(inner, m.LinkAddresses):
            frame = side[sender].send_addresses(inner.addresses)
        else:
            frame = side[sender].send_unpair()
        side[receiver].receive_data(frame)
        event = side[receiver].next_event()
        entry = frame_entry(sender, frame)
        seq = entry["fields"]["seq"].to_bytes(8, "big")
        key = d2l if sender == "dialer" else l2d
        values = {"key": key, "nonce": bytes(4) + seq, "aad": CONTEXT_LINK + seq}
        entry |= {"inner": type(inner).__name__, "inner_fields": fields_of(inner), **hexed(values)}
        sealed.append(entry | {"plaintext": encode_body(inner).hex(), "receiver_event": type(event).__name__})
    derived = {"salt": salt, "PRK_L": prk, "info_dialer_to_listener": info[_WAYS[0]]}
    derived |= {"info_listener_to_dialer": info[_WAYS[1]], "dialer_to_listener": d2l}
    derived["listener_to_dialer"] = l2d
    out: Json = {"dialer": dialer.raw.hex(), "listener": listener.raw.hex(), "key_id": kid.hex()}
    out["dialer_nonce"] = nonce_d
    out["listener_nonce"] = nonce_l
    out["hellos"] = [frame_entry("dialer", hello_d), frame_entry("listener", hello_l)]
    return out | hexed(derived) | {"sealed": sealed}
