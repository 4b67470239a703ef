"""Checks: who the node lets in (sections 3.1-3.3), before anything else is said.

Each check opens one connection shaped to break one rule and reads how the node
ended it: an application CONNECTION_CLOSE with a code of section 6, or a TLS
alert carried as CRYPTO_ERROR (0x0100 + alert, RFC 9001 4.8).
"""

from __future__ import annotations

from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import Identity
from quicpair.protocol.messages import ALPN_LINK, ALPN_PAIR

from .kit import Kit
from .report import Failed
from .wire import (
    Conn,
    Ending,
    client_quic,
    connect,
    foreign_key_quic,
    forged_verify_quic,
    no_certificate_quic,
    not_self_signed_quic,
)

__all__ = ["SECTION", "run"]

SECTION = "admission"


def _refused(conn: Conn) -> Ending:
    """The connection must not have been admitted; how the node ended it."""
    if conn.established:
        conn.close()
        raise Failed("the node admitted the connection (HANDSHAKE_DONE) instead of refusing it")
    conn.close()
    return conn.ending


async def run(kit: Kit) -> None:
    target, report, step = kit.target, kit.report, kit.step
    node = target.node_id

    async def stranger() -> str:
        conn = await connect(target.address, client_quic(Identity.generate(), ALPN_LINK, node), step)
        if conn.established:  # a listener may close right after HANDSHAKE_DONE (3.3)
            try:
                ending = await conn.closed(step)
            except Exception:
                conn.close()
                raise Failed("the node admitted an unpaired NodeId on the link ALPN") from None
        else:
            ending = conn.ending
        conn.close()
        if ending.application_code != ErrorCode.UNKNOWN_PEER:
            raise Failed(f"expected CONNECTION_CLOSE 0x30 UNKNOWN_PEER, got {ending.describe()}")
        return ending.describe()

    async def foreign_alpn() -> str:
        conn = await connect(target.address, client_quic(Identity.generate(), "quicpair/link/99", node), step)
        ending = _refused(conn)
        if not ending.means(ErrorCode.UNSUPPORTED_VERSION):
            raise Failed(
                "expected TLS alert 120 (no_application_protocol), or an equivalent of A.2 (alert 70, "
                f"CONNECTION_CLOSE 0x15), got {ending.describe()}"
            )
        return ending.describe()

    async def no_certificate() -> str:
        conn = await connect(target.address, no_certificate_quic(ALPN_LINK, node), step)
        ending = _refused(conn)
        if ending.alert != 116 and ending.application_code != ErrorCode.IDENTITY_MISMATCH:
            raise Failed(
                "expected TLS alert 116 (certificate_required) or CONNECTION_CLOSE 0x31 IDENTITY_MISMATCH, "
                f"got {ending.describe()}"
            )
        how = "alert 116 in the handshake" if ending.alert == 116 else "IDENTITY_MISMATCH after the handshake"
        report.chose(SECTION, "how an empty client Certificate is refused", "3.2", how)
        return ending.describe()

    async def foreign_key(kind: str) -> str:
        # The node offers only ed25519 (3.2 check 1): a TLS-abiding client with this key would send
        # an empty Certificate (the check above). This one presents its certificate and signs with
        # a scheme nobody offered, so the node must refuse in the handshake: 40, or 51 for the
        # unoffered scheme, or 43 (key not Ed25519); any refusal of 3.2 passes, the form is reported.
        conn = await connect(target.address, foreign_key_quic(kind, ALPN_LINK, node), step)
        ending = _refused(conn)
        if not ending.means(ErrorCode.IDENTITY_MISMATCH):
            raise Failed(
                f"expected a refusal of section 3.2 (alert 40, 43, 51, ...), got {ending.describe()}"
            )
        return ending.describe()

    async def forged_verify() -> str:
        conn = await connect(target.address, forged_verify_quic(ALPN_LINK, node), step)
        ending = _refused(conn)
        if ending.alert != 51:
            raise Failed(f"expected TLS alert 51 (decrypt_error), got {ending.describe()}")
        return ending.describe()

    async def not_self_signed() -> str:
        conn = await connect(target.address, not_self_signed_quic(ALPN_LINK, node), step)
        ending = _refused(conn)
        if ending.alert != 43 and ending.application_code != ErrorCode.IDENTITY_MISMATCH:
            raise Failed(
                "expected TLS alert 43 (unsupported_certificate), or CONNECTION_CLOSE 0x31 from a stack "
                f"that checks after the handshake, got {ending.describe()}"
            )
        return ending.describe()

    async def pair_alpn_admits() -> str:
        conn = await connect(target.address, client_quic(Identity.generate(), ALPN_PAIR, node), step)
        established = conn.established
        bidi = conn.quic._remote_max_streams_bidi
        uni = conn.quic._remote_max_streams_uni
        conn.close()
        if not established:
            raise Failed(f"the node refused a stranger on the pairing ALPN: {conn.ending.describe()}")
        report.chose(
            SECTION,
            "how the one-stream rule is enforced",
            "3.1",
            f"transport parameters: the client may open {bidi} bidirectional, {uni} unidirectional stream(s)",
        )
        return "admitted (HANDSHAKE_DONE): the code is the credential"

    checks = [
        ("a stranger on the link ALPN -> UNKNOWN_PEER", "3.3", stranger),
        ("a foreign ALPN (quicpair/link/99) -> alert 120", "3.1", foreign_alpn),
        ("a CertificateVerify by another key (impersonator) -> alert 51", "3.2", forged_verify),
        ("no client certificate -> alert 116 or IDENTITY_MISMATCH", "3.2", no_certificate),
        ("a P-256 certificate -> refused in the handshake", "3.2", lambda: foreign_key("p256")),
        ("an RSA certificate -> refused in the handshake", "3.2", lambda: foreign_key("rsa")),
        ("an Ed25519 certificate not self-signed -> alert 43", "3.2", not_self_signed),
        ("a stranger on the pairing ALPN is admitted", "3.3", pair_alpn_admits),
    ]
    for name, spec, body in checks:
        await report.run(SECTION, name, spec, body)
