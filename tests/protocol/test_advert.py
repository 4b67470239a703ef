"""The mDNS advert (protocol/advert.py), pure: the TXT record a node publishes, no network.

tests/discovery/test_discovery.py puts the same records on real mDNS between
network namespaces.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicpair.protocol.advert import (
    BOOT_ID_LENGTH,
    MAX_NAMEPLATES,
    Advert,
    decode_txt,
    encode_txt,
    format_endpoint,
    instance_name,
    new_boot_id,
)
from quicpair.protocol.errors import ErrorCode, RemoteProtocolError
from quicpair.protocol.identity import Identity

ALICE = Identity.from_seed(b"\x01" * 32).node_id


def txt(*items: bytes) -> bytes:
    """TXT rdata from strings, as on the wire (RFC 6763 6.1)."""
    return b"".join(bytes([len(item)]) + item for item in items)


ID = b"id=" + ALICE.text.encode()


def test_txt_holds_version_id_and_sorted_nameplates_only() -> None:
    assert encode_txt(ALICE) == txt(b"v=1", ID)
    assert encode_txt(ALICE, {42, 7}) == txt(b"v=1", ID, b"np=7,42")
    assert decode_txt(encode_txt(ALICE, {42, 7})) == Advert(ALICE, frozenset({7, 42}))
    assert decode_txt(encode_txt(ALICE)) == Advert(ALICE, frozenset())


def test_txt_fits_the_most_nameplates_in_one_string() -> None:
    plates = set(range(9999 - MAX_NAMEPLATES + 1, 10000))
    rdata = encode_txt(ALICE, plates, "0123abcd")
    assert decode_txt(rdata).nameplates == plates
    assert max(rdata[0], rdata[1 + rdata[0]]) <= 255


def test_txt_carries_the_boot_id_drawn_at_each_start() -> None:
    assert encode_txt(ALICE, {7}, "0a1b2c3d") == txt(b"v=1", ID, b"b=0a1b2c3d", b"np=7")
    assert decode_txt(encode_txt(ALICE, {7}, "0a1b2c3d")) == Advert(ALICE, frozenset({7}), "0a1b2c3d")
    # Random bits, nothing derived from a key: 4 bytes of ``rand``, in hex.
    assert new_boot_id(lambda n: bytes(range(0xF0, 0xF0 + n))) == "f0f1f2f3"
    assert len(new_boot_id()) == BOOT_ID_LENGTH and new_boot_id() != new_boot_id()


def test_an_advert_without_a_boot_id_from_an_older_node_is_valid() -> None:
    assert decode_txt(txt(b"v=1", ID, b"np=5")) == Advert(ALICE, frozenset({5}), None)
    assert decode_txt(txt(b"B=00000000", b"v=1", ID)).boot == "00000000"  # keys in any case, any order


@pytest.mark.parametrize("boot", ["", "0123abc", "0123abcde", "0123ABCD", "0123abcg", "٠١٢٣abcd"])
def test_encoding_refuses_bad_boot_ids(boot: str) -> None:
    with pytest.raises(ValueError, match="boot id"):
        encode_txt(ALICE, (), boot)


@pytest.mark.parametrize("plates", [set(range(1, MAX_NAMEPLATES + 2)), {0}, {10000}, {True}])
def test_encoding_refuses_bad_nameplates(plates: set[int]) -> None:
    with pytest.raises(ValueError):
        encode_txt(ALICE, plates)


def test_decoding_ignores_unknown_keys_and_case_and_repeats() -> None:
    rdata = txt(b"V=1", b"x-future=1", b"ID=" + ALICE.text.upper().encode(), b"id=garbage", b"np=9")
    assert decode_txt(rdata) == Advert(ALICE, frozenset({9}))


@pytest.mark.parametrize(
    ("rdata", "code"),
    [
        (b"", ErrorCode.MALFORMED_MESSAGE),
        (txt(ID), ErrorCode.MALFORMED_MESSAGE),  # no version
        (txt(b"v=2", ID), ErrorCode.UNSUPPORTED_VERSION),
        (txt(b"v", ID), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1"), ErrorCode.MALFORMED_MESSAGE),  # no id
        (txt(b"v=1", b"id"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", b"id=" + ALICE.text[:-1].encode()), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", b"id=" + b"1" * 52), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", b"id=" + ALICE.text.encode()[:-1] + b"\xff"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID)[:-3], ErrorCode.MALFORMED_MESSAGE),  # truncated string
        (txt(b"v=1", ID, b"np="), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np=0"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np=10000"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np=07"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np=+5"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np= 5"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np=5,,6"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, "np=٣".encode()), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"np=1" + b",1" * MAX_NAMEPLATES), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b="), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b=0123abc"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b=0123abcd0"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b=0123ABCD"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b=0123abc\xff"), ErrorCode.MALFORMED_MESSAGE),
        (txt(b"v=1", ID, b"b= 123abcd"), ErrorCode.MALFORMED_MESSAGE),
    ],
)
def test_decoding_refuses_bad_records(rdata: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_txt(rdata)
    assert caught.value.code is code


@settings(deadline=None)  # a busy CI machine must not turn microseconds into a failure
@given(st.binary(max_size=600))
def test_decoding_garbage_raises_only_the_protocol_error(rdata: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_txt(rdata)


def test_endpoints_and_names_as_dialers_and_people_see_them() -> None:
    assert format_endpoint("10.231.0.10", 4433) == "10.231.0.10:4433"
    assert format_endpoint("fd00::1", 4433) == "[fd00::1]:4433"
    assert format_endpoint("fe80::1%2", 4433) == "[fe80::1%2]:4433"
    assert instance_name(ALICE) == f"quicpair-{ALICE.fingerprint}"
