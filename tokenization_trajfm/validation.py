"""Check-in cleaning: every bad row is either a clear error or a counted drop, never silent loss.

Rows with a missing user, a missing timestamp or coordinates that are NaN/inf/out of range are errors by default
(`invalid="raise"`, naming the column, the row and the value) or dropped and counted (`invalid="drop"`). Exact
duplicates (same user, time and coordinates) are always dropped and counted. Rows are returned sorted by user (in
order of first appearance) and then time: real files are often unsorted within a user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import TrajInputError
from .schema import CHECKIN_COLUMNS, CHECKIN_TYPES, LATITUDE, LONGITUDE, TIMESTAMP, USER_ID

INVALID_MODES = ("raise", "drop")
DROP_REASONS = ("missing_user", "missing_timestamp", "invalid_coordinates", "duplicate")
TIMESTAMP_US = pa.timestamp("us", tz="UTC")


def _check_schema(table: pa.Table) -> None:
    missing = [c for c in CHECKIN_COLUMNS if c not in table.column_names]
    if missing:
        raise TrajInputError(
            f"Check-in table lacks column(s) {missing}; it has {table.column_names}. Build it with a reader from "
            "tokenization_trajfm.readers or checkins_from_arrays."
        )
    for name in CHECKIN_COLUMNS:
        expected = CHECKIN_TYPES[name]
        actual = table.schema.field(name).type
        if name == TIMESTAMP:
            if not pa.types.is_timestamp(actual):
                raise TrajInputError(f"Column {name!r} must be a timestamp, got {actual}.")
        elif name == USER_ID:
            if not (pa.types.is_string(actual) or pa.types.is_large_string(actual)):
                raise TrajInputError(f"Column {name!r} must hold strings, got {actual}: cast user ids to str first.")
        elif actual != expected:
            raise TrajInputError(f"Column {name!r} must be {expected}, got {actual}.")


def _null_mask(column: pa.ChunkedArray) -> np.ndarray | None:
    if column.null_count == 0:
        return None
    return pc.is_null(column).to_numpy(zero_copy_only=False)


def _first_problem(mask: np.ndarray, reason: str, column: str, values: pa.ChunkedArray, rows_before: int = 0
                   ) -> str:
    rows = np.flatnonzero(mask)
    row = int(rows[0])
    return (
        f"{rows.size:,} row(s) have {reason.replace('_', ' ')} in column {column!r}; the first is row "
        f"{row + rows_before} "
        f"(0-based) with value {values[row].as_py()!r}. Fix the input, or pass invalid='drop' to drop such rows "
        "and count them."
    )


@dataclass
class CleanCheckins:
    """Kept rows of a check-in table in (user, time) order, as index and arrays, without copying the table."""

    rows: np.ndarray | None  # indices into the input table in output order; None: all rows, as they are
    user_codes: np.ndarray  # int64 code per kept row; `users` maps code → user id
    users: pa.Array
    times_us: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    drops: dict[str, int]


def invalid_rows(table: pa.Table, invalid: str = "raise", rows_before: int = 0
                 ) -> tuple[np.ndarray | None, dict[str, int]]:
    """Rows with a missing user, a missing timestamp or bad coordinates → (their mask, None if there are none;
    drops by reason). With `invalid="raise"` the first one is an error naming it (`rows_before`: rows of the
    same input before this table, so that a batch names the row of the whole input)."""
    if invalid not in INVALID_MODES:
        raise TrajInputError(f"invalid={invalid!r}: choose one of {INVALID_MODES}.")
    _check_schema(table)
    lat = table[LATITUDE].to_numpy()
    lon = table[LONGITUDE].to_numpy()
    with np.errstate(invalid="ignore"):
        bad_lat = ~(np.abs(lat) <= 90.0)  # NaN (and null, read as NaN) fails every comparison, so it is caught too
        bad_lon = ~(np.abs(lon) <= 180.0)
    checks = [
        ("missing_user", USER_ID, _null_mask(table[USER_ID])),
        ("missing_timestamp", TIMESTAMP, _null_mask(table[TIMESTAMP])),
        ("invalid_coordinates", LATITUDE, bad_lat if bad_lat.any() else None),
        ("invalid_coordinates", LONGITUDE, bad_lon if bad_lon.any() else None),
    ]
    drops = dict.fromkeys(DROP_REASONS, 0)
    bad = None
    for reason, column, mask in checks:
        if mask is None:
            continue
        fresh = mask if bad is None else mask & ~bad
        if fresh.any():
            if invalid == "raise":
                raise TrajInputError(_first_problem(fresh, reason, column, table[column], rows_before))
            drops[reason] += int(fresh.sum())
            bad = fresh if bad is None else bad | fresh
    return bad, drops


def checkin_order(table: pa.Table, invalid: str = "raise") -> CleanCheckins:
    """Validate and order check-ins without materializing a new table (the pipeline's fast path)."""
    bad, drops = invalid_rows(table, invalid)
    lat = table[LATITUDE].to_numpy()
    lon = table[LONGITUDE].to_numpy()
    encoded = pc.dictionary_encode(table[USER_ID].combine_chunks())
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    times = table[TIMESTAMP].combine_chunks()
    if times.type != TIMESTAMP_US:
        times = pc.cast(times, TIMESTAMP_US, safe=False)  # nanosecond inputs: sub-microsecond parts are floored
    times = times.cast(pa.int64())
    times = (times.fill_null(0) if times.null_count else times).to_numpy()
    rows = None  # identity until rows are dropped or reordered: saves index arrays on clean, sorted input
    if bad is not None:
        rows = np.flatnonzero(~bad)
        codes, times, lat, lon = codes[rows], times[rows], lat[rows], lon[rows]
    order, tie = _sort_order(codes, times, lat, lon)
    if order is not None:
        rows = order if rows is None else rows[order]
        codes, times, lat, lon = codes[order], times[order], lat[order], lon[order]
    # duplicates tie on (user, time), so only tied neighbours need the coordinate comparison
    tied = np.flatnonzero(tie) + 1
    duplicate_rows = tied[(lat[tied] == lat[tied - 1]) & (lon[tied] == lon[tied - 1])]
    if duplicate_rows.size:
        drops["duplicate"] = int(duplicate_rows.size)
        keep = np.ones(codes.size, dtype=bool)
        keep[duplicate_rows] = False
        rows = np.flatnonzero(keep) if rows is None else rows[keep]
        codes, times, lat, lon = codes[keep], times[keep], lat[keep], lon[keep]
    return CleanCheckins(rows, codes.astype(np.int64), encoded.dictionary, times, lat, lon, drops)


def clean_checkins(table: pa.Table, invalid: str = "raise") -> tuple[pa.Table, dict[str, int]]:
    """Validate, de-duplicate and sort a canonical check-in table; returns (clean table, drops by reason)."""
    clean = checkin_order(table, invalid)
    return (table if clean.rows is None else table.take(pa.array(clean.rows))), clean.drops


def _sort_order(
    codes: np.ndarray, times: np.ndarray, lat: np.ndarray, lon: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Order rows by (user, time, lat, lon) so duplicates are adjacent (None: already in that order), and the mask
    of rows (from the second) that tie with their predecessor on (user, time) in that order.

    Real files are mostly sorted, so the full sort is skipped when a linear check passes; rows that tie on
    (user, time) are then ordered among themselves only.
    """
    n = codes.size
    if n < 2:
        return None, np.zeros(max(n - 1, 0), dtype=bool)
    step_user = codes[1:].astype(np.int64) - codes[:-1]
    step_time = times[1:] - times[:-1]
    same_user = step_user == 0
    if (step_user < 0).any() or (same_user & (step_time < 0)).any():
        order = np.lexsort((lon, lat, times, codes))
        codes, times = codes[order], times[order]
        return order, (codes[1:] == codes[:-1]) & (times[1:] == times[:-1])
    tie = same_user & (step_time == 0)
    if not tie.any():
        return None, tie
    in_tie = np.zeros(n, dtype=bool)
    in_tie[1:] |= tie
    in_tie[:-1] |= tie
    rows = np.flatnonzero(in_tie)
    order = np.arange(n)
    order[rows] = rows[np.lexsort((lon[rows], lat[rows], times[rows], codes[rows]))]
    return order, tie
