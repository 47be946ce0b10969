"""The Spark engine of corpus preparation gives the local engine's corpus: same sequences, trajectories, vocabulary
and report, on the synthetic city and on messy files; bad input fails with the same error."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tokenization_trajfm.corpus import CorpusConfig, CorpusDescription
from tokenization_trajfm.errors import CheckinReadError, TrajInputError
from tokenization_trajfm.prepare import PrepareArguments, prepare_corpus, read_shards
from tokenization_trajfm.report import PipelineReport

pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java (17 or later)", allow_module_level=True)

ARGS = PrepareArguments(num_partitions=4, vocab_size=300)


@pytest.fixture(scope="module")
def spark():
    """One local[2] session for the module: prepare_spark uses the active session and leaves it running."""
    from tokenization_trajfm.spark import spark_session

    session, _ = spark_session(replace(ARGS, spark_master="local[2]"))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _prepare_both(corpus: CorpusConfig, tmp_path: Path, args: PrepareArguments = ARGS) -> tuple[Path, Path]:
    local, spark = tmp_path / "local", tmp_path / "spark"
    prepare_corpus(corpus, replace(args, output_dir=str(local)))
    prepared = prepare_corpus(corpus, replace(args, output_dir=str(spark), engine="spark"))
    assert "prepared by Spark (master local[2])" in prepared.description.source
    return local, spark


def _assert_same_corpus(local: Path, spark: Path) -> CorpusDescription:
    for kind in ("sequences", "trajectories"):
        expected, got = read_shards(local, kind), read_shards(spark, kind)
        assert got.num_rows == expected.num_rows > 0
        assert got.equals(expected), kind
    assert (json.loads((spark / "tokenizer" / "vocab.json").read_text())
            == json.loads((local / "tokenizer" / "vocab.json").read_text()))
    expected, got = CorpusDescription.load(local), CorpusDescription.load(spark)
    PipelineReport(**got.report).check()
    assert got.report == expected.report
    assert got.counts == expected.counts
    assert got.distinct_train_cells == expected.distinct_train_cells
    return got


def test_synthetic_city_same_corpus(spark, tmp_path):
    corpus = CorpusConfig(synthetic_users=120, synthetic_days=21)
    description = _assert_same_corpus(*_prepare_both(corpus, tmp_path))
    assert description.counts["train"]["sequences"] > 0 and description.counts["heldout"]["sequences"] is None


def _messy_files(folder: Path, bad_line: str | None = None) -> Path:
    """Two CSV files of 12 users: rows shuffled across files and out of time order, duplicates, a user with one
    point, and invalid coordinates; or, with `bad_line`, no invalid row but that line in the second file."""
    rng = np.random.default_rng(7)
    rows = []
    for user in range(12):
        start = np.datetime64("2024-03-01T08:00") + np.timedelta64(int(rng.integers(0, 600)), "m")
        steps = rng.normal(0, 0.004, size=(60, 2)).cumsum(axis=0)
        for i, (dlat, dlon) in enumerate(steps):
            time = start + np.timedelta64(7 * i, "m")
            rows.append((f"u{user}", 40.70 + dlat, -74.0 + dlon, f"{time}:00"))
    rows.append(("lonely", 40.71, -74.01, "2024-03-01T09:00:00"))
    rows += rows[5:25]  # duplicates
    if bad_line is None:
        rows += [("u3", 95.0, -74.0, "2024-03-01T10:00:00"), ("u4", 40.7, -200.0, "2024-03-01T10:00:00")]
    order = rng.permutation(len(rows))
    folder.mkdir()
    for part, chunk in enumerate(np.array_split(order, 2)):
        lines = ["user_id,latitude,longitude,timestamp"] + [",".join(map(str, rows[i])) for i in chunk]
        if bad_line is not None and part == 1:
            lines.insert(5, bad_line)
        (folder / f"part{part}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_messy_files_same_corpus(spark, tmp_path):
    corpus = CorpusConfig(data=str(_messy_files(tmp_path / "raw")), invalid="drop", min_points=5)
    description = _assert_same_corpus(*_prepare_both(corpus, tmp_path, replace(ARGS, max_seq_length=20)))
    report = description.report
    assert report["points_dropped"]["duplicate"] == 20 and report["points_dropped"]["invalid_coordinates"] == 2
    assert report["users"] == 13 and report["users_kept"] == 12  # the one-point user has too few cells
    assert description.counts["train"]["sequences"] > description.counts["train"]["trajectories"]  # pieces


@pytest.mark.parametrize("bad_line, error", [("u1,123.0,-74.0,2024-03-01T11:00:00", TrajInputError),
                                             ("u2,40.7,-74.0,yesterday", CheckinReadError)])
def test_bad_input_raises_the_local_error(spark, tmp_path, bad_line, error):
    """invalid="raise": an invalid row (checked by `canonical_checkins`) or an unreadable one (by the reader) fails
    the Spark job with the local engine's error, naming the file and the row."""
    corpus = CorpusConfig(data=str(_messy_files(tmp_path / "raw", bad_line)))
    with pytest.raises(error, match=r"part1\.csv: .*row") as local:
        prepare_corpus(corpus, replace(ARGS, output_dir=str(tmp_path / "local")))
    with pytest.raises(error) as spark_error:
        prepare_corpus(corpus, replace(ARGS, output_dir=str(tmp_path / "spark"), engine="spark"))
    assert type(spark_error.value) is type(local.value)
    assert str(spark_error.value) == str(local.value)
