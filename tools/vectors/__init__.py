"""The test vectors of docs/PROTOCOL.md, one module per part; tools/gen_vectors.py writes them.

The real machines and link pieces run on fixed inputs; every value they do not expose
is recomputed from the spec's formulas and checked against what they did.

May import: quicpair.actors, quicpair.protocol, quicpair.tools
"""

__all__: list[str] = []
