"""Section 12.2's retirement of a duplicate connection: the real LinkConns on an in-memory wire."""

from __future__ import annotations

import typing

from quicpair.actors.kernel.loopactor import ActorTimer
from quicpair.actors.links.choice import LinkConns
from quicpair.actors.links.conn import LinkConn
from quicpair.actors.transport.quic_link import QuicLink
from quicpair.protocol import keys as ks
from quicpair.protocol import messages as m
from quicpair.protocol.dialrule import dialer_of
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import NodeId
from quicpair.protocol.link import AddressesReceived, LinkChannel, LinkEstablished
from quicpair.tools.vectors.base import (
    RAND_SEEDS,
    TRACE_ROLES,
    Json,
    check,
    decode_frame,
    fields_of,
    identities,
    seeded_rand,
)

__all__ = ["retirement"]


# -- retiring a duplicate connection (section 12.2) ------------------------------------------


class _WireLink:
    """Stands in for the QuicLink under a real LinkConn: what it is told to send goes on the wire."""

    def __init__(self, wire: _Wire, conn: str, sender: str) -> None:
        self.connection_id, self.remote_address, self.is_closed = conn, ("192.0.2.1", 47470), False
        self._wire, self._sender = wire, sender

    def set_handler(self, _handler: object) -> None:
        pass

    def open_stream(self) -> int:
        return 0

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        assert stream_id == 0 and not self.is_closed
        if data:
            self._wire.put(self.connection_id, self._sender, {"frame": data})
        if end_stream:
            self._wire.put(self.connection_id, self._sender, {"fin": True})

    def close(self, code: ErrorCode, _reason: str) -> None:
        if not self.is_closed:
            self.is_closed = True
            self._wire.put(self.connection_id, self._sender, {"connection_close": code})


class _Wire:
    """Both connections' streams, in order per connection and direction; what was sent in this step."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], list[Json]] = {}
        self.sent: list[Json] = []
        #: The inner message of the LinkSealed frame being sent (the wire cannot open it).
        self.inner = ""

    def put(self, conn: str, sender: str, item: Json) -> None:
        self.queues.setdefault((conn, sender), []).append(item)
        if "frame" in item and self.inner:
            item = item | {"inner": self.inner}
        self.inner = ""
        self.sent.append({"conn": conn, "from": sender, **item})


class _Node:
    """One node's connections with its peer: the real LinkConns (actors/links/choice.py) and LinkConn,
    driven as actors/links/worker.py drives them (LinkAddresses first, then resolve)."""

    def __init__(self, name: str, me: NodeId, peer: NodeId, secret: bytes, kid: bytes, wire: _Wire) -> None:
        self.name, self.me, self.peer, self.secret, self.kid, self.wire = name, me, peer, secret, kid, wire
        self.conns = LinkConns(me, peer, self._call_later, lambda *_: None)
        self.by_name: dict[str, LinkConn] = {}
        self.events: list[str] = []
        self.addresses = ["192.0.2.1:47470"] if me == identities()[0].node_id else ["198.51.100.7:47470"]

    @staticmethod
    def _call_later(_delay: float, _func: object, _key: int) -> ActorTimer:
        return ActorTimer(set())  # never runs here: every FIN arrives in time

    def connect(self, name: str, dialed: bool) -> LinkConn:
        role = f"{name} {'dialer' if dialed else 'listener'}"

        def channel(is_dialer: bool) -> LinkChannel:
            return LinkChannel(
                local=self.me,
                peer=self.peer,
                local_is_dialer=is_dialer,
                pairing_secret=self.secret,
                key_id=self.kid,
                addresses=self.addresses,
                rand=seeded_rand(role),
            )

        link = typing.cast(QuicLink, _WireLink(self.wire, name, self.name))
        conn = LinkConn(link, dialed=dialed, address="", source="", tell=lambda _: None, make_channel=channel)
        self.conns.add(conn)
        self.by_name[name] = conn
        return conn

    def deliver(self, name: str, item: Json) -> None:
        conn = self.by_name.get(name) or self.connect(name, dialed=False)
        if "frame" in item:
            conn.adopt_stream(0)
            conn.feed(item["frame"])
            while (event := conn.next_event()) is not None:
                self.events.append(f"{name}: {type(event).__name__}")
                if isinstance(event, LinkEstablished):
                    assert conn.channel is not None
                    self.wire.inner = "LinkAddresses"
                    conn.send(conn.channel.send_addresses(self.addresses))
                    self.conns.resolve()
                elif isinstance(event, AddressesReceived):
                    conn.authenticated = True
        elif "fin" in item:
            self.events.append(f"{name}: FIN")
            self.conns.peer_finished(conn)
        else:
            self.events.append(f"{name}: CONNECTION_CLOSE {item['connection_close'].name}")
            typing.cast(_WireLink, conn.link).is_closed = True
        self.forget_closed()

    def forget_closed(self) -> None:
        for name, conn in list(self.by_name.items()):
            if not conn.is_open:  # the ConnClosed that follows a close: the worker forgets it
                self.conns.remove(conn.key)
                del self.by_name[name]

    def state(self) -> dict[str, str]:
        out = {}
        for name, conn in sorted(self.by_name.items()):
            facts = ["kept" if conn is self.conns.primary else "retiring" if conn.retiring else "open"]
            facts += ["dialed" if conn.dialed else "accepted"]
            facts += [
                fact
                for fact, on in (
                    ("hellos done", conn.established),
                    ("peer authenticated", conn.authenticated),
                    ("FIN sent", conn.fin_sent),
                    ("FIN received", conn.peer_fin),
                    ("retire timer (2 s) running", conn.timer is not None),
                )
                if on
            ]
            out[name] = ", ".join(facts)
        primary = self.conns.primary
        out["link"] = "up" if primary is not None and primary.authenticated else "down"
        return out


def retirement(secret: bytes, pairing_id: bytes) -> Json:
    """Section 12.2, worked: a link is up on A (dialed by the lower NodeId); the higher NodeId dials B."""
    ini, joi = (identity.node_id for identity in identities())
    low = dialer_of(ini, joi)
    high = joi if low == ini else ini
    wire, kid = _Wire(), ks.key_id(pairing_id)
    nodes = {
        "low": _Node("low", low, high, secret, kid, wire),
        "high": _Node("high", high, low, secret, kid, wire),
    }
    steps: list[Json] = []

    def step(at: str, action: str, run: typing.Callable[[], object]) -> None:
        wire.sent, nodes[at].events = [], []
        run()
        sends = []
        for item in wire.sent:
            if "frame" in item:
                msg = decode_frame(item["frame"])
                sent: Json = {"conn": item["conn"], "message": type(msg).__name__, "fields": fields_of(msg)}
                if isinstance(msg, m.LinkSealed):
                    sent["inner"] = item["inner"]
                sends.append(sent | {"frame": item["frame"].hex()})
            elif "fin" in item:
                sends.append({"conn": item["conn"], "stream": "FIN (empty STREAM frame, FIN bit set)"})
            else:
                code = item["connection_close"]
                sends.append({"conn": item["conn"], "connection_close": f"{code.name} (0x{code.value:02x})"})
        entry: Json = {"step": len(steps) + 1, "at": at, "action": action, "received": nodes[at].events}
        steps.append(entry | {"sends": sends, "state": {name: node.state() for name, node in nodes.items()}})

    def deliver(conn: str, sender: str) -> None:
        receiver = "high" if sender == "low" else "low"
        queue = wire.queues.pop((conn, sender), [])
        for item in queue:
            nodes[receiver].deliver(conn, item)

    def arrival(conn: str, sender: str) -> tuple[str, str, typing.Callable[[], object]]:
        receiver = "high" if sender == "low" else "low"
        return receiver, f"receives what {sender} sent on {conn}", lambda: deliver(conn, sender)

    step(
        "low",
        "dials A (the dial rule), opens the stream, sends its hello",
        lambda: nodes["low"].connect("A", dialed=True).start_as_dialer(),
    )
    step(*arrival("A", "low"))
    step(*arrival("A", "high"))
    step(*arrival("A", "low"))
    step(
        "high",
        "dials B (both dial: the test-only setting of 12.1, or a restart race)",
        lambda: nodes["high"].connect("B", dialed=True).start_as_dialer(),
    )
    for sender in ("high", "low", "high", "low", "high"):
        step(*arrival("B", sender))
    check(
        (wire.queues, {}, "nothing left on the wire"),
        ([sorted(node.by_name) for node in nodes.values()], [["A"], ["A"]], "both keep A only"),
    )
    out: Json = {"low": low.raw.hex(), "high": high.raw.hex(), "key_id": kid.hex()}
    return out | {"rand_seeds": {r: RAND_SEEDS[r].decode() for r in TRACE_ROLES}, "steps": steps}
