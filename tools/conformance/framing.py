"""Checks: strict framing (section 4), the spec's invalid-frame vectors sent live.

Every case of ``framing.invalid`` in docs/vectors.json (section 14) is sent as the
first frame of a new stream, twice:

* on a pairing stream, where the node is the initiator in S0_await_request:
  a bad frame is the node's own failure, so it sends ``PairReject(code)``
  (sections 4 and 10.4); a case the vectors mark as accepted (a valid message)
  must not be answered with a framing code;
* on a link stream of the kit's pairing, before any hello: the node closes
  the connection with the frame's code (section 11.3); an accepted case is a
  pairing message on a link stream, PROTOCOL_VIOLATION (section 5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import Identity
from quicpair.protocol.messages import PairReject

from .joining import open_pairing, show
from .kit import Kit
from .linking import KitLink, expect_close
from .report import Failed
from .wire import code_text

__all__ = [
    "SECTION_LINK",
    "SECTION_PAIR",
    "Vector",
    "default_vectors",
    "load_vectors",
    "run_link",
    "run_pair",
]

SECTION_PAIR = "framing on a pairing stream"
SECTION_LINK = "framing on a link stream"
_FRAMING_CODES = frozenset(
    {
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.MALFORMED_MESSAGE,
        ErrorCode.UNKNOWN_MESSAGE,
        ErrorCode.UNSUPPORTED_VERSION,
    }
)


@dataclass(frozen=True, slots=True)
class Vector:
    case: str
    frame: bytes
    #: The code the node must answer with; None for a frame the vectors say is accepted.
    code: ErrorCode | None


def default_vectors() -> Path | None:
    """docs/vectors.json of the source tree this kit runs from, if it has one."""
    path = Path(__file__).resolve().parents[2] / "docs" / "vectors.json"
    return path if path.is_file() else None


def load_vectors(path: Path) -> list[Vector]:
    data = json.loads(path.read_text("utf-8"))
    vectors = []
    for entry in data["framing"]["invalid"]:
        result = entry["result"]
        code = ErrorCode[result] if result in ErrorCode.__members__ else None
        vectors.append(Vector(entry["case"], bytes.fromhex(entry["frame"]), code))
    return vectors


def _name(vector: Vector, accepted: str) -> str:
    return f"{vector.case} -> {vector.code.name if vector.code is not None else accepted}"


async def run_pair(kit: Kit, vectors: list[Vector] | None, why: str = "") -> None:
    report, step = kit.report, kit.step
    if vectors is None:
        report.skip(SECTION_PAIR, "the invalid-frame vectors", "14", why)
        return
    stranger = Identity.generate()
    for vector in vectors:

        async def body(vector: Vector = vector) -> str:
            conn = await open_pairing(kit.target, stranger, step)
            conn.send(vector.frame)
            try:
                answer = await conn.message(step)
            except EOFError as exc:
                answer = None
                ended = str(exc)
            conn.close()
            if vector.code is None:
                if isinstance(answer, PairReject) and answer.code in _FRAMING_CODES:
                    raise Failed(f"a valid frame was refused with {show(answer)}")
                return f"not refused as a frame: {show(answer) if answer is not None else ended}"
            if not isinstance(answer, PairReject):
                got = show(answer) if answer is not None else ended
                raise Failed(f"expected PairReject({code_text(vector.code)}), got {got}")
            if answer.code != vector.code:
                raise Failed(f"expected PairReject({code_text(vector.code)}), got {show(answer)}")
            return f"PairReject({code_text(vector.code)})"

        await report.run(SECTION_PAIR, _name(vector, "accepted"), "4", body)


async def run_link(kit: Kit, vectors: list[Vector] | None, why: str = "") -> None:
    report, step = kit.report, kit.step
    if vectors is None:
        report.skip(SECTION_LINK, "the invalid-frame vectors", "14", why)
        return
    for vector in vectors:

        async def body(vector: Vector = vector) -> str:
            paired = kit.need_paired()
            link = await KitLink.dial(kit.target, paired, step)
            link.conn.send(vector.frame)
            code = vector.code if vector.code is not None else ErrorCode.PROTOCOL_VIOLATION
            return await expect_close(link.conn, code, step, "after the frame")

        await report.run(SECTION_LINK, _name(vector, "PROTOCOL_VIOLATION (a pairing message)"), "4", body)
