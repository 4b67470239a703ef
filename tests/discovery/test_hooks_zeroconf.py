"""The zeroconf internals actors/discovery/mdns.py relies on, one test each.

zeroconf is pinned to exactly 0.154.0 (setup.cfg). Beyond its public API,
mdns.py uses: the ``DNSRecord``/``DNSText`` classes from ``zeroconf._dns`` (not
in ``__all__``), the instance's ``registry`` (``async_add/update/remove``: what
queries are answered from), ``generate_service_broadcast`` and
``DNSOutgoing.add_answer_at_time`` (announcements with goodbyes in the same
packet), ``async_update_interfaces``, and the cache (``get_all_by_details``, a
record's ``created``/``ttl``/``is_expired``) to pick the newest TXT. If a
release changes one, these fail LOUDLY naming it: fix mdns.py before bumping.

One real AsyncZeroconf on the test's own loop, bound to 127.0.0.1; nothing is
registered with it and nothing is sent (no ``async_send``, no query).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zeroconf
from zeroconf import DNSOutgoing, ServiceInfo, current_time_millis
from zeroconf.asyncio import AsyncZeroconf

PINNED = "0.154.0"
TYPE = "_quicpair._udp.local."
NAME = f"hooktest.{TYPE}"
TYPE_TXT, CLASS_IN = 16, 1


@contextmanager
def hook(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # AssertionError included
        pytest.fail(
            f"zeroconf internal {name} is not what actors/discovery/mdns.py was written against "
            f"(zeroconf {PINNED}; installed {zeroconf.__version__}): {type(exc).__name__}: {exc}",
            pytrace=False,
        )


def info(text: bytes = b"\x03v=1", port: int = 4433) -> ServiceInfo:
    server = "hooktest.local."
    address = bytes([192, 0, 2, 7])
    return ServiceInfo(TYPE, NAME, port=port, properties=text, addresses=[address], server=server)


def with_zeroconf(body: Any) -> None:
    async def run() -> None:
        azc = AsyncZeroconf(interfaces=["127.0.0.1"])
        try:
            await body(azc)
        finally:
            await azc.async_close()

    asyncio.run(run())


def test_zeroconf_is_the_pinned_version() -> None:
    assert zeroconf.__version__ == PINNED, "mdns.py's hooks were checked against zeroconf 0.154.0 only"


def test_hook_dns_record_classes() -> None:
    with hook("zeroconf._dns.DNSRecord / DNSText"):
        from zeroconf._dns import DNSRecord, DNSText

        record = DNSText(NAME, TYPE_TXT, CLASS_IN, 120, b"\x03v=1")
        assert isinstance(record, DNSRecord)
        assert record.text == b"\x03v=1" and record.ttl == 120
        assert record.created <= current_time_millis()
        assert not record.is_expired(current_time_millis())
        assert record.is_expired(current_time_millis() + 121_000)


def test_hook_registry_answers_from_what_is_added() -> None:
    async def body(azc: AsyncZeroconf) -> None:
        with hook("Zeroconf.registry.async_add/async_update/async_remove"):
            registry = azc.zeroconf.registry
            first, second = info(port=1000), info(port=2000)
            registry.async_add(first)
            assert registry.async_get_info_name(NAME.lower()).port == 1000
            registry.async_update(second)
            assert registry.async_get_info_name(NAME.lower()).port == 2000
            registry.async_remove(second)
            assert registry.async_get_info_name(NAME.lower()) is None

    with_zeroconf(body)


def test_hook_service_broadcast_and_goodbyes_in_one_packet() -> None:
    async def body(azc: AsyncZeroconf) -> None:
        with hook("Zeroconf.generate_service_broadcast / DNSOutgoing.add_answer_at_time"):
            old, new = info(port=1000), info(port=2000)
            out = azc.zeroconf.generate_service_broadcast(new, None)
            assert isinstance(out, DNSOutgoing)
            out.add_answer_at_time(old.dns_service(0), 0)  # a goodbye: TTL 0 (RFC 6762 10.1)
            packets = out.packets()
            assert packets and all(isinstance(p, bytes) for p in packets)
            assert old.dns_service(0).ttl == 0 and old.dns_text(0).ttl == 0
            assert all(r.ttl == 0 for r in old.dns_addresses(0))

    with_zeroconf(body)


def test_hook_cache_lookup_by_details_and_load_from_cache() -> None:
    async def body(azc: AsyncZeroconf) -> None:
        with hook("Zeroconf.cache.get_all_by_details / ServiceInfo.load_from_cache"):
            from zeroconf._dns import DNSText

            zc = azc.zeroconf
            published = info(port=4433)
            zc.cache.async_add_records(
                [published.dns_service(), published.dns_text(), *published.dns_addresses()]
            )
            texts = list(zc.cache.get_all_by_details(NAME, TYPE_TXT, CLASS_IN))
            assert [type(t) for t in texts] == [DNSText] and texts[0].text == published.text
            loaded = ServiceInfo(TYPE, NAME)
            assert loaded.load_from_cache(zc)
            assert loaded.port == 4433 and loaded.parsed_scoped_addresses() == ["192.0.2.7"]

    with_zeroconf(body)


def test_hook_update_interfaces_exists_as_a_coroutine() -> None:
    with hook("AsyncZeroconf.async_update_interfaces"):
        method = AsyncZeroconf.async_update_interfaces
        assert inspect.iscoroutinefunction(method)
        assert "interfaces" in inspect.signature(method).parameters
