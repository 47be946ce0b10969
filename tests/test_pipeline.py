"""Cleaning, clustering, segmentation and the report: every count adds up, every bad row is named or counted."""

import numpy as np
import pyarrow as pa
import pytest

from tokenization_trajfm import SegmentationConfig, build_trajectories, clean_checkins
from tokenization_trajfm.errors import EmptyInputError
from tokenization_trajfm.readers import checkins_from_arrays, read_stan_nyc, read_table
from tokenization_trajfm.synthetic import generate_checkins

T0 = 1_704_067_200  # 2024-01-01 00:00 UTC


def checkins(users, lats, lons, times):
    return checkins_from_arrays(users, lats, lons, times)


def test_bad_coordinates_and_times_are_named_or_counted():
    table = checkins(
        ["a", "a", "a", "b"],
        [40.0, float("inf"), 40.1, 91.0],
        [-74.0, -74.0, -74.0, -74.0],
        [T0, T0 + 1, T0 + 2, T0 + 3],
    )
    with pytest.raises(ValueError, match=r"column 'latitude'; the first is row 1 .* value inf"):
        clean_checkins(table)
    clean, drops = clean_checkins(table, invalid="drop")
    assert clean.num_rows == 2 and drops["invalid_coordinates"] == 2
    missing_time = table.set_column(
        3, "timestamp", pa.array([T0 * 10**6, None, None, None], pa.timestamp("us", tz="UTC"))
    )
    with pytest.raises(ValueError, match=r"missing timestamp in column 'timestamp'; the first is row 1"):
        clean_checkins(missing_time)
    _, drops = clean_checkins(missing_time, invalid="drop")
    assert drops["missing_timestamp"] == 3
    with pytest.raises(ValueError, match="invalid='nope'"):
        clean_checkins(table, invalid="nope")


def test_schema_problems_are_clear():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['timestamp'\]"):
        clean_checkins(pa.table({"user_id": ["a"], "latitude": [1.0], "longitude": [1.0]}))
    bad_user = pa.table(
        {
            "user_id": [1],
            "latitude": [1.0],
            "longitude": [1.0],
            "timestamp": pa.array([0], pa.timestamp("us", tz="UTC")),
        }
    )
    with pytest.raises(ValueError, match="must hold strings"):
        clean_checkins(bad_user)


def test_unsorted_rows_are_sorted_and_duplicates_counted():
    table = checkins(
        ["b", "a", "a", "a", "a"],
        [1.0, 2.0, 1.0, 2.0, 2.0],
        [1.0, 2.0, 1.0, 2.0, 3.0],
        [T0, T0 + 60, T0, T0 + 60, T0 + 60],
    )
    clean, drops = clean_checkins(table)
    assert drops["duplicate"] == 1
    assert clean["user_id"].to_pylist() == ["b", "a", "a", "a"]
    times = clean["timestamp"].cast(pa.int64()).to_pylist()
    assert times[1:] == sorted(times[1:])
    assert clean.num_rows + sum(drops.values()) == table.num_rows


def test_clustering_merges_bursts_chains_and_respects_users():
    near = (40.75, -73.98)
    far = (40.80, -73.90)
    rows = [
        ("a", *near, T0),
        ("a", *near, T0 + 300),
        ("a", *near, T0 + 800),  # chained within 10 min
        ("a", *near, T0 + 2000),  # 20 min later: new visit
        ("a", *far, T0 + 2100),
        ("b", *far, T0 + 2110),
    ]  # other user: new visit
    users, lats, lons, times = map(list, zip(*rows))
    _, report = build_trajectories(
        checkins(users, lats, lons, times), segmentation=SegmentationConfig(min_cells=1, min_points=1)
    )
    assert report.visits == 4
    assert report.points_valid - report.visits == 2


def test_segmentation_rules_and_filters():
    lats = [40.70 + 0.02 * i for i in range(12)]
    table = checkins(
        ["u"] * 12,
        lats,
        [-74.0] * 12,
        [T0 + 3600 * i for i in range(6)] + [T0 + 86400 * 3 + 3600 * i for i in range(6)],
    )
    keep_all = SegmentationConfig(min_cells=1, min_points=1)
    trajectories, _ = build_trajectories(table, segmentation=keep_all)
    assert [len(c) for c in trajectories["cells"].to_pylist()] == [6, 6]  # 3-day gap > 24 h
    no_gap = SegmentationConfig(max_gap_minutes=None, min_cells=1, min_points=1)
    assert build_trajectories(table, segmentation=no_gap)[0].num_rows == 1
    by_length = SegmentationConfig(max_gap_minutes=None, max_visits=5, min_cells=1, min_points=1)
    assert [len(c) for c in build_trajectories(table, segmentation=by_length)[0]["cells"].to_pylist()] == [5, 5, 2]
    by_day = SegmentationConfig(
        max_gap_minutes=None, split_by_day=True, utc_offset_minutes=-180, min_cells=1, min_points=1
    )
    # local midnight (03:00 UTC) cuts each 6-hour run after its third point
    assert [len(c) for c in build_trajectories(table, segmentation=by_day)[0]["cells"].to_pylist()] == [3, 3, 3, 3]
    paper = SegmentationConfig(max_gap_minutes=None, max_visits=5)  # the paper's filters: ≥3 cells, ≥10 points
    _, report = build_trajectories(table, segmentation=paper)
    assert report.trajectories_dropped == {"too_few_cells": 1, "too_few_points": 2}
    assert report.trajectories_kept == 0
    with pytest.raises(ValueError, match="max_visits"):
        SegmentationConfig(max_visits=0)


def test_users_with_one_point_are_counted_not_lost():
    table = checkins(["solo", "x", "x", "x"], [40.0, 40.0, 40.1, 40.2], [-74.0] * 4, [T0, T0, T0 + 60, T0 + 120])
    trajectories, report = build_trajectories(table, segmentation=SegmentationConfig(min_points=3))
    assert report.users == 2 and report.users_kept == 1
    assert report.trajectories_dropped["too_few_cells"] == 1
    assert trajectories["user_id"].to_pylist() == ["x"]


def test_report_adds_up_on_synthetic_city():
    trajectories, report = build_trajectories(generate_checkins(n_users=80, days=21, seed=5))
    report.check()
    assert report.points_read == report.points_valid + sum(report.points_dropped.values())
    assert report.trajectories_formed == report.trajectories_kept + sum(report.trajectories_dropped.values())
    assert report.visits < report.points_valid, "synthetic bursts must be merged by clustering"
    assert trajectories.num_rows == report.trajectories_kept
    assert sum(len(c) for c in trajectories["cells"].to_pylist()) == report.visits_kept
    assert sum(sum(n) for n in trajectories["n_points"].to_pylist()) == report.points_kept
    assert "trajectories kept" in str(report)


def test_nyc_report(shared_data_dir):
    table = read_stan_nyc(shared_data_dir / "foursquare_nyc_stan" / "nyc_stan_checkins.csv.gz")
    trajectories, report = build_trajectories(table, segmentation=SegmentationConfig(max_gap_minutes=72 * 60))
    report.check()
    assert report.points_read == 147_938
    assert report.points_dropped["duplicate"] == 849  # 458 exact rows + 391 same user/minute/coordinates, other id
    assert report.users == 1_083
    assert report.trajectories_kept == trajectories.num_rows > 1_000
    starts = np.concatenate([np.diff(t) for t in trajectories["timestamps"].to_pylist()])
    assert (starts >= 0).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: read_table(_csv(tmp, "")), r"0 rows read \(a header-only file"),
        (lambda tmp: checkins([], [], [], []), r"0 rows read"),
        (lambda tmp: read_table(_csv(tmp, "u,95.0,1.0,2012-04-03T18:00:00Z\n")), r"1 row\(s\) read, all dropped "
         r"\(invalid_coordinates=1\)"),
    ],
    ids=["header-only-csv", "empty-table", "only-row-dropped"],
)
def test_empty_input_is_a_clear_error(tmp_path, make, message):
    """Issue 10, item 4: nothing left after cleaning is an EmptyInputError with counts, not an IndexError."""
    with pytest.raises(EmptyInputError, match=message):
        build_trajectories(make(tmp_path), invalid="drop")


def _csv(directory, rows: str):
    path = directory / "checkins.csv"
    path.write_text("user_id,latitude,longitude,timestamp\n" + rows)
    return path
