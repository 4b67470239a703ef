"""The control protocol of a running node: JSON requests in, JSON replies out.

One request per line: ``{"id": 7, "op": "join", "code": "...", "timeout": 30}``.
One reply per request, in any order (long operations run concurrently):
``{"id": 7, "ok": true, "result": {...}}`` or ``{"id": 7, "ok": false,
"error": {"type": "PairingFailed", "code": "WRONG_CODE", "message": "..."}}``.

When a side asked to verify the SAS, ``wait_offer``, ``join`` and ``join_wait``
answer ``{"sas_check": {"session": ..., "sas": [...], "node_id": ..., "name": ...}}``
instead of the device: show the words, send ``confirm`` (``accept`` true or false),
then wait again. ``join_start`` returns at once with the session; ``join_wait``
answers ``{"pending": true, "progress": "dialing ..."}`` while nothing happened yet.

The same protocol serves the test harness and the demo over stdin/stdout
(tools/nodehost.py) and the command line over the daemon's Unix socket
(tools/daemon.py). Errors are reported, never raised: a bad request gets a
precise error and the node goes on.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from quicpair.actors.links.inbox import ReceivedMessage
from quicpair.actors.node import Node
from quicpair.actors.pairing.device import Device, Joining, PairingOffer, SasCheck
from quicpair.protocol.errors import ErrorCode, ProtocolError, QuicpairError
from quicpair.protocol.errors import PairingFailed as PairingFailedError
from quicpair.protocol.identity import NodeId

__all__ = ["OPS", "Controller", "decode_request", "error_reply"]

#: How often a waiting ``messages`` request looks whether its client is still there (seconds).
GONE_POLL = 0.2

#: Operation name -> the request fields it takes (all optional unless listed in REQUIRED).
OPS: dict[str, tuple[str, ...]] = {
    "info": (),
    "pair": ("verify",),
    "wait_offer": ("nameplate", "timeout"),
    "cancel_offer": ("nameplate",),
    "join": ("code", "address", "timeout", "verify"),
    "join_start": ("code", "address", "verify"),
    "join_wait": ("session", "timeout"),
    "join_cancel": ("session",),
    "confirm": ("session", "accept"),
    "address": ("node_id", "action", "address"),
    "devices": ("include_pending",),
    "device": ("node_id",),
    "counters": (),
    "links": (),
    "send": ("node_id", "payload", "base64", "timeout", "queue"),
    "messages": ("timeout",),
    "outbox": ("node_id",),
    "unpair": ("node_id", "timeout"),
    "stop": (),
    "crash": ("actor", "node_id"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "wait_offer": ("nameplate",),
    "cancel_offer": ("nameplate",),
    "join": ("code",),
    "join_start": ("code",),
    "join_wait": ("session",),
    "join_cancel": ("session",),
    "confirm": ("session", "accept"),
    "address": ("node_id", "action", "address"),
    "device": ("node_id",),
    "send": ("node_id", "payload"),
    "unpair": ("node_id",),
    "crash": ("actor",),
}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "nameplate": int,
    "timeout": (int, float),
    "code": str,
    "address": str,
    "include_pending": bool,
    "node_id": str,
    "payload": str,
    "base64": bool,
    "queue": bool,
    "verify": bool,
    "session": str,
    "accept": bool,
    "action": str,
    "actor": str,
}
#: Longest wait a request may ask for (a typo of 3600 for 3.6 must not wedge a worker thread).
MAX_TIMEOUT = 600.0


class RequestError(QuicpairError):
    """The control request is not valid; the message says which field and why."""


def decode_request(line: str) -> dict[str, Any]:
    """Parse and validate one request line; RequestError names what is wrong."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RequestError(f"not JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(request, dict):
        raise RequestError("a request is a JSON object")
    op = request.get("op")
    if op not in OPS:
        raise RequestError(f"unknown op {op!r}; known: {', '.join(sorted(OPS))}")
    allowed = {"id", "op", *OPS[op]}
    extra = sorted(set(request) - allowed)
    if extra:
        raise RequestError(f"op {op!r} does not take {', '.join(extra)}")
    for name in REQUIRED.get(op, ()):
        if name not in request:
            raise RequestError(f"op {op!r} needs {name!r}")
    for name, value in request.items():
        expected = _TYPES.get(name)
        if expected is not None and (
            (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected)
        ):
            raise RequestError(f"field {name!r} has the wrong type ({type(value).__name__})")
    timeout = request.get("timeout")
    if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT:
        raise RequestError(f"field 'timeout' must be between 0 and {MAX_TIMEOUT:g} seconds")
    return request


def error_reply(request_id: Any, exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    code = getattr(exc, "code", None)
    if isinstance(exc, (ProtocolError, PairingFailedError)) and code is not None:
        error["code"] = code.name
        error["remote"] = bool(getattr(exc, "remote", False))
    return {"id": request_id, "ok": False, "error": error}


class Controller:
    """Executes control requests against one started node."""

    def __init__(self, node: Node, on_stop: Callable[[], None]) -> None:
        self.node = node
        self._on_stop = on_stop
        self._offers: dict[int, PairingOffer] = {}
        self._joins: dict[str, Joining] = {}
        self._checks: dict[str, SasCheck] = {}
        self._lock = threading.Lock()

    def handle(
        self, request: dict[str, Any], client_gone: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Run one request; ``client_gone`` says when its client left (a wait then ends early)."""
        request_id = request.get("id")
        try:
            if request["op"] == "messages":
                result: Any = self._op_messages(request, client_gone or (lambda: False))
            else:
                result = getattr(self, "_op_" + request["op"])(request)
        except QuicpairError as exc:
            return error_reply(request_id, exc)
        except (ValueError, TypeError) as exc:
            return error_reply(request_id, RequestError(str(exc)))
        return {"id": request_id, "ok": True, "result": result}

    # -- operations ----------------------------------------------------------------

    def _op_info(self, _: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        host, port = node.address
        return {
            "node_id": node.node_id.text,
            "fingerprint": node.node_id.fingerprint,
            "name": node.settings.node.name,
            "host": host,
            "port": port,
            "addresses": node.addresses,
        }

    def _op_pair(self, request: dict[str, Any]) -> dict[str, Any]:
        offer = self.node.pair(verify=request.get("verify"))
        self._offers[offer.nameplate] = offer
        return {
            "code": offer.code,
            "uri": offer.uri,
            "nameplate": offer.nameplate,
            "expires_in": offer.expires_in,
        }

    def _offer(self, request: dict[str, Any]) -> PairingOffer:
        offer = self._offers.get(request["nameplate"])
        if offer is None:
            raise RequestError(f"no offer with nameplate {request['nameplate']} was made here")
        return offer

    def _op_wait_offer(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._event(self._offer(request).wait_event(request.get("timeout")))

    def _event(self, event: Device | SasCheck) -> dict[str, Any]:
        """A device's dict, or a SAS check to answer (kept until ``confirm``)."""
        if isinstance(event, Device):
            return event.to_dict()
        with self._lock:
            self._checks[event.session] = event
        return {"sas_check": event.to_dict()}

    def _op_cancel_offer(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"cancelled": self._offer(request).cancel()}

    def _op_join(self, request: dict[str, Any]) -> dict[str, Any]:
        joining = self._start_join(request)
        pairing = self.node.settings.pairing
        bound = request.get("timeout") or 6 * pairing.step_timeout + pairing.resolve_timeout
        return self._wait_join(joining, bound, pending_is_error=True)

    def _op_join_start(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"session": self._start_join(request).session}

    def _op_join_wait(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._wait_join(self._joining(request), request.get("timeout", 0.0), pending_is_error=False)

    def _op_join_cancel(self, request: dict[str, Any]) -> dict[str, Any]:
        joining = self._joining(request)
        self.node.cancel_join(joining)
        return {"cancelled": not joining.result.done()}

    def _start_join(self, request: dict[str, Any]) -> Joining:
        joining = self.node.start_join(
            request["code"], address=request.get("address"), verify=request.get("verify")
        )
        with self._lock:
            self._joins[joining.session] = joining
        return joining

    def _joining(self, request: dict[str, Any]) -> Joining:
        with self._lock:
            joining = self._joins.get(request["session"])
        if joining is None:
            raise RequestError(f"no join {request['session']!r} was started here")
        return joining

    def _wait_join(self, joining: Joining, timeout: float, *, pending_is_error: bool) -> dict[str, Any]:
        try:
            event = joining.wait(timeout)
        except concurrent.futures.TimeoutError:
            if pending_is_error:
                self.node.cancel_join(joining)
                raise PairingFailedError(ErrorCode.TIMEOUT, f"no result within {timeout:g} s") from None
            return {"pending": True, "progress": joining.progress}
        except QuicpairError:
            with self._lock:
                self._joins.pop(joining.session, None)
            raise
        if isinstance(event, Device):
            with self._lock:
                self._joins.pop(joining.session, None)
        return self._event(event)

    def _op_confirm(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            check = self._checks.pop(request["session"], None)
        if check is None:
            raise RequestError(f"no SAS check of session {request['session']!r} is waiting here")
        first = check.confirm() if request["accept"] else check.refuse()
        return {"confirmed": bool(request["accept"]), "first_answer": first}

    def _op_address(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request["action"]
        if action not in ("add", "remove"):
            raise RequestError(f"field 'action' must be 'add' or 'remove', not {action!r}")
        node_id = _node_id(request)
        if action == "add":
            address = self.node.add_address(node_id, request["address"])
        else:
            address = self.node.remove_address(node_id, request["address"])
        return {"action": action, "address": address, "node_id": node_id.text}

    def _op_devices(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return [d.to_dict() for d in self.node.devices(include_pending=bool(request.get("include_pending")))]

    def _op_device(self, request: dict[str, Any]) -> dict[str, Any] | None:
        device = self.node.device(_node_id(request))
        return None if device is None else device.to_dict()

    def _op_counters(self, _: dict[str, Any]) -> dict[str, int]:
        return self.node.counters()

    def _op_links(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        return [status.to_dict() for status in self.node.links()]

    def _op_send(self, request: dict[str, Any]) -> dict[str, Any]:
        text: str = request["payload"]
        if request.get("base64"):
            try:
                payload = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise RequestError(f"payload: not base64 ({exc})") from exc
        else:
            payload = text.encode("utf-8")
        kwargs: dict[str, Any] = {"timeout": request["timeout"]} if "timeout" in request else {}
        queue = bool(request.get("queue", False))
        seq = self.node.send(_node_id(request), payload, queue=queue, **kwargs)
        # "sent": acknowledged by the peer's node; "queued": kept durably until it is.
        return {"queued" if queue else "sent": len(payload), "seq": seq}

    def _op_outbox(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        peer = _node_id(request) if "node_id" in request else None
        return [
            {
                "node_id": m.node_id.text,
                "fingerprint": m.node_id.fingerprint,
                "seq": m.seq,
                "bytes": len(m.payload),
                "queued_at": m.queued_at,
            }
            for m in self.node.queued(peer)
        ]

    def _op_messages(self, request: dict[str, Any], client_gone: Callable[[], bool]) -> list[dict[str, Any]]:
        # The first message is waited for (up to timeout, while the client is there), then
        # whatever else is queued. A client that left gets nothing taken for it.
        deadline = time.monotonic() + (request.get("timeout") or 0.0)  # absent or null: no wait
        first = None
        while first is None and not client_gone():
            first = self.node.receive(max(min(deadline - time.monotonic(), GONE_POLL), 0.0))
            if time.monotonic() >= deadline:
                break
        taken = [] if first is None else [first]
        while taken and (received := self.node.receive(0.0)) is not None:
            taken.append(received)
        if taken and client_gone():
            self.node.give_back(taken)
            taken = []
        return [_message(m.peer, m.payload, m.seq) for m in taken]

    def reply_lost(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        """The reply to ``request`` could not be written (its client left): undo what it took."""
        if request.get("op") == "messages" and reply.get("ok"):
            self.node.give_back(
                [
                    ReceivedMessage(NodeId.from_text(m["node_id"]), base64.b64decode(m["base64"]), m["seq"])
                    for m in reply["result"]
                ]
            )

    def _op_unpair(self, request: dict[str, Any]) -> dict[str, Any]:
        kwargs = {"timeout": request["timeout"]} if "timeout" in request else {}
        return {"delivered": self.node.unpair(_node_id(request), **kwargs)}

    def _op_crash(self, request: dict[str, Any]) -> dict[str, Any]:
        # Fault injection (actors/faults.py): refused unless [testing] fault_injection is on.
        peer = _node_id(request) if "node_id" in request else None
        return {"crashed": self.node.crash_actor(request["actor"], peer)}

    def _op_stop(self, _: dict[str, Any]) -> dict[str, Any]:
        self._on_stop()
        return {"stopping": True}


def _node_id(request: dict[str, Any]) -> NodeId:
    try:
        return NodeId.from_text(request["node_id"])
    except ValueError as exc:
        raise RequestError(f"node_id: {exc}") from exc


def _message(peer: NodeId, payload: bytes, seq: int) -> dict[str, Any]:
    """A received message as JSON: base64 always, the text when it is UTF-8, its delivery number."""
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "node_id": peer.text,
        "fingerprint": peer.fingerprint,
        "base64": base64.b64encode(payload).decode("ascii"),
        "text": text,
        "seq": seq,
    }
