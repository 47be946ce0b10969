"""run_finetune.py end to end on a tiny synthetic corpus and the tiny (untrained) checkpoint of conftest.py, and the
seams under it (held-out users, corpus overrides, task builders from a TaskConfig, cards, bad arguments)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_CORPUS_ARGS

import run_finetune
from modeling_trajfm import TrajBertForHexagonPrediction
from modeling_trajfm.cards import build_finetune_card
from modeling_trajfm.downstream import BUILDERS, PreparedTask, TaskConfig, folds, task_metrics
from modeling_trajfm.downstream import examples as T
from modeling_trajfm.downstream.compare import TEST_SCORES_FILE
from modeling_trajfm.downstream.metrics import ranking_metrics
from modeling_trajfm.finetuning import (
    load_heldout_trajectories,
    load_task_data,
    load_tokenizer_and_config,
    resolve_corpus,
    resolve_heldout_users,
)
from tokenization_trajfm import (
    CorpusConfig,
    CorpusDescription,
    SegmentationConfig,
    TrajInputError,
    TrajTokenizer,
    build_trajectories,
    load_checkins,
    select_users,
)

SYNTHETIC = dict(synthetic_users=36, synthetic_days=21, synthetic_seed=3)
DATA_ARGS = TINY_CORPUS_ARGS
TINY_TRAINING = ["--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--max_steps", "3",
                 "--logging_steps", "1", "--max_seq_length", "64", "--max_input_visits", "16",
                 "--max_segment_visits", "6", "--use_cpu", "--disable_tqdm", "true", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def _run(checkpoint, out, *extra):
    argv = ["--model_name_or_path", str(checkpoint["path"]), "--output_dir", str(out), *DATA_ARGS, *TINY_TRAINING,
            *extra]
    return run_finetune.main(argv)


def _read(path):
    return json.loads(path.read_text())


def _in_unit(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.parametrize(
    "task, form, keys",
    [
        ("next_subtrajectory", "linking", ["test_f1", "test_accuracy", "test_f1_same_user_negatives",
                                           "test_f1_other_user_negatives"]),
        ("user_association", "linking", ["test_accuracy@1", "test_accuracy@5", "test_macro_f1", "test_mrr"]),
        ("user_association", "binary", ["test_f1", "test_accuracy"]),
    ],
)
def test_classification_tasks(checkpoint, tmp_path, task, form, keys):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    _run(checkpoint, out, "--task", task, "--association_form", form,
         *(["--form_selection", "significant"] if form == "binary" else []))
    results = _read(out / "all_results.json")
    for key in keys:
        assert _in_unit(results[key]), (key, results)
    assert results["test_samples"] > 0 and "train_loss" in results
    card = (out / "README.md").read_text()
    assert card.count("model-index") == 1
    assert "learning rate 0.0002 (task head 0.003)" in card and "of at most 1 (early stopping" in card  # recipe
    assert (out / "task_report.json").is_file() and (out / "task_data.json").is_file()

    report = _read(out / "task_report.json")
    encoder_forms = {"next_subtrajectory": ["similarity"], "linking": ["retrieval_prototype", "retrieval_knn"],
                     "binary": ["similarity"]}[form if task == "user_association" else task]
    form_names = [*encoder_forms, *(f"{name}+profile" for name in encoder_forms)]  # each also fused with the profile
    assert report["answer_form"] in ["classifier", *form_names] and results["answer_form"] == report["answer_form"]
    assert ("encoder_weight" in report) == report["answer_form"].endswith("+profile")
    assert set(report["encoder_weights"]) == {f"{name}+profile" for name in encoder_forms}  # each fused form's
    assert set(report["validation_by_form"]) == {"classifier", *form_names}
    eligible = ["classifier", *form_names]  # the default, best: the best on validation answers
    if form == "binary":  # run with --form_selection significant: a form answers only when it clearly wins
        shares = report["validation_share_beating_classifier"]
        assert set(shares) == set(form_names) and all(_in_unit(share) for share in shares.values())
        eligible = ["classifier", *(name for name in form_names if shares[name] >= 0.95)]
    assert report["form_selection"] == ("significant" if form == "binary" else "best")
    chosen = max(report["validation_by_form"][name] for name in eligible)
    assert report["answer_form"] in eligible and report["validation_by_form"][report["answer_form"]] == chosen
    with np.load(out / "validation_scores.npz") as saved:  # every candidate's validation scores, to audit the choice
        assert set(saved.files) == {"label", "group", "classifier", *form_names}
        assert saved["classifier"].shape == (len(saved["label"]), _n_labels(report))
    for name in ["classifier", *form_names]:
        assert _in_unit(results[f"test_{name}_{keys[0].removeprefix('test_')}"])
    assert results[keys[0]] == results[f"test_{report['answer_form']}_{keys[0].removeprefix('test_')}"]

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == _n_labels(report)
    tokenizer = TrajTokenizer.from_pretrained(out)
    batch = tokenizer(cells=[_some_cells(checkpoint)], return_tensors="pt")
    again = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, again(**batch).logits)


def _n_labels(report: dict) -> int:
    return 2 if report["task"].endswith(("binary", "subtrajectory")) else report["split"]["num_users"]


def _synthetic_kwargs():
    return dict(synthetic_users=SYNTHETIC["synthetic_users"], synthetic_days=SYNTHETIC["synthetic_days"],
                seed=SYNTHETIC["synthetic_seed"])


def _some_cells(checkpoint):
    checkins = load_checkins(None, **_synthetic_kwargs())
    table, _ = build_trajectories(select_users(checkins, checkpoint["heldout"][:2]), 8, 10.0,
                                  SegmentationConfig(max_gap_minutes=360))
    return table.column("cells").to_pylist()[0][:10]


def test_answer_form_classifier_keeps_the_classifier(checkpoint, tmp_path):
    out = tmp_path / "classifier"
    _run(checkpoint, out, "--task", "user_association", "--association_form", "binary", "--answer_form", "classifier",
         "--profile_fusion", "false")
    results = _read(out / "all_results.json")
    assert results["answer_form"] == "classifier" and results["test_f1"] == results["test_classifier_f1"]
    assert "form_selection" not in _read(out / "task_report.json")  # no rule picked the answer
    assert "test_similarity_f1" in results and not any("+profile" in key for key in results)  # encoder forms only
    with pytest.raises(ValueError, match="Unknown --answer_form 'best'"):
        _run(checkpoint, tmp_path / "bad", "--answer_form", "best")
    with pytest.raises(ValueError, match="Unknown --form_selection 'auto': choose one of best, significant"):
        _run(checkpoint, tmp_path / "bad", "--form_selection", "auto")
    with pytest.raises(ValueError, match="--linking_contrastive_steps must be >= 0"):
        _run(checkpoint, tmp_path / "bad", "--linking_contrastive_steps", "-1")


def test_siamese_pair_encoding(checkpoint, tmp_path):
    """--pair_encoding siamese: pair tasks' classifier encodes A and B apart (saved in the config, usable after
    loading with a pair); tasks of one trajectory keep the cross encoding."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "siamese"
    _run(checkpoint, out, "--task", "next_subtrajectory", "--pair_encoding", "siamese", "--answer_form", "classifier")
    assert _in_unit(_read(out / "all_results.json")["test_f1"])
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.pair_encoding == "siamese" and model.classifier.in_features == 4 * model.config.hidden_size
    cells = _some_cells(checkpoint)
    batch = TrajTokenizer.from_pretrained(out)(cells=[cells[:5]], pair_cells=[cells[5:]], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 2)
    linking = tmp_path / "linking"
    _run(checkpoint, linking, "--task", "user_association", "--pair_encoding", "siamese", "--answer_form", "classifier")
    assert _read(linking / "config.json")["pair_encoding"] == "cross"
    with pytest.raises(ValueError, match="--pair_encoding must be one of cross, siamese"):
        _run(checkpoint, tmp_path / "bad", "--pair_encoding", "late")


def test_pair_match_embeddings(checkpoint, tmp_path):
    """Same-user pairs' cross classifier gets the match table by default (saved in its config, usable after loading
    with a pair); --pair_match_entries adds next sub-trajectory, `none` none, and the siamese classifier never."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "binary"
    _run(checkpoint, out, "--task", "user_association", "--association_form", "binary", "--answer_form", "classifier")
    assert _in_unit(_read(out / "all_results.json")["test_f1"])
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.use_match_embeddings and model.trajbert.embeddings.match_embeddings is not None
    cells = _some_cells(checkpoint)
    tokenizer = TrajTokenizer.from_pretrained(out)
    shared = tokenizer(cells=[cells[:5]], pair_cells=[cells[3:8]], return_tensors="pt")
    elsewhere = [cell for cell in cells[5:] if cell not in cells[:5]]
    assert elsewhere
    apart = tokenizer(cells=[cells[:5]], pair_cells=[elsewhere], return_tensors="pt")
    with torch.no_grad():
        before = {"shared": model(**shared).logits, "apart": model(**apart).logits}
        model.trajbert.embeddings.match_embeddings.weight.zero_()  # the match table off: only shared cells move
        assert before["shared"].shape == (1, 2) and not torch.equal(model(**shared).logits, before["shared"])
        torch.testing.assert_close(model(**apart).logits, before["apart"])
    for name, extra, matched in (
        ("next", [], False),
        ("next_matched", ["--pair_match_entries", "next_subtrajectory"], True),
        ("binary_none", ["--task", "user_association", "--association_form", "binary", "--pair_match_entries", "none"],
         False),
        ("siamese", ["--pair_encoding", "siamese", "--pair_match_entries", "next_subtrajectory"], False),
    ):
        _run(checkpoint, tmp_path / name, "--answer_form", "classifier", *extra)
        assert _read(tmp_path / name / "config.json")["use_match_embeddings"] is matched, name
    with pytest.raises(ValueError, match="--pair_match_entries destination: choose among next_subtrajectory"):
        _run(checkpoint, tmp_path / "bad", "--pair_match_entries", "destination")


def test_time_embeddings_added_at_fine_tuning(checkpoint, tmp_path):
    """On a checkpoint pre-trained without time embeddings, fine-tuning adds them (saved in its config) when its
    tokenizer records times (the default) or when asked, so B's gap from A's last visit changes the answer; with
    --use_time_embeddings false the classifier cannot tell when B starts."""
    from transformers import AutoModelForSequenceClassification

    untimed = tmp_path / "untimed-checkpoint"
    shutil.copytree(checkpoint["path"], untimed)
    config = _read(untimed / "config.json")
    (untimed / "config.json").write_text(json.dumps({**config, "use_time_embeddings": False}))
    cells = _some_cells(checkpoint)
    start = 1_704_067_200
    times_a = [start + 600 * i for i in range(5)]

    def gap_sensitivity(out):
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        tokenizer = TrajTokenizer.from_pretrained(out)
        follows, before = (tokenizer(cells=[cells[:5]], timestamps=[times_a], pair_cells=[cells[5:]],
                                     pair_timestamps=[[first + 600 * i for i in range(len(cells) - 5)]],
                                     return_tensors="pt")
                           for first in (times_a[-1] + 1800, times_a[-1] + 1800 - 7 * 86_400))  # same hours of week
        with torch.no_grad():
            return model.config.use_time_embeddings, (model(**follows).logits - model(**before).logits).abs().max()

    timed = tmp_path / "timed"
    _run({"path": untimed}, timed, "--task", "next_subtrajectory", "--use_time_embeddings", "true",
         "--answer_form", "classifier")
    on, change = gap_sensitivity(timed)
    assert on and change > 0
    default = tmp_path / "default"
    _run({"path": untimed}, default, "--task", "next_subtrajectory", "--answer_form", "classifier")
    assert gap_sensitivity(default)[0]
    off = tmp_path / "off"
    _run({"path": untimed}, off, "--task", "next_subtrajectory", "--use_time_embeddings", "false",
         "--answer_form", "classifier")
    on, change = gap_sensitivity(off)
    assert not on and change == 0


def test_time_embeddings_need_a_tokenizer_with_times(checkpoint, tmp_path, monkeypatch):
    from modeling_trajfm import finetuning

    load = finetuning.load_task_data

    def without_times(*args, **kwargs):
        data = load(*args, **kwargs)
        data.tokenizer.time_features = False
        return data

    monkeypatch.setattr(finetuning, "load_task_data", without_times)
    with pytest.raises(ValueError, match="--use_time_embeddings needs visit times"):
        _run(checkpoint, tmp_path / "no-times", "--task", "next_subtrajectory", "--use_time_embeddings", "true")


def test_destination(checkpoint, tmp_path):
    out = tmp_path / "dest"
    _run(checkpoint, out, "--task", "destination", "--prefix_fraction", "0.25")
    results = _read(out / "all_results.json")
    for key in ("test_accuracy@1", "test_accuracy@5", "test_mrr", "test_macro_f1"):
        assert _in_unit(results[key]), (key, results)
    assert results["test_accuracy@1"] <= results["test_accuracy@5"]
    assert results["test_distance_km_mean"] >= 0 and results["test_distance_km_median"] >= 0
    info = _read(out / "task_report.json")["split"]
    assert info["num_candidates"] >= 2 and 0 <= info["test_destinations_not_in_candidates"] <= info["test_examples"]

    model = TrajBertForHexagonPrediction.from_pretrained(out).eval()
    assert len(model.config.hexagon_candidates) == info["num_candidates"] == model.num_labels
    tokenizer = TrajTokenizer.from_pretrained(out)
    batch = tokenizer(cells=[_some_cells(checkpoint)], return_tensors="pt")
    again = TrajBertForHexagonPrediction.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**batch).logits
        torch.testing.assert_close(logits, again(**batch).logits)
    assert logits.shape[-1] == info["num_candidates"]


def test_destination_with_user_context(checkpoint, tmp_path):
    out = tmp_path / "dest_context"
    _run(checkpoint, out, "--task", "destination", "--destination_user_context")
    assert _in_unit(_read(out / "all_results.json")["test_accuracy@1"])
    report = _read(out / "task_report.json")
    assert report["task_config"]["destination_user_context"] is True
    assert 0 < report["split"]["test_examples_with_history"] <= report["split"]["test_examples"]
    assert report["baselines"]["user_most_frequent_cell"]["inputs"] == "user history"
    # The classifier and its fusion with the user's cell frequencies compete on validation; both are scored on test.
    assert report["answer_form"] in ("classifier", "classifier+history")
    assert set(report["validation_by_form"]) == {"classifier", "classifier+history"}
    assert report["encoder_weights"]["classifier+history"] in (0.25, 0.5, 0.75)
    results = _read(out / "all_results.json")
    assert _in_unit(results["test_classifier+history_accuracy@1"]) and _in_unit(results["test_classifier_accuracy@1"])
    assert results["test_accuracy@1"] == results[f"test_{report['answer_form']}_accuracy@1"]
    # The saved validation scores are the selected checkpoint's, row for row: they give the logged evaluation's MRR.
    best_step = _read(out / "train_results.json")["best_step"]
    logged = next(e for e in _read(out / "trainer_state.json")["log_history"]
                  if e.get("step") == best_step and "eval_mrr" in e)
    with np.load(out / "validation_scores.npz") as saved:
        assert {"classifier", "classifier+history", "label"} <= set(saved.files)
        assert ranking_metrics(saved["classifier"], saved["label"])["mrr"] == pytest.approx(logged["eval_mrr"])


def test_compare_report(checkpoint, tmp_path):
    out = tmp_path / "cmp"
    _run(checkpoint, out, "--compare", "--tasks", "user_association", "--contrastive_steps", "2",
         "--linking_contrastive_steps", "0")
    report = _read(out / "compare_report.json")
    assert set(report["tasks"]) == {"user_association_linking", "user_association_binary"}
    for entry, steps in (("user_association_linking", 0), ("user_association_binary", 2)):
        assert _read(out / entry / "random" / "task_report.json")["contrastive_steps"] == steps
    for entry, t in report["tasks"].items():
        assert {"pretrained", "random", "baselines"} <= set(t)
        assert "majority" in t["baselines"]
        assert ("cell_profile_knn" if entry.endswith("linking") else "cell_profile_similarity") in t["baselines"]
        assert (out / entry / "pretrained" / "config.json").is_file()
        assert (out / entry / "random" / "config.json").is_file()
        assert set(t["ci95"]) == {"pretrained", "random"} | set(t["baselines"])
        for scorer, intervals in t["ci95"].items():
            value = (t[scorer] if scorer in ("pretrained", "random") else t["baselines"][scorer])[t["primary_metric"]]
            lo, hi = intervals[t["primary_metric"]]
            assert lo <= value <= hi, (entry, scorer)
        # The checkpoint was chosen on validation: selection metric recorded, checkpoints cleaned up.
        train = _read(out / entry / "pretrained" / "train_results.json")
        assert f"best_eval_{t['selection_metric']}" in train and train["validation_samples"] > 0
        assert not list((out / entry / "pretrained").glob("checkpoint-*"))
    # Recompute the documented formula from the JSON.
    f1 = {init: np.mean([t[init][t["primary_metric"]] for t in report["tasks"].values()])
          for init in ("pretrained", "random")}
    expected = 100 * (f1["pretrained"] - f1["random"]) / f1["random"] if f1["random"] else None
    if expected is None:
        assert report["avg_f1_improvement_pct"] is None
    else:
        assert math.isclose(report["avg_f1_improvement_pct"], expected, rel_tol=1e-9, abs_tol=1e-9)
    assert "avg_f1_improvement_pct_ci95" in report and report["bootstrap"]["resamples"] > 0
    # The paper's protocol (classifiers only), beside the answers' figure.
    f1 = {init: np.mean([t[init][f"classifier_{t['primary_metric']}"] for t in report["tasks"].values()])
          for init in ("pretrained", "random")}
    if f1["random"]:
        assert math.isclose(report["avg_f1_improvement_pct_classifier"],
                            100 * (f1["pretrained"] - f1["random"]) / f1["random"], rel_tol=1e-9, abs_tol=1e-9)
        lo, hi = report["avg_f1_improvement_pct_classifier_ci95"]
        assert lo <= report["avg_f1_improvement_pct_classifier"] <= hi
    for t in report["tasks"].values():  # the classifiers' own intervals (the logits are kept when a form answers)
        for init in ("pretrained", "random"):
            lo, hi = t["ci95"][init][f"classifier_{t['primary_metric']}"]
            assert lo <= t[init][f"classifier_{t['primary_metric']}"] <= hi
    assert (out / "compare_report.md").read_text().startswith("# Fine-tuning")
    # Heads beside the classifier, what each row sees, and the frozen-encoder probes (pre-trained vs random init).
    linking = report["tasks"]["user_association_linking"]
    for init in ("pretrained", "random"):
        for head in ("classifier", "retrieval_prototype", "retrieval_knn"):
            assert _in_unit(linking[init][f"{head}_accuracy@1"]), (head, linking[init])
        form = linking[init]["answer_form"]  # the answer is the form that was best on validation
        assert linking[init]["accuracy@1"] == linking[init][f"{form}_accuracy@1"]
        binary = report["tasks"]["user_association_binary"][init]
        assert binary["answer_form"] in ("classifier", "similarity", "similarity+profile")
        assert _in_unit(binary["similarity_f1"]) and _in_unit(binary["similarity+profile_f1"])
        probes = report["probes"]["tasks"]["user_association_linking"]
        assert _in_unit(probes["retrieval_knn"][init]["mrr"]) and _in_unit(probes["retrieval_prototype"][init]["mrr"])
    assert linking["inputs"] == "trajectory" and linking["baselines"]["cell_profile_knn"]["inputs"] == "trajectory"
    assert linking["same_inputs"]["baselines"] == ["majority", "cell_profile_knn"]
    for init in ("pretrained", "random"):  # the margin to the best same-inputs baseline, with its paired interval
        lo, hi = linking["same_inputs"][f"{init}_margin_ci95"]
        assert lo <= linking["same_inputs"][f"{init}_margin"] <= hi
    assert set(report["probes"]["pretrained_better_nn_linking"]) == {"retrieval_prototype", "retrieval_knn"}
    assert "## Probes: frozen encoders" in (out / "compare_report.md").read_text()
    answered = "Answered on test by the form chosen on validation (`form_selection`): pretrained"
    assert answered in (out / "compare_report.md").read_text()
    assert (out / "compare_report.png").stat().st_size > 1000
    # Same data and seeds for both inits: the two runs saw identical splits.
    pre = _read(out / "user_association_linking" / "pretrained" / "task_report.json")["split"]
    rand = _read(out / "user_association_linking" / "random" / "task_report.json")["split"]
    assert pre == rand


def test_split_hygiene(checkpoint):
    """Fine-tuning uses exactly the held-out users; no trajectory is in both train and test."""
    tokenizer, _ = load_tokenizer_and_config(str(checkpoint["path"]))
    heldout, source = resolve_heldout_users(str(checkpoint["path"]), None)
    assert sorted(heldout) == sorted(checkpoint["heldout"]) and source.endswith("trajfm_corpus.json")
    table, *_ = load_heldout_trajectories(resolve_corpus(str(checkpoint["path"])), tokenizer, heldout)
    records = T.trajectory_records(table)
    used = {r.user_id for r in records}
    assert used <= set(heldout) and not used & set(checkpoint["pretrain"])
    # Exactly the held-out users that have trajectories under these data arguments.
    checkins = load_checkins(None, **_synthetic_kwargs())
    full, _ = build_trajectories(checkins, 8, 10.0, SegmentationConfig(max_gap_minutes=360))
    with_trajectories = set(full.column("user_id").to_pylist())
    assert used == with_trajectories & set(heldout)

    config = TaskConfig(max_input_visits=16, max_segment_visits=6)
    without_validation = TaskConfig(max_input_visits=16, max_segment_visits=6, validation_fraction=0)
    for entry, builder in BUILDERS.items():
        task = builder(records, config, 0)
        train, validation, test = (_trajectories(task, split) for split in ("train", "validation", "test"))
        assert train and validation and test, entry
        assert not train & test and not validation & test and not train & validation, entry
        assert task.info["train_examples"] > 0 and task.info["test_examples"] > 0
        assert task.info["validation_examples"] == len(task.validation["label"]) > 0
        # Validation is carved from the training side: the test split is the one without validation.
        alone = builder(records, without_validation, 0)
        assert _trajectories(alone, "test") == test and not alone.validation.get("label"), entry
        assert _trajectories(alone, "train") == train | validation or task.kind == "pair", entry
        if entry == "user_association_linking":  # every class user keeps trajectories in train
            assert set(task.train["user_id"]) == set(task.label_names) >= set(task.validation["user_id"])


def _trajectories(task, split):
    columns = getattr(task, split)
    if task.kind == "pair":
        return set(columns.get("traj_id_a", [])) | set(columns.get("traj_id_b", []))
    return set(columns.get("traj_id", []))


# ----------------------------------------------------------------------------------------------- bad arguments
def _fails(checkpoint, tmp_path, match, *extra, model=None):
    argv = ["--model_name_or_path", str(model or checkpoint["path"]), "--output_dir", str(tmp_path / "bad"),
            *DATA_ARGS, *TINY_TRAINING, *extra]
    with pytest.raises(ValueError, match=match):
        run_finetune.main(argv)
    assert not (tmp_path / "bad" / "all_results.json").exists()


def test_unknown_task(checkpoint, tmp_path):
    _fails(checkpoint, tmp_path, "Unknown task 'trip_purpose'", "--task", "trip_purpose")
    _fails(checkpoint, tmp_path, "Unknown task 'nope'", "--compare", "--tasks", "destination", "nope")


def test_prefix_fraction_out_of_range(checkpoint, tmp_path):
    for value in ("0", "1", "1.5"):
        _fails(checkpoint, tmp_path, r"--prefix_fraction must be in \(0, 1\)", "--task", "destination",
               "--prefix_fraction", value)


def test_too_many_users(checkpoint, tmp_path):
    _fails(checkpoint, tmp_path, "lower --num_users", "--task", "user_association", "--num_users", "500")


def test_missing_tokenizer(checkpoint, tmp_path):
    bare = tmp_path / "no_tokenizer"
    shutil.copytree(checkpoint["path"], bare)
    for name in ("vocab.json", "tokenizer_config.json"):
        (bare / name).unlink()
    _fails(checkpoint, tmp_path, "no compatible tokenizer", "--task", "destination", model=bare)


def test_incompatible_tokenizer(checkpoint, tmp_path):
    small = tmp_path / "small_vocab"
    shutil.copytree(checkpoint["path"], small)
    config = json.loads((small / "config.json").read_text())
    config["vocab_size"] = 40
    (small / "config.json").write_text(json.dumps(config))
    _fails(checkpoint, tmp_path, "incompatible", "--task", "destination", model=small)


def test_missing_corpus_description(checkpoint, tmp_path):
    no_split = tmp_path / "no_split"
    shutil.copytree(checkpoint["path"], no_split)
    (no_split / "trajfm_corpus.json").unlink()
    _fails(checkpoint, tmp_path, "--heldout_users", "--task", "destination", model=no_split)


def _recorded(folder, **config) -> None:
    """A corpus description whose recorded data source is `config` (paths that need not exist)."""
    raw = json.loads((folder / "trajfm_corpus.json").read_text())
    raw["config"].update(config)
    (folder / "trajfm_corpus.json").write_text(json.dumps(raw))


def test_data_arguments_default_to_the_checkpoint(checkpoint, tmp_path):
    """Corpus fields not given are those recorded by pre-training; given ones win."""
    folder = tmp_path / "recorded"
    shutil.copytree(checkpoint["path"], folder)
    _, _, overrides, _ = run_finetune.parse_args(["--model_name_or_path", str(folder), "--min_points", "9"])
    assert overrides == {"min_points": 9}
    corpus = resolve_corpus(str(folder), overrides)
    assert corpus.min_points == 9 and corpus.max_gap_minutes == 360 and corpus.synthetic_users == 36


def test_hour_ids_follow_the_time_zone_of_the_data(checkpoint):
    """Fine-tuning on data of another zone (`--utc_offset_minutes`, e.g. a checkpoint pre-trained in another city):
    the tokenizer takes the data's offset, so hour ids are that data's local hours; without it the recorded one."""
    own = load_task_data(str(checkpoint["path"]), TaskConfig())
    east = load_task_data(str(checkpoint["path"]), TaskConfig(), {"utc_offset_minutes": 480})
    assert (own.tokenizer.utc_offset_minutes, east.tokenizer.utc_offset_minutes) == (0, 480)
    record = own.records[0]
    hours = [np.asarray(data.tokenizer(cells=[record.cells], timestamps=[record.timestamps])["hour_ids"][0])
             for data in (own, east)]
    visits = hours[0] > 0
    assert visits.any() and np.array_equal(hours[1][visits] - 1, (hours[0][visits] - 1 + 8) % 168)
    with pytest.raises(TrajInputError, match=r"utc_offset_minutes must be within ±840"):
        load_task_data(str(checkpoint["path"]), TaskConfig(), {"utc_offset_minutes": 2000})


def test_explicit_data_source_takes_nothing_of_the_recorded_source(checkpoint, tmp_path):
    """An explicit --data (or --dataset_dir) must not be overridden by a recorded dataset_dir, reader or columns."""
    folder = tmp_path / "recorded_source"
    shutil.copytree(checkpoint["path"], folder)
    _recorded(folder, dataset_dir=None, data="/old/checkins.csv", reader="table", user_col="uid", separator=";",
              min_points=7)
    new = tmp_path / "new.csv"
    new.write_text("user_id,latitude,longitude,timestamp\n")
    corpus = resolve_corpus(str(folder), {"data": str(new)})
    assert corpus.data == str(new)
    for name, default in (("dataset_dir", None), ("reader", "auto"), ("user_col", None), ("separator", None)):
        assert getattr(corpus, name) == default, name
    assert corpus.min_points == 7  # segmentation still inherited
    # Without an explicit source, the recorded one is used whole (and a missing file is named).
    with pytest.raises(ValueError, match="/old/checkins.csv: no such file"):
        resolve_corpus(str(folder))


def test_card_dataset_name_from_the_resolved_source(tmp_path):
    assert CorpusConfig().dataset_name() == "trajfm synthetic city"
    data = tmp_path / "nyc_checkins.csv"
    data.write_text("")
    assert CorpusConfig(data=str(data)).dataset_name() == "nyc_checkins.csv"
    task = PreparedTask("next_subtrajectory", "pair", {}, {}, ["not_next", "next"])
    _, _, _, args = run_finetune.parse_args(["--model_name_or_path", "ckpt", "--output_dir", "out"])
    card = build_finetune_card(task, "pretrained", "ckpt", "raw file", CorpusConfig(data=str(data)).dataset_name(),
                               args, {"test_f1": 0.5}, {}, None, False)
    results = card.data.to_dict()["model-index"][0]["results"]
    assert results and all(r["dataset"]["name"] == "nyc_checkins.csv" for r in results)
    # The recipe line says whether validation selected the checkpoint (no train metrics here: no validation split).
    assert "(no validation split: the whole budget)" in card.text and "of at most 30 (" in card.text
    selected = build_finetune_card(task, "pretrained", "ckpt", "raw file", "x", args, {"test_f1": 0.5},
                                   {"validation_samples": 12, "epochs_trained": 7.0}, None, False)
    assert "7 epochs trained of at most 30 (early stopping on the validation split after 5 evaluations" in selected.text
    trained = {"validation_samples": 12, "epochs_trained": 30.0}
    args.early_stopping_patience = 0  # validation still picks the checkpoint, but nothing stops early
    whole = build_finetune_card(task, "pretrained", "ckpt", "raw file", "x", args, {"test_f1": 0.5}, trained, None,
                                False)
    assert "of at most 30 (the whole budget, the best checkpoint on the validation split kept)" in whole.text
    args.load_best_model_at_end = False  # nothing chosen: the last checkpoint is the model
    last = build_finetune_card(task, "pretrained", "ckpt", "raw file", "x", args, {"test_f1": 0.5}, trained, None,
                               False)
    assert "(the whole budget, the last checkpoint kept; validation scored, not used to choose)" in last.text


def test_missing_heldout_users_file(checkpoint, tmp_path):
    for value in (str(tmp_path / "missing.json"), "splits/users", "users.txt"):
        _fails(checkpoint, tmp_path, "no such file", "--task", "destination", "--heldout_users", value)
    # A comma-separated list of ids is still a list.
    _, task_config, _, _ = run_finetune.parse_args(["--heldout_users", "u1,u2", "--output_dir", "x"])
    assert resolve_heldout_users("ckpt", task_config.heldout_users) == (["u1", "u2"], "--heldout_users")


def test_heldout_users_from_another_checkpoint(checkpoint):
    users, source = resolve_heldout_users("unused", str(checkpoint["path"]))
    assert users == CorpusDescription.load(checkpoint["path"]).split.heldout_users
    assert source.endswith("trajfm_corpus.json")


def test_bad_sizes_rejected_at_start_up(checkpoint, tmp_path):
    for value in ("0", "-3"):
        _fails(checkpoint, tmp_path, "--max_input_visits must be at least 1", "--task", "destination",
               "--max_input_visits", value)
    _fails(checkpoint, tmp_path, "--max_train_samples 1 is too small for next_subtrajectory", "--task",
           "next_subtrajectory", "--max_train_samples", "1")
    _fails(checkpoint, tmp_path, "--max_test_samples 1 is too small for user_association_binary", "--task",
           "user_association", "--association_form", "binary", "--max_test_samples", "1")
    _fails(checkpoint, tmp_path, "--max_train_samples must be at least 1", "--task", "destination",
           "--max_train_samples", "0")


def test_arguments_file(tmp_path):
    """args.json / args.yaml: the same arguments as a mapping; its corpus keys count as given explicitly."""
    import yaml

    values = {"model_name_or_path": "ckpt", "task": "destination", "min_points": 9, "output_dir": str(tmp_path)}
    for name, text in (("args.json", json.dumps(values)), ("args.yaml", yaml.safe_dump(values))):
        (tmp_path / name).write_text(text)
        run_args, task_config, overrides, _ = run_finetune.parse_args([str(tmp_path / name)])
        assert run_args.model_name_or_path == "ckpt" and task_config.task == "destination"
        assert overrides == {"min_points": 9}
    lists = {"tasks": "destination", "pair_match_entries": "none", "output_dir": str(tmp_path)}
    (tmp_path / "lists.yaml").write_text(yaml.safe_dump(lists))  # one value where a list goes, as on the command line
    run_args, _, _, training_args = run_finetune.parse_args([str(tmp_path / "lists.yaml")])
    assert run_args.tasks == ["destination"] and training_args.pair_match_entries == []
    lists["pair_match_entries"] = ["next_subtrajectory", "user_association_binary"]
    (tmp_path / "lists.yaml").write_text(yaml.safe_dump(lists))
    training_args = run_finetune.parse_args([str(tmp_path / "lists.yaml")])[3]
    assert training_args.pair_match_entries == ["next_subtrajectory", "user_association_binary"]
    with pytest.raises(ValueError, match="does not exist"):
        run_finetune.parse_args([str(tmp_path / "nope.json")])


def test_output_dir_is_protected(checkpoint, tmp_path):
    # Never into the pre-trained checkpoint's own folder (that would replace the pre-trained model).
    _fails(checkpoint, tmp_path, "the folder the model is loaded from", "--task", "destination", "--output_dir",
           str(checkpoint["path"]))
    # A folder with other files is refused; --overwrite_output_dir replaces them.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        _run(checkpoint, other, "--task", "destination")
    _run(checkpoint, other, "--task", "destination", "--overwrite_output_dir")
    assert _read(other / "all_results.json")["test_samples"] > 0


def test_folds_pool_every_trajectory_once(checkpoint, tmp_path):
    """--num_folds 2: the two runs test disjoint trajectories; the pooled compare report holds both folds' rows
    (linking's accuracy@1 = the folds' rows-weighted mean, binary F1 from the pooled counts; the frozen probes too),
    the saved scores are the reported ones, and an incomplete or overlapping set of folds is refused."""
    outs = [tmp_path / f"fold{fold}" for fold in range(2)]
    for fold, out in enumerate(outs):
        _run(checkpoint, out, "--compare", "--tasks", "user_association", "--num_folds", "2", "--test_fold", str(fold),
             "--validation_fraction", "0.4", "--contrastive_steps", "2")
    report = folds.main([*map(str, outs), "--output_dir", str(tmp_path / "pooled")])
    assert _read(tmp_path / "pooled" / "compare_report.json")["folds"] == [str(out) for out in outs]
    assert (tmp_path / "pooled" / "compare_report.png").is_file()
    for entry, pooled in report["tasks"].items():
        saved = [dict(np.load(out / entry / TEST_SCORES_FILE)) for out in outs]
        fold_reports = [_read(out / "compare_report.json")["tasks"][entry] for out in outs]
        assert pooled["split"]["test_examples_per_fold"] == [fold["label"].size for fold in saved]
        assert not set(saved[0]["trajectory"]) & set(saved[1]["trajectory"])
        metric = pooled["same_inputs"]["metric"]
        for fold, fold_report in zip(saved, fold_reports):  # the saved answers and classifiers are the reported ones
            task = PreparedTask(entry, str(fold["kind"]), {}, {"label": fold["label"].tolist()}, [])
            for init in ("pretrained", "random"):
                assert math.isclose(task_metrics(task, fold[f"answer_{init}"])[metric], fold_report[init][metric])
                assert math.isclose(task_metrics(task, fold[f"classifier_{init}"])[metric],
                                    fold_report[init].get(f"classifier_{metric}", fold_report[init][metric]))
        if metric == "accuracy@1":
            expected = np.average([r["pretrained"][metric] for r in fold_reports],
                                  weights=pooled["split"]["test_examples_per_fold"])
        else:
            predicted = np.concatenate([fold["answer_pretrained"].argmax(1) for fold in saved])
            labels = np.concatenate([fold["label"] for fold in saved])
            tp = np.sum((predicted == 1) & (labels == 1))
            expected = 2 * tp / (2 * tp + np.sum(predicted != labels))
        assert math.isclose(pooled["pretrained"][metric], expected)
        verdict = pooled["same_inputs"]
        assert verdict["best_baseline"] == max(verdict["baselines"], key=lambda name: pooled["baselines"][name][metric])
        lo, hi = verdict["pretrained_margin_ci95"]
        assert -1 <= lo <= hi <= 1 and len(pooled["fold_margins"]) == 2
    linking = "user_association_linking"  # the frozen probes: bootstrapped per fold, pooled from the saved scores
    fold_probes = [_read(out / "compare_report.json")["probes"] for out in outs]
    for probe, by_init in report["probes"]["tasks"][linking].items():
        expected = np.average([fold["tasks"][linking][probe]["pretrained"]["accuracy@1"] for fold in fold_probes],
                              weights=report["tasks"][linking]["split"]["test_examples_per_fold"])
        assert math.isclose(by_init["pretrained"]["accuracy@1"], expected)
        for probes in (report["probes"], *fold_probes):
            lo, hi = probes["margin_ci95"][linking][probe]
            assert -1 <= lo <= hi <= 1 and probes["ci95"][linking][probe]["random"]["accuracy@1"] is not None
    f1 = {init: np.mean([t[init][t["primary_metric"]] for t in report["tasks"].values()]) for init in ("pretrained",
                                                                                                          "random")}
    if f1["random"]:
        assert math.isclose(report["avg_f1_improvement_pct"], 100 * (f1["pretrained"] - f1["random"]) / f1["random"])
    with pytest.raises(ValueError, match="every fold"):
        folds.pool_folds([outs[0], outs[0]])
    overlapping = tmp_path / "overlap"
    shutil.copytree(outs[1], overlapping)
    for entry in report["tasks"]:
        path = overlapping / entry / TEST_SCORES_FILE
        contents = dict(np.load(path))
        contents["trajectory"][0] = np.load(outs[0] / entry / TEST_SCORES_FILE)["trajectory"][0]
        np.savez(path, **contents)
    with pytest.raises(ValueError, match="another fold tests too"):
        folds.pool_folds([outs[0], overlapping])
    other_settings = tmp_path / "other"
    shutil.copytree(outs[1], other_settings)
    for entry in report["tasks"]:
        path = other_settings / entry / "pretrained" / "task_report.json"
        task_report = _read(path)
        task_report["task_config"]["pairs_per_trajectory"] += 1
        path.write_text(json.dumps(task_report))
    with pytest.raises(ValueError, match="different task settings"):
        folds.pool_folds([outs[0], other_settings])
