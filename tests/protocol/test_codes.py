"""Pairing codes and URIs: forgiving where a person types, strict everywhere else."""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
from collections.abc import Callable
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicpair.protocol import codes
from quicpair.protocol.codes import (
    NAMEPLATE_MAX,
    WORDS,
    PairingCode,
    PairingUri,
    format_address,
    normalize_address,
    parse_code_or_uri,
    split_address,
    words_from_bits,
)
from quicpair.protocol.errors import CodeFormatError, ErrorCode, LocalProtocolError
from quicpair.protocol.identity import Identity, NodeId
from quicpair.protocol.messages import MAX_ADDRESS_LEN, MAX_ADDRESSES

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None)

#: SHA-256 of the BIP39 English list (bitcoin/bips bip-0039/english.txt, also in python-mnemonic 0.21).
BIP39_ENGLISH_SHA256 = "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"

NODE = Identity.from_seed(b"\x07" * 32).node_id


def fixed_rand(*chunks: bytes) -> Callable[[int], bytes]:
    """A rand that returns the given chunks in order (each must match the size asked)."""
    queue = list(chunks)

    def rand(size: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == size
        return chunk

    return rand


def seeded_rand(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def format_error(action: Callable[[], object]) -> str:
    with pytest.raises(CodeFormatError) as info:
        action()
    return str(info.value)


# -- the word list ---------------------------------------------------------------


def test_word_list_is_the_bip39_english_list() -> None:
    data = resources.files("quicpair.protocol").joinpath("wordlist_bip39_en.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == BIP39_ENGLISH_SHA256
    assert len(WORDS) == 2048 == len(set(WORDS))
    assert WORDS[0] == "abandon" and WORDS[-1] == "zoo"
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in WORDS)


def test_the_first_four_letters_identify_every_word() -> None:
    assert len({w[:4] for w in WORDS}) == len(WORDS)


# BIP39 reference vectors (trezor/python-mnemonic vectors.json): the first 11 words of a
# 12-word mnemonic are exactly the first 121 bits of its entropy; the 12th holds the checksum.
BIP39_VECTORS = [
    ("00" * 16, "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon"),
    ("7f" * 16, "legal winner thank year wave sausage worth useful legal winner thank"),
    ("80" * 16, "letter advice cage absurd amount doctor acoustic avoid letter advice cage"),
    ("ff" * 16, "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo"),
]


@pytest.mark.parametrize(("entropy", "mnemonic"), BIP39_VECTORS)
def test_words_from_bits_matches_bip39(entropy: str, mnemonic: str) -> None:
    assert words_from_bits(bytes.fromhex(entropy), 11) == tuple(mnemonic.split())


def test_words_from_bits_reads_the_leading_bits_only() -> None:
    assert words_from_bits(b"\x00\x20", 1) == ("ability",)  # 00000000 001: the 11th bit is read
    assert words_from_bits(b"\x00\x1f", 1) == ("abandon",)  # 00000000 000|11111: the rest is not
    assert words_from_bits(b"\x00\x1f\xff", 0) == ()
    assert words_from_bits(b"\x00\x20\x00", 2) == ("ability", "abandon")
    sas = words_from_bits(bytes(range(8)), 4)  # 44 of 64 bits: the SAS in protocol/keys.py
    assert len(sas) == 4


@pytest.mark.parametrize(("size", "count"), [(0, 1), (1, 1), (4, 3), (5, 4), (16, 12)])
def test_words_from_bits_refuses_too_few_bits(size: int, count: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        words_from_bits(b"\x00" * size, count)


def test_words_from_bits_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError):
        words_from_bits(b"\x00" * 8, -1)


# -- PairingCode -------------------------------------------------------------------


def test_text_and_secret() -> None:
    code = PairingCode(42, ("apple", "brave", "zebra"))
    assert code.text == "42-apple-brave-zebra"
    assert code.secret == b"apple-brave-zebra"


def test_repr_never_shows_the_secret_words() -> None:
    code = PairingCode(42, ("apple", "brave", "zebra"))
    uri = PairingUri(code, NODE, ("192.0.2.7:4433",))
    for text in (repr(code), str(code), repr(uri), str(uri)):
        assert "apple" not in text and "zebra" not in text
    assert "42" in repr(code)


def test_generate_takes_33_bits_for_the_words_and_a_free_nameplate() -> None:
    code = PairingCode.generate(fixed_rand(b"\x00" * 8, b"\xff" * 5), taken={1, 2})
    assert code == PairingCode(3, ("zoo", "zoo", "zoo"))
    bits = "00000000001" + "00000000010" + "11111111111" + "1010101"  # words 1, 2, 2047; 7 unused bits
    code = PairingCode.generate(fixed_rand(b"\x00" * 7 + b"\x01", int(bits, 2).to_bytes(5, "big")))
    assert code == PairingCode(2, ("ability", "able", "zoo"))


def test_generate_never_picks_a_taken_nameplate() -> None:
    taken = set(range(1, NAMEPLATE_MAX + 1)) - {17, 4242}
    rand = seeded_rand(1)
    picked = {PairingCode.generate(rand, taken).nameplate for _ in range(50)}
    assert picked == {17, 4242}


def test_generate_when_every_nameplate_is_taken() -> None:
    with pytest.raises(LocalProtocolError) as info:
        PairingCode.generate(seeded_rand(0), set(range(1, NAMEPLATE_MAX + 1)))
    assert info.value.code is ErrorCode.BUSY


def test_generate_refuses_a_short_random_source() -> None:
    with pytest.raises(ValueError, match="returned"):
        PairingCode.generate(lambda n: b"\x00" * (n - 1))


def test_generated_codes_parse_back() -> None:
    rand = seeded_rand(2)
    for _ in range(100):
        code = PairingCode.generate(rand)
        assert PairingCode.parse(code.text) == code


@pytest.mark.parametrize(
    ("nameplate", "words"),
    [
        (0, ("apple", "brave", "zebra")),
        (10_000, ("apple", "brave", "zebra")),
        (True, ("apple", "brave", "zebra")),
        (1, ("apple", "brave")),
        (1, ("apple", "brave", "zebra", "zoo")),
        (1, ("Apple", "brave", "zebra")),
        (1, ("appl", "brave", "zebra")),
        (1, ["apple", "brave", "zebra"]),
    ],
)
def test_constructor_refuses_invalid_parts(nameplate: int, words: tuple[str, str, str]) -> None:
    with pytest.raises(CodeFormatError):
        PairingCode(nameplate, words)


FORGIVEN = [
    "42-apple-brave-zebra",
    "42 apple brave zebra",
    "  42 - Apple - BRAVE - zebra  ",
    "42_apple_brave_zebra",
    "42.apple.brave.zebra",
    "42, apple, brave, zebra",
    "42\tapple\nbrave  zebra",
    "042-apple-brave-zebra",
    "42-appl-brav-zebr",
    "42-APPL-brave-ZEBR",
    "-42-apple-brave-zebra-",
    "42-apple-brav-zebra.",
]


@pytest.mark.parametrize("text", FORGIVEN)
def test_parse_forgives_case_separators_and_four_letter_prefixes(text: str) -> None:
    assert PairingCode.parse(text) == PairingCode(42, ("apple", "brave", "zebra"))


def test_three_letter_words_and_prefixes_of_them() -> None:
    assert PairingCode.parse("1-act-add-zoo").words == ("act", "add", "zoo")
    assert PairingCode.parse("1-acti-addi-addr").words == ("action", "addict", "address")


STRICT = [
    ("", "empty"),
    ("   - _ ", "empty"),
    ("apple-brave-zebra", "needs a nameplate number followed by 3 words"),
    ("apple-brave-zebra-42", "starts with 'apple', not a number"),
    ("42-apple-brave", "got 2 words after the number"),
    ("42", "got 0 words"),
    ("42-apple-brave-zebra-zoo", "got 4 words"),
    ("0-apple-brave-zebra", "nameplate 0 is out of range"),
    ("10000-apple-brave-zebra", "nameplate 10000 is out of range"),
    ("1" * 5000, "too long"),
    ("9" * 40 + "-apple-brave-zebra", "out of range"),
    ("٤٢-apple-brave-zebra", "not a number"),
    ("42-apple-zebar-brave", "word 2 'zebar' is not in the word list (did you mean 'zebra'?)"),
    ("42-apple-brave-zebar", "word 3 'zebar'"),
    ("42-apples-brave-zebra", "word 1 'apples' is not in the word list (did you mean 'apple'?)"),
    ("42-abandonned-brave-zebra", "did you mean 'abandon'?"),
    ("42-ap-brave-zebra", "word 1 'ap' is too short"),
    ("42-apple-brave-xqzj", "word 3 'xqzj' is not in the word list"),
    ("42-äpple-brave-zebra", "word 1 'äpple'"),
    ("42-apple-brave-zebra!", "word 3 'zebra!'"),
    ("42-apple-brave-" + "z" * 200, "word 3"),
    ("42-apple-brave-ze", "too short"),
    ("42-apple-brave-appl3", "word 3 'appl3'"),
]


@pytest.mark.parametrize(("text", "message"), STRICT)
def test_parse_says_precisely_what_is_wrong(text: str, message: str) -> None:
    error = format_error(lambda: PairingCode.parse(text))
    assert message in error
    assert len(error) < 300


def test_word_errors_carry_no_suggestion_when_nothing_is_close() -> None:
    assert "did you mean" not in format_error(lambda: PairingCode.parse("42-apple-brave-xqzj"))


def test_code_format_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        PairingCode.parse("nope")


# -- addresses ---------------------------------------------------------------------

GOOD_ADDRESSES = [
    ("192.0.2.7:4433", "192.0.2.7:4433", ("192.0.2.7", 4433)),
    ("[::1]:4433", "[::1]:4433", ("::1", 4433)),
    ("[0:0:0:0:0:0:0:1]:1", "[::1]:1", ("::1", 1)),
    ("[FE80::1%eth0]:65535", "[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
    ("[fe80::1%3]:9", "[fe80::1%3]:9", ("fe80::1%3", 9)),
    ("localhost:80", "localhost:80", ("localhost", 80)),
    ("Alice-Laptop.local:4433", "alice-laptop.local:4433", ("alice-laptop.local", 4433)),
    ("xn--bcher-kva.example:1", "xn--bcher-kva.example:1", ("xn--bcher-kva.example", 1)),
    ("a1.b2.c3:2", "a1.b2.c3:2", ("a1.b2.c3", 2)),
]


@pytest.mark.parametrize(("text", "normal", "parts"), GOOD_ADDRESSES)
def test_addresses_are_normalised(text: str, normal: str, parts: tuple[str, int]) -> None:
    assert normalize_address(text) == normal
    assert split_address(text) == parts
    assert format_address(*parts) == normal
    assert normalize_address(normal) == normal


BAD_ADDRESSES = [
    ("", "host:port"),
    ("192.0.2.7", "port is missing"),
    ("192.0.2.7:", "port ''"),
    ("192.0.2.7:0", "port '0'"),
    ("192.0.2.7:65536", "port 65536"),
    ("192.0.2.7:04433", "port '04433'"),
    ("192.0.2.7:+1", "port '+1'"),
    ("192.0.2.7:١٢", "port"),
    ("192.0.2.7:4433x", "port"),
    (":4433", "host is missing"),
    ("::1:4433", "must be in brackets"),
    ("[::1]", "[address]:port"),
    ("[::1]4433", "[address]:port"),
    ("[::1:4433", "[address]:port"),
    ("[::g]:1", "not an IPv6 address"),
    ("[192.0.2.7]:1", "not an IPv6 address"),
    ("[fe80::1%]:1", "zone"),
    ("[fe80::1%a b]:1", "zone"),
    ("[fe80::1%a/b]:1", "zone"),
    ("256.0.0.1:1", "not an IPv4 address"),
    ("1.2.3:1", "not an IPv4 address"),
    ("01.2.3.4:1", "not an IPv4 address"),
    ("under_score:1", "not a valid host name"),
    ("-dash.example:1", "not a valid host name"),
    ("dash-.example:1", "not a valid host name"),
    ("a..b:1", "not a valid host name"),
    ("trailing.dot.:1", "not a valid host name"),
    ("bücher.example:1", "not a valid host name"),
    ("a" * 64 + ".example:1", "not a valid host name"),
    ("space host:1", "not a valid host name"),
    ("a" * 60 + ".example:1", "at most 64"),
]


@pytest.mark.parametrize(("text", "message"), BAD_ADDRESSES)
def test_bad_addresses_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_address(text)
    assert message in str(info.value)


def test_format_address_checks_its_parts() -> None:
    with pytest.raises(ValueError):
        format_address("::1", True)
    with pytest.raises(ValueError):
        format_address("[::1]", 1)
    assert format_address("fe80::1%eth0", 4433) == "[fe80::1%eth0]:4433"


# -- PairingUri ----------------------------------------------------------------------

CODE = PairingCode(42, ("apple", "brave", "zebra"))


def test_uri_text() -> None:
    uri = PairingUri(CODE, NODE, ("192.0.2.7:4433", "[fe80::1%eth0]:4433", "alice.local:1"))
    assert uri.text == (
        f"quicpair:pair?code=42-apple-brave-zebra&node={NODE.text}"
        "&addr=192.0.2.7:4433&addr=%5Bfe80::1%25eth0%5D:4433&addr=alice.local:1"
    )
    assert PairingUri.parse(uri.text) == uri
    assert PairingUri(CODE).text == "quicpair:pair?code=42-apple-brave-zebra"


def test_uri_normalises_its_addresses() -> None:
    uri = PairingUri(CODE, None, ("[0::1]:5", "HOST:6"))
    assert uri.addresses == ("[::1]:5", "host:6")


@pytest.mark.parametrize(
    "text",
    [
        f"quicpair:pair?code=42-apple-brave-zebra&node={NODE.text}&addr=[::1]:4433",
        f"QUICPAIR:PAIR?CODE=42-APPLE-BRAVE-ZEBRA&NODE={NODE.text.upper()}&ADDR=%5B::1%5D:4433",
        f"  quicpair:pair?addr=%5b::1%5d:4433&node={NODE.text}&code=42+appl+brav+zebr  ",
        f"quicpair:pair?code=42%2Dapple%2Dbrave%2Dzebra&node={NODE.text}&addr=%5B%3A%3A1%5D%3A4433",
    ],
)
def test_uri_parse_forgives_case_order_and_encoding(text: str) -> None:
    assert PairingUri.parse(text) == PairingUri(CODE, NODE, ("[::1]:4433",))
    assert parse_code_or_uri(text) == PairingUri(CODE, NODE, ("[::1]:4433",))


_C = "code=42-apple-brave-zebra"
BAD_URIS = [
    ("http://example.com/?code=1-zoo-zoo-zoo", "unknown URI scheme 'http'"),
    ("quicpairs:pair?" + _C, "unknown URI scheme 'quicpairs'"),
    ("quicpair:link?" + _C, "unknown quicpair URI kind 'link'"),
    ("quicpair://pair?" + _C, "unknown quicpair URI kind '//pair'"),
    ("quicpair:pair", "no code parameter"),
    ("quicpair:pair?", "no code parameter"),
    ("quicpair:pair?addr=192.0.2.7:1", "no code parameter"),
    ("quicpair:pair?" + _C + "#frag", "fragment"),
    ("quicpair:pair?" + _C + "&" + _C, "two code parameters"),
    (f"quicpair:pair?{_C}&node={NODE.text}&node={NODE.text}", "two node parameters"),
    ("quicpair:pair?" + _C + "&relay=x", "unknown parameter 'relay'"),
    ("quicpair:pair?" + _C + "&", "has no '='"),
    ("quicpair:pair?" + _C + "&node", "'node' has no '='"),
    ("quicpair:pair?" + _C + "&node=abc", "not a valid NodeId"),
    ("quicpair:pair?" + _C + "&node=" + "a" * 51 + "8", "not a valid NodeId"),
    ("quicpair:pair?" + _C + "&node=" + NODE.text[:-1] + "b", "not a valid NodeId"),  # non-canonical
    ("quicpair:pair?" + _C + "&addr=::1:4433", "address 1 '::1:4433' is not valid: an IPv6 address must be"),
    ("quicpair:pair?" + _C + "&addr=a:1&addr=host:0", "address 2 'host:0' is not valid"),
    ("quicpair:pair?" + _C + "&addr=a:1&addr=A:1", "address 2 'a:1' appears twice"),
    ("quicpair:pair?" + _C + "&addr=", "address 1"),
    ("quicpair:pair?" + _C + "&addr=a%ff:1", "not valid percent-encoded UTF-8"),
    ("quicpair:pair?" + "".join(f"addr=h{i}:1&" for i in range(17)) + _C, "at most 16 addresses"),
    ("quicpair:pair?code=42-apple-zebar-brave", "the code in the URI is not valid: word 2 'zebar'"),
    ("quicpair:pair?code=", "the code is empty"),
    ("quicpair:pair?" + "x" * 9000, "too long"),
]


@pytest.mark.parametrize(("text", "message"), BAD_URIS)
def test_uri_parse_says_precisely_what_is_wrong(text: str, message: str) -> None:
    error = format_error(lambda: PairingUri.parse(text))
    assert message in error
    assert message in format_error(lambda: parse_code_or_uri(text))


def test_uri_constructor_checks_its_parts() -> None:
    with pytest.raises(CodeFormatError, match="at most 16"):
        PairingUri(CODE, None, tuple(f"h{i}:1" for i in range(MAX_ADDRESSES + 1)))
    with pytest.raises(CodeFormatError, match="at most 16"):
        PairingUri(CODE, None, "a:1")  # type: ignore[arg-type]
    with pytest.raises(CodeFormatError, match="appears twice"):
        PairingUri(CODE, None, ("a:1", "a:1"))
    with pytest.raises(CodeFormatError, match="address 1"):
        PairingUri(CODE, None, (1,))  # type: ignore[arg-type]
    with pytest.raises(CodeFormatError):
        PairingUri("42-apple-brave-zebra", None, ())  # type: ignore[arg-type]
    with pytest.raises(CodeFormatError):
        PairingUri(CODE, NODE.raw, ())  # type: ignore[arg-type]


def test_a_bare_code_gives_no_node_and_no_addresses() -> None:
    assert parse_code_or_uri(" 42 apple brave zebra ") == PairingUri(CODE, None, ())
    assert "not a number" in format_error(lambda: parse_code_or_uri("apple brave zebra"))
    assert "unknown URI scheme 'apple'" in format_error(lambda: parse_code_or_uri("apple:brave"))


# -- properties --------------------------------------------------------------------

codes_st = st.builds(
    PairingCode,
    st.integers(1, NAMEPLATE_MAX),
    st.tuples(st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(WORDS)),
)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(lambda s: not s.isdigit())
_host = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.tuples(st.ip_addresses(v=6), st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)).map(
        lambda t: f"[{t[0]}%{t[1]}]"
    ),
)
addresses_st = st.builds(lambda h, p: f"{h}:{p}", _host, st.integers(1, 65535)).filter(
    lambda a: len(a) <= MAX_ADDRESS_LEN
)
uris_st = st.builds(
    PairingUri,
    codes_st,
    st.none() | st.binary(min_size=32, max_size=32).map(NodeId),
    st.lists(addresses_st, max_size=MAX_ADDRESSES, unique_by=normalize_address).map(tuple),
)


@PROPERTY
@given(codes_st)
def test_property_code_text_round_trips(code: PairingCode) -> None:
    assert PairingCode.parse(code.text) == code
    assert parse_code_or_uri(code.text) == PairingUri(code)


@PROPERTY
@given(codes_st, st.data())
def test_property_code_survives_what_people_do_to_it(code: PairingCode, data: st.DataObject) -> None:
    separators = st.from_regex(r"[ \-_.,]{1,3}", fullmatch=True)
    parts = [str(code.nameplate).zfill(data.draw(st.integers(1, 4)))]
    for word in code.words:
        cut = data.draw(st.integers(min(4, len(word)), len(word)))
        typed = "".join(c.upper() if data.draw(st.booleans()) else c for c in word[:cut])
        parts.append(typed)
    text = data.draw(separators).join(parts)
    assert PairingCode.parse(text) == code


@PROPERTY
@given(uris_st)
def test_property_uri_text_round_trips(uri: PairingUri) -> None:
    assert PairingUri.parse(uri.text) == uri
    assert parse_code_or_uri(uri.text) == uri
    assert uri.text.isascii() and not set(uri.text) & set(" []#")


_NEAR_MISS = st.text(alphabet="0123456789-_., \tabcdeilnoprsvwyzAZ:?&=%+[]#éq", max_size=80)


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(
    st.text(max_size=120)
    | _NEAR_MISS
    | st.builds(lambda s: "quicpair:pair?" + s, _NEAR_MISS | st.text(max_size=120))
    | st.builds(lambda s: "quicpair:pair?code=42-apple-brave-zebra&addr=" + s, _NEAR_MISS)
)
def test_property_any_text_is_a_code_a_uri_or_a_code_format_error(text: str) -> None:
    with contextlib.suppress(CodeFormatError):
        parse_code_or_uri(text)


@PROPERTY
@given(st.binary(min_size=2, max_size=16), st.integers(0, 11))
def test_property_words_from_bits_agrees_with_bit_strings(data: bytes, count: int) -> None:
    bits = "".join(f"{b:08b}" for b in data)
    if len(bits) < count * 11:
        with pytest.raises(ValueError):
            words_from_bits(data, count)
        return
    expected = tuple(WORDS[int(bits[i * 11 : i * 11 + 11], 2)] for i in range(count))
    assert words_from_bits(data, count) == expected


def test_public_api_is_honest() -> None:
    for name in codes.__all__:
        assert hasattr(codes, name), name
