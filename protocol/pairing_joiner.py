"""The joiner's pairing machine (the side that typed the code) and its in-doubt resolver.

The joiner is the 2PC participant: until it votes (PairDone) it may fail and
forget; after its vote it may not abort on its own. If the decision does not
arrive it ends *in doubt*: the PENDING record stays (never used as paired)
and a :class:`Resolver` later asks the initiator on a new pairing connection.

Joiner states (:data:`JOINER_MOVES`; :data:`JOINER_ENDINGS` for failures)::

    S0_request_sent --PairChallenge/confirm ok, PairResponse--> S1_response_sent
        (or, when either side asked to verify the SAS, SasCheckRequested--> S1a_sas_check:
         S1a --sas_confirmed()/PairSasConfirmed--> S1b_sas_ok_here --PairSasConfirmed--> S1
         S1a --PairSasConfirmed--> S1c_sas_ok_there --sas_confirmed()/PairSasConfirmed--> S1
         S1a, S1c --sas_refused()/PairReject(SAS_REFUSED)--> S_failed)
    S1_response_sent --PairComplete/box opens, PeerVerified--> S2_storing_pending
    S2_storing_pending --pending_stored()/PairDone (the vote)--> S3_done_sent
    S3_done_sent --PairCommit/mac ok, CommitRequested--> S4_committing
    S4_committing --committed()/PairingSucceeded--> S5_succeeded
    S0..S2 --PairReject, timeout, abort(), peer_closed(), bad bytes--> S_failed
    S3 --PairReject (the initiator's abort)--> S_failed (delete PENDING)
    S3, S4 --timeout, abort(), peer_closed(), bad bytes, bad mac--> S_in_doubt

Resolver states (:data:`RESOLVER_MOVES`)::

    R0_resolve_sent --PairCommit (mac ok) or PairReject(ABORTED)--> R1_resolved
    R0_resolve_sent --anything else, timeout, closed--> R_in_doubt (ask again later)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from . import errors
from .codes import PairingCode
from .errors import ErrorCode, RemoteProtocolError
from .framing import encode_body
from .identity import NodeId
from .keys import (
    PairingKeys,
    Role,
    commit_mac,
    derive_pairing_keys,
    done_mac,
    sas_confirmed_mac,
    transcript_hash,
    verify_mac,
)
from .messages import (
    FLAG_VERIFY_SAS,
    MAC_SIZE,
    PROTOCOL_VERSION,
    DeviceInfo,
    PairChallenge,
    PairCommit,
    PairComplete,
    PairDone,
    PairReject,
    PairRequest,
    PairResolve,
    PairResponse,
    PairSasConfirmed,
)
from .pairing_events import (
    DEFAULT_STEP_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    CommitRequested,
    Ending,
    Local,
    PairingMachine,
    PairingResolved,
    PairingSucceeded,
    PeerVerified,
    SasCheckRequested,
    Target,
    Trigger,
    open_device_info,
    seal_device_info,
    wire_code,
)
from .pake import spake2_for

__all__ = [
    "JOINER_ENDINGS",
    "JOINER_MOVES",
    "RESOLVER_ENDINGS",
    "RESOLVER_MOVES",
    "Joiner",
    "JoinerState",
    "Resolver",
    "ResolverState",
]


class JoinerState(enum.Enum):
    """Where a joiner is."""

    S0_request_sent = "S0_request_sent"
    S1a_sas_check = "S1a_sas_check"
    S1b_sas_ok_here = "S1b_sas_ok_here"
    S1c_sas_ok_there = "S1c_sas_ok_there"
    S1_response_sent = "S1_response_sent"
    S2_storing_pending = "S2_storing_pending"
    S3_done_sent = "S3_done_sent"
    S4_committing = "S4_committing"
    S5_succeeded = "S5_succeeded"
    S_in_doubt = "S_in_doubt"
    S_failed = "S_failed"


_J = JoinerState

#: The only legal moves: (state, trigger) -> the state entered when the step succeeds
#: (a tuple: the handler chooses; PairChallenge leads to the SAS check when asked for).
JOINER_MOVES: Final[dict[tuple[JoinerState, Trigger], Target]] = {
    (_J.S0_request_sent, PairChallenge): (_J.S1_response_sent, _J.S1a_sas_check),
    (_J.S1a_sas_check, Local.SAS_CONFIRMED): _J.S1b_sas_ok_here,
    (_J.S1a_sas_check, PairSasConfirmed): _J.S1c_sas_ok_there,
    (_J.S1a_sas_check, Local.SAS_REFUSED): _J.S_failed,
    (_J.S1b_sas_ok_here, PairSasConfirmed): _J.S1_response_sent,
    (_J.S1c_sas_ok_there, Local.SAS_CONFIRMED): _J.S1_response_sent,
    (_J.S1c_sas_ok_there, Local.SAS_REFUSED): _J.S_failed,
    (_J.S1_response_sent, PairComplete): _J.S2_storing_pending,
    (_J.S2_storing_pending, Local.PENDING_STORED): _J.S3_done_sent,
    (_J.S3_done_sent, PairCommit): _J.S4_committing,
    (_J.S4_committing, Local.COMMITTED): _J.S5_succeeded,
}

#: How each non-final state ends badly. After the vote (S3, S4) only the
#: initiator's explicit PairReject is an abort; everything else leaves the
#: joiner in doubt, and it says nothing the initiator could mistake for one.
JOINER_ENDINGS: Final[dict[JoinerState, Ending]] = {
    _J.S0_request_sent: Ending(),
    _J.S1a_sas_check: Ending(),
    _J.S1b_sas_ok_here: Ending(),
    _J.S1c_sas_ok_there: Ending(),
    _J.S1_response_sent: Ending(),
    _J.S2_storing_pending: Ending(pending=True),
    _J.S3_done_sent: Ending(pending=True, in_doubt=True, tell_peer=False),
    # PairCommit verified: the initiator committed; only our own write is missing.
    _J.S4_committing: Ending(
        pending=True, in_doubt=True, tell_peer=False, reads=False, ends_on_peer_close=False
    ),
}


class Joiner(PairingMachine[JoinerState]):
    """The pairing machine of the node that typed the code (the QUIC client side).

    ``local`` is this node's NodeId, ``peer`` the initiator's as seen in the
    TLS handshake (pinned by the transport when the code came with a URI);
    ``code`` is the parsed code; ``verify``: the person here asks to confirm the
    SAS. The PairRequest is in :meth:`data_to_send` as soon as the machine exists.
    """

    def __init__(
        self,
        *,
        local: NodeId,
        peer: NodeId,
        code: PairingCode,
        device_info: DeviceInfo,
        now: float,
        rand: Callable[[int], bytes],
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        verify: bool = False,
        verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    ) -> None:
        if local == peer:
            raise ValueError("the initiator's NodeId is our own: a node cannot pair with itself")
        super().__init__(
            role=Role.JOINER,
            name="Joiner",
            state=_J.S0_request_sent,
            moves=JOINER_MOVES,
            endings=JOINER_ENDINGS,
            failed=_J.S_failed,
            in_doubt=_J.S_in_doubt,
            handlers={
                PairChallenge: self._on_challenge,
                PairComplete: self._on_complete,
                Local.PENDING_STORED: self._on_pending_stored,
                PairCommit: self._on_commit,
                Local.COMMITTED: self._on_committed,
                Local.SAS_CONFIRMED: self._on_sas_confirmed,
                Local.SAS_REFUSED: self._on_sas_refused,
                PairSasConfirmed: self._on_peer_sas_confirmed,
            },
            now=now,
            step_timeout=step_timeout,
            slow=frozenset({_J.S1a_sas_check, _J.S1b_sas_ok_here, _J.S1c_sas_ok_there}),
            slow_timeout=verify_timeout,
        )
        self._verify = verify
        self._local_id = local
        self._peer_id = peer
        self._nameplate = code.nameplate
        self._info_plaintext = encode_body(device_info)
        self._pake = spake2_for(Role.JOINER, code.secret, peer, local, rand)
        self._pake_joiner = self._pake.start()
        self._keys: PairingKeys | None = None
        self._peer_info: DeviceInfo | None = None
        self._send(PairRequest(nameplate=code.nameplate, pake=self._pake_joiner))

    # -- actor callbacks -----------------------------------------------------------

    def pending_stored(self, now: float) -> None:
        """The initiator is durably stored as PENDING: vote with PairDone."""
        self._local(Local.PENDING_STORED, None, now)

    def committed(self, now: float) -> None:
        """The initiator is durably CONFIRMED: the pairing succeeded (the actor then sends FIN)."""
        self._local(Local.COMMITTED, None, now)

    @property
    def pairing_id(self) -> bytes | None:
        """The transcript hash once the PAKE ran."""
        return self._keys.pairing_id if self._keys is not None else None

    # -- handlers: one per trigger of JOINER_MOVES --------------------------------

    def _on_challenge(self, challenge: PairChallenge, now: float) -> JoinerState:
        key = self._pake.finish(challenge.pake)
        pairing_id = transcript_hash(
            version=PROTOCOL_VERSION,
            nameplate=self._nameplate,
            initiator=self._peer_id,
            joiner=self._local_id,
            pake_initiator=challenge.pake,
            pake_joiner=self._pake_joiner,
        )
        keys = derive_pairing_keys(key, pairing_id)
        if not verify_mac(keys.confirm_initiator, challenge.confirm):
            raise errors.PairingFailed(
                ErrorCode.WRONG_CODE, "the initiator's key confirmation does not match: wrong code or a relay"
            )
        self._keys = keys
        box = seal_device_info(keys.joiner_to_initiator, self._info_plaintext)
        flags = FLAG_VERIFY_SAS if self._verify else 0
        self._send(PairResponse(confirm=keys.confirm_joiner, sealed=box, flags=flags))
        if self._verify or challenge.flags & FLAG_VERIFY_SAS:
            self._emit(SasCheckRequested(sas=keys.sas))
            return _J.S1a_sas_check
        return _J.S1_response_sent

    def _on_sas_confirmed(self, _payload: None, now: float) -> None:
        keys = self._pairing_keys()
        self._send(PairSasConfirmed(mac=sas_confirmed_mac(keys.pairing_secret, keys.pairing_id, self.role)))

    def _on_peer_sas_confirmed(self, confirmed: PairSasConfirmed, now: float) -> None:
        keys = self._pairing_keys()
        expected = sas_confirmed_mac(keys.pairing_secret, keys.pairing_id, Role.INITIATOR)
        if not verify_mac(expected, confirmed.mac):
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "PairSasConfirmed's MAC does not fit")

    def _on_sas_refused(self, _payload: None, now: float) -> None:
        raise errors.PairingFailed(ErrorCode.SAS_REFUSED, "the person here refused the SAS words")

    def _on_complete(self, complete: PairComplete, now: float) -> None:
        keys = self._pairing_keys()
        self._peer_info = open_device_info(keys.initiator_to_joiner, complete.sealed)
        self._emit(PeerVerified(peer_info=self._peer_info, keys=keys))

    def _on_pending_stored(self, _payload: None, now: float) -> None:
        keys = self._pairing_keys()
        self._send(PairDone(mac=done_mac(keys.pairing_secret, keys.pairing_id)))

    def _on_commit(self, commit: PairCommit, now: float) -> None:
        keys = self._pairing_keys()
        if not verify_mac(commit_mac(keys.pairing_secret, keys.pairing_id), commit.mac):
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "PairCommit's MAC does not fit")
        self._emit(CommitRequested())

    def _on_committed(self, _payload: None, now: float) -> None:
        assert self._peer_info is not None
        self._emit(PairingSucceeded(peer_info=self._peer_info, keys=self._pairing_keys()))

    # -- internals -----------------------------------------------------------------

    def _pairing_keys(self) -> PairingKeys:
        assert self._keys is not None, "the table only allows this step after the PAKE"
        return self._keys

    def _pairing_id_for_doubt(self) -> bytes:
        return self._pairing_keys().pairing_id


class ResolverState(enum.Enum):
    """Where a resolver is."""

    R0_resolve_sent = "R0_resolve_sent"
    R1_resolved = "R1_resolved"
    R_in_doubt = "R_in_doubt"


_R = ResolverState

#: The only legal moves. A PairReject other than ABORTED leaves the pairing in doubt.
RESOLVER_MOVES: Final[dict[tuple[ResolverState, Trigger], Target]] = {
    (_R.R0_resolve_sent, PairCommit): _R.R1_resolved,
    (_R.R0_resolve_sent, PairReject): _R.R1_resolved,
}

#: A resolver that gets no clear answer stays in doubt: the record stays PENDING.
RESOLVER_ENDINGS: Final[dict[ResolverState, Ending]] = {
    _R.R0_resolve_sent: Ending(pending=True, in_doubt=True, tell_peer=False),
}


class Resolver(PairingMachine[ResolverState]):
    """Asks an initiator about a pairing this joiner is in doubt about (a new pairing stream).

    Built from the PENDING record: its ``pairing_id`` and ``pairing_secret``.
    The PairResolve is in :meth:`data_to_send` as soon as the machine exists.
    Ends with PairingResolved (commit or abort) or PairingInDoubt (ask again
    at the next contact).
    """

    def __init__(
        self,
        *,
        local: NodeId,
        peer: NodeId,
        pairing_id: bytes,
        pairing_secret: bytes,
        now: float,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
    ) -> None:
        if local == peer:
            raise ValueError("the initiator's NodeId is our own")
        if len(pairing_id) != MAC_SIZE:
            raise ValueError(f"a pairing id is {MAC_SIZE} bytes")
        super().__init__(
            role=Role.JOINER,
            name="Resolver",
            state=_R.R0_resolve_sent,
            moves=RESOLVER_MOVES,
            endings=RESOLVER_ENDINGS,
            # Every bad ending of a resolver is "still in doubt".
            failed=_R.R_in_doubt,
            in_doubt=_R.R_in_doubt,
            handlers={PairCommit: self._on_commit, PairReject: self._on_reject},
            now=now,
            step_timeout=step_timeout,
        )
        self._pairing_id = pairing_id
        self._secret = pairing_secret
        self._send(PairResolve(pairing_id=pairing_id, mac=done_mac(pairing_secret, pairing_id)))

    @property
    def pairing_id(self) -> bytes:
        """The pairing asked about."""
        return self._pairing_id

    def _on_commit(self, commit: PairCommit, now: float) -> None:
        if not verify_mac(commit_mac(self._secret, self._pairing_id), commit.mac):
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "PairCommit's MAC does not fit")
        self._emit(PairingResolved(pairing_id=self._pairing_id, committed=True))

    def _on_reject(self, reject: PairReject, now: float) -> None:
        code = wire_code(reject.code)
        # The raw value: a code this version does not know must not read as "aborted" here.
        if reject.code != ErrorCode.ABORTED:
            # Not an answer (busy, timeout, wrong proof...): ask again later.
            raise errors.PairingFailed(code, f"the initiator did not answer: {code.name}", remote=True)
        self._emit(PairingResolved(pairing_id=self._pairing_id, committed=False))

    def _pairing_id_for_doubt(self) -> bytes:
        return self._pairing_id
