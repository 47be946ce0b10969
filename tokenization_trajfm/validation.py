"""Check-in cleaning: every bad row is either a clear error or a counted drop, never silent loss.

Rows with a missing user, a missing timestamp or coordinates that are NaN/inf/out of range are errors by default
(`invalid="raise"`, naming the column, the row and the value) or dropped and counted (`invalid="drop"`). Exact
duplicates (same user, time and coordinates) are always dropped and counted. Rows are returned sorted by user (in
order of first appearance) and then time: real files are often unsorted within a user.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import CHECKIN_COLUMNS, CHECKIN_TYPES, LATITUDE, LONGITUDE, TIMESTAMP, USER_ID

INVALID_MODES = ("raise", "drop")
DROP_REASONS = ("missing_user", "missing_timestamp", "invalid_coordinates", "duplicate")


def _check_schema(table: pa.Table) -> None:
    missing = [c for c in CHECKIN_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"Check-in table lacks column(s) {missing}; it has {table.column_names}. Build it with a reader from "
            "tokenization_trajfm.readers or checkins_from_arrays."
        )
    for name in CHECKIN_COLUMNS:
        expected = CHECKIN_TYPES[name]
        actual = table.schema.field(name).type
        if name == TIMESTAMP:
            if not pa.types.is_timestamp(actual):
                raise ValueError(f"Column {name!r} must be a timestamp, got {actual}.")
        elif name == USER_ID:
            if not (pa.types.is_string(actual) or pa.types.is_large_string(actual)):
                raise ValueError(f"Column {name!r} must hold strings, got {actual}: cast user ids to str first.")
        elif actual != expected:
            raise ValueError(f"Column {name!r} must be {expected}, got {actual}.")


def _null_mask(column: pa.ChunkedArray) -> np.ndarray:
    return pc.is_null(column).to_numpy(zero_copy_only=False)


def _first_problem(mask: np.ndarray, reason: str, column: str, values) -> str:
    rows = np.flatnonzero(mask)
    row = int(rows[0])
    value = values[row].as_py() if hasattr(values, "__getitem__") else None
    return (
        f"{rows.size:,} row(s) have {reason.replace('_', ' ')} in column {column!r}; the first is row {row} "
        f"(0-based) with value {value!r}. Fix the input, or pass invalid='drop' to drop such rows and count them."
    )


def clean_checkins(table: pa.Table, invalid: str = "raise") -> tuple[pa.Table, dict[str, int]]:
    """Validate, de-duplicate and sort a canonical check-in table; returns (clean table, drops by reason)."""
    if invalid not in INVALID_MODES:
        raise ValueError(f"invalid={invalid!r}: choose one of {INVALID_MODES}.")
    _check_schema(table)
    lat = table[LATITUDE].to_numpy(zero_copy_only=False)
    lon = table[LONGITUDE].to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        bad_lat = ~(np.abs(lat) <= 90.0)  # NaN fails every comparison, so it is caught too
        bad_lon = ~(np.abs(lon) <= 180.0)
    checks = [
        ("missing_user", USER_ID, _null_mask(table[USER_ID])),
        ("missing_timestamp", TIMESTAMP, _null_mask(table[TIMESTAMP])),
        ("invalid_coordinates", LATITUDE, bad_lat),
        ("invalid_coordinates", LONGITUDE, bad_lon),
    ]
    drops = dict.fromkeys(DROP_REASONS, 0)
    bad = np.zeros(table.num_rows, dtype=bool)
    for reason, column, mask in checks:
        fresh = mask & ~bad
        if fresh.any():
            if invalid == "raise":
                raise ValueError(_first_problem(fresh, reason, column, table[column]))
            drops[reason] += int(fresh.sum())
            bad |= fresh
    if bad.any():
        table = table.filter(pa.array(~bad))

    users = pc.dictionary_encode(table[USER_ID].combine_chunks())
    codes = users.indices.to_numpy().astype(np.int64)
    times = table[TIMESTAMP].cast(pa.timestamp("us", tz="UTC")).combine_chunks().cast(pa.int64()).to_numpy()
    order = _sort_order(codes, times, table[LATITUDE].to_numpy(), table[LONGITUDE].to_numpy())
    if order is not None:
        table, codes, times = table.take(pa.array(order)), codes[order], times[order]
    lat = table[LATITUDE].to_numpy()
    lon = table[LONGITUDE].to_numpy()
    duplicate = np.zeros(table.num_rows, dtype=bool)
    duplicate[1:] = (codes[1:] == codes[:-1]) & (times[1:] == times[:-1]) & (lat[1:] == lat[:-1]) & (lon[1:] == lon[:-1])
    if duplicate.any():
        drops["duplicate"] = int(duplicate.sum())
        table = table.filter(pa.array(~duplicate))
    return table, drops


def _sort_order(codes: np.ndarray, times: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray | None:
    """Order rows by (user, time, lat, lon) so duplicates are adjacent; None when already in that order.

    Real files are mostly sorted, so the full sort is skipped when a linear check passes; rows that tie on
    (user, time) are then ordered among themselves only.
    """
    n = codes.size
    if n < 2:
        return None
    step_user = np.diff(codes)
    step_time = np.diff(times)
    in_order = (step_user > 0) | ((step_user == 0) & (step_time >= 0))
    if not in_order.all():
        return np.lexsort((lon, lat, times, codes))
    tie = (step_user == 0) & (step_time == 0)
    if not tie.any():
        return None
    group = np.concatenate(([0], np.cumsum(~tie)))
    in_tie = np.zeros(n, dtype=bool)
    in_tie[1:] |= tie
    in_tie[:-1] |= tie
    rows = np.flatnonzero(in_tie)
    order = np.arange(n)
    order[rows] = rows[np.lexsort((lon[rows], lat[rows], group[rows]))]
    return order
