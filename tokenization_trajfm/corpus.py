"""Corpus preparation shared by the scripts: load check-ins, build trajectories, split users reproducibly.

Pre-training and fine-tuning must never share users, and a run must be repeatable, so users are split by a seeded
permutation of the sorted distinct user ids: the same data and seed always give the same split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .pipeline import build_trajectories
from .report import PipelineReport
from .segment import SegmentationConfig

SPLIT_FILE = "trajfm_split.json"


def load_checkins(
    data: str | None = None,
    reader: str = "auto",
    synthetic_users: int = 300,
    synthetic_days: int = 42,
    seed: int = 0,
    **mapping,
) -> pa.Table:
    """Check-ins from a file (any reader of `tokenization_trajfm.readers`) or, with no file, the embedded default:
    a seeded synthetic city (`tokenization_trajfm.synthetic`)."""
    if data is None:
        from .synthetic import generate_checkins

        return generate_checkins(n_users=synthetic_users, days=synthetic_days, seed=seed)
    from .readers import read_checkins

    return read_checkins(data, reader=reader, **mapping)


def seeded_split(items: Iterable, fraction: float, seed: int, what: str = "items") -> tuple[list, list]:
    """Seeded split of distinct `items` into (rest, held out), `fraction` of them (at least one each side) held out.

    A seeded permutation of the sorted distinct items: the same items and seed always give the same split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The held-out fraction of {what} must be in (0, 1), got {fraction}.")
    distinct = sorted(set(items))
    if len(distinct) < 2:
        raise ValueError(f"Need at least 2 {what} to split, got {len(distinct)}.")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_held = min(max(1, round(fraction * len(distinct))), len(distinct) - 1)
    held = sorted(distinct[i] for i in order[:n_held])
    held_set = set(held)
    return [item for item in distinct if item not in held_set], held


def split_users(users: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of distinct users into (rest, held out) with `fraction` of them held out (at least one)."""
    return seeded_split(users, fraction, seed, "users")


def select_users(table: pa.Table, users: Iterable[str]) -> pa.Table:
    """Rows of `users` (compared as strings, whatever the column's type)."""
    user_ids = table["user_id"].cast(pa.string())
    return table.filter(pc.is_in(user_ids, value_set=pa.array([str(u) for u in users], type=pa.string())))


@dataclass
class UserSplit:
    """Which users pre-training may see; the rest are held out for fine-tuning. Saved next to checkpoints."""

    seed: int
    heldout_fraction: float
    heldout_users: list[str]

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / SPLIT_FILE
        path.write_text(
            json.dumps(
                {"seed": self.seed, "heldout_fraction": self.heldout_fraction, "heldout_users": self.heldout_users},
                indent=1,
            )
        )

    @classmethod
    def load(cls, directory: str | Path) -> UserSplit | None:
        path = Path(directory) / SPLIT_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return cls(seed=raw["seed"], heldout_fraction=raw["heldout_fraction"], heldout_users=raw["heldout_users"])


def trajectories_with_report(
    checkins: pa.Table, resolution: int, window_minutes: float, segmentation: SegmentationConfig, invalid: str
) -> tuple[pa.Table, PipelineReport]:
    """`build_trajectories`, with an error that says what to change when nothing survives."""
    table, report = build_trajectories(checkins, resolution, window_minutes, segmentation, invalid)
    if table.num_rows == 0:
        raise ValueError(
            f"No trajectory survived segmentation and filtering:\n{report}\nLower min_points/min_cells or raise "
            "max_gap_minutes."
        )
    return table, report
