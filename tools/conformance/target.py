"""The node under test, and the only two things the kit asks of it outside the wire.

:class:`Target` is what the person running the kit said about the node: its
address and NodeId, and optionally two shell commands, the node's own CLI:

``--offer-command``
    makes the node open a pairing code and print it (the code, or a pairing URI
    that carries it; a JSON line with a ``uri`` or ``code`` field works too). The
    command keeps running while the code is in use (our CLI's ``pair`` does: the
    code lives as long as the command waits); the kit ends it (SIGTERM to its
    process group) when done with the code.
``--join-command``
    makes the node join a code the kit offers; ``{uri}``, ``{code}``,
    ``{address}`` and ``{node}`` are replaced by the kit's pairing URI, bare code,
    listening address and NodeId (each shell-quoted).

Nothing else of the node is touched: no file, no control socket, no log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import tempfile
from dataclasses import dataclass
from typing import Any

from quicpair.protocol.codes import PairingUri, parse_code_or_uri
from quicpair.protocol.errors import CodeFormatError
from quicpair.protocol.identity import Identity, NodeId

from .report import Failed, Skipped

__all__ = ["Command", "Offer", "Target", "lower_identity"]

_URI = re.compile(r"quicpair:pair\?[^\s'\"]+", re.IGNORECASE)
_CODE = re.compile(r"\b\d{1,4}-[a-z]{3,}-[a-z]{3,}-[a-z]{3,}\b", re.IGNORECASE)
#: How long an offer command may take to print its code.
OFFER_WAIT = 15.0


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    node_id: NodeId
    address: tuple[Any, ...]
    offer_command: str | None = None
    join_command: str | None = None
    #: The node's code lifetime, when the person knows it is short enough to wait for.
    code_expiry: float | None = None
    #: The node's counted attempts per code (section 10.7; default 3).
    max_attempts: int = 3
    #: Where the kit listens when the node joins its codes.
    kit_host: str = "127.0.0.1"

    @property
    def shown(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: Fresh keys tried for a NodeId below the node's: half of them are, unless the node's is tiny.
_LOWER_TRIES = 100_000


def lower_identity(than: NodeId) -> Identity:
    """A fresh identity whose NodeId is below ``than``: on a link with it, the kit dials (12.1).

    Skipped for a node whose NodeId is so low that none was found (the node would have to
    dial the kit, which this kit does not test).
    """
    for _ in range(_LOWER_TRIES):
        identity = Identity.generate()
        if identity.node_id < than:
            return identity
    raise Skipped("the node's NodeId is below every NodeId the kit drew: it would dial the kit (12.1)")


class Command:
    """A shell command the kit started: its process group, its stdout lines, its end."""

    def __init__(self, process: asyncio.subprocess.Process, errors: Any) -> None:
        self.process = process
        self._errors = errors
        self.lines: list[str] = []

    @classmethod
    async def start(cls, command: str) -> Command:
        errors = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed in end())
        process = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            start_new_session=True,  # its own process group: ended as a whole
        )
        return cls(process, errors)

    async def line(self, timeout: float) -> str | None:
        """The next stdout line; None at the end of output. TimeoutError past ``timeout``."""
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not raw:
            return None
        text = raw.decode("utf-8", "replace").rstrip("\n")
        self.lines.append(text)
        return text

    async def wait(self, timeout: float) -> int:
        """Its exit status, waiting up to ``timeout`` (the rest of stdout is read meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.line(max(deadline - loop.time(), 0.001)) is not None:
            pass
        return await asyncio.wait_for(self.process.wait(), max(deadline - loop.time(), 0.001))

    def stderr_tail(self, size: int = 600) -> str:
        self._errors.seek(0)
        text: str = self._errors.read()
        return " ".join(text[-size:].split())

    async def end(self) -> None:
        """SIGTERM to its process group, SIGKILL after 5 s; always reaped."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        self._errors.close()


def _offered(line: str) -> PairingUri | None:
    with contextlib.suppress(ValueError):
        data = json.loads(line)
        if isinstance(data, dict):
            for key in ("uri", "code"):
                if isinstance(data.get(key), str):
                    with contextlib.suppress(CodeFormatError):
                        return parse_code_or_uri(data[key])
    for pattern in (_URI, _CODE):
        match = pattern.search(line)
        if match:
            with contextlib.suppress(CodeFormatError):
                return parse_code_or_uri(match.group(0))
    return None


class Offer:
    """A code the node offers (its offer command still running)."""

    def __init__(self, command: Command, offered: PairingUri) -> None:
        self.command = command
        self.offered = offered

    @property
    def code(self) -> Any:
        return self.offered.code

    @classmethod
    async def open(cls, target: Target) -> Offer:
        """Run the offer command until it printed a code. Skipped without one; Failed-like errors raise."""
        if not target.offer_command:
            raise Skipped("no --offer-command: the kit cannot make the node offer a code")
        command = await Command.start(target.offer_command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OFFER_WAIT
        try:
            while True:
                line = await command.line(max(deadline - loop.time(), 0.001))
                if line is None:
                    status = await command.wait(5.0)
                    raise Failed(
                        f"the offer command ended (status {status}) without printing a code: "
                        f"{command.stderr_tail()}"
                    )
                offered = _offered(line)
                if offered is not None and offered.node not in (None, target.node_id):
                    raise Failed(f"the offer command printed a code of another node ({offered.node})")
                if offered is not None:
                    return cls(command, offered)
        except BaseException:
            await command.end()
            raise

    async def close(self) -> None:
        await self.command.end()


def join_command_line(target: Target, uri: str, code: str, address: str, node: NodeId) -> str:
    if not target.join_command:
        raise Skipped("no --join-command: the kit cannot make the node join a code")
    values = {"uri": uri, "code": code, "address": address, "node": node.text}
    return target.join_command.format(**{k: shlex.quote(v) for k, v in values.items()})
