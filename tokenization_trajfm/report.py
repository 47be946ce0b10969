"""What the pipeline kept and dropped, step by step, with counts that add up."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class PipelineReport:
    """Counts between steps: points → valid points → visits → trajectories (→ tokens).

    Every drop is counted under exactly one reason, so `points_read == points_valid + sum(points_dropped)` and
    `trajectories_formed == trajectories_kept + sum(trajectories_dropped)` always hold (see `check`).
    """

    points_read: int = 0
    points_dropped: dict[str, int] = field(default_factory=dict)
    points_valid: int = 0
    users: int = 0
    visits: int = 0
    trajectories_formed: int = 0
    trajectories_dropped: dict[str, int] = field(default_factory=dict)
    trajectories_kept: int = 0
    visits_kept: int = 0
    points_kept: int = 0
    users_kept: int = 0
    tokens: int | None = None

    def check(self) -> None:
        """Raise if the counts do not add up (a bug, never a data problem)."""
        problems = []
        if self.points_read != self.points_valid + sum(self.points_dropped.values()):
            problems.append("points_read != points_valid + points dropped")
        if self.trajectories_formed != self.trajectories_kept + sum(self.trajectories_dropped.values()):
            problems.append("trajectories_formed != trajectories_kept + trajectories dropped")
        if not self.points_kept <= self.points_valid or not self.visits_kept <= self.visits:
            problems.append("kept more than there was")
        if problems:
            raise AssertionError("Pipeline report does not add up: " + "; ".join(problems))

    @classmethod
    def merge(cls, reports: list[PipelineReport]) -> PipelineReport:
        """The report of a corpus built in parts with disjoint users (partitions): every count is a sum."""
        total = cls()
        for report in reports:
            for name, value in vars(report).items():
                if isinstance(value, dict):
                    counts = getattr(total, name)
                    for reason, n in value.items():
                        counts[reason] = counts.get(reason, 0) + n
                elif value is not None:
                    setattr(total, name, (getattr(total, name) or 0) + value)
        total.check()
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        def drops(counts: dict[str, int]) -> str:
            return ", ".join(f"{reason}={n:,}" for reason, n in counts.items() if n) or "none"

        merged = self.points_valid - self.visits
        dropped_trajectories = sum(self.trajectories_dropped.values())
        lines = [
            f"points read           {self.points_read:>12,}",
            f"  dropped             {sum(self.points_dropped.values()):>12,}  ({drops(self.points_dropped)})",
            f"points valid          {self.points_valid:>12,}  from {self.users:,} users",
            f"visits (clustered)    {self.visits:>12,}  ({merged:,} points merged into earlier visits)",
            f"trajectories formed   {self.trajectories_formed:>12,}",
            f"  dropped             {dropped_trajectories:>12,}  ({drops(self.trajectories_dropped)})",
            f"trajectories kept     {self.trajectories_kept:>12,}  ({self.visits_kept:,} visits, "
            f"{self.points_kept:,} points, {self.users_kept:,} users)",
        ]
        if self.tokens is not None:
            lines.append(f"sub-hash tokens       {self.tokens:>12,}")
        return "\n".join(lines)
