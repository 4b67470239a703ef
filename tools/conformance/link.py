"""Checks: the paired link (section 11) and duplicate connections (section 12.2).

They use the pairing the kit made as joiner; the kit's NodeId is below the
node's, so the kit dials every connection (12.1). Each check opens its own
connection; the last one unpairs (11.4), after which the node must refuse the
kit's NodeId (3.3).
"""

from __future__ import annotations

import asyncio
import os

from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.framing import encode_body, encode_frame
from quicpair.protocol.keys import key_id
from quicpair.protocol.messages import (
    ALPN_LINK,
    LinkAck,
    LinkAddresses,
    LinkAppData,
    LinkSealed,
    LinkUnpair,
    PairDone,
)

from . import framing
from .kit import Kit
from .linking import KitLink, expect_close
from .report import Failed, Skipped
from .wire import Timeout, client_quic, connect

__all__ = ["SECTION", "SECTION_DUP", "SECTION_UNPAIR", "run"]

SECTION = "link (the kit dials)"
SECTION_UNPAIR = "unpair"
SECTION_DUP = "duplicate connections"
#: Section 12.2: a retiring connection not finished within 2 s is closed anyway.
RETIRE_LINGER = 2.0
#: Section 11.2 says "in time" without a number: the kit waits this long for the node's TIMEOUT.
NO_HELLO_WAIT = 20.0
#: The delivery number of the kit's one payload (section 11.3: any number above the mark 0).
_PAYLOAD_SEQ = 1


async def run(kit: Kit, vectors: list[framing.Vector] | None, vectors_why: str | None) -> None:
    """The link checks; the framing vectors on a link stream too unless ``vectors_why`` is None."""
    target, report, step = kit.target, kit.report, kit.step

    async def dial() -> KitLink:
        return await KitLink.dial(target, kit.need_paired(), step)

    async def hellos() -> str:
        link = await dial()
        link.hello()
        hello = await link.read_hello(step)
        idle = link.conn.quic._remote_max_idle_timeout
        link.close()
        if hello.pairing != key_id(link.paired.pairing_id):
            raise Failed(f"the node's LinkHello names key id {hello.pairing.hex()}, not this pairing's")
        shown = "none (no idle timeout)" if not idle else f"{idle:g} s"
        report.chose(SECTION, "the idle timeout in its transport parameters", "3.4", shown)
        return f"LinkHello first, key id {hello.pairing.hex()}, {len(hello.addresses)} address(es)"

    async def first_sealed() -> str:
        link = await dial()
        await link.establish(step)
        try:
            first = await link.inner(step)
        except Timeout:
            link.close()
            raise Failed(f"nothing sealed from the node within {step:g} s of the hellos") from None
        link.close()
        if not isinstance(first, LinkAddresses | LinkUnpair):
            raise Failed(f"the node's first sealed message is {type(first).__name__}, not LinkAddresses")
        return f"{type(first).__name__} opens under l2d with seq 0"

    async def app_data() -> str:
        link = await dial()
        await link.establish(step)
        link.send(LinkAppData(seq=_PAYLOAD_SEQ, data=b"conformance kit payload"))
        ack = await link.wait_for(LinkAck, step, "after LinkAppData")
        link.close()
        assert isinstance(ack, LinkAck)
        if ack.upto != _PAYLOAD_SEQ:
            raise Failed(f"LinkAck(upto={ack.upto}), expected upto={_PAYLOAD_SEQ}")
        return f"LinkAck(upto={ack.upto})"

    async def retransmission() -> str:
        link = await dial()
        await link.establish(step)
        link.send(LinkAppData(seq=_PAYLOAD_SEQ, data=b"conformance kit payload"))
        ack = await link.wait_for(LinkAck, step, "after a retransmitted LinkAppData")
        link.close()
        assert isinstance(ack, LinkAck)
        if ack.upto != _PAYLOAD_SEQ:
            raise Failed(f"LinkAck(upto={ack.upto}), expected the mark {_PAYLOAD_SEQ} again")
        return f"dropped and acknowledged again: LinkAck(upto={ack.upto})"

    async def replay() -> str:
        link = await dial()
        link.hello()
        await link.read_hello(step)
        frame = link.send(LinkAddresses(addresses=[]))
        link.conn.send(frame)  # the same box again: seq 0 where 1 is due
        return await expect_close(link.conn, ErrorCode.REPLAYED, step, "after a replayed LinkSealed")

    async def tamper() -> str:
        link = await dial()
        link.hello()
        await link.read_hello(step)
        frame = bytearray(link.sealed_frame(LinkAddresses(addresses=[])))
        frame[-1] ^= 0x01  # the last byte of the box: its tag
        link.conn.send(bytes(frame))
        return await expect_close(link.conn, ErrorCode.DECRYPT_FAILED, step, "after a tampered box")

    async def sealed_first() -> str:
        link = await dial()
        link.conn.send(encode_frame(LinkSealed(seq=0, box=os.urandom(40))))
        return await expect_close(
            link.conn, ErrorCode.PROTOCOL_VIOLATION, step, "after LinkSealed before hellos"
        )

    async def second_hello() -> str:
        link = await dial()
        link.hello()
        await link.read_hello(step)
        link.conn.send(link.hello_frame())
        return await expect_close(link.conn, ErrorCode.PROTOCOL_VIOLATION, step, "after a second LinkHello")

    async def bare_inner() -> str:
        link = await dial()
        link.hello()
        await link.read_hello(step)
        link.conn.send(encode_frame(LinkAddresses(addresses=[])))
        return await expect_close(
            link.conn, ErrorCode.PROTOCOL_VIOLATION, step, "after an unsealed LinkAddresses"
        )

    async def huge_number() -> str:
        link = await dial()
        await link.establish(step)
        link.send(LinkAppData(seq=2**63, data=b""))
        return await expect_close(link.conn, ErrorCode.MALFORMED_MESSAGE, step, "after LinkAppData seq 2^63")

    async def sealed_garbage() -> str:
        link = await dial()
        await link.establish(step)
        link.send_plain(b"\xc1 not msgpack")
        return await expect_close(link.conn, ErrorCode.MALFORMED_MESSAGE, step, "after a box of non-msgpack")

    async def sealed_wrong_type() -> str:
        link = await dial()
        await link.establish(step)
        link.send_plain(encode_body(PairDone(mac=bytes(32))))
        return await expect_close(link.conn, ErrorCode.PROTOCOL_VIOLATION, step, "after a sealed PairDone")

    async def other_pairing() -> str:
        link = await dial()
        link.hello(pairing=os.urandom(8))
        detail = await expect_close(
            link.conn, ErrorCode.PAIRING_MISMATCH, step, "after a hello of another pairing"
        )
        return detail

    async def fifth_connection() -> str:
        paired = kit.need_paired()
        held: list[KitLink] = []
        try:
            for _ in range(4):  # no hellos: none is established, none retires another (12.2)
                held.append(await dial())
            quic = client_quic(paired.identity, ALPN_LINK, target.node_id)
            conn = await connect(target.address, quic, step)
            if conn.established:
                try:
                    ending = await conn.closed(step)
                except Timeout:
                    conn.close()
                    raise Failed("the node admitted a fifth connection with the kit") from None
            else:
                ending = conn.ending
            conn.close()
        finally:
            for link in held:
                link.close()
        if not ending.means(ErrorCode.BUSY):
            raise Failed(
                f"expected CONNECTION_CLOSE 0x24 BUSY (or transport 0x2, A.2), got {ending.describe()}"
            )
        return f"4 held, the fifth: {ending.describe()}"

    async def no_hello() -> str:
        link = await dial()
        started = asyncio.get_running_loop().time()
        detail = await expect_close(link.conn, ErrorCode.TIMEOUT, NO_HELLO_WAIT, "without a hello")
        waited = asyncio.get_running_loop().time() - started
        report.chose(
            SECTION, "how long a connection may stay without hellos", "11.2", f"about {waited:.1f} s"
        )
        return detail

    async def nothing_sealed() -> str:
        link = await dial()
        link.hello()
        await link.read_hello(step)
        return await expect_close(link.conn, ErrorCode.TIMEOUT, NO_HELLO_WAIT, "hellos, then nothing sealed")

    for name, spec, body in (
        ("LinkHello first, naming the pairing's key id", "11.2", hellos),
        ("first sealed message right after the hellos: LinkAddresses", "11.2", first_sealed),
        ("LinkAppData -> LinkAck(upto = its number)", "11.3", app_data),
        ("a retransmitted LinkAppData -> dropped, acknowledged again", "11.3", retransmission),
        ("a replayed LinkSealed -> REPLAYED", "9", replay),
        ("a tampered box -> DECRYPT_FAILED", "9", tamper),
        ("LinkSealed before the hellos -> PROTOCOL_VIOLATION", "11.3", sealed_first),
        ("a second LinkHello -> PROTOCOL_VIOLATION", "11.3", second_hello),
        ("an unsealed inner message -> PROTOCOL_VIOLATION", "5", bare_inner),
        ("a hello naming another pairing -> PAIRING_MISMATCH", "11.2", other_pairing),
        ("a delivery number of 2^63 -> MALFORMED_MESSAGE", "11.3", huge_number),
        ("a box whose plaintext is not msgpack -> MALFORMED_MESSAGE", "9", sealed_garbage),
        ("a box holding a PairDone -> PROTOCOL_VIOLATION", "9", sealed_wrong_type),
        ("a fifth connection with one peer -> BUSY", "12.2", fifth_connection),
    ):
        await report.run(SECTION, name, spec, body)
    # Both only wait for the node's deadline: at the same time.
    await report.run_together(
        [
            (SECTION, "a connection that sends no hello -> TIMEOUT", "11.2", no_hello),
            (SECTION, "hellos, then nothing sealed -> TIMEOUT", "11.2", nothing_sealed),
        ]
    )

    if vectors_why is not None:
        await framing.run_link(kit, vectors, vectors_why)
    await _duplicates(kit)

    async def unpair() -> str:
        link = await dial()
        await link.establish(step)
        link.send(LinkUnpair())
        return await expect_close(link.conn, ErrorCode.UNPAIRED, step, "after LinkUnpair")

    if await report.run(SECTION_UNPAIR, "LinkUnpair -> CONNECTION_CLOSE UNPAIRED", "11.4", unpair):
        paired = kit.need_paired()

        async def refused_after() -> str:
            conn = await connect(
                target.address, client_quic(paired.identity, ALPN_LINK, target.node_id), step
            )
            if conn.established:
                ending = await conn.closed(step)
            else:
                ending = conn.ending
            conn.close()
            if ending.application_code != ErrorCode.UNKNOWN_PEER:
                raise Failed(f"expected CONNECTION_CLOSE 0x30 UNKNOWN_PEER, got {ending.describe()}")
            return ending.describe()

        await report.run(
            SECTION_UNPAIR, "after the unpair the kit's NodeId -> UNKNOWN_PEER", "11.4", refused_after
        )
    else:
        report.skip(
            SECTION_UNPAIR,
            "after the unpair the kit's NodeId -> UNKNOWN_PEER",
            "11.4",
            "needs the unpair check above to pass",
        )


async def _duplicates(kit: Kit) -> None:
    """Three connections from the kit, one after the other (12.2 rule 2: the newer is kept)."""
    report, step = kit.report, kit.step
    links: list[KitLink] = []

    async def up() -> KitLink:
        link = await KitLink.dial(kit.target, kit.need_paired(), step)
        links.append(link)
        await link.establish(step)
        return link

    try:

        async def older_closed() -> str:
            old = await up()
            await up()
            try:
                ending = await old.conn.closed(RETIRE_LINGER + step)
            except Timeout:
                raise Failed(
                    f"the node kept the older connection open {RETIRE_LINGER + step:g} s after a newer one "
                    "from the same dialer"
                ) from None
            if ending.application_code != ErrorCode.DUPLICATE_CONNECTION:
                raise Failed(f"expected CONNECTION_CLOSE 0x02 DUPLICATE_CONNECTION, got {ending.describe()}")
            return "the older connection (not finished by the kit) closed with 0x02 DUPLICATE_CONNECTION"

        ok = await report.run(
            SECTION_DUP,
            "a newer connection: the node retires the older one (DUPLICATE_CONNECTION)",
            "12.2",
            older_closed,
            timeout=report.check_timeout + RETIRE_LINGER + step,
        )

        async def fin_answered() -> str:
            if not ok or len(links) < 2:
                raise Skipped("needs the check above")
            retiring = links[1]
            kept = await up()
            retiring.conn.send(b"", end=True)  # the dialer finishes the retired stream (12.2)
            try:
                await retiring.conn.until(
                    "the node's FIN", lambda: retiring.conn.stream_finished or retiring.conn.peer_closed, step
                )
            except Timeout:
                raise Failed(f"no FIN from the node on the retired connection within {step:g} s") from None
            if not retiring.conn.stream_finished:
                raise Failed(f"the node closed instead of finishing: {retiring.conn.ending.describe()}")
            retiring.conn.close(ErrorCode.DUPLICATE_CONNECTION, "duplicate connection retired")
            kept.send(LinkAppData(seq=_PAYLOAD_SEQ, data=b"after retirement"))
            ack = await kept.wait_for(LinkAck, step, "on the kept connection")
            assert isinstance(ack, LinkAck)
            return f"FIN answered with FIN; the newer connection carries on (LinkAck upto={ack.upto})"

        await report.run(
            SECTION_DUP,
            "the dialer's FIN on the retired one -> the node's FIN; the newer is kept",
            "12.2",
            fin_answered,
        )
    finally:
        for link in links:
            link.close()
        await asyncio.sleep(0)
