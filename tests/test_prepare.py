"""Out-of-core corpus preparation (`tokenization_trajfm.prepare`, local engine): the prepared corpus holds exactly
what the in-memory pipeline builds, whatever the partitioning; streamed readers equal the whole-file readers."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tokenization_trajfm import CorpusConfig, CorpusDescription, TrajTokenizer
from tokenization_trajfm.errors import TrajInputError
from tokenization_trajfm.pipeline import build_trajectories
from tokenization_trajfm.prepare import (
    PREPARED_SPLITS,
    SEQUENCE_SCHEMA,
    PrepareArguments,
    main,
    prepare_corpus,
    read_shards,
    user_partition,
    user_splits,
)
from tokenization_trajfm.readers import input_files, iter_file_checkins, read_checkins
from tokenization_trajfm.synthetic import generate_checkins

CORPUS = dict(max_gap_minutes=360, min_points=5, invalid="drop")


@pytest.fixture(scope="module")
def messy_csv(tmp_path_factory) -> Path:
    """Synthetic check-ins written as a CSV with the mess real files have: rows shuffled (unsorted times), exact
    duplicates, invalid coordinates, a missing user, a user with a single point."""
    table = generate_checkins(n_users=60, days=21, seed=5)
    rng = np.random.default_rng(0)
    frame = table.select(["user_id", "latitude", "longitude", "timestamp"]).to_pandas()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    extra = frame.sample(40, random_state=1)  # duplicates
    bad = frame.sample(5, random_state=2).assign(latitude=123.0)  # out of range
    lonely = frame.head(1).assign(user_id="lonely")
    nouser = frame.sample(3, random_state=3).assign(user_id=None)
    import pandas as pd

    frame = pd.concat([frame, extra, bad, lonely, nouser]).iloc[rng.permutation(len(frame) + 49)]
    path = tmp_path_factory.mktemp("raw") / "checkins.csv"
    frame.to_csv(path, index=False)
    return path


def _prepare(data: Path | None, out: Path, corpus: dict | None = None, **args) -> tuple[Path, CorpusDescription]:
    config = CorpusConfig(data=None if data is None else str(data), **(CORPUS if corpus is None else corpus))
    prepared = prepare_corpus(config, PrepareArguments(output_dir=str(out), vocab_size=300, **args))
    return Path(prepared.output_dir), prepared.description


def _content(table: pa.Table) -> list[tuple]:
    """Trajectories as (user, cells, timestamps, n_points), independent of ids and order."""
    return sorted(zip(*[table[c].to_pylist() for c in ("user_id", "cells", "timestamps", "n_points")]))


def test_prepared_corpus_equals_the_in_memory_pipeline(messy_csv, tmp_path):
    folder, description = _prepare(messy_csv, tmp_path / "corpus", num_partitions=5, batch_rows=700)
    expected, expected_report = build_trajectories(read_checkins(messy_csv), window_minutes=10.0,
                                                   segmentation=CorpusConfig(**CORPUS).segmentation(), invalid="drop")
    trajectories = read_shards(folder, "trajectories")
    assert _content(trajectories) == _content(expected)
    report, expected_counts = dict(description.report), expected_report.to_dict()
    assert report.pop("tokens") == description.counts["train"]["tokens"] and expected_counts.pop("tokens") is None
    assert report == expected_counts
    assert report["points_dropped"] == {"missing_user": 3, "missing_timestamp": 0, "invalid_coordinates": 5,
                                        "duplicate": 40}
    assert description.split.rule == "hash" and description.recipe["prepared"]
    counts = description.counts
    assert sum(c["trajectories"] for c in counts.values()) == expected.num_rows == expected_report.trajectories_kept


def test_vocabulary_and_sequences_equal_in_memory_training_and_tokenization(messy_csv, tmp_path):
    folder, description = _prepare(messy_csv, tmp_path / "corpus", num_partitions=3)
    trajectories = read_shards(folder, "trajectories")
    train = trajectories.filter(pc.equal(trajectories["split"], "train"))
    expected = TrajTokenizer.train(train, vocab_size=300, spelling=PrepareArguments().spelling,
                                   **CorpusConfig(**CORPUS).tokenizer_settings())
    tokenizer = TrajTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer.gap_break_minutes == CORPUS["max_gap_minutes"]  # the gap grid's edge sits on the corpus's break
    assert tokenizer.get_vocab() == expected.get_vocab()
    sequences = read_shards(folder, "sequences")
    assert sequences.schema.remove(sequences.schema.get_field_index("split")) == SEQUENCE_SCHEMA
    tokenized = expected.tokenize_dataset(datasets.Dataset(train.select(["cells", "timestamps", "user_id",
                                                                         "traj_id"])), max_length=512)
    train_sequences = sequences.filter(pc.equal(sequences["split"], "train"))
    for column in ("input_ids", "hexagon_ids", "level_ids", "hour_ids", "gap_ids", "traj_id"):
        assert train_sequences[column].to_pylist() == tokenized[column], column
    assert description.counts["train"]["sequences"] == train_sequences.num_rows
    assert description.counts["heldout"]["sequences"] is None
    assert set(sequences["split"].to_pylist()) <= {"train", "validation"}


def test_long_trajectories_are_split_into_numbered_pieces(tmp_path):
    folder, _ = _prepare(None, tmp_path / "corpus", corpus=dict(synthetic_users=40, synthetic_days=14),
                         num_partitions=2, max_seq_length=40)
    sequences = read_shards(folder, "sequences")
    assert max(len(ids) for ids in sequences["input_ids"].to_pylist()) <= 40
    pieces = sequences.group_by("traj_id").aggregate([("piece", "max"), ("piece", "count")])
    assert pieces["piece_max"].to_pylist() == [n - 1 for n in pieces["piece_count"].to_pylist()]
    assert max(pieces["piece_count"].to_pylist()) > 1


def test_the_number_of_partitions_changes_nothing_but_ids(messy_csv, tmp_path):
    one = read_shards(_prepare(messy_csv, tmp_path / "one", num_partitions=1)[0], "trajectories")
    seven = read_shards(_prepare(messy_csv, tmp_path / "seven", num_partitions=7)[0], "trajectories")
    assert _content(one) == _content(seven)
    by_user = lambda t: dict(zip(t["user_id"].to_pylist(), t["split"].to_pylist()))  # noqa: E731
    assert by_user(one) == by_user(seven)
    assert len(set(seven["traj_id"].to_pylist())) == seven.num_rows


def test_user_split_is_a_pure_function_of_id_and_seed():
    users = pa.array([f"user-{i}" for i in range(4000)])
    from tokenization_trajfm.corpus import UserSplit

    split = UserSplit(7, 0.2, [], 0.1, [], rule="hash")
    codes = user_splits(users, split)
    assert np.array_equal(codes, user_splits(users, split))
    assert np.array_equal(codes[::-1], user_splits(users.take(pa.array(np.arange(3999, -1, -1))), split))
    shares = np.bincount(codes, minlength=3) / codes.size
    assert shares == pytest.approx([0.8 * 0.9, 0.8 * 0.1, 0.2], abs=0.025)
    other = user_splits(users, UserSplit(8, 0.2, [], 0.1, [], rule="hash"))
    assert (codes != other).mean() > 0.2  # another seed, another split
    parts = user_partition(users, 16)
    assert parts.min() >= 0 and parts.max() < 16 and np.bincount(parts).min() > 150
    assert np.array_equal(parts[:10], user_partition(users.slice(0, 10), 16))


def test_streamed_readers_equal_whole_file_readers(messy_csv, tmp_path):
    whole = read_checkins(messy_csv, reader="table")
    streamed = pa.concat_tables(list(iter_file_checkins(messy_csv, "table", batch_rows=333)))
    assert streamed.equals(whole)
    geolife = tmp_path / "geo.csv"
    geolife.write_text("user_id,traj_id,datetime_utc,latitude,longitude,altitude_ft\n"
                       + "".join(f"{i % 3:03d},t{i},2008-10-23 02:5{i % 10}:0{i % 6},39.9{i},116.3{i},-777\n"
                                 for i in range(25)))
    assert pa.concat_tables(list(iter_file_checkins(geolife, batch_rows=4))).equals(read_checkins(geolife))
    parquet = tmp_path / "c.parquet"
    pq.write_table(whole.select(["user_id", "latitude", "longitude", "timestamp"]), parquet)
    batches = list(iter_file_checkins(parquet, batch_rows=500))
    assert sum(b.num_rows for b in batches) == whole.num_rows


def _csv_with_bad_row(path: Path, index: int, row: str) -> Path:
    """30 good check-ins with `row` in place of the one at `index` (0-based data row)."""
    rows = [f"u{i % 4},40.7,-73.9,2024-03-0{1 + i % 9}T10:00:00+00:00" for i in range(30)]
    rows[index] = row
    path.write_text("user_id,latitude,longitude,timestamp\n" + "\n".join(rows) + "\n")
    return path


def test_a_bad_value_in_a_later_batch_names_the_file_row(tmp_path):
    path = _csv_with_bad_row(tmp_path / "bad.csv", 22, "u1,40.7,not-a-number,2024-03-01T10:00:00+00:00")
    with pytest.raises(TrajInputError, match=r"row 23 \(line 24\).*not-a-number"):
        list(iter_file_checkins(path, "table", batch_rows=5))


def test_raise_mode_names_the_file_and_row_of_an_invalid_point(tmp_path):
    path = _csv_with_bad_row(tmp_path / "range.csv", 17, "u1,140.7,-73.9,2024-03-01T10:00:00+00:00")
    with pytest.raises(TrajInputError, match=r"range\.csv: .*invalid coordinates.*row 17 \(0-based\)"):
        prepare_corpus(CorpusConfig(data=str(path)), PrepareArguments(output_dir=str(tmp_path / "out"),
                                                                      batch_rows=5, vocab_size=300))


def test_glob_and_folder_inputs(messy_csv, tmp_path):
    raw = tmp_path / "raw"
    (raw / "nested").mkdir(parents=True)
    table = read_checkins(messy_csv)
    half = table.num_rows // 2
    for path, part in ((raw / "a.csv", table.slice(0, half)), (raw / "nested" / "b.csv", table.slice(half))):
        frame = part.select(["user_id", "latitude", "longitude", "timestamp"]).to_pandas()
        frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        frame.to_csv(path, index=False)
    (raw / "notes.md").write_text("not data")
    assert [p.name for p in input_files(raw)] == ["a.csv", "b.csv"]
    assert [p.name for p in input_files(f"{raw}/**/*.csv")] == ["a.csv", "b.csv"]
    whole = read_shards(_prepare(messy_csv, tmp_path / "whole", num_partitions=3)[0], "trajectories")
    folder = read_shards(_prepare(raw, tmp_path / "folder", num_partitions=3)[0], "trajectories")
    assert _content(folder) == _content(whole)
    with pytest.raises(ValueError, match="no such file"):
        CorpusConfig(data=str(tmp_path / "nothing-*.csv"))


def test_output_folder_is_protected_and_arguments_checked(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    small = dict(corpus=dict(synthetic_users=30, synthetic_days=14, max_gap_minutes=360))
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        _prepare(None, out, **small)
    _prepare(None, out, overwrite_output_dir=True, **small)
    assert not (out / "keep.txt").exists() and not (out / "_partitions").exists()
    with pytest.raises(ValueError, match="--engine"):
        PrepareArguments(engine="dask")
    with pytest.raises(ValueError, match="Unknown --spelling 'base32'"):
        PrepareArguments(spelling="base32")
    with pytest.raises(ValueError, match="max_seq_length"):
        prepare_corpus(CorpusConfig(), PrepareArguments(output_dir=str(tmp_path / "x"), max_seq_length=8))


def test_command_line(tmp_path, capsys):
    prepared = main(["--synthetic_users", "30", "--synthetic_days", "14", "--max_gap_minutes", "360",
                     "--output_dir", str(tmp_path / "cli"), "--num_partitions", "2", "--vocab_size", "300"])
    out = capsys.readouterr().out
    assert "Corpus folder" in out and "trajectories kept" in out
    description = CorpusDescription.load(prepared.output_dir)
    assert set(description.counts) == set(PREPARED_SPLITS)
    assert TrajTokenizer.from_pretrained(Path(prepared.output_dir) / "tokenizer").resolution == 8
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--num_partitions" in capsys.readouterr().out
