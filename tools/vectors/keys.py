"""Key material: certificates and serials, the fixed key schedule, restart notice, reset tokens."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.serialization import Encoding

from quicpair.protocol import keys as ks
from quicpair.protocol.dialrule import dialer_of
from quicpair.protocol.identity import NodeId
from quicpair.protocol.notice import make_notice
from quicpair.tools.vectors.base import (
    INITIATOR_SEED,
    JOINER_SEED,
    NOW,
    Json,
    check,
    hexed,
    identities,
    label,
    seeded_rand,
)

__all__ = ["certificate_serials", "certificates", "fixed_schedule", "restart_notice", "stateless_reset"]


def certificates() -> Json:
    rand, names = seeded_rand("certificate"), ("initiator", "joiner")
    pairs = zip(names, identities(), strict=True)
    return {name: ident.certificate(NOW, rand).public_bytes(Encoding.DER).hex() for name, ident in pairs}


def certificate_serials() -> Json:
    """Section 3.2: how the 16 ``rand`` bytes of each certificate become its serial number."""
    rand, out = seeded_rand("certificate"), {}
    for name in ("initiator", "joiner"):
        drawn = rand(16)
        serial = int.from_bytes(drawn, "big") >> 1 or 1
        out[name] = {"rand_16": drawn.hex(), "serial_hex": f"{serial:x}", "serial_decimal": str(serial)}
    # The same stream, through the real Identity.certificate: the serials must be the ones above.
    rand = seeded_rand("certificate")
    for name, ident in zip(("initiator", "joiner"), identities(), strict=True):
        got = ident.certificate(NOW, rand).serial_number
        check((f"{got:x}", out[name]["serial_hex"], f"the {name} certificate's serial"))
    return out


def fixed_schedule() -> Json:
    """Section 14's key schedule from fixed inputs (no PAKE run): every value from the formulas."""
    ini, joi = NodeId(b"\x11" * 32), NodeId(b"\x22" * 32)
    pake_i, pake_j, key = b"A" + b"\x33" * 32, b"B" + b"\x44" * 32, b"\x55" * 32
    nonce_d, nonce_l, nameplate = b"\x66" * 32, b"\x77" * 32, 4242
    th = ks.transcript_hash(
        version=1, nameplate=nameplate, initiator=ini, joiner=joi, pake_initiator=pake_i, pake_joiner=pake_j
    )
    keys = ks.derive_pairing_keys(key, th)
    link = ks.link_keys(
        keys.pairing_secret,
        dialer=ini,
        listener=joi,
        dialer_nonce=nonce_d,
        listener_nonce=nonce_l,
        local_is_dialer=True,
    )
    inputs = {"initiator": ini.raw, "joiner": joi.raw, "pake_initiator": pake_i, "pake_joiner": pake_j}
    inputs |= {"K": key, "dialer_nonce": nonce_d, "listener_nonce": nonce_l}
    values = {f.name: getattr(keys, f.name) for f in dataclasses.fields(keys) if f.name != "sas"}
    values["done_mac"] = ks.done_mac(keys.pairing_secret, th)
    values["commit_mac"] = ks.commit_mac(keys.pairing_secret, th)
    values["link_dialer_to_listener"], values["link_listener_to_dialer"] = link.send, link.receive
    out: Json = {"inputs": {"nameplate": nameplate, "dialer": "initiator", **hexed(inputs)}}
    outputs: Json = dict(hexed(values))
    outputs |= {"sas": " ".join(keys.sas), "key_fingerprint(K)": ks.key_fingerprint(key)}
    return out | {"outputs": outputs}


def restart_notice(secret: bytes) -> Json:
    """Section 11.6: the notice the waiting side (the higher NodeId) sends its dialer."""
    ini, joi = (identity.node_id for identity in identities())
    sender = joi if dialer_of(ini, joi) == ini else ini
    receiver = ini if sender == joi else joi
    boot = seeded_rand("notice")(8)
    key = ks.hkdf_expand(secret, label("restart notice"), 32)
    signed = b"\x00qpRN\x01" + sender.raw + receiver.raw + boot
    tag = ks.hmac_sha256(key, signed)[:16]
    datagram = b"\x00qpRN\x01" + sender.raw + boot + tag
    check(
        (ks.restart_notice_key(secret), key, "notice_key"),
        (make_notice(secret, sender, receiver, boot), datagram, "the notice"),
    )
    values = {"pairing_secret": secret, "sender": sender.raw, "receiver": receiver.raw, "boot": boot}
    return hexed(values | {"notice_key": key, "tag_input": signed, "tag": tag, "datagram": datagram})


def stateless_reset() -> Json:
    """Section 3.4/8.5: each node's reset key from its Ed25519 seed, a token for a connection id."""
    out: Json = {}
    rand = seeded_rand("reset")
    for name, seed in (("initiator", INITIATOR_SEED), ("joiner", JOINER_SEED)):
        reset_key = ks.hkdf_expand(ks.hkdf_extract(b"", seed), label("stateless reset"), 32)
        cid = rand(8)
        token = ks.hmac_sha256(reset_key, cid)[:16]
        check(
            (ks.stateless_reset_key(seed), reset_key, "reset_key"),
            (ks.stateless_reset_token(reset_key, cid), token, "reset_token"),
        )
        out[name] = hexed(
            {"ed25519_seed": seed, "reset_key": reset_key, "connection_id": cid, "token": token}
        )
    return out


#: Section 7.4, "How a receiver treats them": (what a peer announced, where it was seen).
