"""Task-fitted heads and probes (issue 8): trajectory embeddings, user linking as retrieval, destination with the
user's context, the same-inputs comparison and the frozen-encoder probes of the compare report."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from modeling_trajfm import TrajBertForMaskedTrajectoryModeling
from modeling_trajfm.downstream import PreparedTask, TaskConfig, build_task
from modeling_trajfm.downstream import examples as T
from modeling_trajfm.downstream.baselines import CellProfileKNN, TfidfCells, UserFrequentCell
from modeling_trajfm.downstream.builders import PRIMARY_METRIC, task_metrics
from modeling_trajfm.downstream.compare import comparable_baselines, compare_markdown, compare_report, probes_section
from modeling_trajfm.downstream.embeddings import (
    contrastive_finetune,
    embed_trajectories,
    knn_scores,
    linear_probe_scores,
    prototype_scores,
    row_cosines,
)
from modeling_trajfm.downstream.forms import (
    ENCODER_WEIGHTS,
    HISTORY_FORM,
    FormScores,
    _fused,
    choose_form,
    embedding_forms,
    has_forms,
    history_forms,
    primary_by_resample,
    resample_counts,
    threshold_scores,
    validation_rank,
)
from modeling_trajfm.downstream.metrics import f1_threshold, ranking_metrics
from modeling_trajfm.downstream.probes import frozen_probes
from modeling_trajfm.finetuning import (
    load_encoder,
    load_heldout_trajectories,
    load_tokenizer_and_config,
    resolve_corpus,
    resolve_heldout_users,
)
from modeling_trajfm.modeling_trajbert import supervised_contrastive_loss
from tokenization_trajfm.h3cells import encode_cells


@pytest.fixture(scope="module")
def encoder_and_records(tiny_checkpoint):
    path = str(tiny_checkpoint["path"])
    tokenizer, config = load_tokenizer_and_config(path)
    heldout, _ = resolve_heldout_users(path, None)
    table, *_ = load_heldout_trajectories(resolve_corpus(path), tokenizer, heldout)
    return path, tokenizer, config, T.trajectory_records(table)


# --------------------------------------------------------------------------------------------------- embeddings
def test_load_encoder_takes_the_pretrained_weights(encoder_and_records):
    path, _, config, _ = encoder_and_records
    encoder = load_encoder(path, config, "pretrained", seed=1)
    reference = TrajBertForMaskedTrajectoryModeling.from_pretrained(path).trajbert.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in encoder.state_dict().items())
    fresh = load_encoder(path, config, "random", seed=1).state_dict()
    assert not torch.equal(fresh["encoder.layer.0.attention.self.query.weight"],
                           reference["encoder.layer.0.attention.self.query.weight"])


def test_mean_pooling_ignores_padding_and_special_tokens(encoder_and_records):
    path, tokenizer, config, records = encoder_and_records
    encoder = load_encoder(path, config, "pretrained", seed=0)
    cells = [r.cells[:n].tolist() for r, n in zip(records[:5], (3, 12, 5, 20, 7))]
    times = [r.timestamps[:n].tolist() for r, n in zip(records[:5], (3, 12, 5, 20, 7))]
    one_by_one = embed_trajectories(encoder, tokenizer, cells, times, batch_size=1)
    batched = embed_trajectories(encoder, tokenizer, cells, times, batch_size=5)  # padded to the longest
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # By hand for the shortest trajectory: the mean over its visit tokens, never over [CLS] / [SEP].
    batch = tokenizer(cells=[cells[0]], timestamps=[times[0]], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state[0]
    visit_tokens = batch["hexagon_ids"][0] > 0
    assert 0 < visit_tokens.sum() < hidden.shape[0] - 1
    np.testing.assert_allclose(one_by_one[0], hidden[visit_tokens].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(one_by_one[0], hidden.mean(0).numpy(), atol=1e-4)
    cls = embed_trajectories(encoder, tokenizer, cells[:1], times[:1], pooling="cls")
    np.testing.assert_allclose(cls[0], hidden[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="Unknown pooling 'max'"):
        embed_trajectories(encoder, tokenizer, cells, times, pooling="max")


# ---------------------------------------------------------------------------------------------------- retrieval
def test_prototype_and_knn_retrieval_by_hand():
    # Class 0 lies along x, class 1 along y; class 1 has one outlier in the direction of the first query.
    train = np.array([[1.0, 0.0], [1.0, -0.3], [0.0, 1.0], [0.1, 3.0], [1.0, 0.1]])
    labels = [0, 0, 1, 1, 1]
    query = np.array([[2.0, 0.2], [0.0, 2.0]])
    prototypes = prototype_scores(train, labels, query, n_classes=3)
    assert prototypes.argmax(axis=1).tolist() == [0, 1] and np.isneginf(prototypes[:, 2]).all()
    prototype_0 = np.array([1.0, 0.0]) + np.array([1.0, -0.3]) / np.hypot(1.0, 0.3)
    assert prototypes[1, 0] == pytest.approx(prototype_0[1] / np.linalg.norm(prototype_0))
    nearest = knn_scores(train, labels, query, n_classes=3, k=1)
    # k=1: the outlier of class 1 is the first query's nearest trajectory; k=3 averages it away.
    assert nearest[0, 1] == pytest.approx(1.0) and nearest.argmax(axis=1).tolist() == [1, 1]
    assert knn_scores(train, labels, query, n_classes=3, k=3).argmax(axis=1).tolist() == [0, 1]
    metrics = ranking_metrics(nearest, np.array([0, 1]))
    assert metrics["accuracy@1"] == 0.5 and metrics["mrr"] == 0.75
    with pytest.raises(ValueError, match="k must be at least 1"):
        knn_scores(train, labels, query, 2, k=0)


def test_linear_probe_is_seeded_and_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 4
    labels = np.repeat(np.arange(3), 20)
    x = centers[labels] + rng.normal(size=(60, 8))
    y = np.concatenate([labels[:-1], [-100]])  # an unknown label is ignored
    scores = linear_probe_scores(x, y, x, 3, seed=5)
    assert (scores.argmax(axis=1) == labels).mean() > 0.95
    np.testing.assert_array_equal(scores, linear_probe_scores(x, y, x, 3, seed=5))


# ------------------------------------------------------------------------------------- destination with context
def _grid_records(n_users=3, per_user=5, length=6):
    """Trajectories of different users interleaved in time, on real H3 cells (metrics need cell centres)."""
    lat = 40.70 + 0.01 * np.arange(30)
    cells = encode_cells(lat, np.full(30, -74.0), 8)
    records, rng = [], np.random.default_rng(0)
    for traj_id in range(n_users * per_user):
        start = 1_700_000_000 + 86_400 * traj_id
        records.append(T.Record(f"u{traj_id % n_users}", traj_id, cells[rng.integers(0, 30, length)],
                                start + 600 * np.arange(length, dtype=np.int64)))
    return records


def test_destination_context_is_an_earlier_known_trajectory_of_the_same_user():
    """Training and validation prefixes take their context from the training trajectories, test prefixes from
    training + validation (what the baselines are fitted on): validation mirrors test, and no validation destination
    reaches a training input."""
    records = _grid_records(n_users=3, per_user=8)
    by_id = {r.traj_id: r for r in records}
    task = build_task("destination", records, TaskConfig(max_input_visits=4, destination_user_context=True), 0)
    assert task.inputs == "prefix + user history"
    test_ids, validation_ids = set(task.test["traj_id"]), set(task.validation["traj_id"])
    train_side = [r for r in records if r.traj_id not in test_ids | validation_ids]
    known = {"train": train_side, "validation": train_side, "test": [r for r in records if r.traj_id not in test_ids]}
    found = {}
    for side, columns in (("train", task.train), ("validation", task.validation), ("test", task.test)):
        assert columns["cells_b"] == columns["cells"]
        found[side] = 0
        for i, traj_id in enumerate(columns["traj_id"]):
            own = by_id[traj_id]
            earlier = [r for r in known[side] if r.user_id == own.user_id and r.timestamps[0] < own.timestamps[0]]
            history = columns["history_traj_id"][i]
            if not earlier:
                assert history is None and columns["cells_a"][i] == columns["cells"][i]
                continue
            found[side] += 1
            latest = max(earlier, key=lambda r: r.timestamps[0])
            assert history == latest.traj_id and history not in test_ids  # never a test trajectory
            assert columns["cells_a"][i] == latest.cells[-2:].tolist()  # max_input_visits // 2 visits
        assert task.info[f"{side}_examples_with_history"] == found[side] > 0
    assert any(h in validation_ids for h in task.test["history_traj_id"])  # test may know validation trajectories
    # The user's cell frequencies fused with the classifier: validation knows the training trajectories only, test
    # the training and validation ones, as the user-history baseline does.
    def frequencies(fitted_on, users):
        return UserFrequentCell(task.candidates).fit([r.user_id for r in fitted_on], [r.cells.tolist() for r in
                                                                                     fitted_on],
                                                     task.train["destination"]).scores(users)

    on_validation = frequencies(train_side, task.validation["user_id"])
    np.testing.assert_array_equal(task.user_history_scores["validation"], on_validation)
    assert not np.array_equal(on_validation, frequencies(known["test"], task.validation["user_id"]))
    np.testing.assert_array_equal(task.user_history_scores["test"], task.baseline_scores["user_most_frequent_cell"])
    capped = build_task("destination", records, TaskConfig(max_input_visits=4, destination_user_context=True,
                                                           max_train_samples=5, max_test_samples=3), 0)
    assert [len(capped.user_history_scores[side]) for side in ("validation", "test")] == [
        len(capped.validation["label"]), len(capped.test["label"])] == [len(task.validation["label"]), 3]
    off = build_task("destination", records, TaskConfig(max_input_visits=4), 0)
    assert off.inputs == "prefix" and "cells_a" not in off.train and not off.user_history_scores


def test_most_recent_earlier_searches_only_the_given_history():
    records = _grid_records(n_users=1, per_user=4)
    history = [records[0], records[2]]
    found = T.most_recent_earlier(history, ["u0"] * 4 + ["nobody"], [int(r.timestamps[0]) for r in records] + [0])
    assert [None if r is None else r.traj_id for r in found] == [None, 0, 0, 2, None]


# ------------------------------------------------------------------------------------------ report and probes
def test_beats_compares_only_baselines_with_the_same_inputs():
    baselines = {"majority": {"accuracy@1": 0.1, "macro_f1": 0.0, "inputs": "none"},
                 "markov": {"accuracy@1": 0.2, "macro_f1": 0.1, "inputs": "prefix"},
                 "user_most_frequent_cell": {"accuracy@1": 0.3, "macro_f1": 0.2, "inputs": "user history"},
                 "unlabelled": {"accuracy@1": 0.9, "macro_f1": 0.9}}
    assert comparable_baselines("prefix", baselines) == ["majority", "markov"]
    assert comparable_baselines("prefix + user history", baselines) == ["majority", "markov",
                                                                        "user_most_frequent_cell"]
    results = {"destination": {"pretrained": {"test_accuracy@1": 0.25, "test_macro_f1": 0.1},
                               "random": {"test_accuracy@1": 0.15, "test_macro_f1": 0.05}}}
    for inputs, best, beats in (("prefix", "markov", True), ("prefix + user history", "user_most_frequent_cell",
                                                               False)):
        task = PreparedTask("destination", "hexagon", {}, {}, [], baselines=baselines, inputs=inputs)
        verdict = compare_report(results, {"destination": task})["tasks"]["destination"]["same_inputs"]
        assert verdict["best_baseline"] == best and verdict["pretrained_beats"] is beats
        assert verdict["random_beats"] is False
        assert verdict["pretrained_margin"] == pytest.approx(0.25 - baselines[best]["accuracy@1"])


def test_probes_section_and_markdown():
    link = {"accuracy@1": 0.5, "accuracy@5": 0.9, "mrr": 0.6, "macro_f1": 0.4}
    worse = {k: v / 2 for k, v in link.items()}
    probes = {"pretrained": {"user_association_linking": {"retrieval_prototype": link, "retrieval_knn": worse}},
              "random": {"user_association_linking": {"retrieval_prototype": worse, "retrieval_knn": link}}}
    results = {"user_association_linking": {"pretrained": {"test_macro_f1": 0.3, "test_accuracy@1": 0.4},
                                            "random": {"test_macro_f1": 0.2, "test_accuracy@1": 0.3}}}
    task = PreparedTask("user_association_linking", "single", {}, {}, [], inputs="trajectory",
                        baselines={"cell_profile_knn": {"accuracy@1": 0.9, "macro_f1": 0.8, "inputs": "trajectory"}})
    report = compare_report(results, {"user_association_linking": task})
    assert "probes" not in report
    section = report["probes"] = probes_section(probes)
    assert section["tasks"]["user_association_linking"]["retrieval_knn"]["random"] == link
    assert section["pretrained_better_nn_linking"] == {"retrieval_prototype": True, "retrieval_knn": False}
    markdown = compare_markdown(report)
    assert "## Probes: frozen encoders" in markdown and "| retrieval_prototype | accuracy@1 | 0.5000 | 0.2500 |" \
        in markdown.replace("| user_association_linking ", "")
    assert "best baseline on accuracy@1 is cell_profile_knn (0.9000); pretrained is below it by -0.5000" in markdown


def test_probe_intervals_are_paired_on_the_answers_resamples():
    """Given the probes' test scores, the report bootstraps them on the entry's own resamples: a probe scoring like the
    answer gets the answer's interval, an always-right probe [1, 1], and pre-trained minus random is paired."""
    labels = np.arange(40) % 4
    right = np.eye(4)[labels]
    half_wrong = np.where((np.arange(40) % 2 == 0)[:, None], right, np.eye(4)[(labels + 1) % 4])
    task = PreparedTask("user_association_linking", "single", {}, {"label": labels.tolist()},
                        ["u0", "u1", "u2", "u3"], inputs="trajectory")
    logits = {"user_association_linking": {"pretrained": half_wrong, "random": half_wrong}}
    metrics = {init: {f"test_{k}": v for k, v in task_metrics(task, half_wrong).items()} for init in ("pretrained",
                                                                                                       "random")}
    scores = {"pretrained": {"user_association_linking": {"retrieval_knn": right, "retrieval_prototype": half_wrong}},
              "random": {"user_association_linking": {"retrieval_knn": half_wrong, "retrieval_prototype": half_wrong}}}
    results = {"user_association_linking": metrics}
    report = compare_report(results, {"user_association_linking": task}, logits, seed=3, n_resamples=200,
                            probe_scores=scores)
    section, answer = report["probes"], report["tasks"]["user_association_linking"]["ci95"]
    ci = section["ci95"]["user_association_linking"]
    assert ci["retrieval_prototype"]["pretrained"]["accuracy@1"] == answer["pretrained"]["accuracy@1"]
    assert ci["retrieval_knn"]["pretrained"]["accuracy@1"] == [1.0, 1.0]
    lo, hi = ci["retrieval_knn"]["random"]["accuracy@1"]
    assert lo < 0.5 < hi
    margins = section["margin_ci95"]["user_association_linking"]
    assert margins["retrieval_prototype"] == [0.0, 0.0]  # the same scores: zero on every resample
    assert 0 < margins["retrieval_knn"][0] < 0.5 < margins["retrieval_knn"][1] < 1
    markdown = compare_markdown(report)
    assert "| retrieval_knn | accuracy@1 | 1.0000 [1.000, 1.000] |" in markdown
    assert "pre-trained minus random, paired 95% interval [+0.000, +0.000]" in markdown
    assert section["tasks"]["user_association_linking"]["retrieval_knn"]["pretrained"] == ranking_metrics(right, labels)
    without = compare_report(results, {"user_association_linking": task}, probe_scores=scores)["probes"]
    assert "ci95" not in without and "margin_ci95" not in without


def test_frozen_probes_on_real_tasks(encoder_and_records):
    path, tokenizer, config, records = encoder_and_records
    config_ = TaskConfig(max_input_visits=16)
    tasks = {e: build_task(e, records, config_, 0) for e in ("destination", "user_association_linking")}
    probes = frozen_probes(load_encoder(path, config, "pretrained", 0), tokenizer, tasks, seed=0)
    assert set(probes["user_association_linking"]) == {"retrieval_prototype", "retrieval_knn"}
    for metrics in (*probes["user_association_linking"].values(), probes["destination"]["linear_probe"]):
        assert 0.0 <= metrics["accuracy@1"] <= metrics["accuracy@5"] <= 1.0 and 0.0 <= metrics["mrr"] <= 1.0
    assert "distance_km_mean" in probes["destination"]["linear_probe"]


# ------------------------------------------------------------------------------------------------- contrastive
def test_supervised_contrastive_loss_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    aligned = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    crossed = aligned[[0, 2, 1, 3]]
    # Aligned: each anchor's positive has cosine 1, the two negatives 0: -log(e^10 / (e^10 + 2)).
    assert supervised_contrastive_loss(aligned, labels).item() == pytest.approx(np.log1p(2 * np.exp(-10)), rel=1e-3)
    assert supervised_contrastive_loss(crossed, labels) > supervised_contrastive_loss(aligned, labels)
    assert supervised_contrastive_loss(aligned, torch.tensor([0, 1, 2, 3])).item() == 0.0  # no positives: no signal


def test_contrastive_finetune_pulls_a_users_trajectories_together(encoder_and_records):
    path, tokenizer, config, records = encoder_and_records
    task = build_task("user_association_linking", records, TaskConfig(max_input_visits=16), 0)
    encoder = load_encoder(path, config, "pretrained", 0)
    cells, times, labels = task.train["cells"], task.train["timestamps"], torch.tensor(task.train["label"])

    def loss() -> float:
        embeddings = torch.as_tensor(embed_trajectories(encoder, tokenizer, cells, times))
        return supervised_contrastive_loss(embeddings, labels).item()

    before = loss()
    contrastive_finetune(encoder, tokenizer, cells, times, task.train["label"], steps=15, users_per_batch=4,
                         learning_rate=1e-3, seed=0)
    assert loss() < before and not encoder.training


# ----------------------------------------------------------------------------------------------- embedding forms
def test_f1_threshold_and_threshold_scores_by_hand():
    similarities = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    labels = np.array([1, 1, 0, 1, 0])
    # t = 0.8: F1 2*2/(2+3) = 0.8; t = 0.3: 2*3/(4+3) = 0.857 (best); t = 0.1: 2*3/(5+3) = 0.75.
    assert f1_threshold(similarities, labels) == 0.3
    scores = threshold_scores(similarities, 0.3)
    assert scores.argmax(axis=1).tolist() == [1, 1, 1, 1, 0]  # the threshold itself counts as positive


def _pair_task(similar_positive: bool) -> PreparedTask:
    """A pair task whose validation favours (or not) an embedding similarity over the classifier's 0.5 F1."""
    columns = {"cells_a": [[1], [2]], "cells_b": [[1], [3]], "timestamps_a": [[0], [0]], "timestamps_b": [[0], [0]],
               "label": [1, 0] if similar_positive else [0, 1]}
    return PreparedTask("user_association_binary", "pair", columns, columns, ["other", "same"], validation=columns)


def test_choose_form_on_validation_only():
    task = _pair_task(True)
    right = FormScores(validation=threshold_scores(np.array([0.9, 0.1]), 0.5), test=np.zeros((2, 2)))
    wrong = FormScores(validation=threshold_scores(np.array([0.1, 0.9]), 0.5), test=np.ones((2, 2)))
    half, full = np.array([[0.0, 1], [0, 1]]), right.validation  # F1 2/3 (both called same-user) and 1
    assert choose_form(task, half, {"similarity": right}) == ("similarity", {"classifier": 2 / 3, "similarity": 1.0},
                                                              {})
    assert choose_form(task, half, {"similarity": wrong})[0] == "classifier"
    assert choose_form(task, full, {"similarity": right})[0] == "classifier"  # ties keep the classifier
    assert choose_form(task, None, {"similarity": FormScores(None, right.test)}) == ("classifier", {}, {})
    assert choose_form(task, None, {"similarity": right})[0] == "similarity"  # no classifier figure: forms compete
    with pytest.raises(ValueError, match="form selection 'first'"):
        choose_form(task, half, {"similarity": right}, "first")


def _noisy_pairs(n_anchors: int, classifier_errors: int, form_errors: int) -> tuple[PreparedTask, np.ndarray,
                                                                                   FormScores]:
    """Validation pairs of `n_anchors` anchor trajectories (one positive and one negative pair each) on which the
    classifier misses `classifier_errors` positives and the form `form_errors`."""
    labels = np.tile([1, 0], n_anchors)
    columns = {"label": labels.tolist(), "traj_id_a": np.repeat(np.arange(n_anchors), 2).tolist()}
    task = PreparedTask("user_association_binary", "pair", {}, {}, ["other", "same"], validation=columns)

    def scores(errors: int) -> np.ndarray:
        predicted = labels.copy()
        predicted[np.flatnonzero(labels == 1)[:errors]] = 0
        return np.eye(2)[predicted]

    return task, scores(classifier_errors), FormScores(scores(form_errors), np.zeros((1, 2)))


def test_significant_selection_needs_a_clear_win():
    """`best` takes any form ahead on validation; `significant` only one ahead in >= 95% of paired resamples: one
    pair in 100 anchors is noise, twenty are not."""
    task, classifier, slightly_better = _noisy_pairs(100, classifier_errors=3, form_errors=2)
    assert choose_form(task, classifier, {"similarity": slightly_better}, "best")[0] == "similarity"
    pick, figures, shares = choose_form(task, classifier, {"similarity": slightly_better}, "significant")
    assert pick == "classifier" and figures["similarity"] > figures["classifier"] and shares["similarity"] < 0.95
    task, classifier, much_better = _noisy_pairs(100, classifier_errors=20, form_errors=0)
    pick, _, shares = choose_form(task, classifier, {"similarity": much_better}, "significant")
    assert pick == "similarity" and shares["similarity"] >= 0.95


def test_primary_by_resample_equals_the_task_metrics():
    """All resamples at once, as `task_metrics` computes each: binary F1, pair accuracy, linking and destination
    accuracy@1."""
    rng = np.random.default_rng(0)
    task, classifier, _ = _noisy_pairs(30, classifier_errors=7, form_errors=0)
    next_task = dataclasses.replace(task, name="next_subtrajectory")
    linking = PreparedTask("user_association_linking", "single", {}, {}, list("abcd"),
                           validation={"label": [*rng.integers(0, 4, 39).tolist(), -100]})  # one unknown user
    tied = rng.integers(0, 3, size=(40, 4)).astype(float)  # many ties, counted against the true user
    tied[::7, 1] = np.nan
    none_right = np.eye(2)[1 - np.tile([1, 0], 30)]  # F1 0 on every resample
    cells = encode_cells(40.70 + 0.01 * np.arange(5), np.full(5, -74.0), 8).tolist()
    labels = linking.validation["label"]  # the last destination is not a candidate
    destination = PreparedTask("destination", "hexagon", {}, {}, [], candidates=cells[:4], validation={
        "label": labels, "destination": [cells[label] if label >= 0 else cells[4] for label in labels]})
    for entry, scores in ((task, classifier), (task, none_right), (next_task, rng.normal(size=(60, 2))),
                          (linking, rng.normal(size=(40, 4))), (linking, tied), (destination, tied)):
        counts = resample_counts(entry, seed=1, n_resamples=20)
        assert counts.shape == (20, len(entry.validation["label"]))
        figures = primary_by_resample(entry, scores, counts)
        for row, figure in zip(counts, figures):
            rows = np.repeat(np.arange(len(row)), row)
            resampled = dataclasses.replace(entry, validation={k: np.asarray(v)[rows] for k, v in
                                                               entry.validation.items()})
            assert figure == task_metrics(resampled, scores[rows], "validation")[PRIMARY_METRIC[entry.name]]
    pairs_counts = resample_counts(task, seed=1, n_resamples=50)
    assert (pairs_counts[:, 0::2] == pairs_counts[:, 1::2]).all()  # an anchor's pairs are drawn together


def _linking_task() -> PreparedTask:
    """Three validation queries of users 0, 1, 2 among three users."""
    columns = {"cells": [[1], [2], [3]], "timestamps": [[0], [0], [0]], "user_id": ["a", "b", "c"], "label": [0, 1, 2]}
    return PreparedTask("user_association_linking", "single", columns, columns, ["a", "b", "c"], validation=columns)


def test_linking_choices_break_accuracy_ties_by_mrr():
    """Both candidates get 2 of 3 queries right; the one ranking the missed query's user second (MRR 5/6, not 7/9)
    wins, whether it is a form, the classifier or a fused weight."""
    task = _linking_task()
    second = np.array([[3.0, 2, 1], [2, 3, 1], [2, 0, 1]])  # query 2 missed, its user ranked second
    third = np.array([[3.0, 2, 1], [2, 3, 1], [2, 1, 0]])  # query 2 missed, its user ranked third
    assert validation_rank(task, task_metrics(task, second, "validation")) == pytest.approx((2 / 3, 5 / 6))
    assert validation_rank(task, task_metrics(task, third, "validation")) == pytest.approx((2 / 3, 7 / 9))
    forms = {"retrieval_prototype": FormScores(third, third), "retrieval_knn": FormScores(second, second)}
    assert choose_form(task, third, forms)[0] == "retrieval_knn"
    assert choose_form(task, second, forms)[0] == "classifier"  # full tie: classifier
    by_weight = {0.25: FormScores(second, second, 0.25), 0.5: FormScores(third, third, 0.5),
                 0.75: FormScores(third, third, 0.75)}
    assert _fused(task, by_weight).encoder_weight == 0.25  # MRR decides before the weight does


def test_embedding_forms_on_real_tasks(encoder_and_records):
    """Validation queries are matched against training trajectories only, test queries against train + validation;
    pair thresholds come from training pairs; contrastive fine-tuning works on a copy."""
    path, tokenizer, config, records = encoder_and_records
    encoder = load_encoder(path, config, "pretrained", 0)
    linking = build_task("user_association_linking", records, TaskConfig(max_input_visits=16), 0)
    forms = embedding_forms(encoder, tokenizer, linking, profile_fusion=False)
    assert set(forms) == {"retrieval_prototype", "retrieval_knn"}
    train = embed_trajectories(encoder, tokenizer, linking.train["cells"], linking.train["timestamps"])
    validation = embed_trajectories(encoder, tokenizer, linking.validation["cells"], linking.validation["timestamps"])
    n = len(linking.label_names)
    np.testing.assert_allclose(forms["retrieval_knn"].validation,
                               knn_scores(train, linking.train["label"], validation, n, 3), atol=1e-6)
    test = embed_trajectories(encoder, tokenizer, linking.test["cells"], linking.test["timestamps"])
    gallery_labels = [*linking.train["label"], *linking.validation["label"]]
    np.testing.assert_allclose(forms["retrieval_prototype"].test, prototype_scores(
        np.concatenate([train, validation]), gallery_labels, test, n), atol=1e-6)

    binary = build_task("user_association_binary", records, TaskConfig(max_input_visits=16), 0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    pair = embedding_forms(encoder, tokenizer, binary, contrastive_steps=3, profile_fusion=False)["similarity"]
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # the encoder itself is untouched
    assert pair.validation.shape == (len(binary.validation["label"]), 2)
    assert pair.test.shape == (len(binary.test["label"]), 2)
    assert embedding_forms(encoder, tokenizer, build_task("destination", records, TaskConfig(), 0)) == {}


def test_profile_fusion_forms_fit_each_side_on_what_it_may_see(encoder_and_records):
    """`<form>+profile` = w × the encoder's score + (1 − w) × the TF-IDF cell profile's, w chosen on validation: the
    validation scores use profiles of the training trajectories only, test scores those of train + validation."""
    path, tokenizer, config, records = encoder_and_records
    encoder = load_encoder(path, config, "pretrained", 0)
    linking = build_task("user_association_linking", records, TaskConfig(max_input_visits=16), 0)
    forms = embedding_forms(encoder, tokenizer, linking, profile_fusion=True)
    assert list(forms) == ["retrieval_prototype", "retrieval_knn", "retrieval_prototype+profile",
                           "retrieval_knn+profile"]  # encoder forms first: they win ties in `choose_form`
    train, validation = linking.train, linking.validation
    on_validation = CellProfileKNN(linking.label_names).fit(train["user_id"], train["cells"]).scores(
        validation["cells"])
    both = CellProfileKNN(linking.label_names).fit(train["user_id"] + validation["user_id"],
                                                   train["cells"] + validation["cells"])
    on_test = both.scores(linking.test["cells"])
    pure, fused = forms["retrieval_knn"], forms["retrieval_knn+profile"]
    w = fused.encoder_weight
    np.testing.assert_allclose(fused.validation, w * pure.validation + (1 - w) * on_validation)
    np.testing.assert_allclose(fused.test, w * pure.test + (1 - w) * on_test)
    by_weight = {v: validation_rank(linking, task_metrics(linking, v * pure.validation + (1 - v) * on_validation,
                                                          "validation")) for v in ENCODER_WEIGHTS}
    assert by_weight[w] == max(by_weight.values()) and w == max(v for v in by_weight if by_weight[v] == by_weight[w])

    binary = build_task("user_association_binary", records, TaskConfig(max_input_visits=16), 0)
    pair = embedding_forms(encoder, tokenizer, binary)  # fusion is the default
    assert set(pair) == {"similarity", "similarity+profile"}
    w = pair["similarity+profile"].encoder_weight
    train, validation = binary.train, binary.validation

    def cosines(columns):  # the encoder's
        return row_cosines(embed_trajectories(encoder, tokenizer, columns["cells_a"], columns["timestamps_a"]),
                           embed_trajectories(encoder, tokenizer, columns["cells_b"], columns["timestamps_b"]))

    idf = TfidfCells().fit(train["cells_a"] + train["cells_b"])  # validation side: training pairs only
    mixed_train = w * cosines(train) + (1 - w) * idf.pair_cosines(train["cells_a"], train["cells_b"])
    mixed_validation = w * cosines(validation) + (1 - w) * idf.pair_cosines(validation["cells_a"],
                                                                            validation["cells_b"])
    expected = threshold_scores(mixed_validation, f1_threshold(mixed_train, np.asarray(train["label"])))
    np.testing.assert_allclose(pair["similarity+profile"].validation, expected, atol=1e-9)
    assert pair["similarity+profile"].test.shape == (len(binary.test["label"]), 2)
    assert set(embedding_forms(encoder, tokenizer, binary, profile_fusion=False)) == {"similarity"}


def test_fused_weight_on_validation_ties_to_the_larger_weight():
    task = _pair_task(True)  # validation labels [1, 0]
    right, wrong = threshold_scores(np.array([0.9, 0.1]), 0.5), threshold_scores(np.array([0.1, 0.9]), 0.5)
    candidates = {0.25: FormScores(right, np.zeros(1), 0.25), 0.5: FormScores(wrong, np.ones(1), 0.5),
                  0.75: FormScores(right, np.full(1, 2.0), 0.75)}
    assert _fused(task, candidates).encoder_weight == 0.75  # 0.25 and 0.75 tie on validation: the larger weight
    no_validation = {w: FormScores(None, np.full(1, w), w) for w in ENCODER_WEIGHTS}
    assert _fused(task, no_validation).encoder_weight == 0.5  # nothing to choose on: the middle weight


def test_history_form_mixes_the_classifier_with_the_users_cells():
    """Validation: the classifier is confidently wrong on every prefix and the user's cells point to the right one, so
    of the classifier's weights only 0.25 lets the history decide; test gets that mix, computed by hand."""
    candidates = encode_cells(40.70 + 0.01 * np.arange(3), np.full(3, -74.0), 8).tolist()
    labels = [0, 1, 2, 0]
    columns = {"label": labels, "destination": [candidates[i] for i in labels]}
    task = PreparedTask("destination", "hexagon", columns, columns, list("abc"), candidates=candidates,
                        validation=columns)
    history = 2.0 * np.eye(3)[labels] + 0.1  # two visits of the true cell, popularity back-off
    task.user_history_scores = {"validation": history, "test": history[::-1]}
    wrong = 10.0 * np.eye(3)[[(i + 1) % 3 for i in labels]]
    test_logits = np.arange(12.0).reshape(4, 3)
    form = history_forms(task, wrong, test_logits)[HISTORY_FORM]
    assert form.encoder_weight == 0.25
    assert task_metrics(task, form.validation, "validation")["accuracy@1"] == 1.0
    softmax = np.exp(test_logits - test_logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    users = history[::-1] / history[::-1].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(form.test, 0.25 * softmax + 0.75 * users)
    assert history_forms(task, None, test_logits)[HISTORY_FORM].encoder_weight == 0.5  # no validation: the middle
    assert has_forms(task, profile_fusion=True) and not has_forms(task, profile_fusion=False)
    assert history_forms(task, wrong, test_logits, profile_fusion=False) == {}  # fusion off, no history form
    task.user_history_scores = {}
    assert history_forms(task, wrong, test_logits) == {} and not has_forms(task, True)  # no user context


def test_tfidf_pair_cosines():
    tfidf = TfidfCells().fit([[1, 2], [2, 3], [4]])
    cosines = tfidf.pair_cosines([[1, 2], [4], [1]], [[2, 1], [1], [1, 1, 2]])
    assert cosines[0] == pytest.approx(1.0) and cosines[1] == 0.0 and 0.0 < cosines[2] < 1.0
    assert tfidf.pair_cosines([], []).shape == (0,)
