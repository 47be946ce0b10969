"""Synthetic generator: determinism, schema, bbox, ordering and the behaviours the tokenizer relies on; the streaming
Parquet writer: chunks, ids, determinism, GPS samples and bounded memory."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenization_trajfm import synthetic
from tokenization_trajfm.schema import CHECKIN_COLUMNS, CHECKIN_SCHEMA, TIMESTAMP
from tokenization_trajfm.synthetic import CITY_BBOXES, generate_checkins, write_checkins_parquet

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


# --- streaming writer


def _spy_generator(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every generate_checkins call of the writer: arguments, Arrow memory in use on entry, table size."""
    calls: list[dict] = []
    real = synthetic.generate_checkins

    def spy(*args, **kwargs) -> pa.Table:
        allocated = pa.total_allocated_bytes()
        out = real(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "allocated": allocated, "nbytes": out.nbytes})
        return out

    monkeypatch.setattr(synthetic, "generate_checkins", spy)
    return calls


def _prefixed(table: pa.Table, chunk: int) -> pa.Table:
    prefix = f"c{chunk:04d}-"
    for name in ("user_id", "venue_id"):
        table = table.set_column(
            table.schema.get_field_index(name), name, pa.compute.binary_join_element_wise(prefix, table[name], "")
        )
    return table


def test_writer_is_the_chunks_of_the_generator(tmp_path, monkeypatch) -> None:
    calls = _spy_generator(monkeypatch)
    written = write_checkins_parquet(tmp_path / "c.parquet", 2500, users_per_chunk=40, days=7, seed=5)
    got = pq.read_table(written.path)
    assert written.chunks == len(calls) >= 3 and got.num_rows == written.rows >= 2500
    assert got.schema.remove(got.schema.get_field_index("venue_id")) == CHECKIN_SCHEMA
    assert all(c["args"][:3] == (40, 7, CITY_BBOXES["manhattan"]) for c in calls)
    assert len({c["args"][3] for c in calls}) == len(calls)  # a seed per chunk
    full = pa.concat_tables(_prefixed(generate_checkins(*c["args"], **c["kwargs"]), i) for i, c in enumerate(calls))
    assert got.equals(full.slice(0, got.num_rows))
    assert full["user_id"][got.num_rows - 1] != full["user_id"][got.num_rows]  # cut at a user boundary
    # Ids are distinct across chunks: every user is one contiguous run, one chunk's only.
    users = got["user_id"].to_numpy()
    runs = 1 + (users[1:] != users[:-1]).sum()
    assert runs == len(set(users)) == written.users
    assert {u[:5] for u in users} == {f"c{i:04d}" for i in range(written.chunks)}


def test_writer_is_deterministic(tmp_path) -> None:
    def run(name: str, seed: int) -> pa.Table:
        path = tmp_path / name
        write_checkins_parquet(path, 3000, users_per_chunk=30, days=7, seed=seed, gps_samples=3, row_group_rows=600)
        return pq.read_table(path)

    a = run("a.parquet", 1)
    assert a.equals(run("b.parquet", 1))
    assert not a.equals(run("c.parquet", 2))


def test_writer_gps_samples(tmp_path) -> None:
    k, sample_s = 4, 20
    write_checkins_parquet(
        tmp_path / "k.parquet", 2000 * k, users_per_chunk=60, days=7, gps_samples=k, sample_seconds=sample_s
    )
    write_checkins_parquet(tmp_path / "one.parquet", 2000, users_per_chunk=60, days=7)
    dense, checkins = pl.read_parquet(tmp_path / "k.parquet"), pl.read_parquet(tmp_path / "one.parquet")
    assert dense.height == k * checkins.height
    assert dense.gather_every(k).equals(checkins)  # every check-in kept exactly, followed by its samples
    assert dense.select(["user_id", TIMESTAMP]).equals(
        dense.select(["user_id", TIMESTAMP]).sort(["user_id", TIMESTAMP])
    )

    def grouped(col: str) -> np.ndarray:
        return dense[col].to_numpy().reshape(-1, k)

    for col in ("user_id", "venue_id"):
        assert (grouped(col) == grouped(col)[:, :1]).all()
    dt_s = (grouped(TIMESTAMP) - grouped(TIMESTAMP)[:, :1]) / np.timedelta64(1, "s")
    assert (np.diff(dt_s, axis=1) >= 0).all() and (dt_s <= sample_s * (k - 1)).all()
    assert (dt_s[:, -1] == sample_s * (k - 1)).mean() > 0.9  # spacing shrinks only before a close next check-in
    lat, lon = grouped("latitude"), grouped("longitude")
    dist = np.hypot((lat - lat[:, :1]) * M_PER_DEG, (lon - lon[:, :1]) * M_PER_DEG * np.cos(np.radians(lat)))
    assert dist.max() < 25 and np.median(dist[:, 1:]) > 1  # jittered by a few metres


def test_writer_holds_one_chunk_at_a_time(tmp_path, monkeypatch) -> None:
    calls = _spy_generator(monkeypatch)
    base = pa.total_allocated_bytes()
    written = write_checkins_parquet(
        tmp_path / "m.parquet", 120_000, users_per_chunk=300, days=14, gps_samples=3, row_group_rows=3000
    )
    assert written.chunks == len(calls) >= 3
    # When a chunk is generated, the previous ones are gone (a kept chunk would add about half its size).
    assert max(c["allocated"] for c in calls) - base < min(c["nbytes"] for c in calls) / 4
    # Row groups are bounded and never span chunks (a chunk's user ids share its prefix).
    meta = pq.ParquetFile(written.path).metadata
    user_col = meta.schema.to_arrow_schema().get_field_index("user_id")
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(user_col).statistics
        assert group.num_rows <= 3000 and stats.min[:5] == stats.max[:5]


def test_writer_command_line(tmp_path, capsys) -> None:
    path = tmp_path / "cli.parquet"
    synthetic.main(["--output", str(path), *"--points 500 --gps_samples 2 --seed 3 --users_per_chunk 50".split()])
    assert "rows" in capsys.readouterr().out and pq.read_metadata(path).num_rows >= 500
