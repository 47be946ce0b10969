"""Simple non-neural baselines for the downstream tasks (numpy only), always reported beside the model.

Every baseline is fitted on the training split of a task and returns an `(n, n_classes)` score matrix (higher is
better) or binary predictions, so the same metrics apply to models and baselines.

* `majority_scores`: the most frequent training label for every example (every task).
* `MarkovDestination`: first-order transition counts between consecutive visits of the training trajectories;
  a prefix's destination candidates are ranked by the number of transitions from the prefix's last cell to them,
  ties and unseen cells backing off to global destination popularity (training destinations).
* `UserFrequentCell`: per-user most-frequent-hexagon model: candidates ranked by how often the trajectory's user
  visited them in the training trajectories, backing off to global destination popularity. It uses the user's
  history, which the model sees only with `destination_user_context` (its inputs: "user history"), so the report
  compares the two only then.
* `CellProfileKNN`: trajectory-user linking by cell profiles, the "one check-in identifies the user" heuristic
  (Najjar & Mede, arXiv 2212.07081): TF-IDF over cells (users as documents), users ranked by the cosine similarity of
  their profile with the trajectory's.
* `PairSimilarityThreshold`: binary pair tasks: cosine similarity of the TF-IDF cell profiles of the two
  trajectories, thresholded at the value that maximises F1 on the training pairs.
* `TimeGapThreshold`: next sub-trajectory: B follows A when it starts at most a threshold of minutes after A's last
  visit (chosen for F1 on the training pairs); a B whose first visit does not come after A's last (starts earlier,
  or is that visit) never follows. It reads what the model reads: the visits' times (its `gap_ids` give B's first
  visit the log-bucketed gap from A's last, or the overlap id) and cells.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from .metrics import f1_threshold


def majority_scores(train_labels: Iterable[int], n_examples: int, n_classes: int) -> np.ndarray:
    """Score matrix ranking classes by training frequency, identical for every example; -100 labels are ignored."""
    counts = Counter(int(x) for x in train_labels if int(x) >= 0)
    row = np.array([counts.get(k, 0) for k in range(n_classes)], dtype=np.float64)
    row -= np.arange(n_classes) * 1e-9  # the smallest label wins ties
    return np.tile(row, (n_examples, 1))


def majority_label(train_labels: Iterable[int]) -> int:
    """Most frequent label (the smallest one on ties); -100 labels are ignored."""
    labels = [int(x) for x in train_labels if int(x) >= 0]
    if not labels:
        raise ValueError("No training labels to take a majority of.")
    return int(majority_scores(labels, 1, max(labels) + 1)[0].argmax())


def _popularity(candidates: Sequence[int], destinations: Iterable[int]) -> np.ndarray:
    """Candidate popularity in [0, 1): a back-off term that never outweighs one observed count."""
    counts = Counter(int(c) for c in destinations)
    values = np.array([counts.get(int(c), 0) for c in candidates], dtype=np.float64)
    return values / (values.sum() + 1.0)


class _CountsOverPopularity:
    """Candidate scores = counts observed for a key (a cell, a user) + global destination popularity as back-off."""

    def __init__(self, candidates: Sequence[int]):
        self.candidates = [int(c) for c in candidates]
        self.index = {c: i for i, c in enumerate(self.candidates)}
        self.counts: dict = defaultdict(Counter)
        self.popularity = np.zeros(len(self.candidates))

    def _scores(self, keys: Sequence) -> np.ndarray:
        out = np.tile(self.popularity, (len(keys), 1))
        for row, key in enumerate(keys):
            for cell, count in self.counts.get(key, {}).items():
                column = self.index.get(cell)
                if column is not None:
                    out[row, column] += count
        return out


class MarkovDestination(_CountsOverPopularity):
    """First-order Markov destination baseline over hexagons (see the module docstring)."""

    @property
    def transitions(self) -> dict[int, Counter]:
        """Transition counts: `transitions[a][b]` = number of a → b steps in the training trajectories."""
        return self.counts

    def fit(self, train_trajectories: Iterable[Sequence[int]], train_destinations: Iterable[int]) -> MarkovDestination:
        for cells in train_trajectories:
            cells = [int(c) for c in cells]
            for a, b in zip(cells[:-1], cells[1:]):
                self.counts[a][b] += 1
        self.popularity = _popularity(self.candidates, train_destinations)
        return self

    def scores(self, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        return self._scores([int(prefix[-1]) for prefix in prefixes])


class UserFrequentCell(_CountsOverPopularity):
    """Per-user most-frequent-hexagon destination baseline (see the module docstring)."""

    @property
    def visits(self) -> dict[str, Counter]:
        """Visit counts per user: `visits[user][cell]`."""
        return self.counts

    def fit(
        self, train_users: Iterable[str], train_trajectories: Iterable[Sequence[int]], train_destinations: Iterable[int]
    ) -> UserFrequentCell:
        for user, cells in zip(train_users, train_trajectories):
            self.counts[str(user)].update(int(c) for c in cells)
        self.popularity = _popularity(self.candidates, train_destinations)
        return self

    def scores(self, users: Sequence[str]) -> np.ndarray:
        return self._scores([str(user) for user in users])


class TfidfCells:
    """TF-IDF weighting of cells, documents given at fit time; vectors are sparse dicts, L2-normalised."""

    def __init__(self):
        self.idf: dict[int, float] = {}
        self.default_idf = 1.0

    def fit(self, documents: Iterable[Iterable[int]]) -> TfidfCells:
        documents = [set(int(c) for c in doc) for doc in documents]
        df = Counter(c for doc in documents for c in doc)
        n = len(documents)
        self.idf = {c: float(np.log((1 + n) / (1 + k)) + 1.0) for c, k in df.items()}
        self.default_idf = float(np.log(1 + n) + 1.0)  # an unseen cell is as rare as it gets
        return self

    def vector(self, cells: Iterable[int]) -> dict[int, float]:
        counts = Counter(int(c) for c in cells)
        weights = {c: k * self.idf.get(c, self.default_idf) for c, k in counts.items()}
        norm = float(np.sqrt(sum(w * w for w in weights.values()))) or 1.0
        return {c: w / norm for c, w in weights.items()}

    @staticmethod
    def cosine(a: dict[int, float], b: dict[int, float]) -> float:
        if len(a) > len(b):
            a, b = b, a
        return float(sum(w * b.get(c, 0.0) for c, w in a.items()))

    def pair_cosines(self, cells_a: Sequence[Sequence[int]], cells_b: Sequence[Sequence[int]]) -> np.ndarray:
        """The cosine of each pair's two vectors."""
        return np.array([self.cosine(self.vector(a), self.vector(b)) for a, b in zip(cells_a, cells_b)])


class CellProfileKNN:
    """Trajectory-user linking by TF-IDF cell profiles (nearest user profile by cosine similarity)."""

    def __init__(self, users: Sequence[str]):
        self.users = [str(u) for u in users]
        self.tfidf = TfidfCells()
        self.profiles: list[dict[int, float]] = []

    def fit(self, train_users: Iterable[str], train_trajectories: Iterable[Sequence[int]]) -> CellProfileKNN:
        cells_of: dict[str, list[int]] = defaultdict(list)
        for user, cells in zip(train_users, train_trajectories):
            cells_of[str(user)].extend(int(c) for c in cells)
        documents = [cells_of.get(u, []) for u in self.users]
        self.tfidf.fit(documents)
        self.profiles = [self.tfidf.vector(doc) for doc in documents]
        return self

    def scores(self, trajectories: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(trajectories), len(self.users)))
        for row, cells in enumerate(trajectories):
            query = self.tfidf.vector(cells)
            for column, profile in enumerate(self.profiles):
                out[row, column] = self.tfidf.cosine(query, profile)
        return out


class PairSimilarityThreshold:
    """Binary pair baseline: cosine of the two TF-IDF cell profiles above a threshold chosen for F1 on train."""

    def __init__(self):
        self.tfidf = TfidfCells()
        self.threshold = 0.0

    def similarities(self, cells_a: Sequence[Sequence[int]], cells_b: Sequence[Sequence[int]]) -> np.ndarray:
        return self.tfidf.pair_cosines(cells_a, cells_b)

    def fit(
        self,
        documents: Iterable[Iterable[int]],
        cells_a: Sequence[Sequence[int]],
        cells_b: Sequence[Sequence[int]],
        labels: Sequence[int],
    ) -> PairSimilarityThreshold:
        """`documents` (e.g. the training trajectories) define the IDF; the threshold maximises F1 on the pairs (0,
        every pair positive, is a candidate too)."""
        self.tfidf.fit(documents)
        self.threshold = f1_threshold(self.similarities(cells_a, cells_b), labels, also_try=(0.0,))
        return self

    def predict(self, cells_a: Sequence[Sequence[int]], cells_b: Sequence[Sequence[int]]) -> np.ndarray:
        return (self.similarities(cells_a, cells_b) >= self.threshold).astype(np.int64)


class TimeGapThreshold:
    """Next sub-trajectory baseline: B follows A when its first visit comes after A's last and starts within
    `threshold` minutes of it; the threshold maximises F1 on the pairs it is fitted on.

    "Comes after", as the tokenizer's `gap_ids` see it: starts later, or at the same time in another cell. A B that
    starts earlier never follows, nor, given the cells, one that starts with A's last visit itself (same cell and
    start: a window of A's trajectory that overlaps A).
    """

    def __init__(self):
        self.threshold = 0.0

    @staticmethod
    def gaps(times_a: Sequence[Sequence[int]], times_b: Sequence[Sequence[int]],
             cells_a: Sequence[Sequence[int]] | None = None, cells_b: Sequence[Sequence[int]] | None = None
             ) -> np.ndarray:
        """Minutes from A's last visit to B's first; +inf when B's first visit does not come after A's last."""
        minutes = np.array([(b[0] - a[-1]) / 60.0 for a, b in zip(times_a, times_b)], dtype=np.float64)
        comes_after = minutes >= 0
        if cells_a is not None and cells_b is not None:
            repeats = np.array([a[-1] == b[0] for a, b in zip(cells_a, cells_b)], dtype=bool)
            comes_after &= ~(repeats & (minutes == 0))
        return np.where(comes_after, minutes, np.inf)

    @classmethod
    def _scores(cls, *columns) -> np.ndarray:
        """Higher = sooner = more likely next; a B that does not come after A scores lowest (finite)."""
        return np.nan_to_num(-cls.gaps(*columns), neginf=-1e18)

    def fit(self, times_a: Sequence[Sequence[int]], times_b: Sequence[Sequence[int]], labels: Sequence[int],
            cells_a: Sequence[Sequence[int]] | None = None, cells_b: Sequence[Sequence[int]] | None = None
            ) -> TimeGapThreshold:
        self.threshold = -f1_threshold(self._scores(times_a, times_b, cells_a, cells_b), labels)
        return self

    def predict(self, times_a: Sequence[Sequence[int]], times_b: Sequence[Sequence[int]],
                cells_a: Sequence[Sequence[int]] | None = None, cells_b: Sequence[Sequence[int]] | None = None
                ) -> np.ndarray:
        return (self._scores(times_a, times_b, cells_a, cells_b) >= -self.threshold).astype(np.int64)


__all__ = [
    "CellProfileKNN",
    "MarkovDestination",
    "PairSimilarityThreshold",
    "TfidfCells",
    "TimeGapThreshold",
    "UserFrequentCell",
    "majority_label",
    "majority_scores",
]
