"""Cut each user's visits into trajectories and apply the paper's filters, counting every drop by reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TrajInputError

TRAJECTORY_DROP_REASONS = ("too_few_cells", "too_few_points")
US_PER_MINUTE = 60_000_000
US_PER_DAY = 86_400_000_000


@dataclass
class SegmentationConfig:
    """How visits become trajectories.

    A new trajectory starts at a new user, after a gap longer than `max_gap_minutes` between one visit's end and the
    next visit's start (None: never), and, with `split_by_day`, when the local calendar day changes
    (`utc_offset_minutes` gives local time). Trajectories longer than `max_visits` are cut into consecutive pieces.
    The paper's filters: fewer than `min_cells` distinct cells or fewer than `min_points` raw points → dropped.
    """

    max_gap_minutes: float | None = 24 * 60
    split_by_day: bool = False
    max_visits: int | None = None
    min_cells: int = 3
    min_points: int = 10
    utc_offset_minutes: int = 0

    def __post_init__(self):
        if self.max_gap_minutes is not None and self.max_gap_minutes <= 0:
            raise TrajInputError(f"max_gap_minutes must be positive or None, got {self.max_gap_minutes}.")
        if self.max_visits is not None and self.max_visits < 1:
            raise TrajInputError(f"max_visits must be at least 1 or None, got {self.max_visits}.")
        if self.min_cells < 1 or self.min_points < 1:
            raise TrajInputError("min_cells and min_points must be at least 1.")


def trajectory_starts(
    users: np.ndarray, t_start: np.ndarray, t_end: np.ndarray, config: SegmentationConfig
) -> np.ndarray:
    """Indices of the first visit of each trajectory (visits sorted by user, then time; times in µs)."""
    n = users.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = users[1:] != users[:-1]
    if config.max_gap_minutes is not None:
        new[1:] |= (t_start[1:] - t_end[:-1]) > config.max_gap_minutes * US_PER_MINUTE
    if config.split_by_day:
        day = (t_start + config.utc_offset_minutes * US_PER_MINUTE) // US_PER_DAY
        new[1:] |= day[1:] != day[:-1]
    starts = np.flatnonzero(new)
    if config.max_visits is None:
        return starts
    trajectory = np.cumsum(new) - 1
    rank = np.arange(n) - starts[trajectory]
    new |= (rank % config.max_visits) == 0
    return np.flatnonzero(new)


def filter_trajectories(
    starts: np.ndarray, cells: np.ndarray, n_points: np.ndarray, config: SegmentationConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean keep-mask per trajectory and drop counts (each trajectory under its first failing reason)."""
    n_visits = cells.size
    trajectory = np.repeat(np.arange(starts.size), np.diff(np.append(starts, n_visits)))
    points = np.add.reduceat(n_points, starts) if starts.size else np.empty(0, dtype=np.int64)
    _, cell_codes = np.unique(cells, return_inverse=True)
    pairs = np.unique(trajectory.astype(np.int64) * (int(cell_codes.max(initial=0)) + 1) + cell_codes)
    distinct = np.bincount(pairs // (int(cell_codes.max(initial=0)) + 1), minlength=starts.size)
    few_cells = distinct < config.min_cells
    few_points = (points < config.min_points) & ~few_cells
    drops = {"too_few_cells": int(few_cells.sum()), "too_few_points": int(few_points.sum())}
    return ~(few_cells | few_points), drops
