"""Report bad input without stopping the run.

Readers and extractors never raise on one bad record: they add a :class:`Problem`
(what was wrong, where, and how to fix it), skip the record, and go on. The
caller decides how loudly to show the collected problems.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

log = logging.getLogger("emit")


class EmitError(Exception):
    """A whole input is unusable (not one record): the message names the file and the fix."""


@dataclass(frozen=True)
class Problem:
    where: str  # file (or folder) the problem was found in
    record: str  # product id, image name or line number inside it
    what: str  # what is wrong
    fix: str  # what the user can do about it

    def __str__(self) -> str:
        return f"{self.where}: {self.record}: {self.what} -- fix: {self.fix}"


class ProblemLog:
    """Collects problems; each one is also logged as a warning so it is never silent."""

    def __init__(self, *, echo: bool = True) -> None:
        self.items: list[Problem] = []
        self.echo = echo

    def add(self, where: object, record: object, what: str, fix: str) -> Problem:
        problem = Problem(str(where), str(record), what, fix)
        self.items.append(problem)
        if self.echo:
            log.warning("%s", problem)
        return problem

    def extend(self, other: ProblemLog) -> None:
        self.items.extend(other.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def to_json(self) -> list[dict[str, str]]:
        return [asdict(p) for p in self.items]

    def summary(self, limit: int = 10) -> str:
        if not self.items:
            return "no problems"
        lines = [f"{len(self.items)} problem(s):"]
        lines += [f"  {p}" for p in self.items[:limit]]
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more")
        return "\n".join(lines)
