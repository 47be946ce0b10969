"""Task construction (modeling_trajfm.downstream), baselines and task metrics on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_trajfm.downstream import baselines as bl
from modeling_trajfm.downstream import examples as T
from modeling_trajfm.downstream.metrics import (
    accuracy_at_k,
    binary_f1,
    distance_errors_km,
    macro_f1,
    mean_reciprocal_rank,
    ranking_metrics,
    true_class_ranks,
)


def _records(n_users=4, per_user=3, length=10, seed=0):
    """Every user has its own cell range, so any visit says whose trajectory it is; cells are distinct per visit."""
    records = []
    traj_id = 0
    for u in range(n_users):
        for k in range(per_user):
            cells = np.arange(length, dtype=np.uint64) + np.uint64(1000 * u + 100 * k)
            times = 1_700_000_000 + 600 * np.arange(length, dtype=np.int64) + 86_400 * traj_id
            records.append(T.Record(f"u{u}", traj_id, cells, times))
            traj_id += 1
    return records


def _locate(records, cells):
    """(traj_id, start) of the visit window equal to `cells`."""
    for r in records:
        for start in range(len(r) - len(cells) + 1):
            if np.array_equal(r.cells[start : start + len(cells)], cells):
                return r.traj_id, start
    raise AssertionError("window not found")


# ------------------------------------------------------------------------------------------- next sub-trajectory
def test_next_subtrajectory_positives_follow_and_negatives_do_not():
    records = _records()
    pairs = T.next_subtrajectory_pairs(records, seed=1, min_segment_visits=2, max_segment_visits=4)
    by_id = {r.traj_id: r for r in records}
    n = len(pairs["label"])
    assert n == 2 * len(records)  # one positive and one negative per trajectory
    assert sum(pairs["label"]) == n // 2
    for i in range(n):
        a, b = np.asarray(pairs["cells_a"][i], np.uint64), np.asarray(pairs["cells_b"][i], np.uint64)
        assert 2 <= len(a) <= 4 and 2 <= len(b) <= 4
        traj_a, a_start = _locate(records, a)
        assert traj_a == pairs["traj_id_a"][i] and a_start == pairs["a_start"][i]
        a_end = a_start + len(a)
        traj_b, b_start = pairs["traj_id_b"][i], pairs["b_start"][i]
        assert np.array_equal(by_id[traj_b].cells[b_start : b_start + len(b)], b)
        assert pairs["timestamps_b"][i] == by_id[traj_b].timestamps[b_start : b_start + len(b)].tolist()
        follows = traj_b == traj_a and b_start == a_end
        if pairs["label"][i] == 1:
            assert follows and pairs["pair_kind"][i] == "positive"
        else:
            assert not follows
            kind = pairs["pair_kind"][i]
            same_user = pairs["user_id_b"][i] == pairs["user_id_a"][i]
            assert kind == ("same_user" if same_user else "other_user")
            assert pairs["difficulty"][i] == kind
    kinds = T.class_balance(pairs["pair_kind"])
    assert kinds["same_user"] > 0 and kinds["other_user"] > 0
    assert abs(kinds["same_user"] - kinds["other_user"]) <= 1
    # Each difficulty subset is balanced: one positive per negative.
    for kind in ("same_user", "other_user"):
        labels = [lab for lab, d in zip(pairs["label"], pairs["difficulty"]) if d == kind]
        assert sum(labels) * 2 == len(labels)


def test_next_subtrajectory_same_user_fallback_and_determinism():
    # One trajectory per user: hard negatives come from another place of the same trajectory.
    records = _records(n_users=3, per_user=1, length=12)
    pairs = T.next_subtrajectory_pairs(records, seed=0)
    for i, kind in enumerate(pairs["pair_kind"]):
        if kind == "same_user":
            assert pairs["traj_id_b"][i] == pairs["traj_id_a"][i]
            assert pairs["b_start"][i] != pairs["a_start"][i] + len(pairs["cells_a"][i])
    assert pairs == T.next_subtrajectory_pairs(records, seed=0)
    assert pairs != T.next_subtrajectory_pairs(records, seed=5)


# ------------------------------------------------------------------------------------------------ destination
def _records_of_lengths(lengths_by_user):
    records, traj_id = [], 0
    for u, lengths in enumerate(lengths_by_user):
        for k, length in enumerate(lengths):
            cells = np.arange(length, dtype=np.uint64) + np.uint64(10_000 * u + 1000 * k)
            times = 1_700_000_000 + 600 * np.arange(length, dtype=np.int64) + 86_400 * traj_id
            records.append(T.Record(f"u{u}", traj_id, cells, times))
            traj_id += 1
    return records


def _b_lengths(pairs):
    """(positive B lengths, negative B lengths), pair by pair (each positive is followed by its negative)."""
    lengths = [len(c) for c in pairs["cells_b"]]
    assert pairs["label"][::2] == [1] * (len(lengths) // 2) and pairs["label"][1::2] == [0] * (len(lengths) // 2)
    return np.array(lengths[::2]), np.array(lengths[1::2])


def test_next_subtrajectory_negatives_as_long_as_positives():
    """B's length is no label cue: a negative B has the positive B's length whenever some trajectory is that long."""
    rng = np.random.default_rng(0)
    # All trajectories long: every negative has exactly its positive's length (cuts near the end give short B's).
    records = _records_of_lengths([[30] * 3 for _ in range(5)])
    positive, negative = _b_lengths(T.next_subtrajectory_pairs(records, seed=2, max_segment_visits=8,
                                                               pairs_per_trajectory=5))
    assert len(set(positive.tolist())) > 1 and np.array_equal(positive, negative)
    # Mixed lengths (some shorter than B): same distribution of lengths for both labels.
    records = _records_of_lengths([rng.integers(4, 40, size=4).tolist() for _ in range(8)])
    pairs = T.next_subtrajectory_pairs(records, seed=3, max_segment_visits=8, pairs_per_trajectory=4)
    positive, negative = _b_lengths(pairs)
    assert positive.size > 50
    assert abs(positive.mean() - negative.mean()) < 0.1
    assert np.array_equal(np.bincount(positive, minlength=9), np.bincount(negative, minlength=9))
    # Only when no trajectory is long enough is a negative shorter (never longer).
    records = _records_of_lengths([[12], [3, 3]])
    positive, negative = _b_lengths(T.next_subtrajectory_pairs(records, seed=0, max_segment_visits=8,
                                                               pairs_per_trajectory=4))
    assert (negative <= positive).all()


@pytest.mark.parametrize("length, fraction, expected", [(20, 0.25, 5), (10, 0.25, 2), (3, 0.25, 1), (2, 0.9, 1),
                                                        (8, 0.5, 4)])
def test_destination_prefix_and_label(length, fraction, expected):
    records = _records(n_users=1, per_user=1, length=length)
    out = T.destination_examples(records, fraction)
    assert out["destination"] == [int(records[0].cells[-1])]
    assert out["cells"] == [records[0].cells[:expected].tolist()]
    assert out["timestamps"] == [records[0].timestamps[:expected].tolist()]
    assert T.prefix_length(length, fraction) == expected


def test_destination_candidates_and_unseen_labels():
    candidates = T.destination_candidates([5, 3, 5, 9])
    assert candidates == [3, 5, 9]
    assert T.label_indices([9, 4, 3], candidates) == [2, T.IGNORE_INDEX, 0]
    with pytest.raises(ValueError, match=r"prefix_fraction must be in \(0, 1\)"):
        T.prefix_length(10, 1.0)


# ------------------------------------------------------------------------------------------------ user association
def test_linking_classes_are_users():
    records = _records(n_users=5, per_user=3)
    records += [T.Record("rare", 99, np.arange(5, dtype=np.uint64), np.arange(5, dtype=np.int64))]
    users = T.linking_users(records, num_users=None, min_trajectories=2)
    assert users == ["u0", "u1", "u2", "u3", "u4"]  # "rare" has one trajectory
    examples = T.linking_examples(records, users)
    assert [users[label] for label in examples["label"]] == examples["user_id"]
    assert T.linking_users(records, num_users=3) == ["u0", "u1", "u2"]  # most trajectories, ties by id
    with pytest.raises(ValueError, match="lower --num_users"):
        T.linking_users(records, num_users=6)
    train, test = T.split_trajectories_by_user([r for r in records if r.user_id in users], 0.34, seed=0)
    assert not set(train) & set(test)
    by_id = {r.traj_id: r.user_id for r in records}
    assert {by_id[i] for i in train} == {by_id[i] for i in test} == set(users)


def test_user_pairs_balanced_and_labelled():
    records = _records(n_users=4, per_user=3)
    pairs = T.user_pairs(records, seed=0)
    assert len(pairs["label"]) == 2 * len(records) and sum(pairs["label"]) == len(records)
    for a, b, ua, ub, label in zip(pairs["traj_id_a"], pairs["traj_id_b"], pairs["user_id_a"], pairs["user_id_b"],
                                   pairs["label"]):
        assert a != b
        assert label == int(ua == ub)


def test_split_trajectories_disjoint_and_seeded():
    train, test = T.split_trajectories(range(50), 0.2, seed=3)
    assert len(test) == 10 and not set(train) & set(test) and set(train) | set(test) == set(range(50))
    assert (train, test) == T.split_trajectories(range(50), 0.2, seed=3)
    assert test != T.split_trajectories(range(50), 0.2, seed=4)[1]


@given(st.integers(2, 60), st.integers(2, 7), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_folds_partition_the_trajectories(n, k, seed):
    """k-fold: the k test folds of one seed are disjoint, cover every trajectory, differ in size by at most one, and
    each fold's rest is everything else."""
    if n < k:
        with pytest.raises(ValueError, match="at least"):
            T.fold_trajectories(range(n), k, 0, seed)
        return
    folds = [T.fold_trajectories(range(n), k, f, seed) for f in range(k)]
    tests = [set(test) for _, test in folds]
    assert sum(map(len, tests)) == n and set().union(*tests) == set(range(n))
    assert max(map(len, tests)) - min(map(len, tests)) <= 1
    assert all(set(rest) == set(range(n)) - test for (rest, _), test in zip(folds, tests))
    assert folds[0] == T.fold_trajectories(range(n), k, 0, seed)


@given(st.lists(st.integers(1, 9), min_size=1, max_size=12), st.integers(2, 6), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_user_folds_keep_every_user_in_train(per_user, k, seed):
    """Per-user k-fold (user linking): the folds partition the trajectories of users with two or more, every such
    user keeps a trajectory in train in every fold, and a user's trajectories spread evenly over the folds."""
    records = [T.Record(f"u{u}", 100 * u + i, np.zeros(2, dtype=np.uint64), np.zeros(2, dtype=np.int64))
               for u, count in enumerate(per_user) for i in range(count)]
    folds = [T.fold_trajectories_by_user(records, k, f, seed) for f in range(k)]
    user_of = {r.traj_id: r.user_id for r in records}
    tested = [i for _, test in folds for i in test]
    assert len(tested) == len(set(tested))
    assert set(tested) == {r.traj_id for r in records if per_user[int(r.user_id[1:])] >= 2}
    for rest, test in folds:
        assert not set(rest) & set(test) and set(rest) | set(test) == set(user_of)
        for user, count in enumerate(per_user):
            in_test = sum(user_of[i] == f"u{user}" for i in test)
            assert count - in_test >= 1 and in_test <= -(-count // k)
    with pytest.raises(ValueError, match="fold"):
        T.fold_trajectories_by_user(records, k, k, seed)


# ---------------------------------------------------------------------------------------------------- baselines
def test_markov_predicts_the_obvious_transition():
    train = [[1, 2, 3], [1, 2, 3], [4, 5, 3], [7, 8, 9]]
    destinations = [3, 3, 3, 9]
    candidates = [3, 9]
    scores = bl.MarkovDestination(candidates).fit(train, destinations).scores([[7, 8], [1, 2], [6]])
    assert scores[0].argmax() == 1  # 8 -> 9
    assert scores[1].argmax() == 0  # 2 -> 3
    assert scores[2].argmax() == 0  # unseen 6: back off to popularity (3 is the most common destination)


def test_user_most_frequent_cell():
    model = bl.UserFrequentCell([10, 20, 30]).fit(["a", "b"], [[10, 10, 20], [30, 30]], [20, 30])
    assert model.scores(["a", "b", "stranger"]).argmax(axis=1).tolist() == [0, 2, 1]


def test_knn_identifies_user_by_unique_cell():
    users = ["alice", "bob", "carol"]
    train_users = ["alice", "bob", "carol", "alice"]
    train_cells = [[1, 2, 3, 100], [1, 2, 3, 200], [1, 2, 3, 300], [2, 3, 1]]
    knn = bl.CellProfileKNN(users).fit(train_users, train_cells)
    scores = knn.scores([[1, 2, 200], [300, 3], [3, 100, 2, 1]])
    assert scores.argmax(axis=1).tolist() == [1, 2, 0]


def test_pair_similarity_threshold():
    docs = [[1, 2], [3, 4], [5, 6]]
    a = [[1, 2], [1, 2], [3, 4], [3, 4]]
    b = [[1, 2, 9], [5, 6], [3, 4], [1, 2]]
    labels = [1, 0, 1, 0]
    model = bl.PairSimilarityThreshold().fit(docs, a, b, labels)
    assert model.predict(a, b).tolist() == labels
    assert bl.majority_label([0, 1, 1]) == 1 and bl.majority_label([0, 1]) == 0


def test_time_gap_threshold():
    hour = 3600
    times_a = [[0, hour], [0, hour], [0, hour], [0, hour]]
    times_b = [[hour + 600], [hour + 90_000], [-hour], [hour + 1200]]  # 10 min after, a day after, before, 20 min
    labels = [1, 0, 0, 1]
    model = bl.TimeGapThreshold().fit(times_a, times_b, labels)
    assert model.threshold == 20.0 and model.predict(times_a, times_b).tolist() == labels
    assert bl.TimeGapThreshold.gaps([[0, hour]], [[0]])[0] == np.inf  # B before A's last visit: never next
    same_minute = bl.TimeGapThreshold.gaps([[0, hour]] * 2, [[hour], [hour]], [[1, 2]] * 2, [[2], [3]])
    assert same_minute.tolist() == [np.inf, 0.0]  # B starts with A's last visit itself / another cell, same minute
    assert bl.TimeGapThreshold.gaps([[0, hour]], [[hour]]).tolist() == [0.0]  # without cells: a gap of 0
    everything = bl.TimeGapThreshold().fit(times_a, times_b, [1, 1, 1, 1])  # best F1: call every pair next
    assert everything.predict(times_a, times_b).tolist() == [1, 1, 1, 1]


def test_next_subtrajectory_has_a_time_gap_baseline_when_times_are_known():
    from modeling_trajfm.downstream import TaskConfig, build_task

    records = _records(n_users=4, per_user=4, length=10)
    task = build_task("next_subtrajectory", records, TaskConfig(), 0)
    row = task.baselines["time_gap"]
    assert row["inputs"] == "trajectory pair" and row["threshold_minutes"] >= 10.0
    gaps = bl.TimeGapThreshold.gaps(*(task.test[key] for key in ("timestamps_a", "timestamps_b", "cells_a", "cells_b")))
    by_hand = ((gaps <= row["threshold_minutes"]) == np.asarray(task.test["label"])).mean()
    assert row["accuracy"] == pytest.approx(by_hand) and row["accuracy"] > 0.9  # positives continue 10 min later
    untimed = [T.Record(r.user_id, r.traj_id, r.cells, np.array([None] * len(r), dtype=object)) for r in records]
    untimed_task = build_task("next_subtrajectory", untimed, TaskConfig(), 0)
    assert "time_gap" not in untimed_task.baselines and "no visit times" in untimed_task.info["time_gap"]


def test_folds_test_each_trajectory_once_and_never_train_on_it():
    """TaskConfig(num_folds=k, test_fold=f): the k builds test disjoint trajectories that cover the task's anchors,
    and no build trains or validates on a trajectory it tests; split files cannot be folded."""
    from modeling_trajfm.downstream import GivenSplit, TaskConfig, build_task

    records = _records(n_users=5, per_user=6, length=10)
    tested = []
    for fold in range(3):
        task = build_task("next_subtrajectory", records, TaskConfig(num_folds=3, test_fold=fold), 0)
        test = set(task.test["traj_id_a"]) | set(task.test["traj_id_b"])
        seen = {i for side in (task.train, task.validation) for key in ("traj_id_a", "traj_id_b") for i in side[key]}
        assert not test & seen
        tested += sorted(set(task.test["traj_id_a"]))
        linking = build_task("user_association_linking", records, TaskConfig(num_folds=3, test_fold=fold), 0)
        assert not set(linking.test["traj_id"]) & (set(linking.train["traj_id"]) | set(linking.validation["traj_id"]))
    assert sorted(tested) == [r.traj_id for r in records]
    with pytest.raises(ValueError, match="--num_folds must be at least 2"):
        TaskConfig(num_folds=3, test_fold=3)
    given = GivenSplit(records[:20], records[25:], records[20:25])
    with pytest.raises(ValueError, match="split files already fix the test split"):
        build_task("next_subtrajectory", given, TaskConfig(num_folds=3), 0)


def test_majority_label_is_top_of_majority_scores():
    for labels in ([0, 1, 1], [0, 1], [3, 3, 0, -100, -100, -100], [2, 5, 5, 2, 7]):
        scores = bl.majority_scores(labels, 2, 8)
        assert bl.majority_label(labels) == scores[0].argmax() == scores[1].argmax()
    with pytest.raises(ValueError, match="No training labels"):
        bl.majority_label([-100])


def test_class_balance_sorted_by_label_value():
    assert list(T.class_balance([10, 2, 2, 1, 10, 10])) == ["1", "2", "10"]
    assert T.class_balance([10, 2, 2, 1], names=[f"c{i}" for i in range(11)]) == {"c1": 1, "c2": 2, "c10": 1}
    assert list(T.class_balance(["other_user", "positive", "same_user", "positive"])) == [
        "other_user", "positive", "same_user"]


# ------------------------------------------------------------------------------------------------------ metrics
def test_ranking_metrics():
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    labels = np.array([0, 1, 2, -100])
    acc = accuracy_at_k(scores, labels, ks=(1, 2))
    assert acc == {"accuracy@1": 0.5, "accuracy@2": 0.75}  # the unknown label counts as wrong
    assert math.isclose(mean_reciprocal_rank(scores, labels), (1 + 0.5 + 1 + 0) / 4)
    # Ties count against the true class: a constant scorer ranks the truth last.
    assert accuracy_at_k(np.zeros((2, 3)), np.array([0, 1]), ks=(1,))["accuracy@1"] == 0.0
    out = ranking_metrics(scores, labels, class_values=np.array([10, 11, 12]), true_values=np.array([10, 11, 12, 99]))
    assert set(out) == {"accuracy@1", "accuracy@5", "mrr", "macro_f1"}


def test_nan_scores_never_hit():
    # A NaN compares False with everything: it must rank last, not first (rank 0 = hit, MRR inf).
    scores = np.array([[np.nan, 1.0, 0.5], [np.nan, np.nan, np.nan], [0.2, np.nan, 0.1]])
    labels = np.array([0, 1, 0])
    assert true_class_ranks(scores, labels).tolist() == [3, 3, 1]
    assert accuracy_at_k(scores, labels, ks=(1,))["accuracy@1"] == pytest.approx(1 / 3)
    assert mean_reciprocal_rank(scores, labels) == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert ranking_metrics(scores[2:], labels[2:])["accuracy@1"] == 1.0


def test_f1_metrics():
    assert binary_f1([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5
    assert binary_f1([0, 0], [0, 0]) == 0.0
    # classes a (F1 1), b (precision 1/2, recall 1 -> 2/3), c (never predicted -> 0)
    assert math.isclose(macro_f1(["a", "b", "b"], ["a", "b", "c"]), (1 + 2 / 3 + 0) / 3)
    d = distance_errors_km(np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 0.0], [0.0, 0.0]]))
    assert d["distance_km_median"] == pytest.approx(111.195 / 2, rel=1e-3)
    assert d["distance_km_mean"] == pytest.approx(111.195 / 2, rel=1e-3)


def test_several_pairs_per_trajectory():
    records = _records(n_users=3, per_user=2, length=12)
    pairs = T.next_subtrajectory_pairs(records, seed=0, pairs_per_trajectory=3)
    assert len(pairs["label"]) == 2 * 3 * len(records) and sum(pairs["label"]) == 3 * len(records)
    cuts = [(a, s + len(c)) for a, s, c, lab in zip(pairs["traj_id_a"], pairs["a_start"], pairs["cells_a"],
                                                    pairs["label"]) if lab]
    assert len(set(cuts)) == len(cuts)  # distinct cut points
    user = T.user_pairs(records, seed=0, pairs_per_trajectory=2)
    assert len(user["label"]) == 4 * len(records) and sum(user["label"]) == 2 * len(records)
