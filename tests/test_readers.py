"""Readers: canonical schema, column mapping, time parsing, error messages, and the real shared data files."""

from __future__ import annotations

import datetime as dt
import gzip
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from tokenization_trajfm.readers import (
    READERS,
    CheckinReadError,
    checkins_from_arrays,
    read_checkins,
    read_foursquare_tsmc,
    read_geolife,
    read_stan_nyc,
    read_table,
    sniff_reader,
)
from tokenization_trajfm.schema import CHECKIN_COLUMNS, CHECKIN_SCHEMA, TIMESTAMP


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def assert_canonical(table: pa.Table) -> None:
    assert tuple(table.column_names[:4]) == CHECKIN_COLUMNS
    for field in CHECKIN_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name


# ------------------------------------------------------------------------------------------------ TSMC2014

TSMC_LINES = [
    "470\t49bbd6c0f964a520f4531fe3\t4bf58dd8d48988d127951735\tArts & Crafts Store\t40.719810375488535\t"
    "-74.00258103213994\t-240\tTue Apr 03 18:00:09 +0000 2012",
    "979\t4a43c0aef964a520c6a61fe3\t4bf58dd8d48988d1df941735\tBridge\t40.60679958140643\t-74.04416981025437\t-240\t"
    "Tue Apr 03 18:00:25 +0000 2012",
    '69\t4c5cc7b485a1e21e00d35711\t4bf58dd8d48988d16d941735\tCaf\xe9 "Le Petit"\t40.71616168484322\t'
    "-73.88307005845945\t-300\tSat Nov 10 03:02:24 +0000 2012",
]


def write_tsmc(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode("latin-1")  # the published files are latin-1
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_tsmc_reads_latin1_file(tmp_path: Path, gz: bool) -> None:
    path = write_tsmc(tmp_path / ("dataset_TSMC2014_NYC.txt" + (".gz" if gz else "")), TSMC_LINES, gz=gz)
    table = read_foursquare_tsmc(path)
    assert_canonical(table)
    assert table.num_rows == 3
    assert table[CHECKIN_COLUMNS[0]].to_pylist() == ["470", "979", "69"]
    assert table["latitude"][0].as_py() == pytest.approx(40.719810375488535)
    assert table[TIMESTAMP].to_pylist() == [
        utc(2012, 4, 3, 18, 0, 9),
        utc(2012, 4, 3, 18, 0, 25),
        utc(2012, 11, 10, 3, 2, 24),
    ]
    assert table["venue_category"][2].as_py() == 'Café "Le Petit"'
    assert table["venue_id"][0].as_py() == "49bbd6c0f964a520f4531fe3"
    assert table["tz_offset_min"].to_pylist() == [-240, -240, -300]
    assert table.schema.field("venue_id").type == pa.string()
    assert sniff_reader(path) == "tsmc"
    assert read_checkins(path).equals(table)


def test_tsmc_bad_timestamp_names_file_column_row_and_value(tmp_path: Path) -> None:
    lines = list(TSMC_LINES)
    lines[1] = lines[1].replace("Tue Apr 03 18:00:25 +0000 2012", "Tue Apr 33 18:00:25 +0000 2012")
    path = write_tsmc(tmp_path / "tsmc.txt", lines)
    with pytest.raises(CheckinReadError) as err:
        read_foursquare_tsmc(path)
    msg = str(err.value)
    assert str(path) in msg and "utc_timestamp" in msg and "row 2" in msg and "Tue Apr 33 18:00:25 +0000 2012" in msg


def test_tsmc_empty_timestamp_stays_null(tmp_path: Path) -> None:
    lines = list(TSMC_LINES)
    lines[0] = lines[0].rsplit("\t", 1)[0] + "\t"
    table = read_foursquare_tsmc(write_tsmc(tmp_path / "tsmc.txt", lines))
    assert table[TIMESTAMP].null_count == 1 and table[TIMESTAMP][0].as_py() is None
    assert table.num_rows == 3  # readers never drop rows


def test_tsmc_wrong_column_count(tmp_path: Path) -> None:
    path = write_tsmc(tmp_path / "tsmc.txt", [line.rsplit("\t", 1)[0] for line in TSMC_LINES])
    with pytest.raises(CheckinReadError, match="expected 8 tab-separated columns"):
        read_foursquare_tsmc(path)


# ------------------------------------------------------------------------------------------------ STAN NYC


def write_stan(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    checkins = np.array([[1, 2, 5743], [1, 1, 60], [2, 2, 1]], dtype=np.int32)
    pois = np.array([[1, 40.72, -74.0], [2, 40.78, -73.97]])
    np.save(directory / "NYC.npy", checkins)
    np.save(directory / "NYC_POI.npy", pois)
    csv = (
        "user_id,loc_id,latitude,longitude,t_min,utc_time_approx\n"
        "1,2,40.78,-73.97,5743,2012-04-07 17:43\n"
        "1,1,40.72,-74.0,60,2012-04-03 19:00\n"
        "2,2,40.78,-73.97,1,2012-04-03 18:01\n"
    )
    (directory / "nyc_stan_checkins.csv.gz").write_bytes(gzip.compress(csv.encode()))
    return directory


def test_stan_npy_and_csv_agree(tmp_path: Path) -> None:
    d = write_stan(tmp_path / "stan")
    from_dir = read_stan_nyc(d)
    assert_canonical(from_dir)
    assert from_dir["user_id"].to_pylist() == ["1", "1", "2"]
    assert from_dir["venue_id"].to_pylist() == ["2", "1", "2"]
    assert from_dir["latitude"].to_pylist() == [40.78, 40.72, 40.78]
    assert from_dir[TIMESTAMP].to_pylist() == [utc(2012, 4, 7, 17, 43), utc(2012, 4, 3, 19), utc(2012, 4, 3, 18, 1)]
    assert read_stan_nyc(d / "NYC.npy").equals(from_dir)
    assert read_stan_nyc(d / "NYC_POI.npy").equals(from_dir)
    csv_path = d / "nyc_stan_checkins.csv.gz"
    assert read_stan_nyc(csv_path).equals(from_dir)
    assert sniff_reader(csv_path) == "stan_nyc" and sniff_reader(d) == "stan_nyc"
    assert read_checkins(d).equals(from_dir)


def test_stan_missing_poi_file(tmp_path: Path) -> None:
    d = write_stan(tmp_path / "stan")
    (d / "NYC_POI.npy").unlink()
    with pytest.raises(FileNotFoundError, match="NYC_POI.npy"):
        read_stan_nyc(d / "NYC.npy")


# ------------------------------------------------------------------------------------------------ GeoLife

GEOLIFE_CSV = (
    "user_id,traj_id,datetime_utc,latitude,longitude,altitude_ft\n"
    "000,20081023025304,2008-10-23 02:53:04,39.984702,116.318417,492\n"
    "000,20081023025304,2008-10-23 02:54:05,39.984561,116.316527,-777\n"
    "181,20071205031040,2007-12-05 03:10:40,40.0,116.3,12.5\n"
)


def test_geolife(tmp_path: Path) -> None:
    path = tmp_path / "geolife_60s.csv.gz"
    path.write_bytes(gzip.compress(GEOLIFE_CSV.encode()))
    table = read_geolife(path)
    assert_canonical(table)
    assert table["user_id"].to_pylist() == ["000", "000", "181"]  # zero padding kept
    assert table["traj_id"].to_pylist() == ["20081023025304", "20081023025304", "20071205031040"]
    assert table["altitude_ft"].to_pylist() == [492.0, None, 12.5]  # -777 = invalid
    assert table[TIMESTAMP][1].as_py() == utc(2008, 10, 23, 2, 54, 5)
    assert sniff_reader(path) == "geolife"
    assert read_checkins(path).equals(table)


def test_geolife_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text(GEOLIFE_CSV.replace("altitude_ft", "alt"))
    with pytest.raises(CheckinReadError) as err:
        read_geolife(path)
    assert str(path) in str(err.value) and "altitude_ft" in str(err.value)


def test_geolife_bad_latitude_names_row(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text(GEOLIFE_CSV.replace("39.984561", "39.98x"))
    with pytest.raises(CheckinReadError, match=r"row 2 \(line 3\)"):
        read_geolife(path)


# ------------------------------------------------------------------------------------------------ generic table


def test_table_mapping_and_extras(tmp_path: Path) -> None:
    path = tmp_path / "my.csv"
    path.write_text("uid,lat,lng,when,place,score\n7,40.1,-73.5,03/04/2021 10:15,cafe,1.5\n8,40.2,-73.6,,bar,2\n")
    table = read_table(path, "uid", "lat", "lng", "when", time_format="%d/%m/%Y %H:%M")
    assert_canonical(table)
    assert table.column_names == [*CHECKIN_COLUMNS, "place", "score"]
    assert table["user_id"].to_pylist() == ["7", "8"]
    assert table[TIMESTAMP].to_pylist() == [utc(2021, 4, 3, 10, 15), None]  # empty time -> null, not garbage
    assert table["place"].type == pa.string() and table["score"].to_pylist() == [1.5, 2.0]
    same = read_checkins(path, reader="table", user_col="uid", lat_col="lat", lon_col="lng", time_col="when",
                         time_format="%d/%m/%Y %H:%M")  # fmt: skip
    assert same.equals(table)


def test_table_iso_variants(tmp_path: Path) -> None:
    path = tmp_path / "iso.csv"
    path.write_text(
        "user_id,latitude,longitude,timestamp\n"
        "a,1,2,2024-01-01T10:00:00Z\n"
        "a,1,2,2024-01-01 10:00:00.250\n"
        "a,1,2,2024-01-01T12:00:00+02:00\n"
        "a,1,2,2024-01-01 10:00\n"
        "a,1,2,2024-01-02\n"
    )
    table = read_table(path)
    assert table[TIMESTAMP].to_pylist() == [
        utc(2024, 1, 1, 10),
        utc(2024, 1, 1, 10, 0, 0, 250_000),
        utc(2024, 1, 1, 10),
        utc(2024, 1, 1, 10),
        utc(2024, 1, 2),
    ]


def test_table_timezone_for_naive_times(tmp_path: Path) -> None:
    path = tmp_path / "tz.csv"
    path.write_text("u,y,x,t\na,1,2,2024-01-15 12:00:00\na,1,2,2024-07-15 12:00:00\na,1,2,2024-07-15T12:00:00+00:00\n")
    table = read_table(path, "u", "y", "x", "t", timezone="America/New_York")
    # EST (UTC-5) in winter, EDT (UTC-4) in summer; an explicit offset wins over `timezone`.
    assert table[TIMESTAMP].to_pylist() == [utc(2024, 1, 15, 17), utc(2024, 7, 15, 16), utc(2024, 7, 15, 12)]


def test_table_dst_gap_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tz.csv"
    path.write_text("u,y,x,t\na,1,2,2024-03-10 02:30:00\n")
    with pytest.raises(CheckinReadError, match="DST gap"):
        read_table(path, "u", "y", "x", "t", timezone="America/New_York")


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("s", "1700000000", utc(2023, 11, 14, 22, 13, 20)),
        ("s", "1700000000.5", utc(2023, 11, 14, 22, 13, 20, 500_000)),
        ("ms", "1700000000123", utc(2023, 11, 14, 22, 13, 20, 123_000)),
        ("us", "1700000000123456", utc(2023, 11, 14, 22, 13, 20, 123_456)),
        ("ns", "1700000000123456789", utc(2023, 11, 14, 22, 13, 20, 123_456)),
    ],
)
def test_table_epoch(tmp_path: Path, unit: str, value: str, expected: dt.datetime) -> None:
    path = tmp_path / "epoch.csv"
    path.write_text(f"u,y,x,t\na,1,2,{value}\n")
    table = read_table(path, "u", "y", "x", "t", time_unit=unit, timezone="Asia/Tokyo")  # epoch ignores timezone
    assert table[TIMESTAMP].to_pylist() == [expected]


def test_table_epoch_without_unit_hints(tmp_path: Path) -> None:
    path = tmp_path / "epoch.csv"
    path.write_text("u,y,x,t\na,1,2,1700000000\n")
    with pytest.raises(CheckinReadError, match="time_unit"):
        read_table(path, "u", "y", "x", "t")


def test_table_unparseable_time_names_row_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("u,y,x,t\na,1,2,2024-01-01 10:00\nb,1,2,2024-01-01 11:00\nc,1,2,yesterday\n")
    with pytest.raises(CheckinReadError) as err:
        read_table(path, "u", "y", "x", "t")
    msg = str(err.value)
    assert str(path) in msg and "'t'" in msg and "row 3 (line 4)" in msg and "'yesterday'" in msg


def test_table_missing_column_lists_found(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("u,y,x,t\na,1,2,2024-01-01\n")
    with pytest.raises(CheckinReadError) as err:
        read_table(path, "u", "lat", "x", "t")
    assert "lat" in str(err.value) and str(path) in str(err.value) and "found columns" in str(err.value)


def test_table_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    naive = [dt.datetime(2024, 1, 1, 9), dt.datetime(2024, 1, 1, 10)]
    pl.DataFrame(
        {"uid": [1, 2], "lat": [1.0, 2.0], "lon": [3.0, 4.0], "t": naive, "timestamp": ["x", "y"]}
    ).write_parquet(path)
    table = read_table(path, "uid", "lat", "lon", "t", timezone="Europe/Paris")
    assert_canonical(table)
    assert table["user_id"].to_pylist() == ["1", "2"]
    assert table[TIMESTAMP].to_pylist() == [utc(2024, 1, 1, 8), utc(2024, 1, 1, 9)]
    assert table["timestamp_orig"].to_pylist() == ["x", "y"]  # clashing extra is renamed, not lost
    assert sniff_reader(path) == "table"


# ------------------------------------------------------------------------------------------------ dispatch / errors


@pytest.mark.parametrize("reader", [read_foursquare_tsmc, read_stan_nyc, read_geolife, read_table, read_checkins])
def test_missing_file(tmp_path: Path, reader) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        reader(missing)


def test_unknown_reader_lists_valid_names(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user_id,latitude,longitude,timestamp\n")
    with pytest.raises(ValueError) as err:
        read_checkins(path, reader="foursquare")
    for name in ["auto", *READERS]:
        assert name in str(err.value)


def test_auto_falls_back_to_table(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("user_id,latitude,longitude,timestamp\nu1,1.5,2.5,2024-05-01 00:00:00\n")
    assert sniff_reader(path) == "table"
    assert read_checkins(path)[TIMESTAMP].to_pylist() == [utc(2024, 5, 1)]


# ------------------------------------------------------------------------------------------------ in memory


def test_from_arrays_time_representations() -> None:
    expected = [utc(2024, 1, 1, 12), utc(2024, 1, 2, 0, 0, 30)]
    users, lat, lon = [1, 2], [10.0, 11.0], [20.0, 21.0]
    inputs = [
        np.array(["2024-01-01T12:00", "2024-01-02T00:00:30"], dtype="datetime64[s]"),
        [dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 2, 0, 0, 30)],
        [dt.datetime(2024, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1))), utc(2024, 1, 2, 0, 0, 30)],
        [1704110400, 1704153630],
        np.array([1704110400.0, 1704153630.0]),
        ["2024-01-01T12:00:00Z", "2024-01-02 00:00:30"],
    ]
    for ts in inputs:
        table = checkins_from_arrays(users, lat, lon, ts)
        assert_canonical(table)
        assert table[TIMESTAMP].to_pylist() == expected, ts
        assert table["user_id"].to_pylist() == ["1", "2"]
    ms = checkins_from_arrays(users, lat, lon, [1704110400000, 1704153630000], time_unit="ms")
    assert ms[TIMESTAMP].to_pylist() == expected
    local = checkins_from_arrays(["a"], [1.0], [2.0], ["2024-01-01 21:00"], timezone="Asia/Shanghai")
    assert local[TIMESTAMP].to_pylist() == [utc(2024, 1, 1, 13)]


def test_from_arrays_extras_and_nulls() -> None:
    table = checkins_from_arrays(["a", None], [1.0, 2.0], [3.0, 4.0], [None, "2024-01-01"], venue_id=["v1", "v2"])
    assert table.column_names == [*CHECKIN_COLUMNS, "venue_id"]
    assert table["user_id"].to_pylist() == ["a", None]
    assert table[TIMESTAMP].to_pylist() == [None, utc(2024, 1, 1)]


def test_from_arrays_mixed_user_ids_name_row() -> None:
    with pytest.raises(ValueError) as err:
        checkins_from_arrays([1, 2, "u3", 4], [0.0] * 4, [0.0] * 4, [0] * 4)
    assert "'user_id'" in str(err.value) and "row 3" in str(err.value) and "'u3'" in str(err.value)
    with pytest.raises(ValueError, match="row 2"):
        checkins_from_arrays(np.array(["a", 5], dtype=object), [0.0] * 2, [0.0] * 2, [0] * 2)


def test_from_arrays_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        checkins_from_arrays([1, 2], [0.0], [0.0, 1.0], [0, 1])
    with pytest.raises(CheckinReadError, match=r"row 2: cannot parse timestamp as ISO-8601: 'soon'"):
        checkins_from_arrays([1, 2], [0.0, 0.0], [0.0, 0.0], ["2024-01-01", "soon"])


# ------------------------------------------------------------------------------------------------ real data


def shared_data() -> Path:
    env = os.environ.get("TRAJFM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def need(relative: str) -> Path:
    path = shared_data() / relative
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.mark.shared_data
def test_real_stan_nyc_both_inputs_agree() -> None:
    d = need("foursquare_nyc_stan")
    from_npy = read_stan_nyc(d)
    from_csv = read_stan_nyc(need("foursquare_nyc_stan/nyc_stan_checkins.csv.gz"))
    assert_canonical(from_npy)
    assert from_npy.num_rows == 147_938
    assert pa.compute.count_distinct(from_npy["user_id"]).as_py() == 1_083
    assert from_npy.equals(from_csv)
    times = from_npy[TIMESTAMP]
    assert pa.compute.min(times).as_py() == utc(2012, 4, 3, 18, 1)
    assert pa.compute.max(times).as_py() == utc(2013, 2, 16, 2, 35)


@pytest.mark.shared_data
def test_real_geolife_60s() -> None:
    table = read_checkins(need("geolife/geolife_60s.csv.gz"))
    assert_canonical(table)
    assert table.num_rows == 1_221_812
    assert pa.compute.count_distinct(table["user_id"]).as_py() == 182
    assert table[TIMESTAMP].null_count == 0
    assert table["altitude_ft"].null_count > 0  # -777 -> null


# ------------------------------------------------------------------------------------------------ issue 10, item 5


@pytest.mark.parametrize(
    ("given", "value", "looks_like", "when"),
    [
        ("s", "1333476000000", "ms", "the year 44,226"),  # milliseconds read as seconds
        ("s", "1333476000000000000", "ns", "the year 42,256,174,239"),  # nanoseconds: would overflow int64
        ("ms", "1333476000", "s", "1970-01-16"),  # seconds read as milliseconds: 60-s gaps would collapse
        ("us", "1333476000000", "ms", "1970-01-16"),
    ],
)
def test_table_epoch_in_a_wrong_unit_names_the_unit_it_looks_like(
    tmp_path: Path, given: str, value: str, looks_like: str, when: str
) -> None:
    path = tmp_path / "epoch.csv"
    path.write_text(f"u,y,x,t\na,1,2,{value}\n")
    with pytest.raises(CheckinReadError) as err:
        read_table(path, "u", "y", "x", "t", time_unit=given)
    message = str(err.value)
    assert "column 't', row 1 (line 2)" in message and when in message, message
    assert f"pass time_unit={looks_like!r}" in message and value in message, message
    assert read_table(path, "u", "y", "x", "t", time_unit=looks_like)[TIMESTAMP].to_pylist() == [utc(2012, 4, 3, 18)]


def test_table_epoch_beyond_any_unit_and_relative_seconds(tmp_path: Path) -> None:
    path = tmp_path / "epoch.csv"
    path.write_text("u,y,x,t\na,1,2,60\na,1,2,1e300\n")
    with pytest.raises(CheckinReadError, match=r"row 2 \(line 3\): as epoch seconds it is the year .*\(is the column"):
        read_table(path, "u", "y", "x", "t", time_unit="s")
    path.write_text("u,y,x,t\na,1,2,0\na,1,2,60\n")  # small relative times fit no unit: read as given
    assert read_table(path, "u", "y", "x", "t", time_unit="s")[TIMESTAMP].to_pylist()[1] == utc(1970, 1, 1, 0, 1)


def test_float_user_ids_nan_is_missing_and_fractions_are_errors(tmp_path: Path) -> None:
    table = checkins_from_arrays(np.array([1.0, np.nan]), [40.0, 40.0], [1.0, 1.0], [1333476000, 1333476060])
    assert table["user_id"].to_pylist() == ["1", None]  # cleaning then names or counts the missing user
    path = tmp_path / "ids.parquet"
    pl.DataFrame({"user_id": [2.0, None, float("nan")], "latitude": [1.0] * 3, "longitude": [2.0] * 3,
                  "timestamp": [1333476000] * 3}).write_parquet(path)
    assert read_table(path, time_unit="s")["user_id"].to_pylist() == ["2", None, None]
    with pytest.raises(CheckinReadError, match=r"column 'user_id', row 2: .*whole number.*inf"):
        checkins_from_arrays(np.array([1.0, np.inf]), [40.0, 40.0], [1.0, 1.0], [1333476000, 1333476060])


def test_stan_npy_sparse_location_ids_use_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    d = tmp_path / "stan"
    d.mkdir()
    np.save(d / "NYC.npy", np.array([[1, 2**40, 60], [1, 7, 61]], dtype=np.int64))
    np.save(d / "NYC_POI.npy", np.array([[2.0**40, 40.72, -74.0]]))
    tracemalloc.start()
    try:
        table = read_stan_nyc(d)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, f"peak {peak:,} bytes: the POI lookup must not be sized by the largest id"
    assert table["latitude"].to_pylist() == [40.72, None]  # id 7 has no POI row: null, counted by cleaning
    assert table["venue_id"].to_pylist() == [str(2**40), "7"]


def test_stan_npy_ids_must_be_whole_numbers(tmp_path: Path) -> None:
    d = tmp_path / "stan"
    d.mkdir()
    np.save(d / "NYC.npy", np.array([[1.0, 1.0, 60.0], [1.0, np.nan, 61.0]]))
    np.save(d / "NYC_POI.npy", np.array([[1.0, 40.72, -74.0]]))
    with pytest.raises(CheckinReadError, match=r"NYC.npy: column 'loc', row 2: expected a whole number .*nan"):
        read_stan_nyc(d)
