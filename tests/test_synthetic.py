"""Synthetic generator: determinism, schema, bbox, ordering and the behaviours the tokenizer relies on."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from tokenization_trajfm.schema import CHECKIN_COLUMNS, CHECKIN_SCHEMA, TIMESTAMP
from tokenization_trajfm.synthetic import CITY_BBOXES, generate_checkins

M_PER_DEG = 111_320.0


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return generate_checkins()


@pytest.fixture(scope="module")
def df(table: pa.Table) -> pl.DataFrame:
    return pl.from_arrow(table).with_columns(
        pl.col(TIMESTAMP).dt.hour().alias("hour"), (pl.col(TIMESTAMP).dt.weekday() >= 6).alias("weekend")
    )


def test_determinism() -> None:
    a, b = generate_checkins(n_users=30, days=7, seed=3), generate_checkins(n_users=30, days=7, seed=3)
    assert a.equals(b)
    assert not a.equals(generate_checkins(n_users=30, days=7, seed=4))


def test_schema_and_ids(table: pa.Table) -> None:
    assert table.schema.remove(table.schema.get_field_index("venue_id")) == CHECKIN_SCHEMA
    assert tuple(table.column_names) == (*CHECKIN_COLUMNS, "venue_id")
    assert table.schema.field("venue_id").type == pa.string()
    users = pa.compute.unique(table["user_id"]).to_pylist()
    assert len(users) == 200 and "u0007" in users
    assert all(table[c].null_count == 0 for c in table.column_names)


@pytest.mark.parametrize("bbox", [CITY_BBOXES["manhattan"], "tokyo", (-0.01, -0.02, 0.01, 0.02)])
def test_points_inside_bbox(bbox) -> None:
    t = generate_checkins(n_users=50, days=7, bbox=bbox)
    min_lat, min_lon, max_lat, max_lon = CITY_BBOXES[bbox] if isinstance(bbox, str) else bbox
    lat, lon = t["latitude"].to_numpy(), t["longitude"].to_numpy()
    assert ((lat >= min_lat) & (lat <= max_lat) & (lon >= min_lon) & (lon <= max_lon)).all()


def test_bad_bbox() -> None:
    with pytest.raises(ValueError, match="known"):
        generate_checkins(bbox="atlantis")
    with pytest.raises(ValueError, match="min < max"):
        generate_checkins(bbox=(41.0, -74.0, 40.0, -73.0))


def test_sorted_by_user_then_time(df: pl.DataFrame) -> None:
    assert df.select(["user_id", TIMESTAMP]).equals(df.select(["user_id", TIMESTAMP]).sort(["user_id", TIMESTAMP]))
    first = df[TIMESTAMP].min()
    assert first.date().isoformat() == "2024-01-01" and df[TIMESTAMP].max().date().isoformat() <= "2024-01-29"


def test_bursts_within_ten_minutes_and_fifty_metres(df: pl.DataFrame) -> None:
    same_user = (df["user_id"] == df["user_id"].shift(1)).fill_null(False).to_numpy()
    dt_s = (df[TIMESTAMP].diff().dt.total_seconds()).fill_null(1e9).to_numpy()
    lat, lon = df["latitude"].to_numpy(), df["longitude"].to_numpy()
    dist = np.hypot(np.diff(lat, prepend=0) * M_PER_DEG, np.diff(lon, prepend=0) * M_PER_DEG * np.cos(np.radians(lat)))
    burst = same_user & (dt_s < 600) & (dist < 50)
    assert burst.mean() > 0.03


def test_daily_rhythm(df: pl.DataFrame) -> None:
    hours = df["hour"].to_numpy()
    night = ((hours >= 1) & (hours < 6)).sum() / 5
    evening = ((hours >= 18) & (hours < 22)).sum() / 4
    assert night < evening / 4
    work = df["venue_id"].str.starts_with("w").to_numpy()
    weekend = df["weekend"].to_numpy()
    office = (hours >= 9) & (hours < 17)
    assert work[office & ~weekend].mean() > 3 * work[office & weekend].mean()  # weekends differ


def test_home_is_most_visited_for_typical_users(df: pl.DataFrame) -> None:
    counts = df.group_by("user_id", "venue_id").len()
    top = counts.sort(["user_id", "len"], descending=[False, True]).group_by("user_id", maintain_order=True).first()
    n = df.group_by("user_id").len().rename({"len": "n"})
    typical = top.join(n, on="user_id").filter(pl.col("n") >= 20)
    assert typical.height > 100
    home_top = (typical["venue_id"] == pl.Series(typical["user_id"]).str.replace("u", "h")).mean()
    assert home_top > 0.7


def test_activity_varies_and_venues_return(df: pl.DataFrame) -> None:
    n = df.group_by("user_id").len()["len"]
    assert n.min() <= 2 and n.max() >= 5 * n.median()
    pool = df.filter(pl.col("venue_id").str.starts_with("v"))
    days = pool.group_by("user_id", "venue_id").agg(pl.col(TIMESTAMP).dt.date().n_unique().alias("days"))
    assert (days["days"] >= 3).sum() > 50  # preferential return over several days
    assert pool["venue_id"].n_unique() > 300  # exploration reaches many venues


def test_utc_offset_shifts_times() -> None:
    local = generate_checkins(n_users=5, days=3)
    shifted = generate_checkins(n_users=5, days=3, utc_offset_minutes=-300)
    delta = pa.compute.subtract(shifted[TIMESTAMP], local[TIMESTAMP]).to_pylist()
    assert {d.total_seconds() for d in delta} == {5 * 3600}


def test_speed() -> None:
    t0 = time.perf_counter()
    generate_checkins(n_users=200, days=28, seed=1)
    assert time.perf_counter() - t0 < 1.0
