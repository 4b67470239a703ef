"""A node SIGKILLed at every step of a pairing, either side: committed on both, or on neither.

Real node processes over real QUIC on loopback (tests/support/nodeproc.py). The
``[testing] kill_at`` switch makes one node kill itself (SIGKILL: nothing gets
to clean up, nothing is flushed but what the kernel holds) at one step of the
two-phase commit (PROTOCOL.md 10.5); it is then restarted on the same home and
port, without the switch. Whatever the step, the two registries end up agreeing
within a bounded time: both CONFIRMED with the same keys, or neither holding
anything, not even a PENDING record.

The steps and what must follow (the initiator's CONFIRMED write is the decision):

=========================  ==================================  ==========
killed                     what the other side holds then      outcome
=========================  ==================================  ==========
initiator_before_complete  nothing (the joiner has not voted)  neither
initiator_before_confirm   joiner PENDING, voted: in doubt     neither
initiator_before_decision  joiner PENDING, voted: in doubt     both
joiner_before_vote         initiator PENDING                   neither
joiner_before_confirm      initiator CONFIRMED                 both
joiner_after_confirm       initiator CONFIRMED                 both
=========================  ==================================  ==========
"""

from __future__ import annotations

import signal
from functools import partial

import pytest

from quicpair.config.settings import KILL_POINTS
from support.nodeproc import NodeFactory, NodeProcess, poll
from support.nodeproc import nodes_fixture as nodes_fixture  # the ``nodes`` fixture

pytestmark = pytest.mark.integration

#: Short bounds so a scenario that waits for one stays fast.
STEP = 2.0
TIMERS = [f"pairing.step_timeout={STEP:g}", "pairing.resolve_timeout=20"]
#: A restarted node must agree with its peer within this (a resolve is retried every 1 s).
SETTLE = 15.0

COMMITTED = {"initiator_before_decision", "joiner_before_confirm", "joiner_after_confirm"}


def devices(node: NodeProcess) -> list[dict[str, object]]:
    return node.devices(include_pending=True)


def agree(alice: NodeProcess, bob: NodeProcess, committed: bool) -> bool:
    a_holds, b_holds = devices(alice), devices(bob)
    if not committed:
        return a_holds == [] and b_holds == []
    return (
        [d["state"] for d in a_holds] == ["confirmed"]
        and [d["state"] for d in b_holds] == ["confirmed"]
        and a_holds[0]["send_key_fingerprint"] == b_holds[0]["receive_key_fingerprint"]
        and a_holds[0]["receive_key_fingerprint"] == b_holds[0]["send_key_fingerprint"]
    )


def test_every_kill_point_is_tested() -> None:
    aborted = {"initiator_before_complete", "initiator_before_confirm", "joiner_before_vote"}
    assert set(KILL_POINTS) == COMMITTED | aborted


@pytest.mark.parametrize("step", KILL_POINTS)
def test_a_node_killed_at_a_step_of_the_pairing_agrees_with_its_peer_after_restart(
    nodes: NodeFactory, step: str
) -> None:
    switch = f'testing.kill_at="{step}"'
    initiator_dies = step.startswith("initiator")
    alice, bob = nodes.start(
        ("alice", [*TIMERS, *([switch] if initiator_dies else [])]),
        ("bob", [*TIMERS, *([] if initiator_dies else [switch])]),
    )
    victim = alice if initiator_dies else bob
    joining = bob.request("join", code=alice.pair()["uri"], timeout=40)

    poll(lambda: not victim.running, timeout=20.0, what=f"{victim.name} killed at {step}", fail=pytest.fail)
    assert victim.kill() == -signal.SIGKILL
    victim.settings.remove(switch)
    victim.restart()  # same home, same port

    committed = step in COMMITTED
    bob.wait_for(partial(agree, alice, bob, committed), timeout=SETTLE, what=f"agreement after {step}")
    if initiator_dies:
        # The joiner lived through it: its join answers with the outcome.
        reply = bob.await_reply(joining, timeout=45.0)
        assert reply.ok == committed, reply.error
        if committed:
            assert reply.result["state"] == "confirmed"
    assert alice.events("pairing.crashed") == [] and bob.events("pairing.crashed") == []
