"""The key schedule: RFC 5869 vectors, directional keys, and binding of both identities."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicpair.protocol.codes import WORDS
from quicpair.protocol.identity import NodeId
from quicpair.protocol.keys import (
    DirectionalKeys,
    PairingKeys,
    Role,
    commit_mac,
    derive_pairing_keys,
    done_mac,
    hkdf_expand,
    hkdf_extract,
    key_fingerprint,
    link_keys,
    transcript_hash,
    verify_mac,
)
from quicpair.protocol.pake import spake2_for

# -- RFC 5869 Appendix A, the SHA-256 cases --------------------------------------------

RFC5869 = [
    pytest.param(
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="A.1 basic",
    ),
    pytest.param(
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="A.2 long inputs",
    ),
    pytest.param(
        "0b" * 22,
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="A.3 empty salt and info",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), RFC5869)
def test_hkdf_rfc5869_vectors(ikm: str, salt: str, info: str, length: int, prk: str, okm: str) -> None:
    got_prk = hkdf_extract(bytes.fromhex(salt), bytes.fromhex(ikm))
    assert got_prk.hex() == prk
    assert hkdf_expand(got_prk, bytes.fromhex(info), length).hex() == okm


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_hkdf_expand_length_bounds(length: int) -> None:
    with pytest.raises(ValueError):
        hkdf_expand(bytes(32), b"info", length)


def test_hkdf_expand_refuses_a_short_prk() -> None:
    with pytest.raises(ValueError):
        hkdf_expand(bytes(16), b"info", 32)


# -- an independent re-statement of the spec, with the standard library only ---------


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _expand(prk: bytes, label: str, extra: bytes = b"") -> bytes:
    # RFC 5869 2.3 with L <= HashLen: T(1) = HMAC(PRK, info || 0x01).
    return _hmac(prk, b"quicpair/1 " + label.encode() + extra + b"\x01")


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def test_schedule_matches_the_spec_text() -> None:
    i, j = NodeId(bytes([0x11]) * 32), NodeId(bytes([0x22]) * 32)
    pake_i, pake_j = b"A" + bytes([0x33]) * 32, b"B" + bytes([0x44]) * 32
    k = bytes([0x55]) * 32
    th = hashlib.sha256(
        _lp(b"quicpair/1 transcript")
        + _lp(b"\x01")
        + _lp((4242).to_bytes(2, "big"))
        + _lp(i.raw)
        + _lp(j.raw)
        + _lp(pake_i)
        + _lp(pake_j)
    ).digest()
    assert (
        transcript_hash(
            version=1, nameplate=4242, initiator=i, joiner=j, pake_initiator=pake_i, pake_joiner=pake_j
        )
        == th
    )
    prk = _hmac(th, k)
    keys = derive_pairing_keys(k, th)
    assert keys.pairing_id == th
    assert keys.confirm_initiator == _hmac(_expand(prk, "confirm initiator"), th)
    assert keys.confirm_joiner == _hmac(_expand(prk, "confirm joiner"), th)
    assert keys.initiator_to_joiner == _expand(prk, "initiator to joiner")
    assert keys.joiner_to_initiator == _expand(prk, "joiner to initiator")
    assert keys.pairing_secret == _expand(prk, "pairing secret")
    secret = keys.pairing_secret
    assert done_mac(secret, th) == _hmac(_expand(secret, "done"), th)
    assert commit_mac(secret, th) == _hmac(_expand(secret, "commit"), th)
    sas_bits = int.from_bytes(_expand(prk, "sas")[:8], "big") >> (64 - 44)
    assert keys.sas == tuple(WORDS[(sas_bits >> (11 * (3 - n))) & 0x7FF] for n in range(4))

    d_nonce, l_nonce = bytes([0x66]) * 32, bytes([0x77]) * 32
    prk_l = _hmac(d_nonce + l_nonce, secret)
    ids = i.raw + j.raw
    dialer = link_keys(
        secret, dialer=i, listener=j, dialer_nonce=d_nonce, listener_nonce=l_nonce, local_is_dialer=True
    )
    assert dialer.send == _expand(prk_l, "link dialer to listener", ids)
    assert dialer.receive == _expand(prk_l, "link listener to dialer", ids)

    digest = hashlib.sha256(b"quicpair/1 key fingerprint" + k).digest()
    assert key_fingerprint(k) == base64.b32encode(digest).decode()[:16].lower()


#: The inputs of test_schedule_matches_the_spec_text and what they give; docs/PROTOCOL.md
#: quotes this vector, so a change here is a protocol change.
VECTOR = {
    "pairing_id": "e09de8db9469b35c62741e194610bc6e7491d4729897f94b4356fb46c5bb19a3",
    "confirm_initiator": "6c0ae521ac73d89f196f6246f228c4c2423640a6b065911fdc59880e2af5ec9f",
    "confirm_joiner": "99aef98297918b2a27cebf60c0c3f41ad25dd8880d18d8711724989008e5adae",
    "initiator_to_joiner": "27379d2e3ecb166e843ec9484d0f4a7b121d3b1112ca5d24126d92be1cd0918b",
    "joiner_to_initiator": "be2aadd8abf765c3f38458a6b2586ca47818fd084a752908b9e62aea71ab3f15",
    "pairing_secret": "384933ddbe7c2d5f577a40a6504acfdd9acc3ad58da0b70eebf7d458f4aec9e7",
    "done_mac": "015308c7b286b4ccf52d08fe63db26642ca3ee801e4b4b8ebccd7ff790ad5443",
    "commit_mac": "be2c448fd055feb1ee20bc1f141d3b04a45088a8ebf47e57c459c70e9185f1d9",
    "link_dialer_to_listener": "13f8562b51be8f6bf52811adfbe7891dd7deb773c8a62e84b1a4c768e20068b9",
    "link_listener_to_dialer": "984855cfd4f8c9370ab77d2001158de776409748c361dd74c35441d602b35161",
}


def test_key_schedule_vector() -> None:
    i, j = NodeId(bytes([0x11]) * 32), NodeId(bytes([0x22]) * 32)
    th = transcript_hash(
        version=1,
        nameplate=4242,
        initiator=i,
        joiner=j,
        pake_initiator=b"A" + bytes([0x33]) * 32,
        pake_joiner=b"B" + bytes([0x44]) * 32,
    )
    keys = derive_pairing_keys(bytes([0x55]) * 32, th)
    link = link_keys(
        keys.pairing_secret,
        dialer=i,
        listener=j,
        dialer_nonce=bytes([0x66]) * 32,
        listener_nonce=bytes([0x77]) * 32,
        local_is_dialer=True,
    )
    got = {
        "pairing_id": keys.pairing_id,
        "confirm_initiator": keys.confirm_initiator,
        "confirm_joiner": keys.confirm_joiner,
        "initiator_to_joiner": keys.initiator_to_joiner,
        "joiner_to_initiator": keys.joiner_to_initiator,
        "pairing_secret": keys.pairing_secret,
        "done_mac": done_mac(keys.pairing_secret, th),
        "commit_mac": commit_mac(keys.pairing_secret, th),
        "link_dialer_to_listener": link.send,
        "link_listener_to_dialer": link.receive,
    }
    assert {name: value.hex() for name, value in got.items()} == VECTOR
    assert keys.sas == ("memory", "rebuild", "calm", "current")
    assert key_fingerprint(bytes([0x55]) * 32) == "pu77iqbls5ypmydk"


# -- whole pairings, both sides computing on their own ----------------------------------


node_ids = st.binary(min_size=32, max_size=32).map(NodeId)


def side_keys(
    role: Role, initiator: NodeId, joiner: NodeId, pake_i: bytes, pake_j: bytes, k: bytes, nameplate: int = 7
) -> PairingKeys:
    th = transcript_hash(
        version=1,
        nameplate=nameplate,
        initiator=initiator,
        joiner=joiner,
        pake_initiator=pake_i,
        pake_joiner=pake_j,
    )
    return derive_pairing_keys(k, th)


def full_pairing(
    seen_by_i: tuple[NodeId, NodeId],
    seen_by_j: tuple[NodeId, NodeId],
    seed: int,
    password: bytes = b"acid-zone-wrist",
) -> tuple[PairingKeys, PairingKeys]:
    """Run SPAKE2 and the schedule on each side with the identities that side saw in TLS."""
    rng = random.Random(seed)
    alice = spake2_for(Role.INITIATOR, password, *seen_by_i, rng.randbytes)
    bob = spake2_for(Role.JOINER, password, *seen_by_j, rng.randbytes)
    msg_i, msg_j = alice.start(), bob.start()
    k_i, k_j = alice.finish(msg_j), bob.finish(msg_i)
    return (
        side_keys(Role.INITIATOR, *seen_by_i, msg_i, msg_j, k_i),
        side_keys(Role.JOINER, *seen_by_j, msg_i, msg_j, k_j),
    )


def distinct(n: int) -> st.SearchStrategy[list[NodeId]]:
    return st.lists(node_ids, min_size=n, max_size=n, unique=True)


@settings(max_examples=30, deadline=None)
@given(distinct(2), st.integers(min_value=0, max_value=2**32))
def test_keys_are_directional_on_both_sides(ids: list[NodeId], seed: int) -> None:
    initiator, joiner = ids
    keys_i, keys_j = full_pairing((initiator, joiner), (initiator, joiner), seed)
    assert keys_i == keys_j
    mine, theirs = keys_i.for_role(Role.INITIATOR), keys_j.for_role(Role.JOINER)
    assert mine.send == theirs.receive
    assert theirs.send == mine.receive
    assert mine.send != mine.receive and theirs.send != theirs.receive
    assert keys_i.sas == keys_j.sas


@settings(max_examples=200)
@given(
    distinct(2),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=33, max_size=33),
    st.binary(min_size=33, max_size=33),
)
def test_every_derived_value_is_distinct(ids: list[NodeId], k: bytes, pake_i: bytes, pake_j: bytes) -> None:
    keys = side_keys(Role.INITIATOR, ids[0], ids[1], pake_i, pake_j, k)
    values = [
        keys.pairing_id,
        keys.confirm_initiator,
        keys.confirm_joiner,
        keys.initiator_to_joiner,
        keys.joiner_to_initiator,
        keys.pairing_secret,
        done_mac(keys.pairing_secret, keys.pairing_id),
        commit_mac(keys.pairing_secret, keys.pairing_id),
    ]
    assert len(set(values)) == len(values)
    assert keys.confirm_of(Role.INITIATOR) == keys.confirm_initiator != keys.confirm_of(Role.JOINER)


@settings(max_examples=100)
@given(distinct(3), st.binary(min_size=32, max_size=32))
def test_sas_changes_when_either_node_id_changes(ids: list[NodeId], k: bytes) -> None:
    initiator, joiner, other = ids
    pake_i, pake_j = b"A" + bytes(32), b"B" + bytes(32)
    base = side_keys(Role.INITIATOR, initiator, joiner, pake_i, pake_j, k)
    again = side_keys(Role.JOINER, initiator, joiner, pake_i, pake_j, k)
    assert base.sas == again.sas
    assert side_keys(Role.INITIATOR, other, joiner, pake_i, pake_j, k).sas != base.sas
    assert side_keys(Role.INITIATOR, initiator, other, pake_i, pake_j, k).sas != base.sas


@pytest.mark.parametrize("where", ["joiner side", "initiator side", "both sides"])
def test_a_relay_substituting_its_node_id_breaks_confirmation(where: str) -> None:
    # The relay terminates TLS on both legs and forwards the PAKE messages.
    # Each victim sees the relay's NodeId where the other victim's should be.
    initiator, joiner = NodeId(bytes([1]) * 32), NodeId(bytes([2]) * 32)
    relay = NodeId(bytes([3]) * 32)
    seen_by_i = (initiator, relay if where != "initiator side" else joiner)
    seen_by_j = (relay if where != "joiner side" else initiator, joiner)
    keys_i, keys_j = full_pairing(seen_by_i, seen_by_j, seed=99)
    assert not verify_mac(keys_i.confirm_initiator, keys_j.confirm_initiator)
    assert not verify_mac(keys_i.confirm_joiner, keys_j.confirm_joiner)
    assert keys_i.for_role(Role.INITIATOR).send != keys_j.for_role(Role.JOINER).receive
    assert keys_i.pairing_secret != keys_j.pairing_secret
    assert keys_i.sas != keys_j.sas


def test_wrong_password_breaks_confirmation() -> None:
    i, j = NodeId(bytes([1]) * 32), NodeId(bytes([2]) * 32)
    rng = random.Random(5)
    alice = spake2_for(Role.INITIATOR, b"acid-zone-wrist", i, j, rng.randbytes)
    bob = spake2_for(Role.JOINER, b"acid-zone-wrote", i, j, rng.randbytes)
    msg_i, msg_j = alice.start(), bob.start()
    keys_i = side_keys(Role.INITIATOR, i, j, msg_i, msg_j, alice.finish(msg_j))
    keys_j = side_keys(Role.JOINER, i, j, msg_i, msg_j, bob.finish(msg_i))
    assert keys_i.pairing_id == keys_j.pairing_id  # same public transcript...
    assert not verify_mac(keys_i.confirm_initiator, keys_j.confirm_initiator)  # ...different key


def test_done_and_commit_depend_on_secret_and_pairing_id() -> None:
    secret, other_secret = bytes([9]) * 32, bytes([10]) * 32
    pid, other_pid = bytes([1]) * 32, bytes([2]) * 32
    assert done_mac(secret, pid) != commit_mac(secret, pid)
    assert done_mac(secret, pid) != done_mac(other_secret, pid)
    assert done_mac(secret, pid) != done_mac(secret, other_pid)
    assert commit_mac(secret, pid) != commit_mac(secret, other_pid)


def test_verify_mac() -> None:
    mac = done_mac(bytes(32), bytes(32))
    assert verify_mac(mac, bytes(mac))
    assert not verify_mac(mac, mac[:-1] + bytes([mac[-1] ^ 1]))
    assert not verify_mac(mac, mac[:16])
    assert not verify_mac(mac, b"")


def test_transcript_fields_are_unambiguous() -> None:
    i, j = NodeId(bytes([1]) * 32), NodeId(bytes([2]) * 32)
    th = transcript_hash(
        version=1, nameplate=1, initiator=i, joiner=j, pake_initiator=b"ab", pake_joiner=b"c"
    )
    moved = transcript_hash(
        version=1, nameplate=1, initiator=i, joiner=j, pake_initiator=b"a", pake_joiner=b"bc"
    )
    swapped = transcript_hash(
        version=1, nameplate=1, initiator=j, joiner=i, pake_initiator=b"ab", pake_joiner=b"c"
    )
    assert len({th, moved, swapped}) == 3
    for version, nameplate in ((256, 1), (1, 70000), (-1, 1)):
        with pytest.raises(ValueError):
            transcript_hash(
                version=version,
                nameplate=nameplate,
                initiator=i,
                joiner=j,
                pake_initiator=b"",
                pake_joiner=b"",
            )


# -- the objects people and logs see ------------------------------------------------------


def test_reprs_show_no_key() -> None:
    keys = derive_pairing_keys(bytes([7]) * 32, bytes([8]) * 32)
    directional = keys.for_role(Role.JOINER)
    text = repr(keys) + repr(directional) + str(directional)
    for secret in (
        keys.pairing_secret,
        keys.initiator_to_joiner,
        keys.joiner_to_initiator,
        keys.confirm_initiator,
        keys.confirm_joiner,
    ):
        assert secret.hex() not in text
        assert secret.hex()[:8] not in text
    assert directional.send_fingerprint in repr(directional)
    assert "-".join(keys.sas) in repr(keys)


def test_directional_keys_refuse_equal_keys() -> None:
    with pytest.raises(ValueError):
        DirectionalKeys(send=bytes(32), receive=bytes(32))
    with pytest.raises(ValueError):
        DirectionalKeys(send=bytes(31), receive=bytes(32))


def test_key_fingerprint_form() -> None:
    fp = key_fingerprint(bytes(32))
    assert re.fullmatch(r"[a-z2-7]{16}", fp)
    assert fp != key_fingerprint(bytes(31) + b"\x01")


def test_role_peer() -> None:
    assert Role.INITIATOR.peer is Role.JOINER and Role.JOINER.peer is Role.INITIATOR
    assert Role("initiator") is Role.INITIATOR


# -- link keys ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    distinct(2),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_link_keys_are_directional(ids: list[NodeId], secret: bytes, dn: bytes, ln: bytes) -> None:
    dialer, listener = ids

    def keys(local_is_dialer: bool, d_nonce: bytes = dn) -> DirectionalKeys:
        return link_keys(
            secret,
            dialer=dialer,
            listener=listener,
            dialer_nonce=d_nonce,
            listener_nonce=ln,
            local_is_dialer=local_is_dialer,
        )

    d, lst = keys(True), keys(False)
    assert d.send == lst.receive and lst.send == d.receive and d.send != d.receive
    # A fresh dialer nonce gives fresh keys.
    other = keys(True, d_nonce=bytes(b ^ 0xFF for b in dn))
    assert {other.send, other.receive}.isdisjoint({d.send, d.receive})
    # Who dialed whom is bound: swapping the roles gives different keys.
    swapped = link_keys(
        secret, dialer=listener, listener=dialer, dialer_nonce=dn, listener_nonce=ln, local_is_dialer=True
    )
    assert {swapped.send, swapped.receive}.isdisjoint({d.send, d.receive})


def test_link_keys_check_their_inputs() -> None:
    a, b = NodeId(bytes([1]) * 32), NodeId(bytes([2]) * 32)
    good = {"dialer_nonce": bytes(32), "listener_nonce": bytes([1]) * 32, "local_is_dialer": True}
    with pytest.raises(ValueError):
        link_keys(bytes(32), dialer=a, listener=a, **good)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        link_keys(bytes(16), dialer=a, listener=b, **good)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        link_keys(
            bytes(32),
            dialer=a,
            listener=b,
            dialer_nonce=bytes(31),
            listener_nonce=bytes(32),
            local_is_dialer=False,
        )
