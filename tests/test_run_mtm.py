"""run_mtm.py end to end on a tiny synthetic corpus: metrics, loadable checkpoint, split, resume, 2-process DDP, and
start-up failures on bad arguments."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h3
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, TrainerCallback  # noqa: E402

import run_mtm  # noqa: E402
from modeling_trajfm import DataCollatorWithTrajectoryPadding, TrajBertForMaskedTrajectoryModeling  # noqa: E402
from tokenization_trajfm import CorpusConfig, CorpusDescription  # noqa: E402

TINY = [
    "--synthetic_users",
    "60",
    "--synthetic_days",
    "14",
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "1",
    "--num_attention_heads",
    "2",
    "--intermediate_size",
    "64",
    "--vocab_size",
    "150",
    "--max_seq_length",
    "64",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "16",
    "--learning_rate",
    "3e-3",
    "--disable_tqdm",
    "true",
    "--use_cpu",
    "--dataloader_num_workers",
    "0",
]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TORCHRUN = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")


def _args(out: Path, *extra: str) -> list[str]:
    return [*TINY, "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def basic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mtm") / "out"
    result = run_mtm.main(
        _args(out, "--max_steps", "12", "--eval_steps", "6", "--save_steps", "6", "--logging_steps", "2")
    )
    return out, result


def test_metrics_and_outputs(basic_run):
    out, result = basic_run
    metrics = json.loads((out / "all_results.json").read_text())
    assert 1 < metrics["eval_perplexity"] < float("inf")
    assert abs(metrics["eval_perplexity"] - torch.tensor(metrics["eval_loss"]).exp().item()) < 1e-3
    assert 1 < metrics["init_eval_perplexity"] < float("inf")  # step-0 (random init) perplexity
    top1, top5 = metrics["eval_hexagon_acc_top1"], metrics["eval_hexagon_acc_top5"]
    assert 0 <= top1 <= top5 <= 1
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_perplexity" in e]
    assert evals[0]["step"] == 0 and len(evals) >= 3  # step 0, 6, 12
    for name in (
        "training_curves.png",
        "README.md",
        "trajfm_corpus.json",
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.json",
        "training_args.bin",
        "configuration_trajbert.py",
        "modeling_trajbert.py",
        "tokenization_trajfm.py",
    ):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The defaults chosen on validation (README): the contrastive term at 1.0 with same-user positives, and the
    # hierarchy spelling.
    assert json.loads((out / "config.json").read_text())["contrastive_weight"] == 1.0
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["spelling"] == "hierarchy"
    assert tokenizer_config["gap_break_minutes"] == CorpusConfig().max_gap_minutes  # gap grid edge on the break
    assert any("contrastive_loss" in entry for entry in state["log_history"])
    card = (out / "README.md").read_text()
    assert "model-index" in card and "perplexity" in card and f"{metrics['eval_perplexity']:.4g}" in card
    assert "weight 1.0" in card and "and so are the trajectories of the same user" in card
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert {
        "AutoConfig",
        "AutoModel",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoTokenizer",
    } <= set(auto_map)


def test_checkpoint_reloads_identically(basic_run):
    out, result = basic_run
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == result.tokenizer.get_vocab()
    validation = result.datasets["validation"]
    features = [validation[i] for i in range(min(8, len(validation)))]
    batch = DataCollatorWithTrajectoryPadding(tokenizer)(features)
    batch = {
        k: v
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "token_type_ids", "hexagon_ids", "level_ids", "hour_ids", "gap_ids")
    }
    with torch.no_grad():
        expected = result.model.eval()(**batch).logits
        got = model(**batch).logits
    torch.testing.assert_close(got, expected)
    # The tokenizer from the folder encodes like the in-memory one.
    cells = [[int(c) for c in tokenizer.decode_cells(features[0]["input_ids"], as_int=True)]]
    assert tokenizer(cells=cells)["input_ids"] == result.tokenizer(cells=cells)["input_ids"]


def test_user_split(basic_run):
    out, result = basic_run
    description = CorpusDescription.load(out)
    split = description.split
    assert split.heldout_users == result.split["heldout"]
    heldout = set(split.heldout_users)
    train_users = set(result.datasets["train"]["user_id"])
    validation_users = set(result.datasets["validation"]["user_id"])
    assert heldout and train_users and validation_users
    assert not heldout & train_users and not heldout & validation_users
    assert not train_users & validation_users
    assert set(split.validation_users) == validation_users
    assert description.counts["train"]["users"] == len(train_users) and description.report["trajectories_kept"] > 0
    assert description.config.synthetic_users == 60  # read back whole: fine-tuning rebuilds the same corpus


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "out"
    run_mtm.main(_args(out, *RESUME_RUN))
    return out


RESUME_RUN = ("--max_steps", "12", "--save_steps", "4", "--eval_steps", "4", "--logging_steps", "1")


@pytest.mark.parametrize(("point", "step", "resumes_from"),
                         [("after_checkpoint", 4, 4), ("mid_step", 7, 4), ("mid_save", 8, 4)])
def test_killed_and_resumed_run_is_bit_identical(uninterrupted, tmp_path, point, step, resumes_from, capsys):
    """SIGKILL after a checkpoint, inside an optimizer step, or while a checkpoint is being written; the re-run
    resumes from the last COMPLETE checkpoint and ends with exactly the weights of an uninterrupted run."""
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # same threads as this process: same float sums
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), point, str(step),
                           *_args(out, *RESUME_RUN)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    if point == "mid_save":
        assert (out / f"checkpoint-{step}" / "model.safetensors").is_file()  # half-written
    run_mtm.main(_args(out, *RESUME_RUN))
    log = capsys.readouterr().out
    assert f"Resuming from {out / f'checkpoint-{resumes_from}'}" in log
    if point == "mid_save":
        assert f"Skipping {out / f'checkpoint-{step}'}: incomplete" in log
    expected, got = _weights(uninterrupted), _weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    state = json.loads((out / "trainer_state.json").read_text())
    full = json.loads((uninterrupted / "trainer_state.json").read_text())
    losses = {e["step"]: e["loss"] for e in full["log_history"] if "loss" in e}
    assert {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e and e["step"] > resumes_from} == {
        k: v for k, v in losses.items() if k > resumes_from}


def test_output_dir_is_protected(uninterrupted, tmp_path):
    # A finished run is not re-run as a no-op that rewrites its results.
    results = (uninterrupted / "all_results.json").read_text()
    with pytest.raises(ValueError, match="holds a finished run"):
        run_mtm.main(_args(uninterrupted, *RESUME_RUN))
    assert (uninterrupted / "all_results.json").read_text() == results
    # A folder with files of something else.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite_output_dir to replace them"):
        run_mtm.main(_args(other, "--max_steps", "2"))
    # Never into the folder the model or tokenizer is read from.
    with pytest.raises(ValueError, match="the folder the model is loaded from"):
        run_mtm.main(_args(uninterrupted, "--model_name_or_path", str(uninterrupted), "--max_steps", "2"))


def test_resume_with_changed_arguments_is_refused(tmp_path):
    out = tmp_path / "changed"
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # same threads as this process: same float sums
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), "after_checkpoint", "2",
                           *_args(out, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with pytest.raises(ValueError, match=r"training.learning_rate: 0.003 -> 0.005") as error:
        run_mtm.main(_args(out, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no", "--learning_rate",
                           "5e-3", "--vocab_size", "300"))
    assert "model.vocab_size: 150 -> 300" in str(error.value)
    # A run recorded before an argument existed resumes with what it trained with then; for an argument whose default
    # changed since (same-user positives), that is not the default, which is refused rather than changing the run.
    record = json.loads((out / "trajfm_run.json").read_text())
    del record["arguments"]["mtm"]["contrastive_positives"], record["arguments"]["mtm"]["mask_span"]
    (out / "trajfm_run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"mtm.contrastive_positives: 'views' \(recorded before the argument "
                                         r"existed\) -> 'user'") as error:
        run_mtm.main(_args(out, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no"))
    assert "mask_span" not in str(error.value)  # added later with the old behaviour as its default
    run_mtm.main(_args(out, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no",
                       "--contrastive_positives", "views"))
    # Without the contrastive term positives mean nothing: a run recorded with either resumes with the default.
    mtm_only = tmp_path / "mtm-only"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), "after_checkpoint", "2",
                           *_args(mtm_only, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no",
                                  "--contrastive_weight", "0", "--contrastive_positives", "views")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_mtm.main(_args(mtm_only, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no",
                       "--contrastive_weight", "0"))
    assert json.loads((mtm_only / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    # --overwrite_output_dir starts again from scratch and drops the old checkpoints.
    run_mtm.main(_args(out, "--max_steps", "2", "--save_steps", "2", "--eval_strategy", "no",
                       "--overwrite_output_dir"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_torchrun_two_processes_same_format(basic_run, tmp_path):
    single, _ = basic_run
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        TORCHRUN,
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(ROOT / "run_mtm.py"),
        *_args(
            out, "--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--ddp_find_unused_parameters", "false"
        ),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def files(folder: Path) -> set[str]:
        return {p.name for p in folder.iterdir() if p.is_file()}

    assert files(out) == files(single)
    config_single = json.loads((single / "config.json").read_text())
    config_ddp = json.loads((out / "config.json").read_text())
    assert set(config_ddp) == set(config_single)
    metrics = json.loads((out / "all_results.json").read_text())
    assert set(metrics) == set(json.loads((single / "all_results.json").read_text()))
    AutoModelForMaskedLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "x.csv", "--reader", "nope"], "Unknown --reader 'nope'"),
        (["--data", "/nonexistent/checkins.csv"], "no such file"),
        (["--mlm_probability", "1.5"], "--mlm_probability must be in (0, 1)"),
        (["--mlm_probability", "0"], "--mlm_probability must be in (0, 1)"),
        (["--mask_replace_prob", "0.8", "--random_replace_prob", "0.3"], "must be <= 1"),
        (["--max_seq_length", "8"], "9 'hierarchy' sub-tokens plus 2 special tokens; use --max_seq_length >= 11"),
        (["--max_seq_length", "8", "--spelling", "hex"], "--max_seq_length >= 12"),
        (["--streaming"], "--max_steps"),
        (["--contrastive_weight", "0.5", "--pack_sequences", "true"], "drop --pack_sequences true"),
        (["--contrastive_weight", "-1"], "--contrastive_weight must be >= 0"),
        (["--contrastive_positives", "trip"], "--contrastive_positives must be one of views, user"),
        (["--contrastive_views", "crops"], "--contrastive_views must be one of masked, pieces"),
        (["--mask_span", "0"], "--mask_span must be at least 1"),
        (["--contrastive_views", "pieces", "--contrastive_weight", "0"], "give --contrastive_weight > 0"),
        (["--visible_token_weight", "-0.5"], "--visible_token_weight must be >= 0"),
        (["--contrastive_batches", "district"], "--contrastive_batches must be one of random, nearby"),
        (["--contrastive_batches", "nearby", "--contrastive_weight", "0"], "give --contrastive_weight > 0"),
        (["--contrastive_batches", "nearby", "--streaming", "--max_steps", "2"], "--contrastive_batches random"),
        (["--contrastive_positives", "user", "--per_device_train_batch_size", "3"], "even --per_device_train"),
        (["--spelling", "base32"], "Unknown --spelling 'base32': choose one of hex, hierarchy"),
        (["--push_to_hub", "--hub_model_id", "user/x"], "offline mode"),
        (["--config_overrides", "use_match_embeddings=true"], "its table would never train"),
    ],
)
def test_bad_arguments_fail_at_startup(tmp_path, monkeypatch, extra, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "x.csv" in extra:
        (tmp_path / "x.csv").write_text("user_id,latitude,longitude,timestamp\n")
        extra = [str(tmp_path / "x.csv") if e == "x.csv" else e for e in extra]
    with pytest.raises(ValueError, match=re.escape(message)):
        run_mtm.main(_args(tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def test_continuing_from_a_checkpoint_with_a_pair_match_table_is_refused(tmp_path):
    """MTM never feeds the pair match table (single trajectories), so a checkpoint carrying one is not continued."""
    from modeling_trajfm.pretraining import MTMArguments, MTMModelArguments, build_model

    fixture = ROOT / "tests" / "fixtures" / "tiny-trajbert"
    tokenizer = AutoTokenizer.from_pretrained(fixture)
    config = AutoConfig.from_pretrained(fixture)
    config.use_match_embeddings = True
    TrajBertForMaskedTrajectoryModeling(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="its table would never train"):
        build_model(MTMModelArguments(model_name_or_path=str(tmp_path)), MTMArguments(), tokenizer)


def test_a_loaded_tokenizer_reads_the_local_time_of_the_data(caplog):
    """Continuing a checkpoint (or reusing a tokenizer) on data of another zone: hour ids are that data's local hours,
    so the tokenizer takes the corpus's --utc_offset_minutes, and the log says so."""
    from modeling_trajfm.pretraining import MTMArguments, MTMModelArguments, load_tokenizer

    fixture = str(ROOT / "tests" / "fixtures" / "tiny-trajbert")
    model_args, mtm_args = MTMModelArguments(model_name_or_path=fixture), MTMArguments(max_seq_length=64)
    saved = AutoTokenizer.from_pretrained(fixture)
    own = saved.utc_offset_minutes
    with caplog.at_level("INFO", logger="tokenization_trajfm"):
        east = load_tokenizer(model_args, CorpusConfig(utc_offset_minutes=own + 480), mtm_args, None, None)
    assert east.utc_offset_minutes == own + 480
    assert f"UTC offset {own} min becomes {own + 480} min" in caplog.text
    assert load_tokenizer(model_args, CorpusConfig(utc_offset_minutes=own), mtm_args, None, None
                          ).utc_offset_minutes == own
    times = np.array([1_700_000_000, 1_700_040_000])
    cells = [int(h3.latlng_to_cell(40.75, lon, east.resolution), 16) for lon in (-73.99, -73.95)]
    hours = [np.asarray(t(cells=[cells], timestamps=[times])["hour_ids"][0]) for t in (saved, east)]
    visits = hours[0] > 0
    assert np.array_equal(hours[1][visits] - 1, (hours[0][visits] - 1 + 8) % 168)


def test_streaming_trains_from_an_iterable_dataset(tmp_path):
    """Streamed with the default same-user positives: every batch is made of pairs of one user's sequences."""
    out = tmp_path / "stream"
    seen: list[list[int]] = []
    run_mtm.main(
        _args(
            out,
            "--streaming",
            "--max_steps",
            "4",
            "--eval_steps",
            "4",
            "--save_steps",
            "4",
            "--logging_steps",
            "2",
            "--shuffle_buffer_size",
            "50",
        ),
        callbacks=[_TrainingInputs(seen, _view_ids)],
    )
    assert len(seen) == 4
    for views in seen:  # 8 sequences x 2 views; a user's rows come in fours (a pair, or one sequence twice)
        assert len(views) == 16 and all(count % 4 == 0 for count in np.bincount(views))
    metrics = json.loads((out / "all_results.json").read_text())
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert isinstance(AutoModelForMaskedLM.from_pretrained(out), TrajBertForMaskedTrajectoryModeling)


def test_resume_with_other_held_out_users_is_refused_before_training(tmp_path):
    """Same arguments, but the data behind them changed: the recorded held-out users no longer match."""
    out = tmp_path / "resplit"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = _args(out, "--max_steps", "4", "--save_steps", "2", "--eval_strategy", "no")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), "after_checkpoint", "2", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    description = json.loads((out / "trajfm_corpus.json").read_text())
    description["split"]["heldout_users"] = description["split"]["heldout_users"][1:]
    (out / "trajfm_corpus.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="held-out users differ"):
        run_mtm.main(args)
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2


def test_contrastive_pretraining(tmp_path, capsys):
    """Two masked views per trajectory in training (twice the rows), MTM-only evaluation, the weight in the config."""
    out = tmp_path / "contrastive"
    seen = []
    result = run_mtm.main(_args(out, "--max_steps", "2", "--eval_steps", "2", "--contrastive_weight", "0.5",
                                "--train_sampling_strategy", "random", "--per_device_train_batch_size", "4",
                                "--logging_steps", "1"),
                          callbacks=[_TrainingInputs(seen, lambda kw: kw["input_ids"].shape[0])])
    assert "Packing:" not in capsys.readouterr().out  # auto never packs with the contrastive term
    assert seen == [8, 8]
    config = AutoConfig.from_pretrained(out)
    assert (config.contrastive_weight, config.contrastive_temperature) == (0.5, 0.1)
    assert result.metrics["eval_perplexity"] == pytest.approx(math.exp(result.metrics["eval_loss"]))
    assert "Trajectory-level contrastive term: weight 0.5" in (out / "README.md").read_text()
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    terms = [entry["contrastive_loss"] for entry in logs if "loss" in entry]
    assert len(terms) == 2 and all(0 < term < 10 for term in terms)  # logged with every training loss
    assert not any("contrastive_loss" in entry for entry in logs if "eval_loss" in entry)


def test_contrastive_pretraining_with_same_user_positives(tmp_path):
    """Batches of same-user pairs: every user in a batch has 2 trajectories x 2 views (or a multiple), and the
    contrastive term's labels are the users."""
    out = tmp_path / "user-positives"
    seen: list[list[int]] = []
    run_mtm.main(_args(out, "--max_steps", "3", "--eval_strategy", "no", "--contrastive_weight", "0.5",
                       "--contrastive_positives", "user", "--per_device_train_batch_size", "6"),
                 callbacks=[_TrainingInputs(seen, _view_ids)])
    assert len(seen) == 3
    for views in seen:
        assert len(views) == 12 and all(count % 4 == 0 for count in np.bincount(views))
    card = (out / "README.md").read_text()
    assert "and so are the trajectories of the same user" in card


def test_visible_token_term_is_trained_and_logged(tmp_path):
    out = tmp_path / "visible"
    run_mtm.main(_args(out, "--max_steps", "4", "--logging_steps", "2", "--eval_strategy", "no",
                       "--visible_token_weight", "0.5"))
    logged = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "visible_token_loss" in entry]
    assert len(logged) == 2 and all(0 < entry["visible_token_loss"] < entry["loss"] for entry in logged)
    assert AutoModelForMaskedLM.from_pretrained(out).config.visible_token_weight == 0.5
    assert "every visible hexagon token also predicts itself (weight 0.5)" in (out / "README.md").read_text()


def test_frozen_token_table_stays_at_its_initial_values(tmp_path):
    out = tmp_path / "frozen"
    initial: dict[str, torch.Tensor] = {}
    run_mtm.main(_args(out, "--max_steps", "2", "--eval_strategy", "no", "--freeze_token_embeddings"),
                 callbacks=[_InitialWeights(initial)])
    trained = AutoModelForMaskedLM.from_pretrained(out)
    assert torch.equal(trained.get_input_embeddings().weight, initial["table"])
    assert torch.equal(trained.get_output_embeddings().weight, initial["table"])  # the tied decoder with it
    assert not torch.equal(trained.trajbert.embeddings.position_embeddings.weight, initial["positions"])
    assert "the token table kept at its initial values" in (out / "README.md").read_text()


class _InitialWeights(TrainerCallback):
    """Copies the token table and the position embeddings into `initial` as training starts."""

    def __init__(self, initial: dict[str, torch.Tensor]):
        self.initial = initial

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.initial.update(table=model.get_input_embeddings().weight.detach().clone(),
                            positions=model.trajbert.embeddings.position_embeddings.weight.detach().clone())


def test_masked_runs_reach_training_and_the_card(tmp_path):
    out = tmp_path / "runs"
    seen: list[list[set[int]]] = []
    run_mtm.main(_args(out, "--max_steps", "2", "--eval_strategy", "no", "--mask_span", "3"),
                 callbacks=[_TrainingInputs(seen, _masked_hexagons)])
    rows = [hexagons for batch in seen for hexagons in batch]
    # Hexagons masked one by one at 20% rarely make three in a row; runs of three nearly always do.
    assert sum(any({h + 1, h + 2} <= row for h in row) for row in rows) > 0.8 * len(rows)
    assert "in runs of 3 consecutive hexagons" in (out / "README.md").read_text()


def test_contrastive_pretraining_with_pieces_as_views(tmp_path):
    """`--contrastive_views pieces`: a trajectory's two rows hold disjoint runs of its hexagons, numbered from 1."""
    out = tmp_path / "pieces"
    seen: list[tuple[list[int], list[int]]] = []
    run_mtm.main(_args(out, "--max_steps", "2", "--eval_strategy", "no", "--contrastive_weight", "0.5",
                       "--contrastive_positives", "views", "--contrastive_views", "pieces"),
                 callbacks=[_TrainingInputs(seen, lambda kw: (_view_ids(kw), kw["hexagon_ids"].amax(dim=1).tolist()))])
    assert len(seen) == 2
    for views, hexagons in seen:
        assert views == [v for v in range(len(views) // 2) for _ in range(2)]
        assert all(n >= 1 for n in hexagons)
    # Masked copies show a trajectory's every hexagon twice; pieces split them, mostly unevenly.
    assert any(first != second for _, hexagons in seen for first, second in zip(hexagons[::2], hexagons[1::2]))
    assert "two disjoint masked pieces of each trajectory are positives" in (out / "README.md").read_text()


def test_contrastive_pretraining_with_nearby_batches(tmp_path):
    """`--contrastive_batches nearby`: over one epoch, each training batch holds the trajectories of a run of
    consecutive places (most visited cells) in H3 index order; only the epoch's last batch, of the units left over
    at both ends of that order, may not."""
    out = tmp_path / "nearby"
    seen: list[list[list[int]]] = []
    run_mtm.main(_args(out, "--num_train_epochs", "1", "--eval_strategy", "no", "--contrastive_weight", "0.5",
                       "--contrastive_positives", "views", "--contrastive_batches", "nearby"),
                 callbacks=[_TrainingInputs(seen, _unmasked_first_views)])
    tokenizer = AutoTokenizer.from_pretrained(out)

    def place(row: list[int]) -> int:
        cells, counts = np.unique(tokenizer.decode_cells(row, as_int=True), return_counts=True)
        return int(cells[np.argmax(counts)])

    batches = [sorted(place(row) for row in batch) for batch in seen]
    everywhere = sorted(p for batch in batches for p in batch)  # one epoch: every training sequence once
    assert len(batches) >= 4 and len(everywhere) == json.loads((out / "all_results.json").read_text())["train_samples"]
    runs = [any(everywhere[i:i + len(b)] == b for i in range(len(everywhere))) for b in batches]
    assert sum(runs) >= len(batches) - 1
    assert "each batch holds trajectories from one district" in (out / "README.md").read_text()


class _TrainingInputs(TrainerCallback):
    """Records `read(model keyword inputs)` for every training batch the model sees."""

    def __init__(self, seen: list, read: Callable[[dict[str, torch.Tensor]], Any]):
        self.seen = seen
        self.read = read

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        seen, read = self.seen, self.read
        model.register_forward_pre_hook(
            lambda module, inputs, kw: seen.append(read(kw)) if module.training else None, with_kwargs=True)


def _view_ids(kw: dict[str, torch.Tensor]) -> list[int]:
    return kw["view_ids"].tolist()


def _unmasked_first_views(kw: dict[str, torch.Tensor]) -> list[list[int]]:
    """The token ids of each trajectory's first view with its masked tokens restored from the labels."""
    ids = torch.where(kw["labels"] != -100, kw["labels"], kw["input_ids"])
    return ids[kw["view_ids"].diff(prepend=torch.tensor([-1])) != 0].tolist()


def _masked_hexagons(kw: dict[str, torch.Tensor]) -> list[set[int]]:
    return [set(hexagons[labels != -100].tolist()) for hexagons, labels in zip(kw["hexagon_ids"], kw["labels"],
                                                                                 strict=True)]


@pytest.mark.parametrize(("choice", "sampling", "packs"), [("true", "group_by_length", True),
                                                           ("false", "random", False),
                                                           ("auto", "group_by_length", False),
                                                           ("auto", "random", True)])
def test_packing_choice(tmp_path, capsys, choice, sampling, packs):
    """`auto` packs only random batches that would be mostly padding (the synthetic city's are at 128 tokens: 47%);
    packing is for MTM alone (the default contrastive term needs one trajectory per row)."""
    out = tmp_path / choice
    result = run_mtm.main(_args(out, "--max_steps", "2", "--eval_strategy", "no", "--pack_sequences", choice,
                                "--train_sampling_strategy", sampling, "--contrastive_weight", "0",
                                "--max_seq_length", "128"))
    log = capsys.readouterr().out
    assert ("Packing:" in log) == packs
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
