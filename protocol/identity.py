"""Node identity: an Ed25519 key pair; the NodeId is its 32-byte public key.

People see a NodeId as 52 characters of lowercase RFC 4648 base32 without
padding, and usually only its fingerprint (the first 8 characters of the
base32 SHA-256 of the key, in two groups of four). The transport presents a
self-signed certificate made from the same key, so the peer learns our
NodeId from the TLS handshake itself.
"""

from __future__ import annotations

import base64
import datetime
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import total_ordering
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from .errors import IdentityError

__all__ = ["NODE_ID_SIZE", "Identity", "NodeId", "node_id_from_certificate"]

NODE_ID_SIZE = 32
_TEXT_LEN = 52  # ceil(32 * 8 / 5)


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


@total_ordering
@dataclass(frozen=True, slots=True)
class NodeId:
    """A node's identity: its Ed25519 public key (32 bytes). Ordered by its bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != NODE_ID_SIZE:
            raise ValueError("a NodeId is exactly 32 bytes")

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, NodeId):
            return NotImplemented
        return self.raw < other.raw

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"NodeId({self.fingerprint})"

    @property
    def text(self) -> str:
        """The stable text form: 52 lowercase base32 characters."""
        return _b32(self.raw)

    @property
    def fingerprint(self) -> str:
        """A short form for people: ``abcd-efgh`` from SHA-256 of the key."""
        digest = _b32(hashlib.sha256(b"quicpair fingerprint\x00" + self.raw).digest())
        return f"{digest[:4]}-{digest[4:8]}"

    @classmethod
    def from_text(cls, text: str) -> NodeId:
        """Parse the text form (case-insensitive, surrounding blanks ignored)."""
        cleaned = text.strip().upper()
        if len(cleaned) != _TEXT_LEN:
            raise ValueError(f"a NodeId is {_TEXT_LEN} base32 characters, got {len(cleaned)}")
        try:
            raw = base64.b32decode(cleaned + "====", casefold=False)
        except (ValueError, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
            raise ValueError(f"not a NodeId: {exc}") from exc
        if _b32(raw) != cleaned.lower():
            raise ValueError("not a NodeId: non-canonical base32")
        return cls(raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this node's Ed25519 signature over ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


class Identity:
    """A node's long-term Ed25519 key pair."""

    __slots__ = ("_key", "node_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.node_id = NodeId(
            private_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def __repr__(self) -> str:
        return f"Identity({self.node_id.fingerprint})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic identity from a 32-byte seed (test vectors, tests)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    @property
    def seed(self) -> bytes:
        """The 32-byte Ed25519 seed (RFC 8032 5.1.5): the secret everything else derives from."""
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    # -- persistence -----------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, readable by the owner only (mode 0600).

        Refuses to overwrite an existing file: an identity is never replaced
        by accident.
        """
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError as exc:
            raise IdentityError(f"identity file {path} already exists; not overwriting") from exc
        except OSError as exc:
            raise IdentityError(f"cannot create identity file {path}: {exc.strerror}") from exc
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key written by :meth:`save`; refuse files others can read, and symlinks
        (O_NOFOLLOW: whoever can write the home must not make us read another file)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise IdentityError(f"no identity file at {path}") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IdentityError(f"identity file {path} is a symbolic link; not following it") from exc
            raise IdentityError(f"cannot read identity file {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IdentityError(f"identity file {path} is not a regular file")
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise IdentityError(
                    f"identity file {path} is accessible by other users "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
                )
            with os.fdopen(os.dup(fd), "rb") as file:
                data = file.read(64 * 1024)
            key = serialization.load_pem_private_key(data, password=None)
        except OSError as exc:
            raise IdentityError(f"cannot read identity file {path}: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"identity file {path} is not a valid private key") from exc
        finally:
            os.close(fd)
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"identity file {path} holds a key that is not Ed25519")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        if os.path.lexists(path):  # a symlink too: load refuses it rather than writing through it
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    # -- transport -------------------------------------------------------

    def certificate(self, now: float, rand: Callable[[int], bytes]) -> x509.Certificate:
        """A self-signed Ed25519 certificate for the QUIC handshake.

        Peers never check dates or names in it, only the key (the NodeId),
        so it is valid from one day before ``now`` for ten years; the serial
        number comes from ``rand``.
        """
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.node_id.text)])
        start = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        serial = int.from_bytes(rand(16), "big") >> 1 or 1
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(serial)
            .not_valid_before(start - datetime.timedelta(days=1))
            .not_valid_after(start + datetime.timedelta(days=3650))
        )
        return builder.sign(self._key, algorithm=None)


def node_id_from_certificate(cert: x509.Certificate) -> NodeId:
    """The NodeId a certificate presents; IdentityError unless it is Ed25519 and self-signed."""
    public = cert.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise IdentityError("the peer's certificate key is not Ed25519")
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature as exc:
        raise IdentityError("the peer's certificate is not self-signed by its key") from exc
    return NodeId(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
