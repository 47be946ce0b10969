"""Property-based (issue 10): malformed tables and tokenizer inputs fail only with `TrajInputError`, whose message
says where (column, row or point position): never a bare IndexError, TypeError or polars error."""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenization_trajfm import SegmentationConfig, TrajTokenizer, build_trajectories
from tokenization_trajfm.errors import TrajInputError
from tokenization_trajfm.readers import checkins_from_arrays, read_table

KEEP_ALL = SegmentationConfig(min_cells=1, min_points=1)
TABLE_WHERE = re.compile(r"column '|row")
POINT_WHERE = re.compile(r"trajectories\[\d+\]")
TOKENIZER = TrajTokenizer()

numbers = st.one_of(st.floats(), st.integers(-(2**70), 2**70))
text = st.text(st.characters(codec="ascii", categories=["L", "N", "P", "Zs"]), max_size=6)
csv_cell = st.one_of(
    st.just(""),
    numbers.map(str),
    text,
    st.sampled_from(["nan", "2012-04-03T18:00:00Z", "2012-13-45 25:00", "1333476000", "1333476000000", "40.7"]),
)
csv_rows = st.lists(st.tuples(csv_cell, csv_cell, csv_cell, csv_cell), max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    rows=csv_rows,
    time_unit=st.sampled_from([None, "s", "ms", "us", "ns"]),
    invalid=st.sampled_from(["raise", "drop"]),
)
def test_malformed_csv_tables_fail_with_where(rows, time_unit, invalid):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "checkins.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "latitude", "longitude", "timestamp"])
            writer.writerows(rows)
        try:
            build_trajectories(read_table(path, time_unit=time_unit), invalid=invalid, segmentation=KEEP_ALL)
        except TrajInputError as error:
            assert TABLE_WHERE.search(str(error)), str(error)


column_value = st.one_of(st.none(), numbers, text, st.datetimes())


@settings(max_examples=60, deadline=None)
@given(
    columns=st.lists(st.lists(column_value, min_size=1, max_size=4), min_size=4, max_size=4),
    invalid=st.sampled_from(["raise", "drop"]),
)
def test_malformed_in_memory_tables_fail_with_where(columns, invalid):
    size = min(len(c) for c in columns)
    users, lat, lon, times = (c[:size] for c in columns)
    try:
        build_trajectories(checkins_from_arrays(users, lat, lon, times), invalid=invalid, segmentation=KEEP_ALL)
    except TrajInputError as error:
        assert TABLE_WHERE.search(str(error)), str(error)


coordinate = st.one_of(st.none(), st.floats(), st.integers(-1000, 1000), st.sampled_from(["x", "40.7", ""]))
timestamp = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.datetimes(),
    st.sampled_from(["2012-04-03T19:00:00Z", "soon", "", 1333476000, 1333476000000]),
)
point = st.one_of(
    st.tuples(coordinate, coordinate), st.tuples(coordinate, coordinate, timestamp), st.none(), st.tuples(coordinate)
)
trajectory = st.one_of(
    st.lists(point, max_size=5),
    st.fixed_dictionaries(
        {
            "lat": st.lists(coordinate, max_size=4),
            "lon": st.lists(coordinate, max_size=4),
            "timestamp": st.one_of(st.lists(timestamp, max_size=4), timestamp),
        }
    ),
)


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(trajectory, min_size=1, max_size=3))
@example(batch=[[(0.0, 0.0, -(2**63) - 1)]])  # an int beyond int64: numpy keeps it as a Python object
def test_malformed_tokenizer_inputs_fail_with_position(batch):
    try:
        TOKENIZER(batch)
    except TrajInputError as error:
        assert POINT_WHERE.search(str(error)), str(error)
