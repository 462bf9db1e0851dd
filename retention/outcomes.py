"""What became of a run's actions: the executor records them, the report prints them.

One small module both import, so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retention.planner import Action

PLANNED, DELETED, FAILED, SKIPPED = "planned", "deleted", "failed", "skipped"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one action in a run."""

    status: str  # deleted, failed or skipped
    reason: str | None = None  # for skipped and failed: why
    bytes: int = 0  # for deleted: what it really freed (0 when it was already gone)


OutcomeKey = tuple[str, str, str]  # (registry, repository, digest)


def outcome_key(action: Action) -> OutcomeKey:
    return (action.registry, action.repository, action.digest)


@dataclass(frozen=True, slots=True)
class RunError:
    """A problem beyond single deletions, in one repository."""

    registry: str
    repository: str
    message: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}: {self.message}"
