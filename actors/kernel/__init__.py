"""The runtime kernel: the event-loop thread, actors on it, supervision, backoff, counters, logs.

Owns no resource of a node; every part of the runtime is built on it: the
asyncio loop thread (``loop``), pykka actors whose inbox drains on that loop
(``loopactor``), exit notices and OTP supervision (``supervision``,
``supervisor``), Akka's backoff (``backoff``), counters and structured logs.
It knows nothing of QUIC, pairing or links.

May import: quicpair.protocol.errors
"""

__all__: list[str] = []
