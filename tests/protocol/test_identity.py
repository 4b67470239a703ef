"""Node identity: NodeId text forms, the key file, and the certificate the transport presents."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from quicpair.protocol.errors import IdentityError
from quicpair.protocol.identity import Identity, NodeId, node_id_from_certificate

SEED = bytes(range(32))


def fixed_rand(n: int) -> bytes:
    return b"\x07" * n


@given(st.binary(min_size=32, max_size=32))
def test_text_form_round_trips_and_is_lowercase_base32(raw: bytes) -> None:
    node = NodeId(raw)
    assert len(node.text) == 52 and node.text == node.text.lower()
    assert set(node.text) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert NodeId.from_text(node.text) == node
    assert NodeId.from_text("  " + node.text.upper() + "\n") == node
    assert str(node) == node.text


def test_fingerprint_is_short_stable_and_never_a_python_repr() -> None:
    node = Identity.from_seed(SEED).node_id
    fp = node.fingerprint
    assert len(fp) == 9 and fp[4] == "-" and fp == Identity.from_seed(SEED).node_id.fingerprint
    assert repr(node) == f"NodeId({fp})" and "b'" not in repr(node)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "a" * 51, "a" * 53, "1" * 52, "é" * 52, "a" * 51 + "b"],  # last: non-canonical padding bits
)
def test_bad_text_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="NodeId"):
        NodeId.from_text(text)


def test_node_ids_order_by_raw_bytes() -> None:
    low, high = NodeId(b"\x00" * 32), NodeId(b"\xff" * 32)
    assert low < high and not high < low and sorted([high, low]) == [low, high]


@pytest.mark.parametrize("size", [0, 31, 33])
def test_a_node_id_is_exactly_32_bytes(size: int) -> None:
    with pytest.raises(ValueError):
        NodeId(b"\x01" * size)


def test_signatures_verify_against_the_node_id() -> None:
    identity = Identity.from_seed(SEED)
    signature = identity.sign(b"hello")
    assert identity.node_id.verify(signature, b"hello")
    assert not identity.node_id.verify(signature, b"hellO")
    assert not Identity.generate().node_id.verify(signature, b"hello")


def test_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    identity = Identity.from_seed(SEED)
    identity.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load(path).node_id == identity.node_id
    assert Identity.load_or_create(path).node_id == identity.node_id


def test_an_identity_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    Identity.generate().save(path)
    before = path.read_bytes()
    with pytest.raises(IdentityError, match="already exists"):
        Identity.generate().save(path)
    assert path.read_bytes() == before


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n"],
)
def test_a_corrupt_key_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.pem"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not a valid private key"):
        Identity.load(path)


def test_a_non_ed25519_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not Ed25519"):
        Identity.load(path)


def test_a_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no identity file"):
        Identity.load(tmp_path / "nothing.pem")


def test_the_certificate_presents_the_node_id() -> None:
    identity = Identity.from_seed(SEED)
    cert = identity.certificate(now=1_800_000_000.0, rand=fixed_rand)
    assert node_id_from_certificate(cert) == identity.node_id
    assert cert.subject.rfc4514_string() == f"CN={identity.node_id.text}"


def test_a_certificate_not_made_with_ed25519_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "not a node")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(IdentityError, match="not Ed25519"):
        node_id_from_certificate(cert)


def test_a_certificate_signed_by_another_key_is_refused() -> None:
    holder, signer = Identity.from_seed(SEED), Identity.generate()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, holder.node_id.text)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(holder.private_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(signer.private_key, algorithm=None)
    )
    with pytest.raises(IdentityError, match="self-signed"):
        node_id_from_certificate(cert)
