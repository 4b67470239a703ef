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

    #: Sources handed out so far by :meth:`claim_source`.
    sources: int = 0

    def claim_source(self) -> str | None:
        """A fresh local address for a connection that may cost a failed pairing claim.

        A node bounds failed claims per source address (section 13: the reference allows
        8, then one per 6 s, and answers BUSY beyond). Against a node on IPv4 loopback the
        kit spreads such connections over 127.0.0.2, 127.0.0.3, ... (all loopback), so
        that each check hears the codebook's answer, not the limiter's. Elsewhere: None.
        """
        if not self.target.address[0].startswith("127."):
            return None
        self.sources += 1
        return f"127.0.{self.sources // 250}.{self.sources % 250 + 2}"

    def need_paired(self) -> Paired:
        if self.paired is None:
            raise Skipped("needs a pairing with the node (the pairing checks' first one did not succeed)")
        return self.paired
