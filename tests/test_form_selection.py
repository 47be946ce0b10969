"""The form-selection rules judged on validation halves (`downstream.form_selection`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modeling_trajfm.downstream import PreparedTask
from modeling_trajfm.downstream.form_selection import halving_scores, load_validation_scores, main
from modeling_trajfm.downstream.forms import VALIDATION_SCORES_FILE, FormScores, save_validation_scores


def _pairs(n_anchors: int) -> tuple[PreparedTask, np.ndarray]:
    """Validation pairs, one positive and one negative per anchor trajectory, and their labels."""
    labels = np.tile([1, 0], n_anchors)
    columns = {"label": labels.tolist(), "traj_id_a": np.repeat(np.arange(100, 100 + n_anchors), 2).tolist()}
    return PreparedTask("user_association_binary", "pair", {}, {}, ["other", "same"], validation=columns), labels


def _missing(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One-hot scores equal to `labels` except at `rows`."""
    predicted = labels.copy()
    predicted[rows] = 1 - predicted[rows]
    return np.eye(2)[predicted]


def test_scores_round_trip(tmp_path):
    task, labels = _pairs(5)
    classifier = _missing(labels, np.array([0]))
    forms = {"similarity": FormScores(_missing(labels, np.array([2])), np.zeros((3, 2))),
             "similarity+profile": FormScores(None, np.zeros((3, 2)))}  # no validation scores: not saved
    save_validation_scores(tmp_path / VALIDATION_SCORES_FILE, task, classifier, forms)
    loaded, candidates = load_validation_scores(tmp_path / VALIDATION_SCORES_FILE, task.name)
    assert set(candidates) == {"classifier", "similarity"}
    np.testing.assert_array_equal(candidates["similarity"], forms["similarity"].validation)
    assert loaded.validation["traj_id_a"].tolist() == task.validation["traj_id_a"] and loaded.kind == "pair"


def test_halvings_judge_each_rule_on_the_other_half():
    """A form that is wrong on one row the classifier gets right, and right on two rows the classifier misses, is
    better by noise alone on many halves: `best` takes it on those, `significant` never; a form that is right where
    the classifier misses 30 rows is taken by both, and scores 1.0 on every half B."""
    task, labels = _pairs(60)
    positives = np.flatnonzero(labels == 1)
    classifier = _missing(labels, positives[:30])
    noisy = _missing(labels, np.concatenate([positives[2:30], positives[30:31]]))  # one error fewer in all
    result = halving_scores(task, {"classifier": classifier, "similarity": noisy}, halvings=40)
    assert result["significant"]["picks"] == {"classifier": 40} == result["classifier"]["picks"]
    assert 0 < result["best"]["picks"].get("similarity", 0) < 40
    assert result["significant"]["mean"] == result["classifier"]["mean"]
    perfect = np.eye(2)[labels]
    result = halving_scores(task, {"classifier": classifier, "similarity": perfect}, halvings=10)
    assert result["best"]["picks"] == {"similarity": 10} == result["significant"]["picks"]
    assert result["best"]["mean"] == result["significant"]["mean"] == 1.0


def test_main_writes_the_comparison(tmp_path):
    task, labels = _pairs(40)
    for folder, init, errors in (("split-a", "pretrained", 4), ("split-a", "random", 8), ("split-b", "pretrained", 2)):
        out = tmp_path / folder / task.name / init
        out.mkdir(parents=True)
        classifier = _missing(labels, np.flatnonzero(labels == 1)[:errors])
        save_validation_scores(out / VALIDATION_SCORES_FILE, task, classifier,
                               {"similarity": FormScores(_missing(labels, np.array([1, 3])), np.zeros((1, 2)))})
    report = main([str(tmp_path / "split-a"), str(tmp_path / "split-b"), "--output_dir", str(tmp_path / "sel"),
                   "--halvings", "5"])
    assert len(report["cells"]) == 3 and set(report["mean_half_b"]) == {"best", "significant", "classifier"}
    assert report["difference_to_best"]["significant"]["n"] == 3
    assert json.loads((tmp_path / "sel" / "form_selection.json").read_text())["halvings"] == 5
    assert "| **mean** | all |" in (tmp_path / "sel" / "form_selection.md").read_text()
    with pytest.raises(FileNotFoundError, match="validation_scores.npz"):
        main([str(tmp_path / "sel"), "--output_dir", str(tmp_path / "x")])


def test_destination_scores_are_replayed_by_rank(tmp_path):
    """Destination's candidates (the classifier and its fusion with the user's cells) are ranked like linking's: by
    accuracy@1 on each half, no anchor groups."""
    labels = np.arange(40) % 4
    columns = {"label": labels.tolist(), "destination": labels.tolist()}
    task = PreparedTask("destination", "hexagon", {}, {}, [], candidates=[0, 1, 2, 3], validation=columns)
    right = np.eye(4)[labels]
    save_validation_scores(tmp_path / VALIDATION_SCORES_FILE, task, np.roll(right, 1, axis=1),
                           {"classifier+history": FormScores(right, np.zeros((1, 4)))})
    loaded, candidates = load_validation_scores(tmp_path / VALIDATION_SCORES_FILE, "destination")
    assert loaded.kind == "single" and "traj_id_a" not in loaded.validation
    result = halving_scores(loaded, candidates, halvings=5)
    assert result["best"]["picks"] == {"classifier+history": 5} and result["best"]["mean"] == 1.0
    assert result["classifier"]["mean"] == 0.0
