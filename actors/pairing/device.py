"""What the node's API hands out: a paired device, and an open pairing offer.

A :class:`Device` shows everything a person may check about a pairing and
nothing secret: the peer's NodeId, its name and addresses, the state, and
the *fingerprints* of the two directional session keys, so anyone can see
that this side's send key is the other side's receive key without seeing
either key.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quicpair.actors.registry.actor import DeviceRecord
from quicpair.protocol import errors
from quicpair.protocol.errors import ErrorCode
from quicpair.protocol.identity import NodeId

__all__ = ["Device", "PairingOffer"]


@dataclass(frozen=True, slots=True)
class Device:
    """A paired (or pending) device, without its secrets."""

    #: The peer's identity, as seen in the TLS handshake of the pairing.
    node_id: NodeId
    #: The name the peer gave itself.
    name: str
    #: Our role in the pairing: "initiator" (we showed the code) or "joiner".
    role: str
    #: "pending", "confirmed" or "revoked".
    state: str
    #: Direct addresses, most recently working first.
    addresses: tuple[str, ...]
    #: The address the peer was last seen at, if any.
    observed_address: str | None
    #: Fingerprint of the key this side sends with.
    send_key_fingerprint: str
    #: Fingerprint of the key this side receives with.
    receive_key_fingerprint: str
    #: When the pairing was committed (Unix time).
    paired_at: float
    #: The short authentication string both sides derived (words people can compare);
    #: known only to the pairing that produced it, empty for records read later.
    sas: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: DeviceRecord, sas: tuple[str, ...] = ()) -> Device:
        return cls(
            node_id=record.node_id,
            name=record.name,
            role=record.role.value,
            state=str(record.state.value),
            addresses=tuple(record.addresses),
            observed_address=record.observed_address,
            send_key_fingerprint=record.send_key_fp,
            receive_key_fingerprint=record.receive_key_fp,
            paired_at=record.paired_at,
            sas=tuple(sas),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (NodeId as text) for the command line and logs."""
        return {
            "node_id": self.node_id.text,
            "fingerprint": self.node_id.fingerprint,
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "addresses": list(self.addresses),
            "observed_address": self.observed_address,
            "send_key_fingerprint": self.send_key_fingerprint,
            "receive_key_fingerprint": self.receive_key_fingerprint,
            "paired_at": self.paired_at,
            "sas": list(self.sas),
        }


@dataclass(slots=True)
class PairingOffer:
    """An open code on this node; :meth:`wait` returns the device that used it."""

    #: The code to read out or type: ``<nameplate>-word-word-word``.
    code: str
    #: The same code plus our NodeId and addresses (what a QR code shows).
    uri: str
    #: The public part of the code.
    nameplate: int
    #: Seconds until the code expires, from when it was opened.
    expires_in: float
    future: concurrent.futures.Future[Any] = field(repr=False)
    cancel_fn: Callable[[], bool] = field(repr=False, default=lambda: False)

    def __init__(
        self,
        *,
        code: str,
        uri: str,
        nameplate: int,
        expires_in: float,
        future: concurrent.futures.Future[Any],
        cancel: Callable[[], bool],
    ) -> None:
        self.code, self.uri, self.nameplate, self.expires_in = code, uri, nameplate, expires_in
        self.future, self.cancel_fn = future, cancel

    def __repr__(self) -> str:
        return f"PairingOffer(nameplate={self.nameplate})"  # the code itself is a secret

    def wait(self, timeout: float | None = None) -> Device:
        """Block until a device paired with this code; PairingFailed if the code ended unused."""
        try:
            device: Device = self.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise errors.PairingFailed(ErrorCode.TIMEOUT, f"nobody paired within {timeout} s") from exc
        return device

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> bool:
        """Close the code now; True if it was still open."""
        return self.cancel_fn()
