"""Given splits (`--train_file/--validation_file/--test_file`, `--dataset_name` through a local `load_dataset`
folder) for both scripts, files keyed by a trajectory id with weekday/hour times only, the held-out-user guard, and
argument files with command-line overrides."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import TINY_CORPUS_ARGS

import run_finetune
import run_mtm
from modeling_trajfm import FinetuneTrainingArguments, MTMTrainingArguments
from tokenization_trajfm import CorpusConfig, CorpusDescription, TrajTokenizer, load_checkins

TRAINING = ["--max_steps", "3", "--per_device_train_batch_size", "8", "--logging_steps", "1", "--use_cpu",
            "--disable_tqdm", "true", "--dataloader_num_workers", "0"]
FINETUNE = [*TRAINING, "--max_seq_length", "64", "--max_input_visits", "16", "--max_segment_visits", "6"]
WEEKLY = ["--trajectory_col", "tid", "--label_column", "label", "--lat_col", "lat", "--lon_col", "lon",
          "--weekday_col", "day", "--hour_col", "hour", "--min_points", "3"]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """A trajectory-user-linking benchmark as published: tid,label,lat,lon,day,hour (no dates), split by trajectory
    into train/validation/test files; its labels look like the synthetic user ids of the checkpoint's corpus."""
    folder = tmp_path_factory.mktemp("tul")
    points = pl.from_arrow(load_checkins(None, synthetic_users=16, synthetic_days=14, seed=11))
    time = points["timestamp"]
    frame = pl.DataFrame({"tid": points["user_id"] + "-" + time.dt.ordinal_day().cast(pl.String),
                          "label": points["user_id"], "lat": points["latitude"], "lon": points["longitude"],
                          "day": time.dt.weekday() - 1, "hour": time.dt.hour()})
    day = time.dt.ordinal_day().to_numpy() % 7
    files = {}
    for name, days in (("train", (0, 1, 2, 3)), ("validation", (4,)), ("test", (5, 6))):
        files[name] = folder / f"{name}.csv"
        frame.filter(pl.Series(np.isin(day, days))).write_csv(files[name])
    return {"files": files, "frame": frame}


def _split_args(benchmark, *names):
    return [item for name in names for item in (f"--{name}_file", str(benchmark["files"][name]))]


def test_weekday_hour_become_the_hour_of_week(benchmark):
    corpus = CorpusConfig(train_file=str(benchmark["files"]["train"]), trajectory_col="tid", label_column="label",
                          lat_col="lat", lon_col="lon", weekday_col="day", hour_col="hour", min_points=3,
                          utc_offset_minutes=-240)
    tables, reports, _ = corpus.load_splits()
    train = tables["train"]
    assert reports["train"].trajectories_kept == train.num_rows > 0 and corpus.user_col == "label"
    frame = pl.read_csv(benchmark["files"]["train"])
    first = frame.group_by("tid", maintain_order=True).first()
    tokenizer = TrajTokenizer.train(train, vocab_size=80, utc_offset_minutes=-240)
    encoded = tokenizer(cells=train["cells"].to_pylist(), timestamps=train["timestamps"].to_pylist())
    hours = [ids[1] for ids in encoded["hour_ids"]]  # first visit, after [CLS]
    expected = {(row["label"], row["day"] * 24 + row["hour"] + 1) for row in first.iter_rows(named=True)}
    assert {(u, h) for u, h in zip(train["user_id"].to_pylist(), hours)} <= expected
    gaps = [g for ids, visits in zip(encoded["gap_ids"], encoded["hexagon_ids"]) for g, v in zip(ids, visits) if v > 1]
    assert gaps and min(gaps) >= 1  # hour-resolution gaps, never negative across a week boundary


def test_finetune_honours_the_given_split(tiny_checkpoint, benchmark, tmp_path):
    out = tmp_path / "tul"
    run_finetune.main(["--model_name_or_path", str(tiny_checkpoint["path"]), "--output_dir", str(out),
                       "--task", "user_association", "--min_user_trajectories", "1",
                       *_split_args(benchmark, "train", "validation", "test"), *WEEKLY, *FINETUNE])
    results = json.loads((out / "all_results.json").read_text())
    split = json.loads((out / "task_report.json").read_text())["split"]
    columns = dict(zip([a[2:] for a in WEEKLY[:-2:2]], WEEKLY[1:-2:2]))
    tables, _, _ = CorpusConfig(**{f"{n}_file": str(p) for n, p in benchmark["files"].items()}, **columns,
                                min_points=3).load_splits()
    assert split["given_split_trajectories"] == {name: t.num_rows for name, t in tables.items()}
    assert split["train_trajectories"] == tables["train"].num_rows
    assert split["test_trajectories"] == results["test_samples"] == tables["test"].num_rows
    assert results["validation_samples"] == tables["validation"].num_rows  # the given validation split selects
    assert "best_eval_accuracy@1" in results and split["validation_trajectories"] == tables["validation"].num_rows
    assert split["num_users"] == len(set(tables["train"]["user_id"].to_pylist()))


def test_other_data_never_takes_the_held_out_users(tiny_checkpoint, benchmark, tmp_path):
    """The issue's case: another file whose labels happen to look like the checkpoint's user ids."""
    other = tmp_path / "other.csv"
    checkins = pl.from_arrow(load_checkins(None, synthetic_users=40, synthetic_days=21, seed=5))
    checkins.with_columns(pl.col("timestamp").dt.epoch("s")).write_csv(other)
    with pytest.raises(ValueError, match="not the checkpoint's pre-training corpus.*give the split"):
        run_finetune.main(["--model_name_or_path", str(tiny_checkpoint["path"]), "--output_dir", str(tmp_path / "o"),
                           "--task", "destination", "--data", str(other), "--reader", "table", "--time_unit", "s",
                           "--max_gap_minutes", "360", *FINETUNE])
    with pytest.raises(ValueError, match="drop --heldout_users"):
        run_finetune.main(["--model_name_or_path", str(tiny_checkpoint["path"]), "--output_dir", str(tmp_path / "o"),
                           "--heldout_users", "u0001,u0002", *_split_args(benchmark, "train", "test"), *WEEKLY])


@pytest.fixture(scope="module")
def dataset_folder(tiny_checkpoint, tmp_path_factory):
    """A local `load_dataset` folder (train/validation/test Parquet files of built trajectories, hex cell strings)."""
    folder = tmp_path_factory.mktemp("dataset")
    table, _, _ = CorpusConfig(**dict(synthetic_users=30, synthetic_days=21, synthetic_seed=7,
                                      max_gap_minutes=360)).load()
    frame = pl.from_arrow(table).with_columns(pl.col("cells").list.eval(pl.element().map_elements(
        lambda c: format(c, "x"), return_dtype=pl.String)))
    parts = np.arange(frame.height) % 5
    for name, keep in (("train", parts < 3), ("validation", parts == 3), ("test", parts == 4)):
        frame.filter(pl.Series(keep)).select("user_id", "cells", "timestamps").write_parquet(folder / f"{name}.parquet")
    return folder


def test_pretrain_and_finetune_from_a_local_dataset(dataset_folder, tmp_path):
    base = tmp_path / "base"
    run_mtm.main(["--dataset_name", str(dataset_folder), "--output_dir", str(base), "--vocab_size", "150",
                  "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                  "--intermediate_size", "64", "--max_seq_length", "64", *TRAINING])
    description = CorpusDescription.load(base)
    assert description.split.heldout_users == [] and description.counts["validation"]["trajectories"] > 0
    assert description.counts["train"]["trajectories"] == pl.read_parquet(dataset_folder / "train.parquet").height
    results = json.loads((base / "all_results.json").read_text())
    assert np.isfinite(results["eval_loss"])
    # given trajectories may come cut anywhere: no gap id edge claims to mark a break (the plain grid) unless told
    assert json.loads((base / "tokenizer_config.json").read_text())["gap_break_minutes"] is None
    told = tmp_path / "told"
    run_mtm.main(["--dataset_name", str(dataset_folder), "--output_dir", str(told), "--vocab_size", "150",
                  "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2",
                  "--intermediate_size", "64", "--max_seq_length", "64", "--gap_break_minutes", "360", *TRAINING])
    assert json.loads((told / "tokenizer_config.json").read_text())["gap_break_minutes"] == 360
    with pytest.raises(ValueError, match="--gap_break_minutes 720 is for a new tokenizer"):
        run_mtm.main(["--dataset_name", str(dataset_folder), "--output_dir", str(tmp_path / "again"),
                      "--tokenizer_name", str(told), "--gap_break_minutes", "720", *TRAINING])
    # Without fine-tuning data, a checkpoint pre-trained on given splits has no users to fine-tune on.
    with pytest.raises(ValueError, match="pre-trained on given split files"):
        run_finetune.main(["--model_name_or_path", str(base), "--output_dir", str(tmp_path / "none"), *FINETUNE])
    out = tmp_path / "dest"
    run_finetune.main(["--model_name_or_path", str(base), "--output_dir", str(out), "--task", "destination",
                       "--dataset_name", str(dataset_folder), *FINETUNE])
    split = json.loads((out / "task_report.json").read_text())["split"]
    assert split["test_trajectories"] == pl.read_parquet(dataset_folder / "test.parquet").height


def test_arguments_file_with_overrides(tmp_path):
    import yaml

    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "ckpt", "task": "destination", "learning_rate": "3e-4",
                                    "min_points": 9, "output_dir": str(tmp_path / "o")}))
    run_args, task_config, overrides, training_args = run_finetune.parse_args(
        [str(path), "--learning_rate", "1e-4", "--max_gap_minutes", "60"])
    assert training_args.learning_rate == 1e-4 and task_config.task == "destination"
    assert overrides == {"min_points": 9, "max_gap_minutes": 60}
    path.write_text(yaml.safe_dump({"learning_rat": 1e-4}))
    with pytest.raises(ValueError, match="Unknown argument.*learning_rat"):
        run_finetune.parse_args([str(path)])
    _, _, overrides, _ = run_finetune.parse_args([*TINY_CORPUS_ARGS[:2], "--dataset_name", str(tmp_path)])
    assert overrides["hf_dataset"] == str(tmp_path)


def test_bad_split_arguments_fail_at_parse_time(benchmark, tmp_path):
    train = str(benchmark["files"]["train"])
    for kwargs, message in (
        (dict(train_file=str(tmp_path / "missing.csv")), "no such file"),
        (dict(train_file=train, hf_dataset="x"), "either --dataset_name or"),
        (dict(train_file=train, weekday_col="day"), "--weekday_col and --hour_col together"),
        (dict(trajectory_col="tid"), "describe split files"),
        (dict(train_file=train, label_column="label", user_col="uid"), "differ"),
    ):
        with pytest.raises(ValueError, match=message):
            CorpusConfig(**kwargs)


def test_no_pin_memory_without_accelerator(tmp_path):
    for arguments in (MTMTrainingArguments, FinetuneTrainingArguments):
        assert arguments(output_dir=str(tmp_path), use_cpu=True).dataloader_pin_memory is False
