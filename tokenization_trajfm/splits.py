"""Given splits: `--train_file/--validation_file/--test_file` or a `datasets` source (`--dataset_name`), read with
`datasets.load_dataset` as transformers' run_mlm.py does, and turned into trajectory tables (docs/design.md).

Each split holds one of two layouts:

* **points** (CSV, Parquet, JSON): one row per point. With `trajectory_col`, the rows of one (user, trajectory id)
  form one trajectory, in file order (no re-sorting, no gap segmentation: the file decides what a trajectory is);
  without it, points go through the ordinary pipeline (clean, sort by time, cluster, segment). Consecutive points in
  the same cell merge into one visit (within `window_minutes` when times are known).
* **trajectories** (Parquet, JSON, datasets): one row per trajectory with a `cells` list (H3 integers or hex strings)
  and, optionally, a `timestamps` list (epoch seconds).

Time is a time column (as `--reader table`: `time_col`, `time_format` / `time_unit`, `timezone`), or **weekday and
hour only** (`weekday_col` 0-6 with Monday = 0, `hour_col` 0-23): each point then gets the time of that hour in a
reference week (Monday 1970-01-05, shifted by `utc_offset_minutes` so that the tokenizer's local hour of week is the
file's), a week later each time the hour of week goes back inside a trajectory. The hour-of-week feature is exact; the
gap feature has hour resolution. With no time at all, visits have no timestamps (hour and gap features are 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from .cluster import visit_spans, visit_starts
from .errors import CheckinReadError, EmptyInputError
from .h3cells import cell_resolution_check, cells_from_any, encode_cells
from .pipeline import TRAJECTORY_SCHEMA, assemble_trajectories, build_trajectories
from .readers import _Ctx, _to_float, _to_timestamp, _to_user_id, checkins_from_arrays
from .report import PipelineReport
from .schema import LATITUDE, LONGITUDE, TIMESTAMP, USER_ID
from .segment import US_PER_MINUTE, SegmentationConfig

SPLITS = ("train", "validation", "test")
#: `datasets.load_dataset` builder of each file extension (compression suffixes are skipped).
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                 ".pq": "parquet"}
#: 1970-01-05 00:00 UTC, a Monday: the reference week of weekday/hour times.
REFERENCE_MONDAY = 4 * 86_400
SECONDS_PER_WEEK = 7 * 86_400


def file_builder(path: str) -> str:
    """The `load_dataset` builder of a split file, from its extension (`x.csv.gz` is CSV)."""
    suffixes = [s for s in Path(path).suffixes if s.lower() not in (".gz", ".bz2", ".xz", ".zst")]
    builder = FILE_BUILDERS.get(suffixes[-1].lower()) if suffixes else None
    if builder is None:
        raise ValueError(f"{path}: unknown file type; split files are CSV (.csv), JSON (.json/.jsonl) or Parquet "
                         "(.parquet), optionally gzipped.")
    return builder


def load_split_datasets(files: dict[str, str], dataset_name: str | None, dataset_config_name: str | None,
                        separator: str | None = None) -> dict[str, Any]:
    """The given splits as `datasets.Dataset`s: files by extension, or `load_dataset(dataset_name, config)`."""
    import datasets

    if dataset_name is not None:
        loaded = datasets.load_dataset(dataset_name, dataset_config_name)
        return {name: loaded[name] for name in SPLITS if name in loaded}
    builders = {file_builder(path) for path in files.values()}
    if len(builders) > 1:
        raise ValueError(f"Split files of different types ({', '.join(sorted(builders))}): give them all as CSV, "
                         "JSON or Parquet.")
    builder = builders.pop()
    kwargs = {"sep": separator} if builder == "csv" and separator else {}
    return dict(datasets.load_dataset(builder, data_files=files, **kwargs))


def _points(table: pa.Table, where: str, mapping: dict[str, str | None]) -> tuple[pl.DataFrame, _Ctx]:
    """user, latitude, longitude and (if known) timestamp of a points table, parsed with the readers' errors."""
    frame = pl.from_arrow(table)
    ctx = _Ctx(where)
    names = {"user_col": USER_ID, "lat_col": LATITUDE, "lon_col": LONGITUDE}
    columns = {key: mapping.get(key) or default for key, default in names.items()}
    missing = [c for c in columns.values() if c not in frame.columns]
    if missing:
        raise CheckinReadError(f"{where}: missing column(s) {missing}; found {frame.columns}. Map them with "
                               "--user_col (or --label_column) / --lat_col / --lon_col.")
    out = pl.DataFrame({
        USER_ID: _to_user_id(frame[columns["user_col"]], columns["user_col"], ctx),
        LATITUDE: _to_float(frame[columns["lat_col"]], columns["lat_col"], ctx),
        LONGITUDE: _to_float(frame[columns["lon_col"]], columns["lon_col"], ctx),
    })
    time_col = mapping.get("time_col") or (TIMESTAMP if TIMESTAMP in frame.columns and not mapping.get("weekday_col")
                                           else None)
    if time_col is not None:
        if time_col not in frame.columns:
            raise CheckinReadError(f"{where}: no time column {time_col!r}; found {frame.columns}.")
        out = out.with_columns(_to_timestamp(frame[time_col], time_col, ctx, time_format=mapping.get("time_format"),
                                             time_unit=mapping.get("time_unit"),
                                             timezone=mapping.get("timezone") or "UTC").alias(TIMESTAMP))
    for key in ("trajectory_col", "weekday_col", "hour_col"):
        column = mapping.get(key)
        if column is not None:
            if column not in frame.columns:
                raise CheckinReadError(f"{where}: no column {column!r} (--{key}); found {frame.columns}.")
            out = out.with_columns(frame[column].alias(key))
    return out, ctx


def _hour_of_week(frame: pl.DataFrame, ctx: _Ctx) -> np.ndarray:
    """weekday * 24 + hour, each checked (weekday 0-6, Monday = 0; hour 0-23), naming the first bad row."""
    values = {}
    for key, limit in (("weekday_col", 7), ("hour_col", 24)):
        raw = frame[key]
        number = raw.cast(pl.Float64, strict=False)
        bad = number.is_null() | (number != number.floor()) | (number < 0) | (number >= limit)
        if bad.any():
            raise ctx.fail(key, bad, raw, f"expected a whole number in 0..{limit - 1} "
                           + ("(Monday = 0; a day count is no weekday)" if limit == 7 else "") + ", got")
        values[key] = number.cast(pl.Int64).to_numpy()
    return values["weekday_col"] * 24 + values["hour_col"]


def _week_times(hour_of_week: np.ndarray, codes: np.ndarray, utc_offset_minutes: int) -> np.ndarray:
    """Epoch seconds in the reference week (a week later at each step back of the hour of week in a trajectory)."""
    back = np.zeros(codes.size, dtype=np.int64)
    back[1:] = (hour_of_week[1:] < hour_of_week[:-1]) & (codes[1:] == codes[:-1])
    weeks = np.cumsum(back)
    first = np.flatnonzero(np.append(True, codes[1:] != codes[:-1]))
    weeks -= np.repeat(weeks[first], np.diff(np.append(first, codes.size)))
    return REFERENCE_MONDAY + hour_of_week * 3600 + weeks * SECONDS_PER_WEEK - utc_offset_minutes * 60


def points_to_trajectories(table: pa.Table, where: str, mapping: dict[str, str | None], resolution: int,
                           window_minutes: float, segmentation: SegmentationConfig, invalid: str
                           ) -> tuple[pa.Table, PipelineReport]:
    """Points → trajectories: by (user, trajectory id) in file order with `trajectory_col`, else the pipeline."""
    frame, ctx = _points(table, where, mapping)
    weekly = mapping.get("weekday_col") is not None
    if "trajectory_col" not in frame.columns:
        if TIMESTAMP not in frame.columns:
            raise CheckinReadError(f"{where}: without --trajectory_col, points are cut into trajectories by time; "
                                   "give --time_col, or --trajectory_col to group points by a trajectory id.")
        return build_trajectories(checkins_from_arrays(*(frame[c] for c in (USER_ID, LATITUDE, LONGITUDE, TIMESTAMP))),
                                  resolution, window_minutes, segmentation, invalid)
    report = PipelineReport(points_read=frame.height)
    bad = {"missing_user": frame[USER_ID].is_null(), "missing_trajectory_id": frame["trajectory_col"].is_null(),
           "invalid_coordinates": ~((frame[LATITUDE].abs() <= 90) & (frame[LONGITUDE].abs() <= 180)).fill_null(False)}
    dropped = pl.Series([False] * frame.height)
    for reason, mask in bad.items():
        fresh = mask & ~dropped
        if fresh.any() and invalid == "raise":
            column = {"missing_user": USER_ID, "missing_trajectory_id": "trajectory_col"}.get(reason, LATITUDE)
            raise ctx.fail(column, fresh, frame[column], f"{reason.replace('_', ' ')} (pass --invalid drop to "
                           "drop such rows):")
        report.points_dropped[reason] = int(fresh.sum())
        dropped |= fresh
    frame = frame.filter(~dropped).with_row_index("row")
    key = [USER_ID, pl.col("trajectory_col").cast(pl.String)]
    frame = frame.with_columns(pl.col("row").min().over(key).alias("first")).sort(["first", "row"])
    codes = frame["first"].rank("dense").to_numpy().astype(np.int64)
    report.points_valid = frame.height
    report.users = frame[USER_ID].n_unique()
    if frame.height == 0:
        raise EmptyInputError(f"{where}: no valid point ({report.points_dropped}).")
    cells = encode_cells(frame[LATITUDE].to_numpy(), frame[LONGITUDE].to_numpy(), resolution)
    if weekly:
        seconds = _week_times(_hour_of_week(frame, ctx), codes, segmentation.utc_offset_minutes)
    elif TIMESTAMP in frame.columns:
        seconds = frame[TIMESTAMP].dt.epoch("s").to_numpy()
    else:
        seconds = None
    first = visit_starts(cells, None if seconds is None else seconds * 1_000_000, window_minutes * US_PER_MINUTE,
                         users=codes)
    _, merged = visit_spans(first, cells.size)
    report.visits = int(first.size)
    t_first = np.flatnonzero(np.append(True, codes[first][1:] != codes[first][:-1]))
    users = frame[USER_ID].to_numpy()
    table = assemble_trajectories(t_first, cells[first], None if seconds is None else seconds[first], merged,
                                  segmentation, report, lambda firsts: pa.array(users[first[firsts]].tolist(),
                                                                                pa.string()))
    return table, report


def given_trajectories(table: pa.Table, where: str, user_col: str | None, resolution: int
                       ) -> tuple[pa.Table, PipelineReport]:
    """A table of built trajectories (`cells` lists of H3 ints or hex strings, optional `timestamps`) → the
    trajectory schema, every cell checked to be at `resolution`. Kept as given: no filter, no re-clustering."""
    user_col = user_col or USER_ID
    if user_col not in table.column_names:
        raise CheckinReadError(f"{where}: trajectories need a user column {user_col!r} (--user_col or "
                               f"--label_column); found {table.column_names}.")
    ctx = _Ctx(where)
    users = _to_user_id(pl.from_arrow(table[user_col]), user_col, ctx).to_list()
    cells = []
    for row, value in enumerate(table["cells"].to_pylist()):
        if not value:
            raise CheckinReadError(f"{where}: row {row + 1}: a trajectory needs at least one cell, got {value!r}.")
        array = np.asarray(value)
        cells.append(cell_resolution_check(array, resolution, f"{where}, row {row + 1}") if array.dtype.kind in "iu"
                     else cells_from_any(value, resolution))
    times = table["timestamps"].to_pylist() if "timestamps" in table.column_names else [None] * len(cells)
    for row, (c, t) in enumerate(zip(cells, times)):
        if t is not None and len(t) != len(c):
            raise CheckinReadError(f"{where}: row {row + 1}: {len(c)} cells but {len(t)} timestamps.")
    n_visits = sum(len(c) for c in cells)
    report = PipelineReport(points_read=n_visits, points_valid=n_visits, users=len(set(users)), visits=n_visits,
                            trajectories_formed=len(cells), trajectories_kept=len(cells), visits_kept=n_visits,
                            points_kept=n_visits, users_kept=len(set(users)))
    return pa.table({
        "user_id": pa.array(users, pa.string()),
        "traj_id": pa.array(np.arange(len(cells), dtype=np.int64)),
        "cells": pa.array([c.tolist() for c in cells], pa.list_(pa.uint64())),
        "timestamps": pa.array(times, pa.list_(pa.int64())),
        "n_points": pa.array([[1] * len(c) for c in cells], pa.list_(pa.int32())),
    }, schema=TRAJECTORY_SCHEMA), report


def renumber(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Trajectory ids unique across the splits (train first), so that no id names trajectories of two splits."""
    out, start = {}, 0
    for name, table in tables.items():
        ids = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
        out[name] = table.set_column(table.schema.get_field_index("traj_id"), "traj_id", ids)
        start += table.num_rows
    return out


__all__ = ["SPLITS", "file_builder", "given_trajectories", "load_split_datasets", "points_to_trajectories",
           "renumber"]
