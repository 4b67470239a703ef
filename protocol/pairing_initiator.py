"""The initiator's pairing machine: the side that showed the code, and the 2PC coordinator.

One machine serves one pairing stream. Its first message decides what the
stream is: a PairRequest starts a pairing, a PairResolve asks about an old
one (a joiner left in doubt). See :mod:`protocol.pairing` for the flow.

States and moves (:data:`MOVES`, the one table; :data:`ENDINGS` says what a
failure means in each non-final state)::

    S0_await_request --PairRequest/claim code, PairChallenge--> S1_challenge_sent
    S1_challenge_sent --PairResponse/confirm ok, PeerVerified--> S2_storing_pending
        (or, when either side asked to verify the SAS, SasCheckRequested--> S1a_sas_check:
         S1a --sas_confirmed()/PairSasConfirmed--> S1b_sas_ok_here --PairSasConfirmed--> S2
         S1a --PairSasConfirmed--> S1c_sas_ok_there --sas_confirmed()/PairSasConfirmed--> S2
         S1a, S1c --sas_refused()/PairReject(SAS_REFUSED)--> S_failed)
    S2_storing_pending --pending_stored()/PairComplete--> S3_complete_sent
    S3_complete_sent --PairDone/mac ok, consume code, CommitRequested--> S4_committing
    S4_committing --committed()/PairCommit, PairingSucceeded--> S5_succeeded
    S4_committing --commit_refused()/PairReject(ABORTED), PairingFailed--> S_failed
    S0_await_request --PairResolve/ResolveRequested--> R1_resolve_requested
    R1_resolve_requested --answer_resolve()/PairCommit or PairReject--> R2_resolve_answered
    any non-final state --PairReject, timeout, abort(), peer_closed(), bad bytes--> S_failed

Once CommitRequested is out (S4) the decision belongs to the registry
write: the machine stops reading, ignores a closed stream, and if it still
ends (deadline, abort) it sends nothing and exposes no ``failure_code``, so
nothing can tell the joiner "aborted" about a pairing that may be committed.
The joiner then resolves against the registry, which holds the truth.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from . import errors
from .codebook import CodeClaims
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
    PairingSucceeded,
    PeerVerified,
    ResolveAnswered,
    ResolveRequested,
    SasCheckRequested,
    Target,
    Trigger,
    open_device_info,
    seal_device_info,
)
from .pake import spake2_for

__all__ = ["INITIATOR_ENDINGS", "INITIATOR_MOVES", "Initiator", "InitiatorState"]


class InitiatorState(enum.Enum):
    """Where an initiator is; ``S`` states pair, ``R`` states answer a PairResolve."""

    S0_await_request = "S0_await_request"
    S1_challenge_sent = "S1_challenge_sent"
    S1a_sas_check = "S1a_sas_check"
    S1b_sas_ok_here = "S1b_sas_ok_here"
    S1c_sas_ok_there = "S1c_sas_ok_there"
    S2_storing_pending = "S2_storing_pending"
    S3_complete_sent = "S3_complete_sent"
    S4_committing = "S4_committing"
    S5_succeeded = "S5_succeeded"
    R1_resolve_requested = "R1_resolve_requested"
    R2_resolve_answered = "R2_resolve_answered"
    S_failed = "S_failed"


_S = InitiatorState

#: The only legal moves: (state, trigger) -> the state entered when the step succeeds
#: (a tuple: the handler chooses; PairResponse leads to the SAS check when asked for).
INITIATOR_MOVES: Final[dict[tuple[InitiatorState, Trigger], Target]] = {
    (_S.S0_await_request, PairRequest): _S.S1_challenge_sent,
    (_S.S1_challenge_sent, PairResponse): (_S.S2_storing_pending, _S.S1a_sas_check),
    (_S.S1a_sas_check, Local.SAS_CONFIRMED): _S.S1b_sas_ok_here,
    (_S.S1a_sas_check, PairSasConfirmed): _S.S1c_sas_ok_there,
    (_S.S1a_sas_check, Local.SAS_REFUSED): _S.S_failed,
    (_S.S1b_sas_ok_here, PairSasConfirmed): _S.S2_storing_pending,
    (_S.S1c_sas_ok_there, Local.SAS_CONFIRMED): _S.S2_storing_pending,
    (_S.S1c_sas_ok_there, Local.SAS_REFUSED): _S.S_failed,
    (_S.S2_storing_pending, Local.PENDING_STORED): _S.S3_complete_sent,
    (_S.S3_complete_sent, PairDone): _S.S4_committing,
    (_S.S4_committing, Local.COMMITTED): _S.S5_succeeded,
    (_S.S4_committing, Local.COMMIT_REFUSED): _S.S_failed,
    (_S.S0_await_request, PairResolve): _S.R1_resolve_requested,
    (_S.R1_resolve_requested, Local.ANSWER_RESOLVE): _S.R2_resolve_answered,
}

#: How each non-final state ends badly (PairReject, timeout, abort, closed stream, bad bytes).
INITIATOR_ENDINGS: Final[dict[InitiatorState, Ending]] = {
    _S.S0_await_request: Ending(),
    _S.S1_challenge_sent: Ending(),
    # Nothing is stored while people compare the words: failing here keeps nothing.
    _S.S1a_sas_check: Ending(),
    _S.S1b_sas_ok_here: Ending(),
    _S.S1c_sas_ok_there: Ending(),
    _S.S2_storing_pending: Ending(pending=True),
    # The joiner may have voted already: what it must hear is "aborted".
    _S.S3_complete_sent: Ending(pending=True, timeout_reject=ErrorCode.ABORTED),
    # The decision is the registry's now (see the module docstring).
    _S.S4_committing: Ending(
        pending=True, tell_peer=False, may_reset=False, reads=False, ends_on_peer_close=False
    ),
    _S.R1_resolve_requested: Ending(),
}


class Initiator(PairingMachine[InitiatorState]):
    """The pairing machine of the node that opened the code (the QUIC listener side).

    ``local`` is this node's NodeId, ``peer`` the joiner's as seen in the
    TLS handshake; ``codebook`` hands out the codes (claim, release, consume);
    ``device_info`` is what the joiner learns about us. ``verify(nameplate)``
    says whether the person who opened that code asked to confirm the SAS.
    """

    def __init__(
        self,
        *,
        local: NodeId,
        peer: NodeId,
        codebook: CodeClaims,
        device_info: DeviceInfo,
        now: float,
        rand: Callable[[int], bytes],
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        verify: Callable[[int], bool] = lambda _nameplate: False,
        verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    ) -> None:
        if local == peer:
            raise ValueError("the joiner's NodeId is our own: a node cannot pair with itself")
        super().__init__(
            role=Role.INITIATOR,
            name="Initiator",
            state=_S.S0_await_request,
            moves=INITIATOR_MOVES,
            endings=INITIATOR_ENDINGS,
            failed=_S.S_failed,
            in_doubt=None,
            handlers={
                PairRequest: self._on_request,
                PairResponse: self._on_response,
                Local.PENDING_STORED: self._on_pending_stored,
                PairDone: self._on_done,
                Local.COMMITTED: self._on_committed,
                Local.COMMIT_REFUSED: self._on_commit_refused,
                PairResolve: self._on_resolve,
                Local.ANSWER_RESOLVE: self._on_answer_resolve,
                Local.SAS_CONFIRMED: self._on_sas_confirmed,
                Local.SAS_REFUSED: self._on_sas_refused,
                PairSasConfirmed: self._on_peer_sas_confirmed,
            },
            now=now,
            step_timeout=step_timeout,
            slow=frozenset({_S.S1a_sas_check, _S.S1b_sas_ok_here, _S.S1c_sas_ok_there}),
            slow_timeout=verify_timeout,
        )
        self._verify = verify
        self._verify_here = False
        self._local_id = local
        self._peer_id = peer
        self._codebook = codebook
        # Encoded now so a DeviceInfo that breaks its limits fails here, in the caller.
        self._info_plaintext = encode_body(device_info)
        self._rand = rand
        self._nameplate: int | None = None  # set once a code is claimed (and must be given back)
        self._consumed = False
        self._keys: PairingKeys | None = None
        self._peer_info: DeviceInfo | None = None
        self._resolve: PairResolve | None = None

    # -- actor callbacks -----------------------------------------------------------

    def pending_stored(self, now: float) -> None:
        """The joiner is durably stored as PENDING: send PairComplete."""
        self._local(Local.PENDING_STORED, None, now)

    def committed(self, now: float) -> None:
        """The joiner is durably CONFIRMED: send PairCommit (the decision)."""
        self._local(Local.COMMITTED, None, now)

    def commit_refused(self, now: float) -> None:
        """The registry refused to confirm (the PENDING record is gone): the decision is abort.

        Unlike a timeout in S4, the outcome is known here, so the joiner is
        told ``ABORTED`` at once instead of having to resolve.
        """
        self._local(Local.COMMIT_REFUSED, None, now)

    def answer_resolve(self, committed: bool, pairing_secret: bytes | None, now: float) -> None:
        """Answer a ResolveRequested from the registry.

        ``committed``: the registry holds this peer CONFIRMED with that
        pairing id. ``pairing_secret``: the secret of the record for that
        pairing id and peer (pending or confirmed), None if there is none.
        """
        if committed and pairing_secret is None:
            raise ValueError("a committed pairing has a pairing secret")
        self._local(Local.ANSWER_RESOLVE, (committed, pairing_secret), now)

    @property
    def pairing_id(self) -> bytes | None:
        """The transcript hash once the PAKE ran (or the id a PairResolve asks about)."""
        if self._keys is not None:
            return self._keys.pairing_id
        return self._resolve.pairing_id if self._resolve is not None else None

    @property
    def nameplate(self) -> int | None:
        """The nameplate of the code this session claimed, if any."""
        return self._nameplate

    # -- handlers: one per trigger of INITIATOR_MOVES -------------------------------

    def _on_request(self, request: PairRequest, now: float) -> None:
        code = self._codebook.claim(request.nameplate, now)  # errors.PairingFailed -> PairReject
        self._nameplate = request.nameplate
        pake = spake2_for(Role.INITIATOR, code.secret, self._local_id, self._peer_id, self._rand)
        pake_initiator = pake.start()
        key = pake.finish(request.pake)
        pairing_id = transcript_hash(
            version=PROTOCOL_VERSION,
            nameplate=request.nameplate,
            initiator=self._local_id,
            joiner=self._peer_id,
            pake_initiator=pake_initiator,
            pake_joiner=request.pake,
        )
        self._keys = derive_pairing_keys(key, pairing_id)
        self._verify_here = self._verify(request.nameplate)
        flags = FLAG_VERIFY_SAS if self._verify_here else 0
        self._send(PairChallenge(pake=pake_initiator, confirm=self._keys.confirm_initiator, flags=flags))

    def _on_response(self, response: PairResponse, now: float) -> InitiatorState:
        keys = self._pairing_keys()
        if not verify_mac(keys.confirm_joiner, response.confirm):
            raise errors.PairingFailed(
                ErrorCode.WRONG_CODE, "the joiner's key confirmation does not match: wrong code, or a relay"
            )
        self._peer_info = open_device_info(keys.joiner_to_initiator, response.sealed)
        if self._verify_here or response.flags & FLAG_VERIFY_SAS:
            self._emit(SasCheckRequested(sas=keys.sas, peer_name=self._peer_info.name))
            return _S.S1a_sas_check
        self._emit(PeerVerified(peer_info=self._peer_info, keys=keys))
        return _S.S2_storing_pending

    def _on_sas_confirmed(self, _payload: None, now: float) -> None:
        keys = self._pairing_keys()
        self._send(PairSasConfirmed(mac=sas_confirmed_mac(keys.pairing_secret, keys.pairing_id, self.role)))
        if self._state is _S.S1c_sas_ok_there:
            self._peer_verified()

    def _on_peer_sas_confirmed(self, confirmed: PairSasConfirmed, now: float) -> None:
        keys = self._pairing_keys()
        expected = sas_confirmed_mac(keys.pairing_secret, keys.pairing_id, Role.JOINER)
        if not verify_mac(expected, confirmed.mac):
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "PairSasConfirmed's MAC does not fit")
        if self._state is _S.S1b_sas_ok_here:
            self._peer_verified()

    def _on_sas_refused(self, _payload: None, now: float) -> None:
        raise errors.PairingFailed(ErrorCode.SAS_REFUSED, "the person here refused the SAS words")

    def _peer_verified(self) -> None:
        assert self._peer_info is not None
        self._emit(PeerVerified(peer_info=self._peer_info, keys=self._pairing_keys()))

    def _on_pending_stored(self, _payload: None, now: float) -> None:
        keys = self._pairing_keys()
        self._send(PairComplete(sealed=seal_device_info(keys.initiator_to_joiner, self._info_plaintext)))

    def _on_done(self, done: PairDone, now: float) -> None:
        keys = self._pairing_keys()
        if not verify_mac(done_mac(keys.pairing_secret, keys.pairing_id), done.mac):
            raise RemoteProtocolError(ErrorCode.PROTOCOL_VIOLATION, "PairDone's MAC does not fit the pairing")
        assert self._nameplate is not None
        self._codebook.consume(self._nameplate)
        self._consumed = True
        self._emit(CommitRequested())

    def _on_committed(self, _payload: None, now: float) -> None:
        keys = self._pairing_keys()
        assert self._peer_info is not None
        self._send(PairCommit(mac=commit_mac(keys.pairing_secret, keys.pairing_id)))
        self._emit(PairingSucceeded(peer_info=self._peer_info, keys=keys))

    def _on_commit_refused(self, _payload: None, now: float) -> None:
        detail = "initiator in state S4_committing: the registry refused to confirm the pairing"
        self._send(PairReject(code=ErrorCode.ABORTED, reason=detail))
        self._fail(ErrorCode.ABORTED, detail, remote=False)

    def _on_resolve(self, resolve: PairResolve, now: float) -> None:
        self._resolve = resolve
        self._emit(ResolveRequested(pairing_id=resolve.pairing_id, mac=resolve.mac))

    def _on_answer_resolve(self, answer: tuple[bool, bytes | None], now: float) -> None:
        committed, secret = answer
        assert self._resolve is not None
        pairing_id = self._resolve.pairing_id
        if secret is not None and not verify_mac(done_mac(secret, pairing_id), self._resolve.mac):
            # Only the holder of the secret may learn the outcome or make us drop the record.
            raise errors.PairingFailed(ErrorCode.WRONG_CODE, "PairResolve's MAC does not match the pairing")
        if committed and secret is not None:
            self._send(PairCommit(mac=commit_mac(secret, pairing_id)))
        else:
            self._send(PairReject(code=ErrorCode.ABORTED, reason="this pairing was not committed here"))
        self._emit(
            ResolveAnswered(
                pairing_id=pairing_id,
                committed=committed,
                pending_must_be_deleted=not committed and secret is not None,
            )
        )

    # -- internals -----------------------------------------------------------------

    def _pairing_keys(self) -> PairingKeys:
        assert self._keys is not None, "the table only allows this step after the PAKE"
        return self._keys

    def _ended(self, code: ErrorCode) -> None:
        # The attempt was counted by claim(); record why it failed (a wrong
        # code is reported as such, and the code burns after max_attempts).
        if self._nameplate is not None and not self._consumed:
            self._codebook.record_failure(self._nameplate, code)
