"""The key schedule: from a SPAKE2 key to confirmation MACs, session keys and the SAS.

Everything here is a pure function of its inputs (docs/PROTOCOL.md, "Key
schedule"). HKDF is RFC 5869 with SHA-256; every label starts with
``quicpair/1 `` so keys of this protocol version can never be confused with
keys derived for anything else.

Pairing (one QUIC connection, :mod:`protocol.pairing`)::

    TH  = transcript_hash(version, nameplate, NodeIds as seen in TLS, both PAKE messages)
    PRK = HKDF-Extract(salt=TH, IKM=K)                   K = the SPAKE2 key
    k_confirm_i, k_confirm_j, k_i2j, k_j2i, pairing_secret, sas = HKDF-Expand(PRK, label)
    confirm_i = HMAC(k_confirm_i, TH)                     confirm_j = HMAC(k_confirm_j, TH)

The keys are *directional* by construction (failure #4 of DESIGN.md): the
initiator sends with ``k_i2j`` and receives with ``k_j2i``, the joiner the
other way round, and :class:`DirectionalKeys` refuses ``send == receive``.

Link (every later connection, :mod:`protocol.link`)::

    PRK_L = HKDF-Extract(salt=dialer_nonce || listener_nonce, IKM=pairing_secret)
    d2l, l2d = HKDF-Expand(PRK_L, label || dialer NodeId || listener NodeId)

Fresh nonces from both sides make every link connection's keys new, so a
replayed recording of an old connection never opens.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .codes import words_from_bits
from .identity import NodeId
from .messages import KEY_ID_SIZE

__all__ = [
    "KEY_SIZE",
    "LABEL_PREFIX",
    "RESET_TOKEN_SIZE",
    "SAS_WORDS",
    "DirectionalKeys",
    "PairingKeys",
    "Role",
    "commit_mac",
    "derive_pairing_keys",
    "done_mac",
    "hkdf_expand",
    "hkdf_extract",
    "hmac_sha256",
    "key_fingerprint",
    "key_id",
    "link_keys",
    "restart_notice_key",
    "sas_confirmed_mac",
    "stateless_reset_key",
    "stateless_reset_token",
    "transcript_hash",
    "verify_mac",
]

#: Every HKDF label and hash domain of protocol version 1 starts with this.
LABEL_PREFIX = b"quicpair/1 "
#: Size of every symmetric key and MAC: SHA-256's output (HashLen of RFC 5869).
KEY_SIZE = 32
#: The SAS is 4 BIP39 words = 44 bits: an active attacker who has not broken
#: the PAKE would have to match it by chance, 1 in 2**44.
SAS_WORDS = 4
#: RFC 5869 2.3: L <= 255 * HashLen.
_MAX_EXPAND = 255 * KEY_SIZE
#: Length prefixes in the transcript are 2 bytes (big-endian).
_MAX_FIELD = 0xFFFF


def _label(name: str) -> bytes:
    return LABEL_PREFIX + name.encode("ascii")


_TRANSCRIPT = _label("transcript")
_CONFIRM_INITIATOR = _label("confirm initiator")
_CONFIRM_JOINER = _label("confirm joiner")
_INITIATOR_TO_JOINER = _label("initiator to joiner")
_JOINER_TO_INITIATOR = _label("joiner to initiator")
_PAIRING_SECRET = _label("pairing secret")
_SAS = _label("sas")
_DONE = _label("done")
_COMMIT = _label("commit")
_SAS_CONFIRMED_INITIATOR = _label("sas confirmed initiator")
_SAS_CONFIRMED_JOINER = _label("sas confirmed joiner")
_KEY_FINGERPRINT = _label("key fingerprint")
_LINK_D2L = _label("link dialer to listener")
_LINK_L2D = _label("link listener to dialer")
_KEY_ID = _label("key id")
_RESTART_NOTICE = _label("restart notice")
_STATELESS_RESET = _label("stateless reset")


class Role(enum.Enum):
    """Which side of a pairing a node plays: the initiator shows the code, the joiner types it."""

    INITIATOR = "initiator"
    JOINER = "joiner"

    @property
    def peer(self) -> Role:
        """The other role."""
        return Role.JOINER if self is Role.INITIATOR else Role.INITIATOR


# -- primitives ------------------------------------------------------------------


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``data`` under ``key``."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 2.2) with SHA-256; an empty salt means HashLen zero bytes."""
    return hmac_sha256(salt or bytes(KEY_SIZE), ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 2.3) with SHA-256: ``length`` bytes of output keying material."""
    if len(prk) < KEY_SIZE:
        # RFC 5869 2.3: PRK is "at least HashLen octets".
        raise ValueError(f"an HKDF PRK is at least {KEY_SIZE} bytes, got {len(prk)}")
    if not 0 < length <= _MAX_EXPAND:
        raise ValueError(f"HKDF-Expand length must be 1..{_MAX_EXPAND}, got {length}")
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def verify_mac(expected: bytes, got: bytes) -> bool:
    """Compare two MACs in constant time (never ``==``: it leaks the common prefix length)."""
    return hmac.compare_digest(expected, got)


def _check_key(name: str, key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes")


# -- pairing -----------------------------------------------------------------------


def _field(data: bytes) -> bytes:
    if len(data) > _MAX_FIELD:
        raise ValueError(f"transcript field of {len(data)} bytes exceeds {_MAX_FIELD}")
    return len(data).to_bytes(2, "big") + data


def transcript_hash(
    *,
    version: int,
    nameplate: int,
    initiator: NodeId,
    joiner: NodeId,
    pake_initiator: bytes,
    pake_joiner: bytes,
) -> bytes:
    """TH, the pairing id: SHA-256 over the length-prefixed transcript fields.

    The NodeIds are the ones each side saw in the TLS handshake, so a relay
    that terminates TLS with its own identity produces a different TH on each
    side, and key confirmation fails.
    """
    if not 0 <= version <= 0xFF:
        raise ValueError(f"version must fit in 1 byte, got {version}")
    if not 0 <= nameplate <= 0xFFFF:
        raise ValueError(f"nameplate must fit in 2 bytes, got {nameplate}")
    fields = (
        _TRANSCRIPT,
        version.to_bytes(1, "big"),
        nameplate.to_bytes(2, "big"),
        initiator.raw,
        joiner.raw,
        pake_initiator,
        pake_joiner,
    )
    return hashlib.sha256(b"".join(_field(f) for f in fields)).digest()


@dataclass(frozen=True, slots=True)
class DirectionalKeys:
    """The two keys one side uses on a connection: one to send, one to receive.

    ``repr`` shows only fingerprints, so keys never end up in logs.
    """

    #: Key for what this side sends (the peer's ``receive``).
    send: bytes
    #: Key for what this side receives (the peer's ``send``).
    receive: bytes

    def __post_init__(self) -> None:
        _check_key("send key", self.send)
        _check_key("receive key", self.receive)
        if hmac.compare_digest(self.send, self.receive):
            raise ValueError("send and receive keys must differ (keys are directional)")

    def __repr__(self) -> str:
        return f"DirectionalKeys(send={self.send_fingerprint}, receive={self.receive_fingerprint})"

    @property
    def send_fingerprint(self) -> str:
        """:func:`key_fingerprint` of the send key."""
        return key_fingerprint(self.send)

    @property
    def receive_fingerprint(self) -> str:
        """:func:`key_fingerprint` of the receive key."""
        return key_fingerprint(self.receive)


@dataclass(frozen=True, slots=True)
class PairingKeys:
    """Everything a pairing derives from the SPAKE2 key and the transcript.

    ``repr`` shows the pairing id's fingerprint and the SAS only.
    """

    #: TH, the transcript hash; stored in the registry, names the pairing in PairResolve.
    pairing_id: bytes
    #: The initiator's key confirmation MAC (sent in PairChallenge).
    confirm_initiator: bytes
    #: The joiner's key confirmation MAC (sent in PairResponse).
    confirm_joiner: bytes
    #: k_i2j: what the initiator seals and the joiner opens during the pairing.
    initiator_to_joiner: bytes
    #: k_j2i: what the joiner seals and the initiator opens during the pairing.
    joiner_to_initiator: bytes
    #: The long-term shared secret stored with the device record; keys every later link.
    pairing_secret: bytes
    #: The short authentication string: 4 BIP39 words both people can compare.
    sas: tuple[str, ...]

    def __repr__(self) -> str:
        return f"PairingKeys(pairing_id={key_fingerprint(self.pairing_id)}, sas={'-'.join(self.sas)})"

    def for_role(self, role: Role) -> DirectionalKeys:
        """The session keys as ``role`` uses them: initiator.send == joiner.receive and back."""
        if role is Role.INITIATOR:
            return DirectionalKeys(send=self.initiator_to_joiner, receive=self.joiner_to_initiator)
        return DirectionalKeys(send=self.joiner_to_initiator, receive=self.initiator_to_joiner)

    def confirm_of(self, role: Role) -> bytes:
        """The confirmation MAC that ``role`` sends (and its peer verifies)."""
        return self.confirm_initiator if role is Role.INITIATOR else self.confirm_joiner


def derive_pairing_keys(pake_key: bytes, pairing_id: bytes) -> PairingKeys:
    """Expand the SPAKE2 key ``K`` under the transcript hash ``TH`` (= ``pairing_id``)."""
    _check_key("the PAKE key", pake_key)
    _check_key("the pairing id", pairing_id)
    prk = hkdf_extract(pairing_id, pake_key)
    k_confirm_i = hkdf_expand(prk, _CONFIRM_INITIATOR, KEY_SIZE)
    k_confirm_j = hkdf_expand(prk, _CONFIRM_JOINER, KEY_SIZE)
    # 8 bytes carry the 44 bits the 4 words need.
    sas_bits = hkdf_expand(prk, _SAS, 8)
    return PairingKeys(
        pairing_id=pairing_id,
        confirm_initiator=hmac_sha256(k_confirm_i, pairing_id),
        confirm_joiner=hmac_sha256(k_confirm_j, pairing_id),
        initiator_to_joiner=hkdf_expand(prk, _INITIATOR_TO_JOINER, KEY_SIZE),
        joiner_to_initiator=hkdf_expand(prk, _JOINER_TO_INITIATOR, KEY_SIZE),
        pairing_secret=hkdf_expand(prk, _PAIRING_SECRET, KEY_SIZE),
        sas=words_from_bits(sas_bits, SAS_WORDS),
    )


def _registry_mac(label: bytes, pairing_secret: bytes, pairing_id: bytes) -> bytes:
    _check_key("the pairing secret", pairing_secret)
    _check_key("the pairing id", pairing_id)
    # pairing_secret is already a uniformly random HKDF output, so it serves
    # as a PRK directly (RFC 5869 3.3: Extract may be skipped for such keys).
    return hmac_sha256(hkdf_expand(pairing_secret, label, KEY_SIZE), pairing_id)


def done_mac(pairing_secret: bytes, pairing_id: bytes) -> bytes:
    """The joiner's vote to commit (PairDone, PairResolve).

    Derived from what the registry stores (secret and id) only, so the
    initiator can check a PairResolve long after the pairing connection ended.
    """
    return _registry_mac(_DONE, pairing_secret, pairing_id)


def commit_mac(pairing_secret: bytes, pairing_id: bytes) -> bytes:
    """The initiator's commit decision (PairCommit); derived like :func:`done_mac`."""
    return _registry_mac(_COMMIT, pairing_secret, pairing_id)


def sas_confirmed_mac(pairing_secret: bytes, pairing_id: bytes, role: Role) -> bytes:
    """``role``'s PairSasConfirmed: its person confirmed the SAS of this pairing."""
    label = _SAS_CONFIRMED_INITIATOR if role is Role.INITIATOR else _SAS_CONFIRMED_JOINER
    return _registry_mac(label, pairing_secret, pairing_id)


def key_fingerprint(key: bytes) -> str:
    """16 lowercase base32 characters naming a key for people and logs, revealing nothing of it."""
    digest = hashlib.sha256(_KEY_FINGERPRINT + key).digest()
    return base64.b32encode(digest).decode("ascii")[:16].lower()


# -- link ------------------------------------------------------------------------


def link_keys(
    pairing_secret: bytes,
    *,
    dialer: NodeId,
    listener: NodeId,
    dialer_nonce: bytes,
    listener_nonce: bytes,
    local_is_dialer: bool,
) -> DirectionalKeys:
    """The keys of one link connection, as the local side uses them.

    Both NodeIds are in the label, so the keys bind who dialed whom; both
    nonces are the salt, so each connection gets fresh keys.
    """
    _check_key("the pairing secret", pairing_secret)
    # Fixed-size nonces keep the salt's split point unambiguous.
    _check_key("the dialer nonce", dialer_nonce)
    _check_key("the listener nonce", listener_nonce)
    if dialer == listener:
        raise ValueError("a link joins two different nodes")
    prk = hkdf_extract(dialer_nonce + listener_nonce, pairing_secret)
    ids = dialer.raw + listener.raw
    d2l = hkdf_expand(prk, _LINK_D2L + ids, KEY_SIZE)
    l2d = hkdf_expand(prk, _LINK_L2D + ids, KEY_SIZE)
    if local_is_dialer:
        return DirectionalKeys(send=d2l, receive=l2d)
    return DirectionalKeys(send=l2d, receive=d2l)


def key_id(pairing_id: bytes) -> bytes:
    """The pairing's key id (``LinkHello.pairing``): which pairing, hence which secret, a side uses.

    A hash of the pairing id (public within the pair), so it names the pairing without
    revealing anything about its secret.
    """
    _check_key("the pairing id", pairing_id)
    return hashlib.sha256(_KEY_ID + pairing_id).digest()[:KEY_ID_SIZE]


def restart_notice_key(pairing_secret: bytes) -> bytes:
    """The key of the restart notices between two paired nodes (``protocol.notice``)."""
    _check_key("the pairing secret", pairing_secret)
    return hkdf_expand(pairing_secret, _RESTART_NOTICE, KEY_SIZE)


#: RFC 9000 10.3: a stateless reset token is 16 bytes.
RESET_TOKEN_SIZE = 16


def stateless_reset_key(identity_seed: bytes) -> bytes:
    """The node's static key for stateless reset tokens (RFC 9000 10.3.2), from its identity.

    Derived from the Ed25519 seed, so it survives restarts without a file of its own: a
    restarted node can reset the connections of its previous incarnation. One-way: a token
    reveals nothing of the identity key.
    """
    _check_key("the identity seed", identity_seed)
    return hkdf_expand(hkdf_extract(b"", identity_seed), _STATELESS_RESET, KEY_SIZE)


def stateless_reset_token(reset_key: bytes, connection_id: bytes) -> bytes:
    """The stateless reset token for one of our connection ids: HMAC(static key, CID), 16 bytes."""
    _check_key("the stateless reset key", reset_key)
    return hmac_sha256(reset_key, connection_id)[:RESET_TOKEN_SIZE]
