"""What the checks of one run share: :class:`Kit` (the target, the report, the pairings made)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .joining import Paired
from .report import Report, Skipped
from .target import Target

__all__ = ["Kit"]


@dataclass
class Kit:
    target: Target
    report: Report
    #: How long the kit waits for each answer of the node (one message, one close).
    step: float = 5.0
    #: The pairing the kit made as joiner (the link checks use it).
    paired: Paired | None = None
    #: Pairings the kit made as initiator (the node joined); unpaired at the end.
    initiated: list[Paired] = field(default_factory=list)

    def need_paired(self) -> Paired:
        if self.paired is None:
            raise Skipped("needs a pairing with the node (the pairing checks' first one did not succeed)")
        return self.paired
