"""Seen users, the paper's split, as files (`modeling_trajfm.downstream.seen_users`): fine-tuning users are run_mtm.py's
held-out users, their training trajectories join pre-training, their validation and test trajectories never do."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from conftest import TINY_CORPUS, TINY_CORPUS_ARGS

import run_finetune
from modeling_trajfm.downstream import seen_users
from modeling_trajfm.downstream.seen_users import SeenUsersArguments, seen_user_splits
from modeling_trajfm.pretraining import MTMArguments, _stage_data
from tokenization_trajfm import CorpusConfig


def _keys(table) -> Counter:
    """Each trajectory as (user, cells, timestamps): the files carry no trajectory ids."""
    return Counter((u, tuple(c), tuple(t)) for u, c, t in zip(*(table[k].to_pylist()
                                                                 for k in ("user_id", "cells", "timestamps"))))


@pytest.fixture(scope="module")
def corpus_table():
    table, _, _ = CorpusConfig(**TINY_CORPUS).load()
    return table


@pytest.mark.parametrize("heldout, validation", [(0.2, 0.1), (0.4, 0.25)])
def test_fine_tuning_users_are_run_mtm_held_out_users(corpus_table, heldout, validation):
    mtm_args = MTMArguments(heldout_fraction=heldout, validation_fraction=validation)
    parts, users, split, _, _ = _stage_data(CorpusConfig(**TINY_CORPUS), mtm_args, split_seed=7)
    tables = seen_user_splits(corpus_table, SeenUsersArguments(output_dir="unused", heldout_fraction=heldout,
                                                               validation_fraction=validation, seed=7))
    finetune_users = set().union(*(tables[name]["user_id"].to_pylist() for name in ("train", "validation", "test")))
    assert finetune_users == set(split.heldout_users)
    assert set(tables["pretrain_validation"]["user_id"].to_pylist()) == set(split.validation_users)
    assert _keys(tables["pretrain_validation"]) == _keys(parts["validation"].with_format("arrow")[:])
    # pre-training: run_mtm's training users, plus the fine-tuning users' training trajectories
    assert _keys(tables["pretrain_train"]) == _keys(parts["train"].with_format("arrow")[:]) + _keys(tables["train"])


def test_scored_trajectories_never_enter_pre_training(corpus_table):
    tables = seen_user_splits(corpus_table, SeenUsersArguments(output_dir="unused", heldout_fraction=0.5, seed=3))
    keys = {name: _keys(table) for name, table in tables.items()}
    pretrained = keys["pretrain_train"] + keys["pretrain_validation"]
    assert not (keys["validation"] & pretrained) and not (keys["test"] & pretrained)
    assert keys["train"] <= keys["pretrain_train"]  # the fine-tuning users' training trajectories are pre-trained on
    # every trajectory is in exactly one place (the fine-tuning train files share theirs with pre-training)
    everything = keys["pretrain_train"] + keys["pretrain_validation"] + keys["validation"] + keys["test"]
    assert everything == _keys(corpus_table)
    # split per user: every fine-tuning user with two or more trajectories keeps one for training
    per_user = Counter(u for u, *_ in keys["train"] + keys["validation"] + keys["test"])
    in_train = {u for u, *_ in keys["train"]}
    assert {u for u, n in per_user.items() if n >= 2} <= in_train
    assert tables["test"].num_rows > 0 and tables["validation"].num_rows > 0


def test_main_writes_files_both_scripts_read(tiny_checkpoint, tmp_path):
    out = tmp_path / "splits"
    counts = seen_users.main([*TINY_CORPUS_ARGS, "--output_dir", str(out), "--heldout_fraction", "0.5"])
    record = json.loads((out / seen_users.SPLIT_RECORD).read_text())
    assert record["counts"] == counts and record["arguments"]["heldout_fraction"] == 0.5
    for name, count in counts.items():
        assert pq.read_metadata(out / f"{name}.parquet").num_rows == count["trajectories"]
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        seen_users.main([*TINY_CORPUS_ARGS, "--output_dir", str(out)])
    pretrain = CorpusConfig(train_file=str(out / "pretrain_train.parquet"),
                            validation_file=str(out / "pretrain_validation.parquet"))
    parts, *_ = _stage_data(pretrain, MTMArguments(), split_seed=0)  # what run_mtm.py pre-trains and validates on
    assert {name: part.num_rows for name, part in parts.items()} == {
        "train": counts["pretrain_train"]["trajectories"], "validation": counts["pretrain_validation"]["trajectories"]}
    finetuned = tmp_path / "dest"
    run_finetune.main(["--model_name_or_path", str(tiny_checkpoint["path"]), "--task", "destination",
                       "--train_file", str(out / "train.parquet"), "--validation_file", str(out / "validation.parquet"),
                       "--test_file", str(out / "test.parquet"), "--output_dir", str(finetuned),
                       "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--use_cpu"])
    split = json.loads((finetuned / "task_report.json").read_text())["split"]
    assert split["test_trajectories"] == counts["test"]["trajectories"]


def test_overwrite_removes_files_the_new_split_has_not(tmp_path):
    seen_users.main([*TINY_CORPUS_ARGS, "--output_dir", str(tmp_path), "--heldout_fraction", "0.5"])
    assert (tmp_path / "pretrain_validation.parquet").exists()
    counts = seen_users.main([*TINY_CORPUS_ARGS, "--output_dir", str(tmp_path), "--heldout_fraction", "0.5",
                              "--validation_fraction", "0", "--overwrite_output_dir"])
    assert "pretrain_validation" not in counts and not (tmp_path / "pretrain_validation.parquet").exists()


def test_given_split_files_are_refused(tmp_path):
    given = tmp_path / "train.parquet"
    given.write_bytes(b"")
    with pytest.raises(ValueError, match="given split files are already a split"):
        seen_users.main(["--train_file", str(given), "--output_dir", str(tmp_path / "out")])


def test_too_few_fine_tuning_trajectories_is_an_error(corpus_table):
    with pytest.raises(ValueError, match="No fine-tuning trajectory for validation"):
        seen_user_splits(corpus_table, SeenUsersArguments(output_dir="unused", seed=3))


@pytest.mark.parametrize("argument", ["--test_fraction", "--heldout_fraction", "--finetune_validation_fraction"])
def test_fractions_outside_zero_one_are_refused(argument, tmp_path):
    with pytest.raises(ValueError, match=argument):
        seen_users.main([*TINY_CORPUS_ARGS, "--output_dir", str(tmp_path), argument, "1.0"])
