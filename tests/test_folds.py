"""Pooling the folds of a k-fold (`downstream.folds.pooled_task`) on hand-made folds: destination's candidate cells
differ per fold, so the pooled rows rank the union without letting a fold predict a cell it never ranked."""

from __future__ import annotations

import h3
import numpy as np
import pytest

from modeling_trajfm.downstream import PreparedTask, TaskConfig, build_task, task_metrics
from modeling_trajfm.downstream import examples as T
from modeling_trajfm.downstream.compare import INITS, TEST_SCORES_FILE, row_groups, save_test_scores
from modeling_trajfm.downstream.examples import IGNORE_INDEX
from modeling_trajfm.downstream.folds import pooled_task


def _fold(candidates, destinations, answer, baseline, trajectories):
    candidates = np.asarray(candidates, dtype=np.uint64)
    labels = [list(candidates).index(d) if d in candidates else IGNORE_INDEX for d in destinations]
    answer = np.asarray(answer, dtype=np.float64)
    return {"kind": np.asarray("hexagon"), "trajectory": np.asarray(trajectories), "label": np.asarray(labels),
            "destination": np.asarray(destinations, dtype=np.uint64), "candidates": candidates,
            "label_names": np.asarray([format(int(c), "x") for c in candidates]), "answer_pretrained": answer,
            "classifier_pretrained": answer, "baseline_markov": np.asarray(baseline, dtype=np.float64)}


# three H3 cells of Manhattan (resolution 8), in increasing id order
C1, C2, C3 = sorted(int(h3.str_to_int(h3.latlng_to_cell(40.70 + 0.02 * i, -74.0, 8))) for i in range(3))


def test_destination_folds_rank_the_union_of_their_candidates():
    # fold a ranks C1, C2: right on its first two rows; its third destination (C3) is not among its candidates
    a = _fold([C1, C2], [C1, C2, C3], [[2, 1], [0, 1], [1, 0]], [[0, 1], [0, 1], [0, 1]], [1, 2, 3])
    # fold b ranks C2, C3: right on its first row, wrong on its second
    b = _fold([C2, C3], [C3, C2], [[0, 1], [0, 1]], [[0, 1], [1, 0]], [4, 5])
    task, scores = pooled_task("destination", [a, b], "prefix", {"markov": "prefix"})
    assert task.candidates == [C1, C2, C3] and task.label_names == [format(c, "x") for c in (C1, C2, C3)]
    assert task.test["label"] == [0, 1, IGNORE_INDEX, 2, 1]  # C3 stays wrong for fold a, which never ranked it
    answer = scores["answer_pretrained"]
    assert np.isneginf(answer[:3, 2]).all() and np.isneginf(answer[3:, 0]).all()
    metrics = task_metrics(task, answer)
    by_fold = [task_metrics(_as_task(fold), fold["answer_pretrained"])["accuracy@1"] for fold in (a, b)]
    assert metrics["accuracy@1"] == pytest.approx(3 / 5) == pytest.approx(np.average(by_fold, weights=[3, 2]))
    # macro-F1 over the cells: predicted C1 C2 C1 C3 C3 for true C1 C2 C3 C3 C2 -> F1 2/3, 2/3, 1/2
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)
    markov = task.baselines["markov"]
    assert markov["accuracy@1"] == pytest.approx(3 / 5) and markov["inputs"] == "prefix"


def test_probe_scores_pool_like_the_answers():
    """The frozen probes' saved scores are pooled over the union of candidates as the answers are; they are not
    baselines, and a probe some fold did not save is not pooled."""
    a = _fold([C1, C2], [C1, C2, C3], [[2, 1], [0, 1], [1, 0]], [[0, 1], [0, 1], [0, 1]], [1, 2, 3])
    b = _fold([C2, C3], [C3, C2], [[0, 1], [0, 1]], [[0, 1], [1, 0]], [4, 5])
    a["probe_random_linear_probe"], b["probe_random_linear_probe"] = a["baseline_markov"], b["baseline_markov"]
    a["probe_pretrained_linear_probe"] = a["answer_pretrained"]
    task, scores = pooled_task("destination", [a, b], "prefix", {"markov": "prefix"})
    assert "baselines_not_in_every_fold" not in task.info and "probe_pretrained_linear_probe" not in scores
    probe = scores["probe_random_linear_probe"]
    assert np.isneginf(probe[:3, 2]).all() and np.isneginf(probe[3:, 0]).all()
    assert task_metrics(task, probe)["accuracy@1"] == pytest.approx(task.baselines["markov"]["accuracy@1"])


def _as_task(fold):
    columns = {"label": fold["label"].tolist(), "destination": fold["destination"].tolist()}
    return PreparedTask("destination", "hexagon", {}, columns, fold["label_names"].tolist(),
                        candidates=fold["candidates"].tolist())


def test_linking_folds_must_share_their_classes():
    fold = {"kind": np.asarray("single"), "trajectory": np.arange(2), "label": np.arange(2),
            "candidates": np.zeros(0, np.uint64), "label_names": np.asarray(["u1", "u2"]),
            "answer_pretrained": np.eye(2), "classifier_pretrained": np.eye(2)}
    other = dict(fold, label_names=np.asarray(["u1", "u3"]), trajectory=np.arange(2, 4))
    with pytest.raises(ValueError, match="different classes"):
        pooled_task("user_association_linking", [fold, other], "trajectory", {})
    task, _ = pooled_task("user_association_linking", [fold, dict(fold, trajectory=np.arange(2, 4))], "trajectory", {})
    assert task.test["label"] == [0, 1, 0, 1] and task.label_names == ["u1", "u2"]


def test_saved_test_scores_pool_pairs_by_anchor_and_fold(tmp_path):
    """`compare.save_test_scores` keeps each scorer (the probes too) under its own key and the rows' anchors; pooled
    pair rows are resampled by (fold, anchor), so equal anchor ids of two folds stay two groups."""
    records = [T.Record(f"u{u}", 10 * u + k, np.arange(8, dtype=np.uint64) + np.uint64(100 * (10 * u + k)),
                        1_700_000_000 + 600 * np.arange(8, dtype=np.int64) + 86_400 * (10 * u + k))
               for u in range(4) for k in range(4)]
    task = build_task("next_subtrajectory", records, TaskConfig(), 0)
    n = len(task.test["label"])
    rng = np.random.default_rng(0)
    arrays = {f"{scorer}_{init}": rng.normal(size=(n, 2)) for scorer in ("answer", "classifier") for init in INITS}
    path = tmp_path / TEST_SCORES_FILE
    probe = rng.normal(size=(n, 2))
    save_test_scores(path, task, {init: arrays[f"answer_{init}"] for init in INITS},
                     {init: arrays[f"classifier_{init}"] for init in INITS}, {"random": {"retrieval_knn": probe}})
    saved = dict(np.load(path))
    for key, array in (arrays | {"probe_random_retrieval_knn": probe}).items():
        assert np.array_equal(saved[key], array)
    assert saved["trajectory"].tolist() == task.test["traj_id_a"] and str(saved["kind"]) == "pair"
    assert saved["difficulty"].tolist() == task.test["difficulty"]
    assert np.array_equal(saved["baseline_time_gap"], task.baseline_scores["time_gap"])
    inputs = {name: row["inputs"] for name, row in task.baselines.items()}
    pooled, scores = pooled_task("next_subtrajectory", [saved, saved], "trajectory pair", inputs)
    groups = row_groups(pooled)
    assert len(set(groups)) == 2 * len(set(task.test["traj_id_a"])) and groups[0] != groups[n]
    assert np.array_equal(scores["classifier_random"], np.concatenate([arrays["classifier_random"]] * 2))
    assert pooled.baselines["time_gap"]["accuracy"] == pytest.approx(task.baselines["time_gap"]["accuracy"])
