"""Check-ins → visits → trajectories in one vectorized pass, with a report of every count that changes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cluster import visit_spans, visit_starts
from .errors import EmptyInputError, TrajInputError
from .h3cells import check_resolution, encode_cells
from .report import PipelineReport
from .segment import US_PER_MINUTE, SegmentationConfig, filter_trajectories, trajectory_starts
from .validation import checkin_order

TRAJECTORY_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("traj_id", pa.int64()),
        ("cells", pa.list_(pa.uint64())),
        ("timestamps", pa.list_(pa.int64())),
        ("n_points", pa.list_(pa.int32())),
    ]
)


def _list_column(values: np.ndarray, offsets: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=type_))


def _nothing_left(report: PipelineReport) -> str:
    if report.points_read == 0:
        return (
            "No check-ins to build trajectories from: 0 rows read (a header-only file or an empty table). Check the "
            "file and the reader's column mapping."
        )
    reasons = ", ".join(f"{reason}={n:,}" for reason, n in report.points_dropped.items() if n)
    return (
        f"No check-ins left after cleaning: {report.points_read:,} row(s) read, all dropped ({reasons}). Check the "
        "file and the reader's column mapping (see the drop reasons); with invalid='raise' the first bad row is named."
    )


def build_trajectories(
    checkins: pa.Table,
    resolution: int = 8,
    window_minutes: float = 10.0,
    segmentation: SegmentationConfig | None = None,
    invalid: str = "raise",
    allow_empty: bool = False,
) -> tuple[pa.Table, PipelineReport]:
    """Clean, H3-encode, cluster into visits and segment into trajectories.

    Returns the trajectory table (see docs/design.md) and a `PipelineReport` whose counts add up. Raises
    `EmptyInputError` when no check-in survives cleaning: an empty corpus would only fail later, less clearly.
    `allow_empty=True` (one partition of a larger corpus, `tokenization_trajfm.prepare`) returns an empty table and
    the report of its drops instead.
    """
    resolution = check_resolution(resolution)
    if window_minutes < 0:
        raise TrajInputError(f"window_minutes must be >= 0, got {window_minutes}.")
    segmentation = segmentation or SegmentationConfig()
    report = PipelineReport(points_read=checkins.num_rows)
    clean = checkin_order(checkins, invalid=invalid)
    report.points_dropped = clean.drops
    report.points_valid = int(clean.user_codes.size)
    if report.points_valid == 0:
        if allow_empty:
            return TRAJECTORY_SCHEMA.empty_table(), report
        raise EmptyInputError(_nothing_left(report))
    user_codes, times = clean.user_codes, clean.times_us
    report.users = int(np.unique(user_codes).size)
    cells = encode_cells(clean.latitude, clean.longitude, resolution)

    first = visit_starts(cells, times, window_minutes * US_PER_MINUTE, users=user_codes)
    last, merged = visit_spans(first, cells.size)
    v_user, v_cell, v_start, v_end = user_codes[first], cells[first], times[first], times[last]
    report.visits = int(first.size)

    t_first = trajectory_starts(v_user, v_start, v_end, segmentation)
    table = assemble_trajectories(t_first, v_cell, v_start // 1_000_000, merged, segmentation, report,
                                  lambda firsts: clean.users.take(pa.array(v_user[firsts])))
    return table, report


def assemble_trajectories(t_first: np.ndarray, v_cell: np.ndarray, v_seconds: np.ndarray | None, merged: np.ndarray,
                          segmentation: SegmentationConfig, report: PipelineReport,
                          user_ids: Callable[[np.ndarray], pa.Array]) -> pa.Table:
    """Visits cut into trajectories (`t_first`: index of each trajectory's first visit) → the paper's filters, the
    kept counts in `report` (checked to add up) and the trajectory table. `v_seconds`: visit starts in epoch seconds
    (None: no times); `user_ids(first visits of the kept trajectories)` gives their user ids."""
    keep, report.trajectories_dropped = filter_trajectories(t_first, v_cell, merged, segmentation)
    report.trajectories_formed = int(t_first.size)
    report.trajectories_kept = int(keep.sum())
    lengths = np.diff(np.append(t_first, v_cell.size))
    visit_keep = np.repeat(keep, lengths)
    offsets = np.zeros(report.trajectories_kept + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=offsets[1:])
    users = user_ids(t_first[keep])
    report.visits_kept = int(visit_keep.sum())
    report.points_kept = int(merged[visit_keep].sum())
    report.users_kept = int(pc.count_distinct(users).as_py())
    report.check()
    times = (_list_column(v_seconds[visit_keep], offsets, pa.int64()) if v_seconds is not None else
             pa.nulls(report.trajectories_kept, pa.list_(pa.int64())))
    return pa.table(
        {
            "user_id": users,
            "traj_id": pa.array(np.arange(report.trajectories_kept, dtype=np.int64)),
            "cells": _list_column(v_cell[visit_keep], offsets, pa.uint64()),
            "timestamps": times,
            "n_points": _list_column(merged[visit_keep].astype(np.int32), offsets, pa.int32()),
        },
        schema=TRAJECTORY_SCHEMA,
    )
