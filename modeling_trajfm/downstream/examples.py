"""Downstream task datasets built from a trajectory table (docs/design.md), as pure seeded functions.

Every function takes trajectory *records* (see `trajectory_records`) and returns plain columns (a dict of lists) that
`datasets.Dataset.from_dict` accepts. The same records and seed always give the same examples.

Splits are by trajectory: `split_trajectories` (or `split_trajectories_by_user` for user linking, so that every user
has trajectories on both sides) partitions the trajectory ids first, and pair tasks are then built *inside* each
partition, so no trajectory appears in both a train example and a test example. `fold_trajectories` (and
`fold_trajectories_by_user`) hold out one of k disjoint folds instead, so that k runs test every trajectory once.

Tasks (arXiv 2312.00076, section "Downstream tasks"):

* **next_subtrajectory** (`next_subtrajectory_pairs`): a trajectory with at least `2 * min_segment_visits` visits is
  cut at a seeded position `k`; A = the (at most `max_segment_visits`) visits before `k`, B = the visits from `k`
  on. The positive pair is (A, B): B starts at the visit right after A ends. Each A also gets one negative B of one
  of two kinds, alternating over the shuffled trajectories so the kinds are balanced:
  ``same_user`` (hard) = a window of another trajectory of the same user, or, when the user has no other one long
  enough, a window of the same trajectory that does not start at `k`; ``other_user`` (easy) = a window of a
  trajectory of a different user. A negative B has as many visits as the positive B of the same A (negatives are
  drawn from trajectories long enough; shorter only when there is none), so length is no label cue. A negative whose
  cells equal the true continuation is redrawn. Labels: 1 = follows, 0 = not.
* **destination** (`destination_examples`): the first ``max(1, floor(prefix_fraction * n))`` visits (at most n - 1)
  of an n-visit trajectory → its last cell. Candidate cells = the distinct destinations of the training split
  (`destination_candidates`); a test destination outside them gets label -100 and counts as wrong. The user's
  context (`most_recent_earlier`) is the user's training-side trajectory that started last before the example's.
* **user association**, binary form (`user_pairs`, the paper's): pairs of two different trajectories, label 1 when
  both come from the same user; one positive and one negative partner per trajectory whose user has another
  trajectory in the partition (balanced). Linking form (`linking_users` + `split_trajectories_by_user`): which of N
  users made this trajectory; classes = the N users with the most trajectories (ties by user id).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tokenization_trajfm.corpus import seeded_split

IGNORE_INDEX = -100
TASKS = ("next_subtrajectory", "destination", "user_association")
ASSOCIATION_FORMS = ("binary", "linking")


@dataclass(frozen=True)
class Record:
    """One trajectory: user, id, visit cells (uint64 H3) and visit start times (epoch seconds)."""

    user_id: str
    traj_id: int
    cells: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return int(self.cells.size)


def trajectory_records(table) -> list[Record]:
    """Trajectory table (pyarrow, columns user_id, traj_id, cells, timestamps) → records sorted by traj_id."""
    users = table.column("user_id").to_pylist()
    ids = table.column("traj_id").to_pylist()
    cells = table.column("cells").to_pylist()
    times = table.column("timestamps").to_pylist()
    # a trajectory without times (null `timestamps`) keeps one None per visit: the tokenizer then sets no time feature
    records = [
        Record(str(u), int(i), np.asarray(c, dtype=np.uint64),
               np.asarray(t, dtype=np.int64) if t is not None else np.full(len(c), None, dtype=object))
        for u, i, c, t in zip(users, ids, cells, times)
    ]
    return sorted(records, key=lambda r: r.traj_id)


# ------------------------------------------------------------------------------------------------------- splits
def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")


def split_trajectories(traj_ids: Iterable[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of distinct trajectory ids into (train, test), `test_fraction` of them (at least one) in test."""
    _check_fraction(test_fraction)
    return seeded_split((int(i) for i in traj_ids), test_fraction, seed, "trajectories")


def _split_each_user(records: Sequence[Record], seed: int,
                     held_out: Callable[[list[int], np.random.Generator], list[int]]) -> tuple[list[int], list[int]]:
    """(train, test) ids: `held_out(ids, rng)` picks the test ones among each user's sorted trajectory ids (users in
    id order, one seeded generator); users with one trajectory stay in train."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for r in records:
        by_user[r.user_id].append(r.traj_id)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for user in sorted(by_user):
        ids = sorted(by_user[user])
        held = set(held_out(ids, rng)) if len(ids) >= 2 else set()
        test += [i for i in ids if i in held]
        train += [i for i in ids if i not in held]
    return sorted(train), sorted(test)


def split_trajectories_by_user(
    records: Sequence[Record], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Per-user (stratified) seeded split: each user with >= 2 trajectories has at least one on each side."""
    _check_fraction(test_fraction)

    def held_out(ids: list[int], rng: np.random.Generator) -> list[int]:
        n_test = min(max(1, round(test_fraction * len(ids))), len(ids) - 1)
        return [ids[i] for i in rng.permutation(len(ids))[:n_test]]

    return _split_each_user(records, seed, held_out)


def _check_fold(num_folds: int, fold: int) -> None:
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"Need num_folds >= 2 and 0 <= fold < num_folds, got fold {fold} of {num_folds}.")


def fold_trajectories(traj_ids: Iterable[int], num_folds: int, fold: int, seed: int) -> tuple[list[int], list[int]]:
    """(rest, test) of k-fold over distinct trajectory ids: a seeded permutation cut into `num_folds` near-equal
    folds, test = fold `fold`; the folds of one seed are disjoint and cover every trajectory."""
    _check_fold(num_folds, fold)
    distinct = sorted({int(i) for i in traj_ids})
    if len(distinct) < num_folds:
        raise ValueError(f"{num_folds} folds need at least {num_folds} trajectories, got {len(distinct)}.")
    held = set(np.array_split(np.random.default_rng(seed).permutation(distinct), num_folds)[fold].tolist())
    return [i for i in distinct if i not in held], sorted(held)


def fold_trajectories_by_user(records: Sequence[Record], num_folds: int, fold: int, seed: int
                              ) -> tuple[list[int], list[int]]:
    """(rest, test) of per-user k-fold: each user's trajectories, in seeded order, are dealt to the folds from a
    seeded first fold on, so a user with n >= 2 of them has at most ceil(n / num_folds) <= n - 1 in any test fold
    (always one in train); users with one trajectory stay in train."""
    _check_fold(num_folds, fold)

    def held_out(ids: list[int], rng: np.random.Generator) -> list[int]:
        first = int(rng.integers(num_folds))
        return [ids[i] for position, i in enumerate(rng.permutation(len(ids)))
                if (first + position) % num_folds == fold]

    return _split_each_user(records, seed, held_out)


def select(records: Sequence[Record], traj_ids: Iterable[int]) -> list[Record]:
    wanted = set(int(i) for i in traj_ids)
    return [r for r in records if r.traj_id in wanted]


# ----------------------------------------------------------------------------------------- next sub-trajectory
PAIR_COLUMNS = (
    "cells_a",
    "timestamps_a",
    "cells_b",
    "timestamps_b",
    "label",
    "traj_id_a",
    "traj_id_b",
    "user_id_a",
    "user_id_b",
)


def _empty_pairs(*extra: str) -> dict[str, list]:
    return {key: [] for key in (*PAIR_COLUMNS, *extra)}


def _add_pair(out: dict[str, list], a: Record, a_slice: slice, b: Record, b_slice: slice, label: int, **extra) -> None:
    out["cells_a"].append(a.cells[a_slice].tolist())
    out["timestamps_a"].append(a.timestamps[a_slice].tolist())
    out["cells_b"].append(b.cells[b_slice].tolist())
    out["timestamps_b"].append(b.timestamps[b_slice].tolist())
    out["label"].append(label)
    out["traj_id_a"].append(a.traj_id)
    out["traj_id_b"].append(b.traj_id)
    out["user_id_a"].append(a.user_id)
    out["user_id_b"].append(b.user_id)
    for key, value in extra.items():
        out[key].append(value)


def next_subtrajectory_pairs(
    records: Sequence[Record],
    seed: int,
    min_segment_visits: int = 2,
    max_segment_visits: int = 16,
    pairs_per_trajectory: int = 1,
) -> dict[str, list]:
    """Balanced (A, B) pairs of the records of one split; see the module docstring.

    Each trajectory is cut at up to `pairs_per_trajectory` distinct positions (one positive and one negative each).

    Extra columns: `pair_kind` ("positive", "same_user", "other_user"), `difficulty` (for a negative its kind, for a
    positive the kind of the negative drawn for the same A: each difficulty subset is balanced), `a_start`, `b_start`
    (visit offsets in their trajectories).
    """
    if min_segment_visits < 1 or max_segment_visits < min_segment_visits:
        raise ValueError(
            f"Need 1 <= min_segment_visits <= max_segment_visits, got {min_segment_visits}, {max_segment_visits}."
        )
    rng = np.random.default_rng(seed)
    out = _empty_pairs("pair_kind", "difficulty", "a_start", "b_start")
    anchors = [r for r in records if len(r) >= 2 * min_segment_visits]
    pool = [r for r in records if len(r) >= min_segment_visits]
    by_user: dict[str, list[Record]] = defaultdict(list)
    for r in pool:
        by_user[r.user_id].append(r)
    if len({r.user_id for r in pool}) < 2 and anchors:
        raise ValueError("next_subtrajectory needs trajectories of at least 2 users in each split for easy negatives.")

    def window(r: Record, length: int, forbid: int | None = None, avoid: np.ndarray | None = None):
        """A seeded window of `r` of `length` visits (shorter, down to `min_segment_visits`, only when `r` is shorter
        than `length`); None if impossible."""
        last = len(r) - length if len(r) >= length else len(r) - min_segment_visits
        starts = np.arange(0, last + 1)
        if forbid is not None:
            starts = starts[starts != forbid]
        rng.shuffle(starts)
        for start in starts[:8]:
            stop = min(len(r), int(start) + length)
            if avoid is None or not np.array_equal(r.cells[start:stop], avoid):
                return slice(int(start), stop)
        return None

    def pick(candidates: Sequence[Record], length: int) -> Record:
        """A seeded trajectory among `candidates`, among those with >= `length` visits whenever there is one, so a
        negative B is as long as the positive B (length must not be a label cue)."""
        long_enough = [o for o in candidates if len(o) >= length]
        choices = long_enough or candidates
        return choices[int(rng.integers(len(choices)))]

    if pairs_per_trajectory < 1:
        raise ValueError(f"pairs_per_trajectory must be at least 1, got {pairs_per_trajectory}.")
    cuts = []
    for index in rng.permutation(len(anchors)):
        n = len(anchors[index])
        possible = np.arange(min_segment_visits, n - min_segment_visits + 1)
        chosen = rng.choice(possible, size=min(pairs_per_trajectory, possible.size), replace=False)
        cuts += [(int(index), int(k)) for k in chosen]
    for position, (index, k) in enumerate(cuts):
        r = anchors[index]
        n = len(r)
        a = slice(max(0, k - max_segment_visits), k)
        b = slice(k, min(n, k + max_segment_visits))
        length = b.stop - b.start
        kind = "same_user" if position % 2 == 0 else "other_user"
        negative = None
        if kind == "same_user":
            others = [o for o in by_user[r.user_id] if o.traj_id != r.traj_id and len(o) >= length]
            if others:
                other = others[int(rng.integers(len(others)))]
                negative = (other, window(other, length, avoid=r.cells[b]))
            if negative is None or negative[1] is None:
                negative = (r, window(r, length, forbid=k, avoid=r.cells[b]))
            if negative[1] is None:
                kind, negative = "other_user", None
        if kind == "other_user":
            users = [u for u in by_user if u != r.user_id]
            long_users = [u for u in users if any(len(o) >= length for o in by_user[u])]
            users = long_users or users
            for _ in range(8):
                other_user = users[int(rng.integers(len(users)))]
                other = pick(by_user[other_user], length)
                negative = (other, window(other, length, avoid=r.cells[b]))
                if negative[1] is not None:
                    break
        if negative is None or negative[1] is None:
            continue
        _add_pair(out, r, a, r, b, 1, pair_kind="positive", difficulty=kind, a_start=a.start, b_start=b.start)
        other, other_slice = negative
        _add_pair(
            out,
            r,
            a,
            other,
            other_slice,
            0,
            pair_kind=kind,
            difficulty=kind,
            a_start=a.start,
            b_start=other_slice.start,
        )
    return out


# ------------------------------------------------------------------------------------------------- destination
def prefix_length(n_visits: int, prefix_fraction: float) -> int:
    """Visits in the prefix of an n-visit trajectory: max(1, floor(fraction * n)), at most n - 1."""
    if not 0.0 < prefix_fraction < 1.0:
        raise ValueError(f"prefix_fraction must be in (0, 1), got {prefix_fraction}.")
    return int(min(max(1, np.floor(prefix_fraction * n_visits + 1e-9)), n_visits - 1))


def destination_examples(records: Sequence[Record], prefix_fraction: float = 0.25) -> dict[str, list]:
    """Prefix (first `prefix_fraction` of the visits) → last cell, for every record with at least 2 visits."""
    out: dict[str, list] = {k: [] for k in ("cells", "timestamps", "destination", "traj_id", "user_id", "n_visits")}
    for r in records:
        if len(r) < 2:
            continue
        m = prefix_length(len(r), prefix_fraction)
        out["cells"].append(r.cells[:m].tolist())
        out["timestamps"].append(r.timestamps[:m].tolist())
        out["destination"].append(int(r.cells[-1]))
        out["traj_id"].append(r.traj_id)
        out["user_id"].append(r.user_id)
        out["n_visits"].append(len(r))
    return out


def most_recent_earlier(history: Sequence[Record], users: Sequence[str], starts: Sequence[int]) -> list[Record | None]:
    """For each (user, start time): the trajectory of that user in `history` that started last before `start`, or
    None. Only `history` is searched: pass the training side, so a test example's context never comes from test."""
    by_user: dict[str, list[Record]] = defaultdict(list)
    for r in sorted(history, key=lambda r: (int(r.timestamps[0]), r.traj_id)):
        by_user[r.user_id].append(r)
    firsts = {user: np.array([int(r.timestamps[0]) for r in rs]) for user, rs in by_user.items()}
    out: list[Record | None] = []
    for user, start in zip(users, starts):
        earlier = int(np.searchsorted(firsts.get(user, np.empty(0)), int(start), side="left"))
        out.append(by_user[user][earlier - 1] if earlier else None)
    return out


def destination_candidates(train_destinations: Iterable[int]) -> list[int]:
    """The candidate cells of the destination head: distinct training destinations, sorted."""
    return sorted(set(int(c) for c in train_destinations))


def label_indices(values: Iterable, classes: Sequence) -> list[int]:
    """Index of each value in `classes`, IGNORE_INDEX (-100) when it is not a class."""
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(v, IGNORE_INDEX) for v in values]


# ---------------------------------------------------------------------------------------------- user association
def user_trajectory_counts(records: Sequence[Record]) -> Counter:
    return Counter(r.user_id for r in records)


def linking_users(records: Sequence[Record], num_users: int | None = None, min_trajectories: int = 2) -> list[str]:
    """The classes of trajectory-user linking: the `num_users` users (all if None) with the most trajectories among
    those with at least `min_trajectories` (ties broken by user id), returned sorted by user id."""
    counts = user_trajectory_counts(records)
    eligible = sorted((u for u, n in counts.items() if n >= min_trajectories), key=lambda u: (-counts[u], u))
    if num_users is not None:
        if num_users < 2:
            raise ValueError(f"num_users must be at least 2, got {num_users}.")
        if num_users > len(eligible):
            raise ValueError(
                f"num_users={num_users} but only {len(eligible)} held-out users have at least {min_trajectories} "
                f"trajectories: lower --num_users to <= {len(eligible)} (or lower --min_user_trajectories, or hold out "
                "more users in pre-training)."
            )
        eligible = eligible[:num_users]
    if len(eligible) < 2:
        raise ValueError(
            f"User linking needs at least 2 users with >= {min_trajectories} trajectories, found {len(eligible)}: "
            "lower --min_user_trajectories or use more data."
        )
    return sorted(eligible)


def linking_examples(records: Sequence[Record], users: Sequence[str]) -> dict[str, list]:
    """One example per trajectory of a class user: cells, timestamps → label = index of its user in `users`."""
    index = {u: i for i, u in enumerate(users)}
    out: dict[str, list] = {k: [] for k in ("cells", "timestamps", "label", "traj_id", "user_id")}
    for r in records:
        if r.user_id not in index:
            continue
        out["cells"].append(r.cells.tolist())
        out["timestamps"].append(r.timestamps.tolist())
        out["label"].append(index[r.user_id])
        out["traj_id"].append(r.traj_id)
        out["user_id"].append(r.user_id)
    return out


def user_pairs(records: Sequence[Record], seed: int, pairs_per_trajectory: int = 1) -> dict[str, list]:
    """Balanced same-user / different-user pairs of the records of one split (see the module docstring); each
    trajectory anchors `pairs_per_trajectory` positive and as many negative pairs (partners drawn independently)."""
    rng = np.random.default_rng(seed)
    by_user: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_user[r.user_id].append(r)
    users = sorted(by_user)
    out = _empty_pairs()
    if len(users) < 2:
        return out
    anchors = [r for r in records if len(by_user[r.user_id]) >= 2]
    for index in np.tile(rng.permutation(len(anchors)), pairs_per_trajectory):
        r = anchors[index]
        mates = [o for o in by_user[r.user_id] if o.traj_id != r.traj_id]
        mate = mates[int(rng.integers(len(mates)))]
        others = [u for u in users if u != r.user_id]
        other_user = others[int(rng.integers(len(others)))]
        stranger = by_user[other_user][int(rng.integers(len(by_user[other_user])))]
        everything = slice(None)
        _add_pair(out, r, everything, mate, everything, 1)
        _add_pair(out, r, everything, stranger, everything, 0)
    return out


def class_balance(labels: Iterable, names: Sequence[str] | None = None) -> dict[str, int]:
    """Count per label (named by `names[label]` when given), sorted by label."""
    counts = Counter(labels)
    return {
        (
            str(names[k]) if names is not None and isinstance(k, (int, np.integer)) and 0 <= k < len(names) else str(k)
        ): int(v)
        for k, v in sorted(counts.items(), key=lambda kv: _label_order(kv[0]))
    }


def _label_order(label) -> tuple:
    """Sort key: numbers by value (2 before 10), then anything else by its string."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return (0, label)
    return (1, str(label))


__all__ = [
    "ASSOCIATION_FORMS",
    "IGNORE_INDEX",
    "Record",
    "TASKS",
    "class_balance",
    "destination_candidates",
    "destination_examples",
    "fold_trajectories",
    "fold_trajectories_by_user",
    "label_indices",
    "linking_examples",
    "linking_users",
    "most_recent_earlier",
    "next_subtrajectory_pairs",
    "prefix_length",
    "select",
    "split_trajectories",
    "split_trajectories_by_user",
    "trajectory_records",
    "user_pairs",
    "user_trajectory_counts",
]
