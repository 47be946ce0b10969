"""Pre-training and fine-tuning from a corpus folder prepared out of core (`--corpus_dir`): memory-mapped and streamed
sequences, each DDP rank's own part of the stream, exact resumes, the held-out shards for fine-tuning, bad folders."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import REPO

import run_finetune
import run_mtm
from modeling_trajfm import TrajBertForMaskedTrajectoryModeling
from modeling_trajfm.pretraining import corpus_sequences
from modeling_trajfm.trainer import TrainingStream
from tokenization_trajfm import CorpusConfig, CorpusDescription
from tokenization_trajfm.prepare import PrepareArguments, prepare_corpus, read_trajectories, sequence_files

#: Big enough for validation users and held-out users with a few dozen trajectories each; 3 partitions.
CORPUS = dict(synthetic_users=150, synthetic_days=28)
PREPARE = dict(num_partitions=3, vocab_size=300, max_seq_length=64, heldout_fraction=0.3, validation_fraction=0.15)
TINY = ["--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3",
        "--disable_tqdm", "true", "--use_cpu", "--dataloader_num_workers", "0"]
LENGTH = ("--max_seq_length", str(PREPARE["max_seq_length"]))  # the corpus folder's, as it must be
STREAM = ("--streaming", "--shuffle_buffer_size", "50")
RUN = ("--max_steps", "6", "--save_steps", "3", "--eval_steps", "3", "--logging_steps", "1")
BIN = Path(sys.executable).parent
TORCHRUN = str(BIN / "torchrun") if (BIN / "torchrun").exists() else shutil.which("torchrun")


@pytest.fixture(autouse=True)
def no_pause_after_streams(monkeypatch):
    """datasets sleeps 5 s whenever a shuffled Parquet stream stops (an Arrow thread-shutdown workaround): harmless
    once per pass of a large corpus, most of the time of these tiny streams."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared") / "corpus"
    prepare_corpus(CorpusConfig(**CORPUS), PrepareArguments(output_dir=str(folder), **PREPARE))
    return folder


def _args(corpus_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--corpus_dir", str(corpus_dir), *TINY, *LENGTH, "--output_dir", str(out), *extra]


def _users(corpus_dir: Path, split: str) -> set[str]:
    return set(read_trajectories(corpus_dir, split)["user_id"].to_pylist())


def _finite(value: float) -> bool:
    return bool(torch.isfinite(torch.tensor(value)))


@pytest.fixture(scope="module")
def streamed(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("streamed") / "out"
    return out, run_mtm.main(_args(corpus_dir, out, *STREAM, *RUN))


def test_help_lists_corpus_dir(capsys):
    with pytest.raises(SystemExit):
        run_mtm.main(["--help"])
    assert "--corpus_dir" in capsys.readouterr().out


def test_memory_mapped_run_reads_every_train_sequence(corpus_dir, tmp_path):
    prepared = CorpusDescription.load(corpus_dir)
    result = run_mtm.main(_args(corpus_dir, tmp_path / "out", "--max_steps", "2", "--eval_steps", "2"))
    train = result.datasets["train"]
    assert isinstance(train, datasets.Dataset) and len(train) == prepared.counts["train"]["sequences"]
    metrics = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert metrics["train_samples"] == prepared.counts["train"]["sequences"]
    assert metrics["train_tokens"] == prepared.counts["train"]["tokens"]
    assert metrics["eval_samples"] == prepared.counts["validation"]["sequences"]
    assert set(train["user_id"]) == _users(corpus_dir, "train")
    assert set(result.datasets["validation"]["user_id"]) == _users(corpus_dir, "validation")
    run = CorpusDescription.load(tmp_path / "out")
    assert run.config.corpus_dir == str(corpus_dir) and run.config.data is None
    assert run.split == prepared.split and run.counts == prepared.counts


def test_streamed_run(corpus_dir, streamed):
    out, result = streamed
    assert isinstance(result.datasets["train"], datasets.IterableDataset)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    metrics = json.loads((out / "all_results.json").read_text())
    assert _finite(metrics["eval_perplexity"]) and _finite(metrics["init_eval_perplexity"])
    assert metrics["train_samples"] == CorpusDescription.load(corpus_dir).counts["train"]["sequences"]
    assert "model-index" in (out / "README.md").read_text()
    assert isinstance(TrajBertForMaskedTrajectoryModeling.from_pretrained(out), TrajBertForMaskedTrajectoryModeling)


def _keys(rows) -> list[tuple[int, int]]:
    return [(row["traj_id"], row["piece"]) for row in rows]


def test_training_stream_gives_each_rank_a_disjoint_part(corpus_dir):
    """In every pass each sequence is on exactly one rank, by examples (3 shards, 2 ranks) or by whole shards (3
    ranks); a rank's stream is its passes one after the other, each reshuffled."""
    files = sequence_files(corpus_dir, "train")
    stream = datasets.load_dataset("parquet", data_files={"train": files}, split="train", streaming=True)
    every = sorted(_keys(stream))
    assert len(set(every)) == len(every) == CorpusDescription.load(corpus_dir).counts["train"]["sequences"]
    assert len(files) == 3
    for world_size in (2, 3):
        passes = {0: [], 1: []}
        for rank in range(world_size):
            ranked = TrainingStream(stream, seed=7, buffer_size=50, rank=rank, world_size=world_size)
            mine = {}
            for number in passes:
                ranked.part.set_epoch(number)
                mine[number] = _keys(ranked.part)
                passes[number] += mine[number]
            assert _keys(itertools.islice(ranked, len(mine[0]) + len(mine[1]))) == mine[0] + mine[1]
            assert mine[0] != mine[1]
        assert sorted(passes[0]) == sorted(passes[1]) == every


def test_resumed_streaming_run_ends_like_an_uninterrupted_one(corpus_dir, streamed, tmp_path, capsys):
    uninterrupted, _ = streamed
    out = tmp_path / "killed"
    args = _args(corpus_dir, out, *STREAM, *RUN)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "kill_driver.py"), "after_checkpoint", "3", *args],
                          cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_mtm.main(args)
    assert f"Resuming from {out / 'checkpoint-3'}" in capsys.readouterr().out
    from safetensors.torch import load_file

    expected, got = load_file(str(uninterrupted / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    losses = [{e["step"]: e["loss"] for e in json.loads((folder / "trainer_state.json").read_text())["log_history"]
               if "loss" in e and e["step"] > 3} for folder in (uninterrupted, out)]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_finetuning_reads_the_held_out_shards(corpus_dir, streamed, tmp_path):
    checkpoint, _ = streamed
    out = tmp_path / "destination"
    run_finetune.main(["--model_name_or_path", str(checkpoint), "--output_dir", str(out), "--task", "destination",
                       "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--max_steps", "2",
                       "--max_seq_length", "64", "--max_input_visits", "16", "--use_cpu", "--disable_tqdm", "true",
                       "--dataloader_num_workers", "0"])
    data = json.loads((out / "task_data.json").read_text())
    heldout = _users(corpus_dir, "heldout")
    assert data["heldout_users"] == len(heldout) and set(data["heldout_users_used"]) <= heldout
    assert data["trajectories"] == read_trajectories(corpus_dir, "heldout").num_rows
    assert not heldout & (_users(corpus_dir, "train") | _users(corpus_dir, "validation"))
    assert str(corpus_dir) in data["data_source"]
    assert _finite(json.loads((out / "all_results.json").read_text())["test_loss"])


def test_corpus_config_loads_every_prepared_trajectory(corpus_dir):
    table, report, source = CorpusConfig(corpus_dir=str(corpus_dir)).load()
    counts = CorpusDescription.load(corpus_dir).counts
    assert table.num_rows == sum(c["trajectories"] for c in counts.values()) == report.trajectories_kept
    assert str(corpus_dir) in source


def test_streamed_sequences_carry_model_columns_and_users(corpus_dir):
    stream = corpus_sequences(corpus_dir, "train", streaming=True)
    assert set(next(iter(stream))) == {"user_id", "input_ids", "attention_mask", "hexagon_ids", "level_ids",
                                       "hour_ids", "gap_ids"}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
@pytest.mark.parametrize("positives", [("--contrastive_weight", "0"), ()], ids=["mtm-only", "same-user-pairs"])
def test_two_ranks_train_on_their_own_parts(corpus_dir, tmp_path, positives):
    """torchrun, 2 CPU ranks, streaming: each rank's loader is its own (not accelerate's rank-0 dispatcher) and trains
    on exactly its `TrainingStream`, in order: nothing dispatched from rank 0, nothing sharded twice. With the
    contrastive term's same-user positives (the default) each rank pairs its own part: adjacent trajectories of one
    user, each masked twice (two adjacent rows)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    steps, batch = 3, 8
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", _port(),
           str(REPO / "tests" / "rank_batches_driver.py"), str(tmp_path),
           *_args(corpus_dir, tmp_path / "ddp", *STREAM, "--max_steps", str(steps), "--eval_strategy", "no",
                  "--do_eval", "false", "--save_strategy", "no", "--ddp_find_unused_parameters", "false",
                  *positives)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stream = corpus_sequences(corpus_dir, "train", streaming=True)
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["loader"] == "DataLoaderShard"
        part = TrainingStream(stream, seed=42, buffer_size=50, rank=rank, world_size=2, pair_users=not positives)
        expected = list(itertools.islice(part, steps * batch))
        views = 1 if positives else 2
        assert seen["sequences"] == [row["input_ids"] for row in expected for _ in range(views)]
        if not positives:
            pairs = list(zip(expected[0::2], expected[1::2]))
            assert all(a["user_id"] == b["user_id"] for a, b in pairs)
            assert any(a["input_ids"] != b["input_ids"] for a, b in pairs)  # real pairs, not only self-pairs


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (None, ["--corpus_dir", "/nonexistent/corpus"], "no such directory"),
        ("empty", [], "has no trajfm_corpus.json"),
        ("run", [], "is not a prepared corpus"),
        ("corpus", ["--data", "{corpus}/trajfm_corpus.json"], "Give either --corpus_dir"),
        ("corpus", ["--max_seq_length", "128"], "pass --max_seq_length 64"),
    ],
)
def test_bad_corpus_dir_fails_at_startup(corpus_dir, streamed, tmp_path, make, extra, message):
    folder = {"empty": tmp_path, "run": streamed[0], "corpus": corpus_dir}.get(make)
    argv = [*TINY, *LENGTH, "--output_dir", str(tmp_path / "out")]
    argv += ["--corpus_dir", str(folder)] if folder else []
    argv += [e.replace("{corpus}", str(corpus_dir)) for e in extra]
    with pytest.raises(ValueError, match=re.escape(message)):
        run_mtm.main(argv)
    assert not (tmp_path / "out").exists()


def test_default_max_seq_length_and_another_tokenizer_are_refused(corpus_dir, tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=re.escape("--max_seq_length 512 differs")):
        run_mtm.main(["--corpus_dir", str(corpus_dir), *TINY, "--output_dir", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="is not the tokenizer of --corpus_dir"):
        run_mtm.main(_args(corpus_dir, tmp_path / "b", "--tokenizer_name", str(tiny_checkpoint["path"])))
