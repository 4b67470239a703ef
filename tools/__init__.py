"""quicpair's tools: the command line, the daemon, the demo, the node host, benchmarks.

Each module is an entry point (``python -m quicpair.tools.<name>``) or serves one;
the package itself exports nothing.

May import: quicpair.actors, quicpair.config, quicpair.protocol, quicpair.tools
"""

__all__: list[str] = []
