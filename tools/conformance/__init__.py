"""The conformance kit: checks a running quicpair node, over the wire only, against docs/PROTOCOL.md.

    python -m quicpair.tools.conformance --address HOST:PORT --node-id NODEID \\
        [--offer-command CMD] [--join-command CMD] [--code-expiry S] [--json]

Modules, one idea each:

- ``cli``: the command line, the run order, the exit status
- ``report``: check results, the table and the JSON
- ``target``: the node under test and the two commands the kit may run (offer, join)
- ``wire``: the kit's QUIC client (aioquic), ordinary and deviant connections
- ``joining`` / ``linking``: the kit as a pairing joiner and as a link dialer, by hand
- ``kit``: what one run's checks share
- ``admission``, ``framing``, ``pairing``, ``link``, ``initiating``: the checks, by section

docs/CONFORMANCE.md lists every check, what it sends and what it expects.

May import: quicpair.actors.transport, quicpair.protocol, quicpair.tools.conformance
"""

__all__: list[str] = []
