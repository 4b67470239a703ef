"""actors/context.py: the node context applies protocol/addresses.py to what the node is bound to.

No actor runs here: a context with a bound address set by hand, and links
faked by their two ends (``Endpoints``). Only loopback is ever asked about;
the route lookups (a connected UDP socket) send nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from quicpair.actors.context import NodeContext, interface_hosts
from quicpair.actors.kernel.counters import Counters
from quicpair.actors.kernel.loop import EventLoopThread
from quicpair.config.settings import load_settings
from quicpair.protocol.addresses import Scope, scope_of
from quicpair.protocol.codes import split_address
from quicpair.protocol.identity import Identity


@dataclass
class Ends:
    local_address: tuple[str, int]
    remote_address: tuple[str, int]


@pytest.fixture
def context(tmp_path: Path) -> NodeContext:
    # The loop thread is never started: these methods run on the caller's thread.
    return NodeContext(
        identity=Identity.generate(),
        settings=load_settings(node={"listen_host": "::", "listen_port": 0}),
        home=tmp_path,
        counters=Counters(),
        loop_thread=EventLoopThread("unused"),
    )


def test_nothing_is_announced_before_the_port_is_bound(context: NodeContext) -> None:
    assert context.direct_addresses() == [] and context.uri_addresses() == []
    assert context.dial_source() is None, "the setting says ::: any source"


def test_a_node_bound_to_loopback_tells_loopback_peers_and_its_uri_only(context: NodeContext) -> None:
    context.bound.set_result(("127.0.0.1", 4000))
    assert context.direct_addresses() == ["127.0.0.1:4000"]
    assert context.uri_addresses() == ["127.0.0.1:4000"]
    assert context.addresses_for(Ends(("127.0.0.1", 4000), ("127.0.0.1", 5555))) == ["127.0.0.1:4000"]
    # A peer that is not on loopback could only reach itself there.
    assert context.addresses_for(Ends(("127.0.0.1", 4000), ("10.0.0.9", 5555))) == []
    assert context.dial_source() == "127.0.0.1", "dials leave from the one address it listens at"
    # Ourselves, a family and a scope this node has no source for: none of them dialed.
    assert context.dial_order(["127.0.0.1:4000", "[::1]:5", "10.0.0.1:5", "127.0.0.1:5"]) == ["127.0.0.1:5"]


def test_a_dual_stack_node_never_puts_loopback_in_its_uri(context: NodeContext) -> None:
    context.bound.set_result(("::", 4000))
    listening = context.direct_addresses()
    assert "127.0.0.1:4000" in listening, "it does listen there"
    assert all(scope_of(split_address(a)[0]) is not Scope.LOOPBACK for a in context.uri_addresses())
    assert all(split_address(a)[1] == 4000 for a in listening)
    assert {split_address(a)[0].split("%")[0] for a in listening} <= {
        h.split("%")[0] for h in interface_hosts()
    }


def test_a_loopback_peer_of_a_dual_stack_node_hears_first_where_it_reached_us(context: NodeContext) -> None:
    context.bound.set_result(("::", 4000))
    # An accepted connection: the socket is the wildcard; the kernel's route says which address.
    told = context.addresses_for(Ends(("::", 4000), ("127.0.0.1", 5555)))
    assert told[0] == "127.0.0.1:4000"
    # A dialed connection leaves from an ephemeral port: announced at the port we listen on.
    told = context.addresses_for(Ends(("::1", 61234), ("::1", 5555)))
    assert told[0] == "[::1]:4000"
