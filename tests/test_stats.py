"""Bootstrap confidence intervals: known distributions, coverage, seeding, grouped resampling, and the intervals of
the comparison report (the same numbers as the reported metrics, paired across inits)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modeling_trajfm.downstream import PreparedTask, task_metrics
from modeling_trajfm.downstream.compare import compare_markdown, compare_report, resampled_metrics
from modeling_trajfm.downstream.stats import bootstrap_ci, bootstrap_resamples, percentile_interval
from tokenization_trajfm.h3cells import encode_cells


def test_seeded_and_reproducible():
    a = bootstrap_resamples(50, 20, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, bootstrap_resamples(50, 20, seed=3)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, bootstrap_resamples(50, 20, seed=4)))
    assert len(a) == 20 and all(x.shape == (50,) and x.min() >= 0 and x.max() < 50 for x in a)


def test_mean_of_a_normal_sample_matches_the_textbook_interval():
    sample = np.random.default_rng(0).normal(10.0, 2.0, size=400)
    lo, hi = bootstrap_ci(lambda rows: sample[rows].mean(), bootstrap_resamples(400, 2000, seed=1))
    half = 1.96 * sample.std(ddof=1) / math.sqrt(400)  # 0.196
    assert lo < sample.mean() < hi
    assert math.isclose(hi - lo, 2 * half, rel_tol=0.15)
    assert math.isclose((lo + hi) / 2, sample.mean(), abs_tol=0.05)


def test_coverage_of_a_proportion():
    """Over 200 samples of Bernoulli(0.3), n = 100, about 95% of the intervals hold 0.3."""
    rng = np.random.default_rng(5)
    covered = 0
    for trial in range(200):
        sample = rng.random(100) < 0.3
        lo, hi = bootstrap_ci(lambda rows, s=sample: s[rows].mean(), bootstrap_resamples(100, 300, seed=trial))
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_groups_are_resampled_whole():
    groups = [7, 7, 7, 2, 2, 9]
    for rows in bootstrap_resamples(6, 50, seed=0, groups=groups):
        drawn = np.asarray(groups)[rows]
        assert (np.sum(drawn == 7) % 3, np.sum(drawn == 2) % 2) == (0, 0)
        if (drawn == 7).any():
            assert sorted(rows[drawn == 7][:3]) == [0, 1, 2]  # a group's members come together
    with pytest.raises(ValueError, match="one label per example"):
        bootstrap_resamples(6, 5, groups=[1, 2])


def test_percentile_interval_ignores_undefined_values():
    assert percentile_interval([None, float("nan"), 1.0, 1.0]) == [1.0, 1.0]
    assert percentile_interval([None]) is None
    assert percentile_interval(np.arange(101), 0.9) == pytest.approx([5.0, 95.0])


# ----------------------------------------------------------------------------------------------- the report
def _tasks(rng):
    n = 60
    pair = PreparedTask("next_subtrajectory", "pair", {}, {"label": [i % 2 for i in range(n)],
                                                            "traj_id_a": [i // 2 for i in range(n)]}, ["0", "1"])
    cells = encode_cells(np.array([40.70, 40.72, 40.74, 40.76, 40.78]), np.full(5, -73.97), 8)
    labels = rng.integers(0, 4, size=n)
    truth = cells[labels]
    labels[:3], truth[:3] = -100, cells[4]  # destinations outside the candidates: always wrong
    destination = PreparedTask("destination", "hexagon", {}, {"label": labels.tolist(), "destination": truth.tolist()},
                               [str(c) for c in range(4)], candidates=cells[:4].tolist())
    linking = PreparedTask("user_association_linking", "single", {}, {"label": labels.clip(0).tolist()},
                           [str(c) for c in range(4)])
    binary = PreparedTask("user_association_binary", "pair", {}, {"label": [i % 2 for i in range(n)],
                                                                  "traj_id_a": list(range(n))}, ["0", "1"])
    return {t.name: t for t in (pair, destination, linking, binary)}


def _noisy(rng, labels, n_classes, accuracy):
    """Scores whose top-1 is the label with probability `accuracy`."""
    labels = np.asarray(labels).clip(0)
    scores = rng.random((labels.size, n_classes))
    right = rng.random(labels.size) < accuracy
    scores[np.flatnonzero(right), labels[right]] += 2
    return scores


def test_resampled_metrics_equal_the_task_metrics():
    rng = np.random.default_rng(0)
    for task in _tasks(rng).values():
        scores = _noisy(rng, task.test["label"], len(task.label_names), 0.6)
        everything = np.arange(len(task.test["label"]))
        reference = task_metrics(task, scores)
        for key, value in resampled_metrics(task, scores)(everything).items():
            assert math.isclose(value, reference[key]), (task.name, key)


def test_report_intervals_for_every_scorer_and_the_paired_improvement():
    rng = np.random.default_rng(1)
    tasks = _tasks(rng)
    logits, results = {}, {}
    for entry, task in tasks.items():
        k = len(task.label_names)
        logits[entry] = {"pretrained": _noisy(rng, task.test["label"], k, 0.9),
                         "random": _noisy(rng, task.test["label"], k, 0.3)}
        task.set_baselines({"majority": np.tile(np.eye(k)[0], (len(task.test["label"]), 1))})
        task.baselines["majority"]["inputs"] = "none"  # sees the training labels only: comparable with any model
        results[entry] = {init: {f"test_{m}": v for m, v in task_metrics(task, s).items()}
                          for init, s in logits[entry].items()}
    report = compare_report(results, tasks, logits, seed=0, n_resamples=300)
    again = compare_report(results, tasks, logits, seed=0, n_resamples=300)
    assert report == again  # seeded
    for entry, t in report["tasks"].items():
        assert set(t["ci95"]) == {"pretrained", "random"} | set(tasks[entry].baseline_scores)
        for scorer, intervals in t["ci95"].items():
            assert set(intervals) == {t["primary_metric"], t["selection_metric"]}
            values = t[scorer] if scorer in ("pretrained", "random") else t["baselines"][scorer]
            for metric, (lo, hi) in intervals.items():
                assert lo <= values[metric] <= hi, (entry, scorer, metric)
                assert hi - lo < 0.5
    for entry, t in report["tasks"].items():  # paired margin to the best same-inputs baseline (majority here)
        verdict = t["same_inputs"]
        assert verdict["best_baseline"] == "majority"
        for init in ("pretrained", "random"):
            lo, hi = verdict[f"{init}_margin_ci95"]
            assert lo <= verdict[f"{init}_margin"] <= hi, (entry, init)
        assert verdict["pretrained_margin_ci95"][0] > 0  # 0.9 accuracy vs a constant: clearly above
    lo, hi = report["avg_f1_improvement_pct_ci95"]
    assert lo <= report["avg_f1_improvement_pct"] <= hi and lo > 0  # 0.9 vs 0.3 accuracy: clearly better
    assert report["avg_f1_improvement_pct_paper_tasks_ci95"] is not None
    assert report["bootstrap"]["resamples"] == 300
    markdown = compare_markdown(report)
    assert f"[{lo:+.1f}%, {hi:+.1f}%]" in markdown and "confidence intervals" in markdown
    lo, hi = report["tasks"]["destination"]["same_inputs"]["pretrained_margin_ci95"]
    assert f"it by {report['tasks']['destination']['same_inputs']['pretrained_margin']:+.4f} [{lo:+.3f}, {hi:+.3f}]" \
        in markdown


def test_classifier_protocol_intervals_come_from_the_classifiers_logits():
    """An entry answered by an embedding form keeps its classifier's logits: the report bootstraps the classifiers'
    own metrics and the classifier-protocol improvement from them, on the same resamples as the answers."""
    rng = np.random.default_rng(2)
    tasks = _tasks(rng)
    logits, classifiers, results = {}, {}, {}
    for entry, task in tasks.items():
        k, labels = len(task.label_names), task.test["label"]
        logits[entry] = {"pretrained": _noisy(rng, labels, k, 0.8), "random": _noisy(rng, labels, k, 0.8)}
        classifiers[entry] = {"pretrained": _noisy(rng, labels, k, 0.9), "random": _noisy(rng, labels, k, 0.2)}
        results[entry] = {}
        for init in logits[entry]:
            answer = task_metrics(task, logits[entry][init])
            classifier = task_metrics(task, classifiers[entry][init])
            results[entry][init] = {f"test_{m}": v for m, v in answer.items()} | {
                f"test_classifier_{m}": v for m, v in classifier.items()} | {"test_answer_form": "similarity"}
    report = compare_report(results, tasks, logits, seed=0, n_resamples=300, classifier_logits=classifiers)
    for t in report["tasks"].values():
        for init in ("pretrained", "random"):
            for metric in (t["primary_metric"], t["selection_metric"]):
                lo, hi = t["ci95"][init][f"classifier_{metric}"]
                assert lo <= t[init][f"classifier_{metric}"] <= hi
                assert t["ci95"][init][metric] != [lo, hi]  # the answer's interval is its own
    lo, hi = report["avg_f1_improvement_pct_classifier_ci95"]
    assert lo <= report["avg_f1_improvement_pct_classifier"] <= hi and lo > 0  # 0.9 vs 0.2: clearly better
    assert report["avg_f1_improvement_pct_ci95"][1] < lo  # the answers are of the same quality for both inits
    assert report["avg_f1_improvement_pct_paper_tasks_classifier_ci95"] is not None
    assert f"[{lo:+.1f}%, {hi:+.1f}%] over all entries" in compare_markdown(report)
    without = compare_report(results, tasks, logits, seed=0, n_resamples=300)
    assert "avg_f1_improvement_pct_classifier_ci95" not in without
