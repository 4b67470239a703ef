"""The generated parts of docs/PROTOCOL.md, rendered from the vectors, and how they are put in place."""

from __future__ import annotations

import json
from collections.abc import Mapping

from quicpair.tools.vectors.base import (
    BEGIN_MARK,
    END_MARK,
    SPEC_PATH,
    Json,
)

__all__ = ["render_blocks", "update_document", "vectors_md"]


# -- Markdown ------------------------------------------------------------------------------


def _log_md(title: str, log: list[Json]) -> list[str]:
    lines = []
    for entry in log:
        kind = "frame" if "frame" in entry else next(k for k in entry if k != "at")
        who, what = (entry["from"], f"sends {entry['message']}") if "frame" in entry else (entry["at"], kind)
        lines.append(f"{who:>9} {what}: {entry[kind]}")
    return [title, "", "```", *lines, "```", ""]


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| value | hex (or text) |", "|---|---|", *(f"| {name} | `{val}` |" for name, val in rows), ""]


def vectors_md(v: Json) -> str:
    ins, p, link = v["inputs"], v["pairing"], v["link"]
    rows: list[tuple[str, object]] = [("now", ins["now"])]
    for role, test in (("initiator", 1), ("joiner", 2)):
        party = ins[role]
        rows += [(f"{role} Ed25519 seed (RFC 8032 TEST {test})", party["ed25519_seed"])]
        rows += [(f"{role} NodeId", party["node_id"])]
        rows += [(f"{role} NodeId text, fingerprint", f"{party['node_id_text']}, {party['fingerprint']}")]
    rows += [("code typed, canonical", f"{json.dumps(ins['code']['typed'])}, {ins['code']['text']}")]
    rows += [(f"SPAKE2 {k}", val) for k, val in p["spake2"].items()]
    rows += [
        ("transcript input", p["transcript"]["input"]),
        ("TH = pairing_id", p["transcript"]["pairing_id"]),
    ]
    rows += [
        *p["keys"].items(),
        ("SAS: 44 bits, words", f"{p['sas']['bits_44']}, {' '.join(p['sas']['words'])}"),
    ]
    rows += [(f"key_fingerprint({k})", val) for k, val in p["key_fingerprints"].items()]
    names = (
        "dialer",
        "key_id",
        "dialer_nonce",
        "listener_nonce",
        "PRK_L",
        "dialer_to_listener",
        "listener_to_dialer",
    )
    rows += [(f"link {k}", link[k]) for k in names]
    for role, serial in v["certificate_serials"].items():
        rows += [
            (
                f"{role} certificate: 16 rand bytes, serial (hex)",
                f"{serial['rand_16']}, {serial['serial_hex']}",
            )
        ]
    notice = v["restart_notice"]
    rows += [(f"restart notice {k}", notice[k]) for k in ("boot", "notice_key", "tag", "datagram")]
    for role, reset in v["stateless_reset"].items():
        rows += [(f"{role} reset_key", reset["reset_key"])]
        rows += [(f"{role} reset_token(cid {reset['connection_id']})", reset["token"])]
    out = _table(rows)
    out += _log_md("The successful pairing, frame by frame (whole frames, length prefix included):", p["log"])
    link_log = link["hellos"] + [{k: e[k] for k in ("from", "message", "frame")} for e in link["sealed"]]
    title = "The link: the hellos, then LinkAddresses each way, a payload and its ack each way, LinkUnpair:"
    out += _log_md(title, link_log)
    wrong = v["wrong_code"]
    out += _log_md(f"A wrong code (the joiner typed `{wrong['joiner_code']}`):", wrong["log"])
    out += _log_md("A joiner in doubt resolves; the initiator had committed:", v["resolve_committed"]["log"])
    verified = v["sas_verified"]
    out += _table([(name, value) for name, value in verified["keys"].items()])
    out += _log_md(
        "The initiator asks both people to confirm the SAS (FLAG_VERIFY_SAS); both confirm:", verified["log"]
    )
    out += _log_md("The same, but the joiner's person refuses the words:", v["sas_refused"]["log"])
    out += ["Frames a receiver must refuse (hex in `framing.invalid`):", "", "| case | result |", "|---|---|"]
    out += [*(f"| {e['case']} | {e['result']} |" for e in v["framing"]["invalid"]), ""]
    out += ["Announced addresses and what a receiver keeps (section 7.4; `addresses.cases`):", ""]
    out += ["| peer seen at | announced | kept |", "|---|---|---|"]
    for case in v["addresses"]["cases"]:
        announced = ", ".join(f"`{a}`" for a in case["announced"])
        kept = ", ".join(f"`{a}`" for a in case["kept"]) or "nothing"
        out.append(f"| `{case['peer_seen_at']}` | {announced} | {kept} |")
    out.append("")
    return "\n".join(out)


def _fixed_md(v: Json) -> str:
    rows = [(name, value) for name, value in v["key_schedule_fixed"]["outputs"].items()]
    return "\n".join(_table(rows))


def _state_md(state: dict[str, str]) -> str:
    parts = [f"{conn}: {facts}" for conn, facts in state.items() if conn != "link"]
    return "; ".join([*parts, f"link {state['link']}"])


def _retirement_md(v: Json) -> str:
    r = v["retirement"]
    out = [
        "| # | who | what happens | sends | low NodeId holds after | high NodeId holds after |",
        "|---|---|---|---|---|---|",
    ]
    for st in r["steps"]:
        got = ", ".join(st["received"]) or "-"
        what = st["action"] + ("" if got == "-" else f" ({got})")
        sends = []
        for item in st["sends"]:
            shown = (
                item.get("message") or item.get("stream") or f"CONNECTION_CLOSE {item['connection_close']}"
            )
            if "inner" in item:
                shown += f"(seq {item['fields']['seq']}: {item['inner']})"
            sends.append(f"{item['conn']}: {shown}")
        state = st["state"]
        row = [str(st["step"]), st["at"], what, "<br>".join(sends) or "-"]
        out.append("| " + " | ".join([*row, _state_md(state["low"]), _state_md(state["high"])]) + " |")
    return "\n".join(out) + "\n"


def render_blocks(vectors: Json) -> dict[str, str]:
    """The generated parts of docs/PROTOCOL.md, by marker name."""
    return {
        "vectors": vectors_md(vectors),
        "fixed": _fixed_md(vectors),
        "retirement": _retirement_md(vectors),
    }


def update_document(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with each generated block replaced; ValueError if its markers are missing."""
    for name, content in blocks.items():
        begin, end = BEGIN_MARK.format(name), END_MARK.format(name)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"{SPEC_PATH}: the markers of the generated block {name!r} are missing")
        text = text[: start + len(begin)] + "\n" + content.rstrip("\n") + "\n" + text[stop:]
    return text
