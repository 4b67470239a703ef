"""quicpair's tools: the command line, the daemon, the demo, the node host, benchmarks.

Each module is an entry point (``python -m tools.<name>``) or serves one;
the package itself exports nothing.
"""

__all__: list[str] = []
