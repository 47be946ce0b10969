"""Readers: turn raw check-in / GPS files into ONE canonical Arrow table (see :mod:`tokenization_trajfm.schema`).

Every reader returns ``user_id: string, latitude: float64, longitude: float64, timestamp: timestamp[us, UTC]``
followed by format-specific extra columns. Readers never drop, sort or fix rows: cleaning is the job of
``tokenization_trajfm.validation.clean_checkins``, which reports what it removes. So that cleaning *can* report
problems, missing values stay **null** (an empty timestamp is never turned into 1970 or "now"), but a value that is
present and cannot be parsed is an error: readers raise :class:`CheckinReadError` naming the file, the column, the
1-based data row (the header is not counted) and the offending value.

Parsing is vectorized with polars (the GeoLife 15 s file, 4.3 M rows, reads in a few seconds).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .epochs import LATEST_SECONDS, UNIT_NAMES, UNITS_PER_SECOND, epoch_problem, implausible_epochs
from .errors import CheckinReadError, TrajInputError
from .schema import CHECKIN_COLUMNS, CHECKIN_TYPES, LATITUDE, LONGITUDE, TIMESTAMP, USER_ID, VENUE_ID

PathLike = str | Path

TIME_UNITS = tuple(UNITS_PER_SECOND)  # epoch units a numeric time column can be read in

# Raw TSMC2014 layout (dataset_TSMC2014_NYC.txt / _TKY.txt): tab-separated, no header.
TSMC_COLUMNS = (
    "user_id",
    "venue_id",
    "venue_category_id",
    "venue_category",
    "latitude",
    "longitude",
    "tz_offset_min",
    "utc_timestamp",
)
TSMC_TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # e.g. "Tue Apr 03 18:00:09 +0000 2012"
_TSMC_TIME_RE = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} [+-]\d{4} \d{4}$")

# STAN NYC: t_min counts minutes since the first TSMC NYC check-in (see shared/data/.../SOURCE.md).
STAN_NYC_EPOCH = np.datetime64("2012-04-03T18:00:00", "us")
STAN_CSV_NAME = "nyc_stan_checkins.csv.gz"
STAN_CSV_TIME_FORMAT = "%Y-%m-%d %H:%M"

GEOLIFE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
GEOLIFE_INVALID_ALTITUDE = -777.0

# ISO-8601 after normalization ("T" -> " ", trailing "Z" -> "+00:00"); %.f also accepts no fraction.
_ISO_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M%z")
_ISO_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")


@dataclass(frozen=True)
class _Ctx:
    """Where values come from, so that errors can point at the exact file / line."""

    source: str
    header_lines: int | None = None  # lines before data row 1 in a text file; None when there are no lines
    rows_before: int = 0  # data rows of the file before this batch (streamed reading), so errors name file rows

    def fail(self, column: str, bad: pl.Series, raw: pl.Series, problem: str) -> CheckinReadError:
        """Build an error for the first row where ``bad`` is true."""
        idx = bad.arg_true()
        first, n_bad = int(idx[0]), len(idx)
        row = first + 1 + self.rows_before
        where = f"row {row}"
        if self.header_lines is not None:
            where += f" (line {row + self.header_lines})"
        more = f" ({n_bad - 1} more bad rows)" if n_bad > 1 else ""
        return CheckinReadError(f"{self.source}: column {column!r}, {where}: {problem} {raw[first]!r}{more}")


# --------------------------------------------------------------------------------------------------- low level


def _existing(path: PathLike) -> Path:
    """Fail early with a message that names the missing file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"check-in file not found: {p}")
    return p


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _first_line(path: Path) -> str:
    """First line of a (possibly gzipped) text file, decoded leniently; used for sniffing and headers."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        line = f.readline()
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _utf8_bytes(path: Path) -> bytes:
    """Whole file as UTF-8 bytes: decompress gzip and re-encode latin-1 files (the TSMC files in the wild)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        data = data.decode("latin-1").encode("utf-8")
    return data


def _read_csv(source: Any, ctx: _Ctx, **kwargs: Any) -> pl.DataFrame:
    try:
        return pl.read_csv(source, **kwargs)
    except pl.exceptions.PolarsError as e:
        raise CheckinReadError(f"{ctx.source}: cannot read as CSV: {e}") from e


def _require(columns: Sequence[str], required: Sequence[str], ctx: _Ctx) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise CheckinReadError(f"{ctx.source}: missing required column(s) {missing}; found columns {list(columns)}")


# --------------------------------------------------------------------------------------------------- parsing


def _to_float(s: pl.Series, column: str, ctx: _Ctx) -> pl.Series:
    """Float64 coordinates; empty stays null, anything non-numeric is an error."""
    if s.dtype == pl.Float64:
        return s
    if s.dtype.is_numeric() or s.dtype == pl.Null:
        return s.cast(pl.Float64)
    if s.dtype != pl.String:
        raise CheckinReadError(f"{ctx.source}: column {column!r} has type {s.dtype}, expected numbers")
    stripped = s.str.strip_chars()
    out = stripped.cast(pl.Float64, strict=False)
    bad = out.is_null() & stripped.is_not_null() & (stripped != "")
    if bad.any():
        raise ctx.fail(column, bad, s, "not a number:")
    return out


def _to_user_id(s: pl.Series, column: str, ctx: _Ctx) -> pl.Series:
    """User ids as strings. A float column is an int column with gaps: NaN is a missing id, the rest must be whole."""
    if s.dtype.is_float():
        s = s.fill_nan(None)
        bad = s.is_not_null() & ~((s.abs() < 2.0**63) & (s == s.round(0)))
        if bad.any():
            raise ctx.fail(column, bad, s, "a user id in a float column must be a whole number (or empty), got")
        s = s.cast(pl.Int64)
    return s.cast(pl.String)


def _localize(naive: pl.Series, timezone: str, column: str, raw: pl.Series, ctx: _Ctx) -> pl.Series:
    """Interpret naive wall-clock times in ``timezone`` and convert to UTC; DST-gap times are an error."""
    naive = naive.cast(pl.Datetime("us"))
    if timezone == "UTC":
        return naive.dt.replace_time_zone("UTC")
    local = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    bad = local.is_null() & naive.is_not_null()
    if bad.any():
        raise ctx.fail(column, bad, raw, f"local time does not exist in time zone {timezone!r} (DST gap):")
    return local.dt.convert_time_zone("UTC")


def _to_utc(parsed: pl.Series, timezone: str, column: str, raw: pl.Series, ctx: _Ctx) -> pl.Series:
    dtype = parsed.dtype
    if dtype == pl.Date:
        parsed = parsed.cast(pl.Datetime("us"))
        dtype = parsed.dtype
    if getattr(dtype, "time_zone", None) is None:
        return _localize(parsed, timezone, column, raw, ctx)
    return parsed.dt.convert_time_zone("UTC").cast(pl.Datetime("us", "UTC"))


def _epoch(s: pl.Series, unit: str, column: str, ctx: _Ctx) -> pl.Series:
    """Epoch numbers (s / ms / us / ns, always UTC) to timestamps; integers stay exact (ns are floored to us).

    Values implausible in `unit` (see `epochs`) are an error naming the unit they look like, before any
    arithmetic: so nothing can overflow int64 or silently land in 1970 or the year 44,000.
    """
    if unit not in UNITS_PER_SECOND:
        raise TrajInputError(f"time_unit must be one of {list(TIME_UNITS)}, got {unit!r}")
    raw = s
    if s.dtype == pl.String:
        s = s.str.strip_chars()
        as_float = s.cast(pl.Float64, strict=False).fill_nan(None)  # the text "nan" is no time either
        bad = as_float.is_null() & s.is_not_null() & (s != "")
        if bad.any():
            raise ctx.fail(column, bad, raw, f"cannot parse epoch time ({unit}):")
    elif s.dtype.is_numeric():
        as_float = s.cast(pl.Float64).fill_nan(None)
    else:
        raise CheckinReadError(f"{ctx.source}: column {column!r} has type {s.dtype}, cannot read epoch times")
    bad, looks_like = implausible_epochs(as_float.to_numpy(), unit)
    if bad.any():
        first = as_float[int(bad.argmax())]
        fix = f" (pass time_unit={looks_like!r})" if looks_like else f" (is the column epoch {UNIT_NAMES[unit]}?)"
        raise ctx.fail(column, pl.Series(bad), raw, f"{epoch_problem(first, unit, looks_like)}{fix}:")
    per_second = UNITS_PER_SECOND[unit]
    us = (as_float * (1e6 / per_second)).round(0).cast(pl.Int64)
    if not s.dtype.is_float():  # whole numbers stay exact: within the plausible range, ns fit int64
        us = (s.cast(pl.Int64, strict=False) * (10**9 // per_second) // 1000).fill_null(us)
    return us.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _parse_strings(s: pl.Series, time_format: str | None, timezone: str, column: str, ctx: _Ctx) -> pl.Series:
    """strftime-formatted or ISO-8601 strings to UTC timestamps; empty -> null, unparseable -> error."""
    stripped = s.str.strip_chars()
    present = stripped.is_not_null() & (stripped != "")
    if time_format is not None:
        parsed = stripped.str.to_datetime(time_format, strict=False, time_unit="us")
        bad = parsed.is_null() & present
        if bad.any():
            raise ctx.fail(column, bad, s, f"cannot parse timestamp with format {time_format!r}:")
        return _to_utc(parsed, timezone, column, s, ctx)
    norm = stripped.str.replace(r"^(\d{4}-\d{2}-\d{2})[Tt ]", "${1} ").str.replace(r"[Zz]$", "+00:00")
    col = pl.col(column)
    aware = pl.coalesce(
        [col.str.to_datetime(f, strict=False, time_unit="us").dt.convert_time_zone("UTC") for f in _ISO_AWARE_FORMATS]
    )
    naive = pl.coalesce([col.str.to_datetime(f, strict=False, time_unit="us") for f in _ISO_NAIVE_FORMATS])
    parts = pl.DataFrame({column: norm}).select(
        aware.alias("aware"), pl.when(aware.is_null()).then(naive).alias("naive")
    )
    out = parts["aware"].fill_null(_localize(parts["naive"], timezone, column, s, ctx))
    bad = out.is_null() & present
    if bad.any():
        hint = " (numbers? pass time_unit)" if stripped.filter(bad).str.contains(r"^[0-9.eE+-]+$").all() else ""
        raise ctx.fail(column, bad, s, f"cannot parse timestamp as ISO-8601{hint}:")
    return out.alias(column)


def _to_timestamp(
    s: pl.Series,
    column: str,
    ctx: _Ctx,
    *,
    time_format: str | None = None,
    time_unit: str | None = None,
    timezone: str = "UTC",
) -> pl.Series:
    """Any supported time representation to ``Datetime(us, UTC)``; nulls stay null."""
    dtype = s.dtype
    if dtype == pl.Null:
        return s.cast(pl.Datetime("us", "UTC"))
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
        return _to_utc(s, timezone, column, s, ctx)
    if time_unit is not None:
        return _epoch(s, time_unit, column, ctx)
    if dtype == pl.String:
        return _parse_strings(s, time_format, timezone, column, ctx)
    if dtype.is_numeric():
        raise CheckinReadError(
            f"{ctx.source}: column {column!r} holds numbers; pass time_unit in {list(TIME_UNITS)} for epoch times"
        )
    raise CheckinReadError(f"{ctx.source}: column {column!r} has type {dtype}, cannot read timestamps")


def _plain_arrow(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """polars exports large/view strings; the canonical table uses plain ``string``."""
    if pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
        return col.cast(pa.string())
    return col


def _finish(df: pl.DataFrame, extras: Sequence[str] = ()) -> pa.Table:
    """Canonical column order and Arrow types, extras after."""
    table = df.select([*CHECKIN_COLUMNS, *extras]).to_arrow()
    columns = {}
    for name in table.column_names:
        col = table.column(name)
        target = CHECKIN_TYPES.get(name)
        columns[name] = col.cast(target) if target is not None and col.type != target else _plain_arrow(col)
    return pa.table(columns)


# --------------------------------------------------------------------------------------------------- readers


def read_foursquare_tsmc(path: PathLike) -> pa.Table:
    """Raw Foursquare TSMC2014 file (``dataset_TSMC2014_NYC.txt`` / ``_TKY.txt``, optionally gzipped).

    Tab-separated, no header: userId, venueId, venueCategoryId, venueCategory, latitude, longitude,
    timezoneOffset (minutes), utcTimestamp (``Tue Apr 03 18:00:09 +0000 2012``). The published files are latin-1,
    so non-UTF-8 bytes are decoded as latin-1. Extras: ``venue_id``, ``venue_category_id``, ``venue_category``,
    ``tz_offset_min`` (int32).
    """
    p = _existing(path)
    ctx = _Ctx(str(p), header_lines=0)
    df = _read_csv(_utf8_bytes(p), ctx, has_header=False, separator="\t", quote_char=None, infer_schema=False)
    if df.width != len(TSMC_COLUMNS):
        raise CheckinReadError(
            f"{ctx.source}: expected {len(TSMC_COLUMNS)} tab-separated columns (TSMC2014 format), found {df.width}"
        )
    df.columns = list(TSMC_COLUMNS)
    tz = df["tz_offset_min"].str.strip_chars()
    tz_int = tz.cast(pl.Int32, strict=False)
    bad = tz_int.is_null() & tz.is_not_null() & (tz != "")
    if bad.any():
        raise ctx.fail("tz_offset_min", bad, df["tz_offset_min"], "not an integer:")
    df = df.with_columns(
        _to_user_id(df["user_id"], "user_id", ctx),
        _to_float(df["latitude"], "latitude", ctx),
        _to_float(df["longitude"], "longitude", ctx),
        tz_int.alias("tz_offset_min"),
        _to_timestamp(df["utc_timestamp"], "utc_timestamp", ctx, time_format=TSMC_TIME_FORMAT).alias(TIMESTAMP),
    )
    return _finish(df, ["venue_id", "venue_category_id", "venue_category", "tz_offset_min"])


def _stan_paths(path: Path) -> tuple[str, Path, Path | None]:
    """Resolve a STAN NYC input to ("npy", checkins, poi) or ("csv", csv, None)."""
    if path.is_dir():
        if (path / "NYC.npy").exists() and (path / "NYC_POI.npy").exists():
            return "npy", path / "NYC.npy", path / "NYC_POI.npy"
        if (path / STAN_CSV_NAME).exists():
            return "csv", path / STAN_CSV_NAME, None
        raise FileNotFoundError(f"{path}: no NYC.npy + NYC_POI.npy pair and no {STAN_CSV_NAME} in this directory")
    if path.suffix == ".npy":
        if path.stem.endswith("_POI"):
            checkins, poi = path.with_name(path.stem[: -len("_POI")] + ".npy"), path
        else:
            checkins, poi = path, path.with_name(path.stem + "_POI.npy")
        return "npy", _existing(checkins), _existing(poi)
    return "csv", path, None


def _whole_numbers(values: np.ndarray, column: str, path: Path, limit: float = 2.0**63) -> np.ndarray:
    """An id or count column of a ``.npy`` file as int64; a value that is not a whole number below `limit` is an
    error naming the row (a float array can hold NaN or 1e30, which ``astype`` would turn into garbage)."""
    if values.dtype.kind in "iu" and limit >= 2.0**63:
        return values.astype(np.int64)
    as_float = values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~((np.abs(as_float) < limit) & (as_float == np.round(as_float)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise CheckinReadError(
            f"{path}: column {column!r}, row {row + 1}: expected a whole number below {limit:.0f}, got "
            f"{values[row].item()!r} ({int(bad.sum())} such rows)"
        )
    return values.astype(np.int64)


def read_stan_nyc(path_or_dir: PathLike) -> pa.Table:
    """Foursquare NYC as preprocessed by STAN: ``NYC.npy`` + ``NYC_POI.npy``, a directory, or the derived CSV.

    Time is 2012-04-03 18:00 UTC + ``t_min`` minutes (±1 min, see SOURCE.md); the CSV's ``utc_time_approx``
    holds the same value. Rows keep the file order (not time-sorted within a user). Extra: ``venue_id`` (string).
    """
    kind, main, poi = _stan_paths(_existing(path_or_dir))
    ctx = _Ctx(str(main), header_lines=1 if kind == "csv" else None)
    if kind == "csv":
        df = _read_csv(main, ctx, infer_schema=False)
        _require(df.columns, [USER_ID, "loc_id", LATITUDE, LONGITUDE, "utc_time_approx"], ctx)
        df = df.with_columns(
            _to_user_id(df[USER_ID], USER_ID, ctx),
            _to_float(df[LATITUDE], LATITUDE, ctx),
            _to_float(df[LONGITUDE], LONGITUDE, ctx),
            df["loc_id"].str.strip_chars().alias(VENUE_ID),
            _to_timestamp(df["utc_time_approx"], "utc_time_approx", ctx, time_format=STAN_CSV_TIME_FORMAT).alias(
                TIMESTAMP
            ),
        )
        return _finish(df, [VENUE_ID])
    checkins, pois = np.load(main, allow_pickle=False), np.load(poi, allow_pickle=False)
    if checkins.ndim != 2 or checkins.shape[1] != 3 or pois.ndim != 2 or pois.shape[1] != 3:
        raise CheckinReadError(
            f"{main}: expected (n, 3) [user, loc, t_min] and {poi}: (m, 3) [loc, lat, lon], "
            f"got {checkins.shape} and {pois.shape}"
        )
    users = _whole_numbers(checkins[:, 0], "user", main)
    loc = _whole_numbers(checkins[:, 1], "loc", main)
    minutes = _whole_numbers(checkins[:, 2], "t_min", main, limit=LATEST_SECONDS // 60)
    poi_ids = _whole_numbers(pois[:, 0], "loc", poi)
    # sorted lookup, not a table indexed by id: ids are sparse (one id of 2**40 must not allocate terabytes)
    order = np.argsort(poi_ids, kind="stable")
    slot = np.searchsorted(poi_ids[order], loc, side="right") - 1  # a repeated POI id keeps its last row
    found = slot >= 0
    found[found] = poi_ids[order[slot[found]]] == loc[found]
    coords = np.full((loc.size, 2), np.nan)
    coords[found] = pois[order[slot[found]], 1:]
    unknown = np.isnan(coords[:, 0])  # venue without coordinates -> null, cleaning reports it
    times = STAN_NYC_EPOCH + minutes.astype("timedelta64[m]")
    return pa.table(
        {
            USER_ID: pc.cast(pa.array(users), pa.string()),
            LATITUDE: pa.array(coords[:, 0], mask=unknown),
            LONGITUDE: pa.array(coords[:, 1], mask=unknown),
            TIMESTAMP: pa.array(times.astype("datetime64[us]").astype(np.int64), pa.int64()).cast(
                CHECKIN_TYPES[TIMESTAMP]
            ),
            VENUE_ID: pc.cast(pa.array(loc), pa.string()),
        }
    )


def read_geolife(path: PathLike) -> pa.Table:
    """GeoLife resampled CSV (``geolife_15s.csv.gz`` / ``geolife_60s.csv.gz``).

    Columns user_id ("000".."181", kept as strings), traj_id, datetime_utc (``YYYY-MM-DD HH:MM:SS``, GMT), latitude,
    longitude, altitude_ft. Extras: ``traj_id`` (string) and ``altitude_ft`` (float64, -777 = invalid -> null).
    """
    p = _existing(path)
    ctx = _Ctx(str(p), header_lines=1)
    return _geolife_frame(_read_csv(p, ctx, infer_schema=False), ctx)


GEOLIFE_COLUMNS = (USER_ID, "traj_id", "datetime_utc", LATITUDE, LONGITUDE, "altitude_ft")


def _geolife_frame(df: pl.DataFrame, ctx: _Ctx) -> pa.Table:
    """GeoLife rows (all strings) → canonical check-ins; shared by the whole-file and the streamed reader."""
    _require(df.columns, GEOLIFE_COLUMNS, ctx)
    alt = _to_float(df["altitude_ft"], "altitude_ft", ctx)
    df = df.with_columns(
        _to_float(df[LATITUDE], LATITUDE, ctx),
        _to_float(df[LONGITUDE], LONGITUDE, ctx),
        alt.set(alt == GEOLIFE_INVALID_ALTITUDE, None),
        _to_timestamp(df["datetime_utc"], "datetime_utc", ctx, time_format=GEOLIFE_TIME_FORMAT).alias(TIMESTAMP),
    )
    return _finish(df, ["traj_id", "altitude_ft"])


def read_table(
    path: PathLike,
    user_col: str = USER_ID,
    lat_col: str = LATITUDE,
    lon_col: str = LONGITUDE,
    time_col: str = TIMESTAMP,
    time_format: str | None = None,
    time_unit: str | None = None,
    timezone: str = "UTC",
    separator: str = ",",
) -> pa.Table:
    """Any CSV (optionally gzipped) or Parquet file with a column mapping.

    Time is parsed with ``time_format`` (strftime) if given, else as ISO-8601; with ``time_unit`` ("s", "ms", "us")
    it is an epoch number (always UTC). Naive times are wall-clock times in ``timezone`` (IANA name). All other
    columns are kept as extras (type-inferred for CSV); an extra that clashes with a canonical name gets ``_orig``.
    """
    p = _existing(path)
    columns = TableColumns(user_col, lat_col, lon_col, time_col, time_format, time_unit, timezone)
    if _is_parquet(p):
        ctx = _Ctx(str(p))
        try:
            df = pl.read_parquet(p)
        except pl.exceptions.PolarsError as e:
            raise CheckinReadError(f"{ctx.source}: cannot read as Parquet: {e}") from e
    else:
        ctx = _Ctx(str(p), header_lines=1)
        columns.check_header(p, separator, ctx)
        df = _read_csv(p, ctx, separator=separator, schema_overrides=columns.as_strings(), infer_schema_length=10_000)
    return columns.frame(df, ctx)


@dataclass(frozen=True)
class TableColumns:
    """The column mapping and time parsing of `read_table`, applied to one frame (a whole file or a streamed batch)."""

    user_col: str = USER_ID
    lat_col: str = LATITUDE
    lon_col: str = LONGITUDE
    time_col: str = TIMESTAMP
    time_format: str | None = None
    time_unit: str | None = None
    timezone: str = "UTC"

    def __post_init__(self):
        if len({self.user_col, self.lat_col, self.lon_col, self.time_col}) != 4:
            raise TrajInputError(f"the four mapped columns must differ, got {list(self.mapping())}")

    def mapping(self) -> dict[str, str]:
        return {self.user_col: USER_ID, self.lat_col: LATITUDE, self.lon_col: LONGITUDE, self.time_col: TIMESTAMP}

    def as_strings(self) -> dict[str, Any]:
        """CSV schema overrides: the mapped columns are parsed here, not by type inference."""
        return dict.fromkeys(self.mapping(), pl.String)

    def check_header(self, path: Path, separator: str, ctx: _Ctx) -> None:
        header = next(csv.reader(io.StringIO(_first_line(path)), delimiter=separator), [])
        _require(header, list(self.mapping()), ctx)

    def frame(self, df: pl.DataFrame, ctx: _Ctx) -> pa.Table:
        mapping = self.mapping()
        _require(df.columns, list(mapping), ctx)
        user_col, lat_col, lon_col, time_col = self.user_col, self.lat_col, self.lon_col, self.time_col
        time_format, time_unit, timezone = self.time_format, self.time_unit, self.timezone
        extras = [c for c in df.columns if c not in mapping]
        renamed = {c: f"{c}_orig" if c in CHECKIN_COLUMNS else c for c in extras}
        df = df.rename({c: n for c, n in renamed.items() if c != n})
        df = df.with_columns(
            _to_user_id(df[user_col], user_col, ctx).alias(USER_ID),
            _to_float(df[lat_col], lat_col, ctx).alias(LATITUDE),
            _to_float(df[lon_col], lon_col, ctx).alias(LONGITUDE),
            _to_timestamp(
                df[time_col], time_col, ctx, time_format=time_format, time_unit=time_unit, timezone=timezone
            ).alias(TIMESTAMP),
        )
        return _finish(df, list(renamed.values()))


# --------------------------------------------------------------------------------------------------- in memory


def _kind(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _mixed_type_error(values: Sequence[Any], column: str, cause: Exception) -> CheckinReadError:
    """Name the first row whose type differs from the first non-null value (error path only)."""
    kinds = np.array([_kind(v) for v in values], dtype=object)
    present = np.flatnonzero(kinds != "null")
    if len(present):
        ref = kinds[present[0]]
        bad = present[kinds[present] != ref]
        if len(bad):
            i = int(bad[0])
            return CheckinReadError(
                f"column {column!r}, row {i + 1}: value {values[i]!r} is {kinds[i]} but row {present[0] + 1} is "
                f"{ref}; a column must hold one type"
                + (" (user ids: all strings or all integers)" if column == USER_ID else "")
            )
    huge = [i for i in present if kinds[i] == "int" and not -(2**63) <= values[i] < 2**63]
    if huge:
        i = int(huge[0])
        return CheckinReadError(f"column {column!r}, row {i + 1}: integer {values[i]!r} does not fit 64 bits")
    return CheckinReadError(f"column {column!r}: cannot convert to an Arrow array: {cause}")


def _as_arrow(values: Any, column: str) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, pl.Series):
        return values.to_arrow()
    if isinstance(values, np.ndarray) and values.dtype != object:
        return pa.array(values)
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        raise _mixed_type_error(list(values), column, e) from e


def checkins_from_arrays(
    user_id: Any,
    latitude: Any,
    longitude: Any,
    timestamp: Any,
    *,
    time_format: str | None = None,
    time_unit: str = "s",
    timezone: str = "UTC",
    **extras: Any,
) -> pa.Table:
    """Canonical table from in-memory arrays / lists (numpy, pyarrow, polars or Python sequences).

    Timestamps may be datetime64, Python datetimes, epoch numbers (``time_unit``, default seconds) or strings
    (``time_format``, else ISO-8601); naive times are in ``timezone``. User ids are converted to strings, but a
    column mixing types (e.g. ints and strs) raises, naming the first offending row. Extras are kept as given.
    """
    ctx = _Ctx("in-memory arrays")
    arrays = {USER_ID: user_id, LATITUDE: latitude, LONGITUDE: longitude, TIMESTAMP: timestamp, **extras}
    arrow = {name: _as_arrow(values, name) for name, values in arrays.items()}
    lengths = {name: len(a) for name, a in arrow.items()}
    if len(set(lengths.values())) > 1:
        raise CheckinReadError(f"all columns must have the same length, got {lengths}")
    series = {name: pl.Series(name, a) for name, a in arrow.items()}
    ts = series[TIMESTAMP]
    df = pl.DataFrame(
        {
            USER_ID: _to_user_id(series[USER_ID], USER_ID, ctx),
            LATITUDE: _to_float(series[LATITUDE], LATITUDE, ctx),
            LONGITUDE: _to_float(series[LONGITUDE], LONGITUDE, ctx),
            TIMESTAMP: _to_timestamp(
                ts,
                TIMESTAMP,
                ctx,
                time_format=time_format,
                time_unit=time_unit if ts.dtype.is_numeric() else None,
                timezone=timezone,
            ),
        }
    )
    table = _finish(df)
    for name, a in arrow.items():
        if name not in CHECKIN_COLUMNS:
            table = table.append_column(name, a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a]))
    return table


# --------------------------------------------------------------------------------------------------- dispatch

READERS: dict[str, Callable[..., pa.Table]] = {
    "tsmc": read_foursquare_tsmc,
    "stan_nyc": read_stan_nyc,
    "geolife": read_geolife,
    "table": read_table,
}


def sniff_reader(path: PathLike) -> str:
    """Guess the reader name from the file name and first line (header)."""
    p = _existing(path)
    if p.is_dir() or p.suffix == ".npy":
        return "stan_nyc"
    if _is_parquet(p):
        return "table"
    line = _first_line(p)
    header = {c.strip().strip('"') for c in line.split(",")}
    if {USER_ID, "loc_id", "utc_time_approx"} <= header:
        return "stan_nyc"
    if {USER_ID, "traj_id", "datetime_utc", "altitude_ft"} <= header:
        return "geolife"
    fields = line.split("\t")
    if len(fields) == len(TSMC_COLUMNS) and _TSMC_TIME_RE.match(fields[-1].strip()):
        return "tsmc"
    if "tsmc" in p.name.lower():
        return "tsmc"
    return "table"


def read_checkins(path: PathLike, reader: str = "auto", **mapping: Any) -> pa.Table:
    """Read any supported input by reader name (``READERS``) or ``"auto"`` (sniffed); ``mapping`` goes to the reader
    (for ``"table"``: user_col, lat_col, lon_col, time_col, time_format, time_unit, timezone, separator)."""
    if reader == "auto":
        reader = sniff_reader(path)
    if reader not in READERS:
        raise TrajInputError(f"unknown reader {reader!r}; valid readers: {', '.join(['auto', *sorted(READERS)])}")
    return READERS[reader](path, **mapping)


# --------------------------------------------------------------------------------------------------- streamed

#: File names a folder of raw inputs is scanned for (a STAN NYC folder is one input, read by its own reader).
INPUT_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz", ".parquet", ".pq")


def input_files(data: PathLike) -> list[Path]:
    """The raw files behind `data`: one file, a glob pattern, or a folder (its data files, recursively), sorted."""
    text = str(data)
    if any(ch in text for ch in "*?["):
        from glob import glob

        files = sorted(Path(f) for f in glob(text, recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"no check-in file matches {text!r}")
        return files
    p = _existing(data)
    if p.is_file() or (p / "NYC.npy").exists() or (p / STAN_CSV_NAME).exists():
        return [p]
    files = sorted(f for f in p.rglob("*")
                   if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(INPUT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{p}: no data files in this folder (looked for {', '.join(INPUT_SUFFIXES)}).")
    return files


def _frames(scan: pl.LazyFrame, ctx: _Ctx, batch_rows: int):
    """(frame, its context) for each batch of a lazy scan; the context counts the rows before each batch."""
    rows_before = 0
    try:
        for frame in scan.collect_batches(chunk_size=batch_rows):
            yield frame, _Ctx(ctx.source, ctx.header_lines, rows_before)
            rows_before += frame.height
    except pl.exceptions.PolarsError as e:
        raise CheckinReadError(f"{ctx.source}: cannot read: {e}") from e


def iter_file_checkins(path: PathLike, reader: str = "auto", batch_rows: int = 1_000_000, **mapping: Any):
    """Canonical check-in tables of about `batch_rows` rows from one file, read in batches so that a file larger
    than memory streams through: CSV (also gzipped; polars decompresses a gzipped file whole) and Parquet through
    the `geolife` and `table` readers. The bounded published formats (`tsmc`, `stan_nyc`) are read whole and
    sliced. Errors name the row of the file, as the whole-file readers do."""
    p = _existing(path)
    reader = sniff_reader(p) if reader == "auto" else reader
    if reader == "geolife":
        ctx = _Ctx(str(p), header_lines=1)
        for frame, batch_ctx in _frames(pl.scan_csv(p, infer_schema=False), ctx, batch_rows):
            yield _geolife_frame(frame, batch_ctx)
    elif reader == "table":
        separator = mapping.pop("separator", None) or ","
        columns = TableColumns(**{k: v for k, v in mapping.items() if v is not None})
        if _is_parquet(p):
            ctx, scan = _Ctx(str(p)), pl.scan_parquet(p)
        else:
            ctx = _Ctx(str(p), header_lines=1)
            columns.check_header(p, separator, ctx)
            scan = pl.scan_csv(p, separator=separator, schema_overrides=columns.as_strings(),
                               infer_schema_length=10_000)
        for frame, batch_ctx in _frames(scan, ctx, batch_rows):
            yield columns.frame(frame, batch_ctx)
    else:
        table = read_checkins(p, reader=reader, **mapping)
        for start in range(0, table.num_rows, batch_rows):
            yield table.slice(start, batch_rows)


__all__ = [
    "READERS",
    "CheckinReadError",
    "checkins_from_arrays",
    "input_files",
    "iter_file_checkins",
    "read_checkins",
    "read_foursquare_tsmc",
    "read_geolife",
    "read_stan_nyc",
    "read_table",
    "sniff_reader",
]
