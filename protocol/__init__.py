"""quicpair's protocol core: sans-I/O, bytes and events in, bytes and events out.

Nothing here opens a socket, starts a thread or reads the clock: time and
randomness are parameters. See docs/PROTOCOL.md for the wire specification.

May import: nothing of quicpair outside protocol (and no asyncio, threading, socket,
selectors, pykka, aioquic or zeroconf: tests/test_layers.py)
"""

# The public API lives in the modules (protocol.pairing, protocol.codes, ...),
# each with its own __all__; the package itself exports nothing.
__all__: list[str] = []
