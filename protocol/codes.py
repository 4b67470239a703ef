"""Pairing codes: what one person reads out and the other types, and the URI a QR code shows.

A code looks like ``42-apple-brave-zebra``: a *nameplate* (1..9999, public,
it only tells the initiator which of its open codes is meant) and three
words from the BIP39 English list. The list has 2048 words, so each word
carries 11 bits and a code 33 bits of secret; SPAKE2 turns that secret into
a key and an attacker gets one online guess per attempt, never an offline
test. Canonically the secret is the three full lowercase words joined by
``-`` (:attr:`PairingCode.secret`, the SPAKE2 password).

People type codes, so parsing forgives what does not change the meaning:
any case, any run of blanks, ``-``, ``_``, ``.`` or ``,`` between the parts,
and each word shortened to its first four letters (BIP39 words differ
within their first four letters). Everything else is refused with a message
that says which part is wrong and, when a word is close to a real one,
suggests it.

The URI form carries the code together with the initiator's NodeId and
direct addresses, so a joiner that scans it can pin the initiator and dial
it without discovery::

    quicpair:pair?code=42-apple-brave-zebra&node=<52 base32 chars>&addr=192.0.2.7:4433&addr=%5B::1%5D:4433

Addresses are ``host:port`` with an IPv4 address, an IPv6 address in
brackets (an optional ``%zone`` inside them) or a DNS name, always with a
port; :func:`normalize_address` gives the one form in which they are stored
and compared. Which addresses a node announces, keeps and dials is
protocol/addresses.py.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from importlib import resources
from typing import Final

from .errors import CodeFormatError, ErrorCode, LocalProtocolError
from .identity import NodeId
from .messages import MAX_ADDRESS_LEN, MAX_ADDRESSES

__all__ = [
    "BITS_PER_WORD",
    "NAMEPLATE_MAX",
    "NAMEPLATE_MIN",
    "URI_SCHEME",
    "WORDS",
    "WORD_COUNT",
    "PairingCode",
    "PairingUri",
    "format_address",
    "normalize_address",
    "parse_code_or_uri",
    "split_address",
    "words_from_bits",
]

NAMEPLATE_MIN: Final = 1
#: Four digits: short to read out, and far more than the open codes a node allows at once.
NAMEPLATE_MAX: Final = 9999
WORD_COUNT: Final = 3
#: log2 of the 2048 BIP39 words.
BITS_PER_WORD: Final = 11
URI_SCHEME: Final = "quicpair"
_URI_KIND: Final = "pair"
_PREFIX_LEN: Final = 4  # BIP39 guarantees the first 4 letters identify a word
_EXAMPLE: Final = "42-apple-brave-zebra"
# Far above any real code or URI (16 addresses of 64 characters, percent-encoded);
# only there so that pasted garbage is refused before any work is spent on it.
_MAX_CODE_TEXT: Final = 256
_MAX_URI_TEXT: Final = 8192

_SEPARATORS = re.compile(r"[\s\-_.,]+")
_URI_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[A-Za-z0-9_.\-]+")


def _load_words() -> tuple[str, ...]:
    path = resources.files(__package__ or "quicpair.protocol").joinpath("wordlist_bip39_en.txt")
    words = tuple(path.read_text(encoding="ascii").split())
    if len(words) != 1 << BITS_PER_WORD or len({w[:_PREFIX_LEN] for w in words}) != len(words):
        raise ImportError("protocol/wordlist_bip39_en.txt is damaged: reinstall quicpair")
    return words


#: The BIP39 English word list, in its order (a word's index is its 11-bit value).
WORDS: Final[tuple[str, ...]] = _load_words()
_INDEX: Final[dict[str, int]] = {word: index for index, word in enumerate(WORDS)}
_BY_PREFIX: Final[dict[str, str]] = {word[:_PREFIX_LEN]: word for word in WORDS}


def words_from_bits(data: bytes, count: int) -> tuple[str, ...]:
    """``count`` words from the first ``count * 11`` bits of ``data``, most significant bit first.

    Used for the secret words of a code and for the SAS words shown after a
    pairing. ValueError if ``data`` has fewer bits than that.
    """
    need = count * BITS_PER_WORD
    if count < 0 or len(data) * 8 < need:
        raise ValueError(f"{count} words need {need} bits, got {len(data) * 8}")
    value = int.from_bytes(data, "big") >> (len(data) * 8 - need)
    mask = (1 << BITS_PER_WORD) - 1
    return tuple(WORDS[(value >> (BITS_PER_WORD * (count - 1 - i))) & mask] for i in range(count))


# -- the code ------------------------------------------------------------------


def _resolve_word(token: str, position: int) -> str:
    """The full word a typed token stands for, or CodeFormatError naming its position."""
    lowered = token.lower() if token.isascii() else token
    if lowered in _INDEX:
        return lowered
    full = _BY_PREFIX.get(lowered[:_PREFIX_LEN])
    if len(lowered) >= _PREFIX_LEN and full is not None and full.startswith(lowered):
        return full
    shown = token if len(token) <= 24 else token[:24] + "..."
    if lowered.isalpha() and len(lowered) < _PREFIX_LEN and any(w.startswith(lowered) for w in WORDS):
        raise CodeFormatError(
            f"word {position} {shown!r} is too short: type the whole word or its first {_PREFIX_LEN} letters"
        )
    message = f"word {position} {shown!r} is not in the word list"
    close = _suggest(lowered)
    if close:
        message += f" (did you mean {close!r}?)"
    raise CodeFormatError(message)


def _suggest(token: str) -> str | None:
    """The word a typo most likely stands for, if one is close enough to say so."""
    if len(token) > 16:  # no word is longer than 8 letters; do not spend time on pasted garbage
        return None
    close = difflib.get_close_matches(token, WORDS, n=1, cutoff=0.75)
    if close:
        return close[0]
    if len(token) <= _PREFIX_LEN:
        # Short words are too short for difflib's ratio ("wya" vs "way" is 0.67): two
        # neighbouring letters swapped, else one wrong letter when only one word fits.
        same = [w for w in WORDS if len(w) == len(token)]
        swapped = [w for w in same if _slips(token, w) == "swap"]
        wrong = [w for w in same if _slips(token, w) == "letter"]
        if swapped or len(wrong) == 1:
            return (swapped or wrong)[0]
    return _BY_PREFIX.get(token[:_PREFIX_LEN])  # "abandonned": the prefix is right, the ending is not


def _slips(typed: str, word: str) -> str | None:
    """How ``typed`` differs from ``word`` of the same length: "letter" (one wrong),
    "swap" (two neighbours swapped), or None (otherwise, or equal)."""
    diff = [i for i, (a, b) in enumerate(zip(typed, word, strict=True)) if a != b]
    if len(diff) == 1:
        return "letter"
    if len(diff) == 2 and diff[1] == diff[0] + 1 and typed[diff[0]] == word[diff[1]]:
        return "swap" if typed[diff[1]] == word[diff[0]] else None
    return None


def _check_nameplate(value: int) -> None:
    if not NAMEPLATE_MIN <= value <= NAMEPLATE_MAX:
        raise CodeFormatError(
            f"nameplate {value} is out of range: it is a number from {NAMEPLATE_MIN} to {NAMEPLATE_MAX}"
        )


@dataclass(frozen=True, slots=True)
class PairingCode:
    """A pairing code: a public nameplate and three secret words.

    ``repr`` hides the words, so a code never reaches a log by accident;
    :attr:`text` is the form to show a person.
    """

    #: Which open code on the initiator this is (1..9999); not secret.
    nameplate: int
    #: The three secret words, full and lowercase, from :data:`WORDS`.
    words: tuple[str, str, str] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.nameplate, int) or isinstance(self.nameplate, bool):
            raise CodeFormatError(f"the nameplate must be an integer, not {type(self.nameplate).__name__}")
        _check_nameplate(self.nameplate)
        if not isinstance(self.words, tuple) or len(self.words) != WORD_COUNT:
            raise CodeFormatError(f"a code has exactly {WORD_COUNT} words")
        for position, word in enumerate(self.words, 1):
            if not isinstance(word, str) or word not in _INDEX:
                raise CodeFormatError(f"word {position} is not a word of the list (full, lowercase)")

    @property
    def text(self) -> str:
        """The form people read and type: ``42-apple-brave-zebra``."""
        return "-".join((str(self.nameplate), *self.words))

    @property
    def secret(self) -> bytes:
        """The SPAKE2 password: the three words joined by ``-``, as UTF-8 (ASCII) bytes."""
        return "-".join(self.words).encode("ascii")

    @classmethod
    def generate(cls, rand: Callable[[int], bytes], taken: Set[int] = frozenset()) -> PairingCode:
        """A fresh code: 33 uniform secret bits from ``rand``, a nameplate not in ``taken``.

        LocalProtocolError(BUSY) when every nameplate is taken.
        """
        free = [n for n in range(NAMEPLATE_MIN, NAMEPLATE_MAX + 1) if n not in taken]
        if not free:
            raise LocalProtocolError(ErrorCode.BUSY, "every nameplate is in use; close a code first")
        # A 64-bit draw reduced modulo < 10^4 is biased by < 2^-50: irrelevant for
        # a public nameplate, and it needs no rejection loop.
        nameplate = free[int.from_bytes(_draw(rand, 8), "big") % len(free)]
        # 5 bytes = 40 bits, of which words_from_bits uses the first 33: exactly uniform words.
        first, second, third = words_from_bits(_draw(rand, 5), WORD_COUNT)
        return cls(nameplate, (first, second, third))

    @classmethod
    def parse(cls, text: str) -> PairingCode:
        """Read a code as a person typed it; CodeFormatError saying what is wrong."""
        if len(text) > _MAX_CODE_TEXT:
            raise CodeFormatError(f"that is far too long for a code (like {_EXAMPLE})")
        parts = [p for p in _SEPARATORS.split(text) if p]
        if not parts:
            raise CodeFormatError(f"the code is empty; it is a number and 3 words, like {_EXAMPLE}")
        number = parts[0]
        if not (number.isascii() and number.isdigit()):
            shown = number if len(number) <= 24 else number[:24] + "..."
            raise CodeFormatError(
                f"the code needs a nameplate number followed by {WORD_COUNT} words (like {_EXAMPLE});"
                f" it starts with {shown!r}, not a number"
            )
        if len(parts) != 1 + WORD_COUNT:
            raise CodeFormatError(
                f"the code needs a nameplate number followed by {WORD_COUNT} words (like {_EXAMPLE});"
                f" got {len(parts) - 1} word{'s' if len(parts) != 2 else ''} after the number"
            )
        stripped = number.lstrip("0")
        if len(stripped) > len(str(NAMEPLATE_MAX)):
            raise CodeFormatError(
                f"nameplate {number[:12]}{'...' if len(number) > 12 else ''} is out of range:"
                f" it is a number from {NAMEPLATE_MIN} to {NAMEPLATE_MAX}"
            )
        nameplate = int(stripped or "0")
        _check_nameplate(nameplate)
        first, second, third = (_resolve_word(token, i) for i, token in enumerate(parts[1:], 1))
        return cls(nameplate, (first, second, third))


def _draw(rand: Callable[[int], bytes], size: int) -> bytes:
    data = rand(size)
    if len(data) != size:
        raise ValueError(f"rand({size}) returned {len(data)} bytes")
    return data


# -- addresses -----------------------------------------------------------------


def split_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), the host in normal form (IPv6 without brackets).

    Accepts an IPv4 address, an IPv6 address in brackets (optionally with a
    ``%zone`` of letters, digits, ``_.-``) or a DNS name (RFC 1123 labels,
    ASCII; IDNs in their ``xn--`` form), and a port 1..65535 without leading
    zeros. ValueError saying what is wrong otherwise.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("an address is host:port, like 192.0.2.7:4433 or [::1]:4433")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError("an IPv6 address is written [address]:port, like [::1]:4433")
        host_text, port_text = text[1:close], text[close + 2 :]
        _, percent, zone = host_text.partition("%")
        if percent and not _ZONE.fullmatch(zone):
            raise ValueError(f"the IPv6 zone {zone!r} may only hold letters, digits and _.-")
        try:
            host = str(ipaddress.IPv6Address(host_text))
        except ValueError as exc:
            raise ValueError(f"{host_text!r} is not an IPv6 address") from exc
    else:
        host_text, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError("the port is missing: an address is host:port")
        if ":" in host_text:
            raise ValueError("an IPv6 address must be in brackets: [address]:port")
        host = _normal_host(host_text)
    return host, _parse_port(port_text)


def _normal_host(text: str) -> str:
    if not text:
        raise ValueError("the host is missing: an address is host:port")
    lowered = text.lower()
    labels = lowered.split(".")
    if labels[-1].isascii() and labels[-1].isdigit():  # WHATWG URL rule: a numeric last label is IPv4
        try:
            return str(ipaddress.IPv4Address(lowered))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not an IPv4 address ({exc})") from exc
    if len(lowered) > 253 or not lowered.isascii() or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"{text!r} is not a valid host name (letters, digits and '-', dot-separated)")
    return lowered


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > 5:
        raise ValueError(f"the port {text!r} is not a number from 1 to 65535")
    port = int(text)
    if port > 65535:
        raise ValueError(f"the port {port} is not a number from 1 to 65535")
    return port


def format_address(host: str, port: int) -> str:
    """The normal ``host:port`` text for ``host`` and ``port`` (brackets around IPv6)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"the port must be an integer, not {type(port).__name__}")
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return normalize_address(text)


def normalize_address(text: str) -> str:
    """The one stored form of an address (lowercase, canonical IP); ValueError if invalid.

    Also refuses addresses longer than MAX_ADDRESS_LEN characters, which the
    wire messages could not carry.
    """
    host, port = split_address(text)
    normal = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if len(normal) > MAX_ADDRESS_LEN:
        raise ValueError(f"the address is {len(normal)} characters long, at most {MAX_ADDRESS_LEN} allowed")
    return normal


# -- the URI -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairingUri:
    """A code plus, optionally, whom to dial: the initiator's NodeId and addresses.

    ``addresses`` are normalised on construction; CodeFormatError if one is
    invalid, repeated, or if there are more than MAX_ADDRESSES.
    """

    #: The pairing code.
    code: PairingCode
    #: The initiator's identity, to pin when dialling; None for a bare code.
    node: NodeId | None = None
    #: The initiator's direct addresses (``host:port``), tried before discovery.
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.code, PairingCode):
            raise CodeFormatError("a pairing URI needs a PairingCode")
        if self.node is not None and not isinstance(self.node, NodeId):
            raise CodeFormatError("the node of a pairing URI must be a NodeId")
        if isinstance(self.addresses, str) or len(self.addresses) > MAX_ADDRESSES:
            raise CodeFormatError(f"a pairing URI carries at most {MAX_ADDRESSES} addresses")
        normal: list[str] = []
        for position, address in enumerate(self.addresses, 1):
            try:
                item = normalize_address(address)
            except ValueError as exc:
                raise CodeFormatError(
                    f"address {position} {_short(str(address))!r} is not valid: {exc}"
                ) from exc
            if item in normal:
                raise CodeFormatError(f"address {position} {item!r} appears twice")
            normal.append(item)
        object.__setattr__(self, "addresses", tuple(normal))

    @property
    def text(self) -> str:
        """The URI, percent-encoded where needed (the IPv6 brackets and zones)."""
        params = [("code", self.code.text)]
        if self.node is not None:
            params.append(("node", self.node.text))
        params.extend(("addr", address) for address in self.addresses)
        query = "&".join(f"{name}={urllib.parse.quote(value, safe=':')}" for name, value in params)
        return f"{URI_SCHEME}:{_URI_KIND}?{query}"

    @classmethod
    def parse(cls, text: str) -> PairingUri:
        """Read a pairing URI; CodeFormatError naming the part that is wrong.

        Scheme, kind and parameter names are case-insensitive (so are codes,
        NodeIds and host names), and ``+`` is a space, as in any query string.
        """
        text = text.strip()
        if len(text) > _MAX_URI_TEXT:
            raise CodeFormatError("that is far too long for a pairing URI")
        scheme, colon, rest = text.partition(":")
        if not colon or not _URI_START.match(text):
            raise CodeFormatError(f"a pairing URI starts with '{URI_SCHEME}:{_URI_KIND}?'")
        if scheme.lower() != URI_SCHEME:
            raise CodeFormatError(
                f"unknown URI scheme {_short(scheme)!r}: a pairing URI starts with '{URI_SCHEME}:'"
            )
        if "#" in rest:
            raise CodeFormatError("a pairing URI has no '#' fragment")
        kind, question, query = rest.partition("?")
        if kind.lower() != _URI_KIND:
            raise CodeFormatError(
                f"unknown quicpair URI kind {_short(kind)!r}: a pairing URI starts with"
                f" '{URI_SCHEME}:{_URI_KIND}?'"
            )
        if not question or not query:
            raise CodeFormatError("the pairing URI has no code parameter")
        return cls._from_query(query)

    @classmethod
    def _from_query(cls, query: str) -> PairingUri:
        code: PairingCode | None = None
        node: NodeId | None = None
        addresses: list[str] = []
        for item in query.split("&"):
            raw_name, equals, raw_value = item.partition("=")
            name = raw_name.lower()
            if not equals:
                raise CodeFormatError(f"the URI parameter {_short(raw_name)!r} has no '=' and no value")
            value = _unquote(raw_value, raw_name)
            if name == "code":
                if code is not None:
                    raise CodeFormatError("the pairing URI has two code parameters")
                try:
                    code = PairingCode.parse(value)
                except CodeFormatError as exc:
                    raise CodeFormatError(f"the code in the URI is not valid: {exc}") from exc
            elif name == "node":
                if node is not None:
                    raise CodeFormatError("the pairing URI has two node parameters")
                try:
                    node = NodeId.from_text(value)
                except ValueError as exc:
                    raise CodeFormatError(f"the node in the URI is not a valid NodeId: {exc}") from exc
            elif name == "addr":
                addresses.append(value)
            else:
                raise CodeFormatError(f"unknown parameter {_short(raw_name)!r} in the pairing URI")
        if code is None:
            raise CodeFormatError("the pairing URI has no code parameter")
        return cls(code, node, tuple(addresses))


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def _unquote(value: str, name: str) -> str:
    try:
        return urllib.parse.unquote_to_bytes(value.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodeFormatError(
            f"the URI parameter {_short(name)!r} is not valid percent-encoded UTF-8"
        ) from exc


def parse_code_or_uri(text: str) -> PairingUri:
    """Whatever the person gave: a pairing URI, or a bare code (then no node and no addresses)."""
    if _URI_START.match(text.strip()):
        return PairingUri.parse(text)
    return PairingUri(PairingCode.parse(text))
