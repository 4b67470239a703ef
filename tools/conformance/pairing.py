"""Checks: pairing with the node as initiator (the kit joins codes the node offers), sections 10.1-10.7.

The node offers codes through ``--offer-command``; the kit joins them with
identities of its own, whose NodeIds are below the node's, so that on the link
that follows the kit is the dialer (section 12.1) and needs no listener. The
first successful pairing is the one the link checks use.

Failed claims cost the kit's address tokens at the node (section 13: 8, then one
per 6 s): these checks make 7 of them, in an order that keeps each answer the
one the codebook gives, never BUSY.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from quicpair.protocol.codes import PairingCode
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.keys import commit_mac, done_mac, key_fingerprint, verify_mac
from quicpair.protocol.messages import PairCommit

from .joining import KitJoiner, expect_reject, open_pairing, resolve_frame, show
from .kit import Kit
from .report import Failed, Skipped
from .target import Offer, lower_identity

__all__ = ["SECTION", "run"]

SECTION = "pairing (the node initiates, the kit joins)"


def _wrong_words(code: PairingCode) -> PairingCode:
    """The same nameplate with other words: a wrong code for that open code."""
    while True:
        other = PairingCode.generate(os.urandom)
        if other.words != code.words:
            return PairingCode(nameplate=code.nameplate, words=other.words)


async def run(kit: Kit) -> None:
    target, report, step = kit.target, kit.report, kit.step
    offers: list[Offer] = []

    async def offer() -> Offer:
        opened = await Offer.open(target)
        offers.append(opened)
        return opened

    async def join(code: PairingCode, pake: bytes | None = None) -> KitJoiner:
        """A new identity's PairRequest for ``code``, from a fresh source (see Kit.claim_source)."""
        identity = lower_identity(target.node_id)
        return await KitJoiner.start(target, identity, code, step, kit.claim_source(), pake)

    try:
        first: Offer | None = None

        async def success() -> str:
            nonlocal first
            first = await offer()
            joiner = await join(first.code)
            kit.paired = await joiner.pair(step)
            info = joiner.node_info
            assert info is not None
            return (
                f"committed; pairing id {key_fingerprint(kit.paired.pairing_id)}; the node's DeviceInfo "
                f"names {info.name!r} with {len(info.addresses)} address(es)"
            )

        await report.run(SECTION, "right code: PairChallenge..PairCommit, both MACs verify", "10.2", success)
        needs = "needs the successful pairing above"

        async def resolve_committed() -> str:
            paired = kit.need_paired()
            conn = await open_pairing(target, paired.identity, step)
            conn.send(resolve_frame(paired.pairing_id, done_mac(paired.pairing_secret, paired.pairing_id)))
            try:
                answer = await conn.message(step)
            except EOFError as exc:
                raise Failed(f"expected PairCommit, but {exc}") from None
            conn.close()
            if not isinstance(answer, PairCommit):
                raise Failed(f"expected PairCommit for a committed pairing, got {show(answer)}")
            if not verify_mac(commit_mac(paired.pairing_secret, paired.pairing_id), answer.mac):
                raise Failed("PairCommit's commit_mac does not verify")
            return "PairCommit with a valid commit_mac"

        async def resolve_bad_mac() -> str:
            paired = kit.need_paired()
            conn = await open_pairing(target, paired.identity, step)
            conn.send(resolve_frame(paired.pairing_id, secrets.token_bytes(32)))
            detail = await expect_reject(conn, ErrorCode.WRONG_CODE, step, "PairResolve with a wrong mac")
            conn.close()
            return detail

        async def resolve_unknown() -> str:
            paired = kit.need_paired()
            conn = await open_pairing(target, paired.identity, step)
            conn.send(resolve_frame(secrets.token_bytes(32), secrets.token_bytes(32)))
            detail = await expect_reject(conn, ErrorCode.ABORTED, step, "PairResolve for an unknown pairing")
            conn.close()
            return detail

        async def used_code() -> str:
            if first is None or kit.paired is None:
                raise Skipped(needs)
            joiner = await join(first.code)
            detail = await expect_reject(
                joiner.conn, ErrorCode.CODE_USED_UP, step, "PairRequest for a used code"
            )
            joiner.conn.close()
            return detail

        for name, spec, body in (
            ("in doubt: PairResolve of a committed pairing -> PairCommit", "10.6", resolve_committed),
            ("PairResolve with a wrong mac -> PairReject WRONG_CODE", "10.6", resolve_bad_mac),
            ("PairResolve for an unknown pairing -> PairReject ABORTED", "10.6", resolve_unknown),
            ("a used code -> PairReject CODE_USED_UP", "10.7", used_code),
        ):
            await report.run(SECTION, name, spec, body)

        second: Offer | None = None

        async def wrong_attempt(code: PairingCode) -> str:
            joiner = await join(code)
            if await joiner.challenge(step):
                raise Failed("the node's confirm_i verified under a wrong code")
            joiner.respond()
            detail = await expect_reject(
                joiner.conn, ErrorCode.WRONG_CODE, step, "PairResponse under a wrong code"
            )
            joiner.conn.close()
            return detail

        async def wrong_code() -> str:
            nonlocal second
            second = await offer()
            detail = await wrong_attempt(_wrong_words(second.code))
            return f"PairChallenge whose confirm_i fails under the wrong code, then {detail}"

        ok = await report.run(
            SECTION, "wrong code: PairResponse -> PairReject WRONG_CODE", "10.2", wrong_code
        )

        async def burned() -> str:
            if second is None or not ok:
                raise Skipped("needs the wrong-code check above")
            for _ in range(target.max_attempts - 1):
                await wrong_attempt(_wrong_words(second.code))
            joiner = await join(second.code)
            detail = await expect_reject(
                joiner.conn,
                ErrorCode.CODE_USED_UP,
                step,
                f"the right code after {target.max_attempts} wrong ones",
            )
            joiner.conn.close()
            return f"{target.max_attempts} wrong attempts, then the right code: {detail}"

        await report.run(
            SECTION, f"burned after {target.max_attempts} wrong attempts -> CODE_USED_UP", "10.7", burned
        )

        async def no_such_code() -> str:
            taken = {o.code.nameplate for o in offers}
            code = PairingCode.generate(os.urandom, taken=taken)
            joiner = await join(code)
            detail = await expect_reject(joiner.conn, ErrorCode.NO_SUCH_CODE, step, "PairRequest for no code")
            joiner.conn.close()
            return f"nameplate {code.nameplate}: {detail}"

        await report.run(SECTION, "a nameplate with no code -> PairReject NO_SUCH_CODE", "10.7", no_such_code)

        fourth: Offer | None = None
        aborted: list[tuple[KitJoiner, bytes]] = []

        async def bad_done() -> str:
            nonlocal fourth
            fourth = await offer()
            joiner = await join(fourth.code)
            if not await joiner.challenge(step):
                raise Failed("the node's confirm_i does not verify under the code it offered")
            joiner.respond()
            await joiner.complete(step)
            joiner.vote(mac=secrets.token_bytes(32))
            detail = await expect_reject(
                joiner.conn, ErrorCode.PROTOCOL_VIOLATION, step, "PairDone with a wrong done_mac"
            )
            joiner.conn.close()
            assert joiner.keys is not None
            aborted.append((joiner, joiner.keys.pairing_id))
            return detail

        await report.run(
            SECTION, "a PairDone with a wrong mac -> PairReject PROTOCOL_VIOLATION", "10.2", bad_done
        )

        async def resolve_aborted() -> str:
            if not aborted:
                raise Skipped("needs the wrong-PairDone check above")
            joiner, pairing_id = aborted[0]
            assert joiner.keys is not None
            conn = await open_pairing(target, joiner.identity, step)
            conn.send(resolve_frame(pairing_id, done_mac(joiner.keys.pairing_secret, pairing_id)))
            detail = await expect_reject(conn, ErrorCode.ABORTED, step, "PairResolve of an aborted pairing")
            conn.close()
            return f"with its valid done_mac: {detail}"

        await report.run(
            SECTION,
            "PairResolve of a pairing the node aborted -> PairReject ABORTED",
            "10.6",
            resolve_aborted,
        )

        async def bad_pake() -> str:
            if fourth is None:
                raise Skipped("needs the wrong-PairDone check's code")
            # "B" and the identity element's encoding (01 00..00): section 8.1 step 4 refuses it.
            joiner = await join(fourth.code, pake=b"B\x01" + bytes(31))
            detail = await expect_reject(
                joiner.conn,
                ErrorCode.PROTOCOL_VIOLATION,
                step,
                "PairRequest with the identity as PAKE message",
            )
            joiner.conn.close()
            return detail

        await report.run(
            SECTION, "a PAKE message that is the identity element -> PROTOCOL_VIOLATION", "8.1", bad_pake
        )

        expiry = target.code_expiry

        async def expired() -> str:
            if not target.offer_command:
                raise Skipped("no --offer-command")
            if expiry is None:
                raise Skipped(
                    "the node's code lifetime is not known: give --code-expiry S (the node's setting)"
                )
            third = await offer()
            await asyncio.sleep(expiry + 1.0)  # the node's own clock decides; 1 s of margin past it
            joiner = await join(third.code)
            detail = await expect_reject(joiner.conn, ErrorCode.CODE_EXPIRED, step, "PairRequest past expiry")
            joiner.conn.close()
            return f"{expiry:g} s after the offer: {detail}"

        await report.run(
            SECTION,
            "an expired code -> PairReject CODE_EXPIRED",
            "10.7",
            expired,
            timeout=kit.report.check_timeout + (expiry or 0.0) + 1.0,
        )
    finally:
        for opened in offers:
            await opened.close()
