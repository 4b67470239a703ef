"""protocol/addresses.py: which addresses a node announces to whom, and the order a dialer races them."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicpair.protocol import addresses
from quicpair.protocol.addresses import (
    Scope,
    announce_to,
    announced_addresses,
    dial_order,
    dialable_observed,
    listening_addresses,
    precedence,
    scope_of,
    unmapped,
)
from quicpair.protocol.messages import MAX_ADDRESSES

# A dual-stack host as ifaddr shows it: loopback, an IPv4 LAN, ULA, global, link-local with its zone.
INTERFACES = ["127.0.0.1", "::1", "10.231.0.10", "fd00:231::10", "2001:db8::10", "fe80::10%eth0"]


# -- classification --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "scope"),
    [
        ("127.0.0.1", Scope.LOOPBACK),
        ("127.1.2.3", Scope.LOOPBACK),
        ("::1", Scope.LOOPBACK),
        ("::ffff:127.0.0.1", Scope.LOOPBACK),
        ("fe80::1", Scope.LINK_LOCAL),
        ("fe80::1%eth0", Scope.LINK_LOCAL),
        ("169.254.7.7", Scope.LINK_LOCAL),
        ("10.231.0.10", Scope.PRIVATE),
        ("172.16.0.1", Scope.PRIVATE),
        ("192.168.1.2", Scope.PRIVATE),
        ("100.64.0.1", Scope.PRIVATE),
        ("fd00::1", Scope.PRIVATE),
        ("::ffff:10.0.0.1", Scope.PRIVATE),
        ("2001:db8::1", Scope.GLOBAL),
        ("192.0.2.7", Scope.GLOBAL),
        ("8.8.8.8", Scope.GLOBAL),
        ("0.0.0.0", None),
        ("0.0.0.1", None),
        ("255.255.255.255", None),
        ("240.0.0.1", None),
        ("::", None),
        ("224.0.0.251", None),
        ("ff02::fb", None),
    ],
)
def test_every_address_has_a_scope_or_is_never_dialed(host: str, scope: Scope | None) -> None:
    assert scope_of(host) is scope


def test_a_host_name_has_no_scope() -> None:
    with pytest.raises(ValueError):
        scope_of("example.com")


@pytest.mark.parametrize(
    ("host", "value"),
    [
        ("::1", 50),
        ("2001:db8::1", 40),  # 2001::/32 is Teredo's; 2001:db8::/32 is outside it: ::/0
        ("2a00::1", 40),
        ("fe80::1", 40),
        ("10.0.0.1", 35),
        ("127.0.0.1", 35),
        ("2002:c000:0204::1", 30),
        ("2001:0:1::1", 5),
        ("fd00::1", 3),
        ("fec0::1", 1),
        ("3ffe::1", 1),
        ("::1.2.3.4", 1),
    ],
)
def test_precedence_is_rfc6724s_default_policy_table(host: str, value: int) -> None:
    assert precedence(host) == value


def test_ipv4_mapped_addresses_are_written_as_ipv4() -> None:
    assert unmapped("::ffff:10.0.0.1") == "10.0.0.1"
    assert unmapped("::ffff:a00:1") == "10.0.0.1"
    assert unmapped("10.0.0.1") == "10.0.0.1"
    assert unmapped("fd00::1") == "fd00::1"
    assert unmapped("not an address") == "not an address"


# -- what we listen at ----------------------------------------------------------------------------------


def test_a_dual_stack_wildcard_listens_at_every_interface_address_of_both_families() -> None:
    assert listening_addresses("::", 47470, [*INTERFACES, "0.0.0.0", "ff02::1", "junk", "10.231.0.10"]) == [
        "127.0.0.1:47470",
        "[::1]:47470",
        "10.231.0.10:47470",
        "[fd00:231::10]:47470",
        "[2001:db8::10]:47470",
        "[fe80::10%eth0]:47470",
    ]


def test_the_ipv4_wildcard_listens_at_the_ipv4_addresses_only() -> None:
    assert listening_addresses("0.0.0.0", 5, INTERFACES) == ["127.0.0.1:5", "10.231.0.10:5"]


def test_a_node_bound_to_one_address_listens_there_only() -> None:
    assert listening_addresses("10.231.0.10", 5, INTERFACES) == ["10.231.0.10:5"]
    assert listening_addresses("fe80::10%eth0", 5, INTERFACES) == ["[fe80::10%eth0]:5"]


# -- what we announce ----------------------------------------------------------------------------------

LISTENING = listening_addresses("::", 47470, INTERFACES)


def test_the_issue_example_no_loopback_in_a_uri_of_a_node_bound_to_all_interfaces() -> None:
    # `…&addr=192.0.2.2:59935&addr=127.0.0.1:59935` was what a node bound to 0.0.0.0 put in its URI.
    assert announce_to(["192.0.2.2:59935", "127.0.0.1:59935"], peer=None) == ["192.0.2.2:59935"]


def test_a_uri_carries_what_a_device_on_the_network_can_use_best_first() -> None:
    # RFC 6724 precedence: IPv6 global (40) > IPv4 (35) > ULA (3); link-local last, without our zone.
    assert announce_to(LISTENING, peer=None) == [
        "[2001:db8::10]:47470",
        "10.231.0.10:47470",
        "[fd00:231::10]:47470",
        "[fe80::10]:47470",
    ]


def test_a_uri_of_a_node_bound_to_loopback_carries_loopback() -> None:
    assert announce_to(["127.0.0.1:4433"], peer=None) == ["127.0.0.1:4433"]
    assert announce_to(["[::1]:4433"], peer=None) == ["[::1]:4433"]


def test_a_remote_peer_is_never_told_a_loopback_address() -> None:
    told = announce_to(LISTENING, peer="10.231.0.11:47470", reached_on="10.231.0.10:47470")
    assert told == ["10.231.0.10:47470", "[2001:db8::10]:47470", "[fd00:231::10]:47470", "[fe80::10]:47470"]


def test_the_address_the_peer_reached_us_on_comes_first() -> None:
    told = announce_to(LISTENING, peer="[fe80::11%eth0]:47470", reached_on="[fe80::10%eth0]:47470")
    assert told[0] == "[fe80::10]:47470" and len(told) == 4
    told = announce_to(LISTENING, peer="[fd00:231::11]:5", reached_on="[fd00:231::10]:47470")
    assert told[0] == "[fd00:231::10]:47470"
    # An address we do not listen at (a stale one) changes nothing.
    assert announce_to(LISTENING, peer="10.0.0.1:5", reached_on="10.9.9.9:47470") == announce_to(
        LISTENING, peer="10.0.0.1:5"
    )


def test_a_peer_on_loopback_is_told_loopback_first_and_everything_else() -> None:
    told = announce_to(LISTENING, peer="127.0.0.1:50000", reached_on="127.0.0.1:47470")
    assert told[0] == "127.0.0.1:47470" and "[::1]:47470" in told and "10.231.0.10:47470" in told
    assert announce_to(["127.0.0.1:4433"], peer="127.0.0.1:50000") == ["127.0.0.1:4433"]
    assert announce_to(["127.0.0.1:4433"], peer="[::ffff:127.0.0.1]:50000") == ["127.0.0.1:4433"]


def test_at_most_max_addresses_are_announced() -> None:
    many = [f"10.0.0.{i}:1" for i in range(1, 40)]
    assert announce_to(many, peer=None) == many[:MAX_ADDRESSES]


# -- what a peer tells us --------------------------------------------------------------------------------


def test_announced_addresses_keep_ip_literals_without_the_senders_zone() -> None:
    got = announced_addresses(
        [
            "10.0.0.5:47470",
            "[fe80::5%wlan7]:47470",
            "[::ffff:10.0.0.6]:47470",
            "peer.example:47470",
            "0.0.0.0:47470",
            "[ff02::fb]:5353",
            "garbage",
            "10.0.0.5:47470",
        ]
    )
    assert got == ("10.0.0.5:47470", "[fe80::5]:47470", "10.0.0.6:47470")


def test_loopback_is_kept_only_from_a_peer_on_loopback() -> None:
    sent = ["127.0.0.1:47470", "[::1]:47470", "10.0.0.5:47470"]
    assert announced_addresses(sent, peer="10.0.0.5:50123") == ("10.0.0.5:47470",)
    assert announced_addresses(sent, peer="[fe80::5%eth0]:50123") == ("10.0.0.5:47470",)
    assert announced_addresses(sent, peer="127.0.0.1:50123") == tuple(sent)
    assert announced_addresses(sent) == tuple(sent), "no peer known (a URI a person gave): kept"


def test_an_accepted_connection_is_kept_at_the_port_the_peer_listens_on_with_our_zone() -> None:
    assert dialable_observed("10.231.0.9:53117", ("10.231.0.5:47470",)) == "10.231.0.9:47470"
    assert dialable_observed("[fe80::9%eth0]:53117", ("[fd00::5]:4433",)) == "[fe80::9%eth0]:4433"
    assert dialable_observed("10.231.0.9:53117", ()) is None
    assert dialable_observed("0.0.0.0:53117", ("10.0.0.1:1",)) is None


# -- what we dial ----------------------------------------------------------------------------------------


def test_families_are_interleaved_starting_with_the_first_ones() -> None:
    # RFC 8305 4: a blackholed IPv4 costs one stagger step before the first IPv6 attempt.
    given_order = ["10.0.0.5:1", "10.0.0.6:1", "[fd00::5]:1", "[2001:db8::5]:1", "10.0.0.7:1"]
    assert dial_order(given_order, local=INTERFACES) == [
        "10.0.0.5:1",
        "[fd00::5]:1",
        "10.0.0.6:1",
        "[2001:db8::5]:1",
        "10.0.0.7:1",
    ]


def test_a_link_local_address_is_dialed_on_each_of_our_link_local_interfaces() -> None:
    local = ["10.0.0.1", "fe80::1%eth0", "fe80::2%wlan0", "fe80::3%eth0"]
    assert dial_order(["[fe80::5]:1"], local=local) == ["[fe80::5%eth0]:1", "[fe80::5%wlan0]:1"]
    assert dial_order(["[fe80::5%wlan0]:1"], local=local) == ["[fe80::5%wlan0]:1"], "a zone of ours is kept"


def test_addresses_we_cannot_reach_are_not_dialed() -> None:
    # RFC 6724 rule 1: no source of that family or scope.
    ipv4_only = ["127.0.0.1", "10.0.0.1"]
    assert dial_order(["[fd00::5]:1", "[fe80::5]:1", "10.0.0.5:1", "127.0.0.1:2"], local=ipv4_only) == [
        "10.0.0.5:1",
        "127.0.0.1:2",
    ]
    link_local_only = ["::1", "fe80::1%eth0"]
    assert dial_order(["[fd00::5]:1", "10.0.0.5:1", "[fe80::5]:1"], local=link_local_only) == [
        "[fe80::5%eth0]:1"
    ]
    assert dial_order(["0.0.0.0:1", "[ff02::1]:1", "what ever"], local=INTERFACES) == []


def test_a_node_never_dials_itself() -> None:
    own = listening_addresses("::", 47470, INTERFACES)
    stale = ["127.0.0.1:47470", "127.0.0.2:47470", "[::1]:47470", "10.231.0.10:47470", "127.0.0.1:47471"]
    assert dial_order(stale, local=INTERFACES, own=own) == ["127.0.0.1:47471"]


def test_a_host_name_a_person_typed_is_kept() -> None:
    assert dial_order(["peer.example:4433", "10.0.0.5:1"], local=INTERFACES) == [
        "peer.example:4433",
        "10.0.0.5:1",
    ]


# -- properties --------------------------------------------------------------------------------------------

_ips = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.sampled_from(["127.0.0.1", "::1", "fe80::1%eth0", "169.254.1.1", "10.0.0.1", "fd00::1"]),
)


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@given(st.lists(_ips, max_size=20), _ips, st.integers(1, 65535))
def test_property_a_peer_off_loopback_never_hears_of_loopback(hosts: list[str], peer: str, port: int) -> None:
    told = announce_to([_address(h, port) for h in hosts], peer=_address(peer, 9))
    assert len(told) <= MAX_ADDRESSES and len(set(told)) == len(told)
    assert all("%" not in a for a in told), "never our zone"
    if scope_of(peer) is not Scope.LOOPBACK:
        assert all(scope_of(a.rsplit(":", 1)[0].strip("[]")) is not Scope.LOOPBACK for a in told)
    # What we announce, a peer keeps (and in the same order).
    assert announced_addresses(told, peer=_address(peer, 9)) == tuple(told)


@given(st.lists(_ips, max_size=20), st.lists(_ips, max_size=6), st.integers(1, 65535))
def test_property_dial_order_only_reorders_and_scopes(hosts: list[str], local: list[str], port: int) -> None:
    given_order = [_address(h, port) for h in hosts]
    ordered = dial_order(given_order, local=local)
    assert len(set(ordered)) == len(ordered)
    zones = {h.split("%")[1] for h in local if "%" in h}
    given_normal = {_address(unmapped(h), port) for h in hosts}  # IPv4-mapped ones come out as IPv4
    for address in ordered:
        host = address.rsplit(":", 1)[0].strip("[]")
        ip = ipaddress.ip_address(host.split("%")[0])
        assert scope_of(host) is not None
        if address not in given_normal:  # only a zone-less link-local one, on one of our interfaces
            bare, _, zone = host.partition("%")
            assert _address(bare, port) in given_normal and ip.is_link_local and zone in zones


def test_public_api_is_honest() -> None:
    for name in addresses.__all__:
        assert hasattr(addresses, name), name
