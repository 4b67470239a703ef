"""Pairing: two sans-I/O state machines that turn a short code into a committed device pair.

Import the machines and their events from here::

    from quicpair.protocol.pairing import Initiator, Joiner, Resolver, PeerVerified, ...

The flow (one QUIC connection, one bidirectional stream opened by the
joiner, ALPN ``quicpair/pair/1``; docs/PROTOCOL.md has the wire details)::

    joiner                                              initiator
      PairRequest(nameplate, pake_j)         ──>        claim the code, COUNT the attempt
                                             <──        PairChallenge(pake_i, confirm_i)
      confirm_i ok?  (else Reject WRONG_CODE)
      PairResponse(confirm_j, box_j)         ──>        confirm_j ok? open box_j
                                                        PeerVerified; actor stores PENDING
                                             <──        PairComplete(box_i)
      open box_i; PeerVerified; actor stores PENDING
      PairDone(done_mac)          (the vote) ──>        CommitRequested; actor CONFIRMS
                                             <──        PairCommit(commit_mac)  (the decision)
      CommitRequested; actor CONFIRMS; FIN

SAS verification (either side asks with FLAG_VERIFY_SAS in PairChallenge or
PairResponse): after both key confirmations and before anything is stored,
each machine emits SasCheckRequested and waits for its person
(``sas_confirmed``/``sas_refused``) and for the peer's PairSasConfirmed;
only then does the initiator emit PeerVerified (and the joiner wait for
PairComplete). A refusal is PairReject(SAS_REFUSED): nothing stored anywhere.

Why each guarantee holds (DESIGN.md, "What the pairing must guarantee"):

* **Only the code gets in.** SPAKE2 makes the code a key; both sides prove
  the key (confirm_i, confirm_j) before anything is stored, and a
  Challenge is only sent after the codebook counted the attempt, so an
  attacker gets one online guess per attempt and no offline test.
* **No relay.** The transcript hash binds both NodeIds as each side saw
  them in TLS; a relay with its own NodeId makes the keys differ and key
  confirmation fails with WRONG_CODE. Nothing is stored before that.
* **No split brain (2PC, the initiator coordinates).** Before its vote the
  joiner fails and forgets on any problem. After the vote only the
  initiator's explicit PairReject aborts it; silence, a closed stream or
  garbage leave it *in doubt* with the record PENDING (never used as
  paired) until a :class:`Resolver` asks the initiator, whose registry is
  the truth. The initiator never says "aborted" once CommitRequested is out.
  Deleting a PENDING record never touches a CONFIRMED one, so a late failure
  cannot undo a committed pairing.
* **Bounded time.** Every non-final state has a deadline (``step_timeout``
  after entering it); the owner calls :meth:`handle_timer` at
  :meth:`next_deadline`.

The API is the same for every machine (h11 style): ``receive_data(bytes,
now)``, then drain ``next_event()`` until None and send ``data_to_send()``;
``handle_timer(now)``/``next_deadline()``; the actor's callbacks after its
durable writes (``pending_stored(now)``, ``committed(now)``, and
``answer_resolve(...)`` on the initiator); ``abort(code, now)`` and
``peer_closed(now, code)``. A peer's protocol error never raises: the
machine sends PairReject when it may, ends, and emits PairingFailed (or
PairingInDoubt). A call the current state does not allow raises
LocalProtocolError naming role, state and call, except a callback arriving
after the machine already ended (the write raced the failure; ignored).
"""

from __future__ import annotations

from .pairing_events import (
    DEFAULT_STEP_TIMEOUT,
    DEFAULT_VERIFY_TIMEOUT,
    CommitRequested,
    Ending,
    Local,
    PairingEvent,
    PairingFailed,
    PairingInDoubt,
    PairingMachine,
    PairingResolved,
    PairingSucceeded,
    PeerVerified,
    ResolveAnswered,
    ResolveRequested,
    SasCheckRequested,
)
from .pairing_initiator import INITIATOR_ENDINGS, INITIATOR_MOVES, Initiator, InitiatorState
from .pairing_joiner import (
    JOINER_ENDINGS,
    JOINER_MOVES,
    RESOLVER_ENDINGS,
    RESOLVER_MOVES,
    Joiner,
    JoinerState,
    Resolver,
    ResolverState,
)

__all__ = [
    "DEFAULT_STEP_TIMEOUT",
    "DEFAULT_VERIFY_TIMEOUT",
    "INITIATOR_ENDINGS",
    "INITIATOR_MOVES",
    "JOINER_ENDINGS",
    "JOINER_MOVES",
    "RESOLVER_ENDINGS",
    "RESOLVER_MOVES",
    "CommitRequested",
    "Ending",
    "Initiator",
    "InitiatorState",
    "Joiner",
    "JoinerState",
    "Local",
    "PairingEvent",
    "PairingFailed",
    "PairingInDoubt",
    "PairingMachine",
    "PairingResolved",
    "PairingSucceeded",
    "PeerVerified",
    "ResolveAnswered",
    "ResolveRequested",
    "Resolver",
    "ResolverState",
    "SasCheckRequested",
]
