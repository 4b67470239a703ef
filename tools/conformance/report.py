"""Check results and the table (or JSON) the kit prints: :class:`Report`.

Each check is one row: its section of the kit, its name (which says what the node
must do), the PROTOCOL.md section that requires it, and a status: ``pass``,
``fail``, ``skip`` (the kit could not run it, and says why; never counted as a
pass) or ``chose`` (where the spec lets a node choose: what this node chose).
Only ``fail`` makes the kit's exit status non-zero.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from .wire import Timeout

__all__ = ["Failed", "Report", "Result", "Skipped"]

PASS, FAIL, SKIP, CHOSE = "pass", "fail", "skip", "chose"
#: The choices reported by the check running in this task (asyncio copies the context per task).
_CHOICES: contextvars.ContextVar[list[Result] | None] = contextvars.ContextVar("choices", default=None)


class Failed(Exception):
    """The node did not do what the check requires; the message says what it did."""


class Skipped(Exception):
    """The check cannot run against this node (the message says why)."""


@dataclass(frozen=True, slots=True)
class Result:
    section: str
    check: str
    spec: str
    status: str
    detail: str
    seconds: float


class Report:
    """The results of one run, in the order the checks ran."""

    def __init__(self, *, check_timeout: float, verbose: bool = False) -> None:
        self.check_timeout = check_timeout
        self.verbose = verbose
        self.results: list[Result] = []

    def add(
        self, section: str, check: str, spec: str, status: str, detail: str, seconds: float = 0.0
    ) -> None:
        self.results.append(Result(section, check, spec, status, detail, round(seconds, 3)))

    def skip(self, section: str, check: str, spec: str, why: str) -> None:
        self.add(section, check, spec, SKIP, why)

    def chose(self, section: str, check: str, spec: str, what: str) -> None:
        """Report a choice; made inside a running check, it is listed right after that check's row."""
        choices = _CHOICES.get()
        if choices is not None:
            choices.append(Result(section, check, spec, CHOSE, what, 0.0))
        else:
            self.add(section, check, spec, CHOSE, what)

    async def run(
        self,
        section: str,
        check: str,
        spec: str,
        body: Callable[[], Awaitable[str | None]],
        timeout: float | None = None,
    ) -> bool:
        """Run one check, bounded by ``timeout`` (default: the per-check timeout); True if it passed."""
        rows = await self._run_one(section, check, spec, body, timeout)
        self.results.extend(rows)
        return rows[0].status == PASS

    async def run_together(
        self, checks: list[tuple[str, str, str, Callable[[], Awaitable[str | None]]]]
    ) -> None:
        """Run checks that mostly wait at the same time; their rows keep the given order."""
        rows = await asyncio.gather(*(self._run_one(*check, None) for check in checks))
        for found in rows:
            self.results.extend(found)

    async def _run_one(
        self,
        section: str,
        check: str,
        spec: str,
        body: Callable[[], Awaitable[str | None]],
        timeout: float | None,
    ) -> list[Result]:
        limit = self.check_timeout if timeout is None else timeout
        started = time.monotonic()
        choices: list[Result] = []
        token = _CHOICES.set(choices)
        try:
            status, detail = await self._outcome(body, limit)
        finally:
            _CHOICES.reset(token)
        row = Result(section, check, spec, status, detail, round(time.monotonic() - started, 3))
        return [row, *choices]

    async def _outcome(self, body: Callable[[], Awaitable[str | None]], limit: float) -> tuple[str, str]:
        try:
            detail = await asyncio.wait_for(body(), limit)
        except Failed as exc:
            return FAIL, str(exc)
        except Skipped as exc:
            return SKIP, str(exc)
        except (Timeout, TimeoutError) as exc:
            return FAIL, f"timeout: {str(exc) or f'the check did not finish within {limit:g} s'}"
        except Exception as exc:  # a kit error is reported as a failed check, never a crash
            text = f"kit error: {type(exc).__name__}: {exc}"
            if self.verbose:
                text += "\n" + traceback.format_exc()
            return FAIL, text
        return PASS, detail or ""

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == FAIL]

    def counts(self) -> dict[str, int]:
        counts = {PASS: 0, FAIL: 0, SKIP: 0, CHOSE: 0}
        for result in self.results:
            counts[result.status] += 1
        return counts

    def to_json(self, target: dict[str, str]) -> str:
        return json.dumps(
            {"target": target, "counts": self.counts(), "results": [asdict(r) for r in self.results]},
            indent=1,
        )

    def table(self, width: int = 110) -> str:
        """The results as a text table, by section."""
        lines: list[str] = []
        name_width = min(max((len(r.check) for r in self.results), default=10), 58)
        section = None
        for r in self.results:
            if r.section != section:
                section = r.section
                lines += ["", f"== {section}"]
            mark = {PASS: "PASS", FAIL: "FAIL", SKIP: "skip", CHOSE: "chose"}[r.status]
            head = f"  {mark:<5} {r.check:<{name_width}}  §{r.spec:<6} "
            detail = r.detail.splitlines()[0] if r.detail else ""
            room = max(width - len(head), 20)
            lines.append(head + (detail if len(detail) <= room else detail[: room - 1] + "…"))
            if r.status == FAIL and r.detail and len(r.detail.splitlines()[0]) > room:
                lines.append(f"        {r.detail}")
        counts = self.counts()
        lines += [
            "",
            f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped, "
            f"{counts[CHOSE]} choices reported",
        ]
        return "\n".join(lines)
