"""Forms of the task entries beside the classifier, scored on validation and test, so that `finetuning` can choose
per init, on validation only, which form answers an entry: embedding forms (predictions from trajectory embeddings)
and, for destination with the user's context, the classifier fused with the user's cell frequencies (below).

* User linking: `retrieval_prototype` and `retrieval_knn` (`embeddings.prototype_scores` / `knn_scores`). Validation
  queries are matched against the training trajectories; test queries against training + validation trajectories,
  whose users are known (the baselines are fitted on both too).
* Pair entries (next sub-trajectory, same-user pairs): `similarity`, a bi-encoder: the cosine of the two segments'
  embeddings, thresholded where it maximises F1 on the training pairs (test: training + validation pairs), the way
  `baselines.PairSimilarityThreshold` thresholds cell profiles.

With `contrastive_steps > 0` a copy of the encoder is first fine-tuned by `embeddings.contrastive_finetune` on the
training split only: trajectories of the same user are positives for linking, the two segments of a positive pair
for pair entries. Score matrices have one column per class, so `task_metrics` and the bootstrap apply unchanged.

With `profile_fusion`, each form also comes fused with the TF-IDF cell-profile cosine (`<form>+profile`): the
encoder's cosine weighted by `w` plus the profile's by `1 - w`, the dense + sparse hybrid of retrieval. Mean-pooled
states blur which exact cells a trajectory visits; the profile keeps them, so the two carry different evidence.
`w` is chosen per form on validation among `ENCODER_WEIGHTS`. Each side is fitted on what it may see, as the
baselines are: validation on training examples, test on training + validation. Linking's profile is
`baselines.CellProfileKNN`; pairs compare the two segments' TF-IDF vectors, with the pairs' segments as IDF documents.

Destination under `destination_user_context` sees the user's history, as `baselines.UserFrequentCell` does; with
`profile_fusion` its classifier also comes fused with that baseline (`classifier+history`, `history_forms`): the
classifier's softmax weighted by `w` plus the user's cell frequencies (normalised per row) by `1 - w`. A classifier
trained on a few hundred prefixes cannot count a user's visits over all their trajectories; the frequencies can.

Choices on validation (a fused form's weight, the answering form) rank candidates by the entry's primary metric, ties
broken by `TIE_BREAK_METRIC` where the entry has one (user linking and destination: MRR), then as each choice says.

Which candidate answers (`choose_form`) follows `TaskConfig.form_selection`. `best`: the one ranked first. Validation
sets hold 100-200 examples, so with several candidates the first is often first by noise. `significant`: a form
replaces the classifier only when it beats the classifier's primary metric in at least `SIGNIFICANCE` of paired
bootstrap resamples of the validation rows (pair entries: anchor trajectories with all their pairs); among the forms
that do, the one ranked first. `downstream.form_selection` measures both rules on held-out halves of validation; on
NYC's `best` scored higher (README, "Which candidate answers"), so it is the default.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenization_trajfm import TrajTokenizer

from ..modeling_trajbert import TrajBertPreTrainedModel
from . import baselines as bl
from .builders import FORM_SELECTIONS, PRIMARY_METRIC, PreparedTask, task_metrics
from .compare import resample_rows, row_groups
from .embeddings import contrastive_finetune, embed_trajectories, retrieval_scores, row_cosines
from .metrics import f1_threshold, true_class_ranks
from .probes import DESTINATION, LINKING, PROBE_SETTINGS
from .stats import N_RESAMPLES

#: The embedding forms of each entry that has any.
FORMS = {LINKING: ("retrieval_prototype", "retrieval_knn"),
         "next_subtrajectory": ("similarity",), "user_association_binary": ("similarity",)}
#: Weights of the model's score in a fused form, tried on validation: the encoder's cosine in a `+profile` form (the
#: profile's cosine gets the rest), the classifier's softmax in `HISTORY_FORM` (the user's cells get the rest). All in
#: (0, 1]: a class the encoder scores -inf (no gallery trajectory) must stay -inf after fusion.
ENCODER_WEIGHTS = (0.25, 0.5, 0.75)
PROFILE_SUFFIX = "+profile"
#: The destination classifier fused with the user's cell frequencies (`history_forms`).
HISTORY_FORM = "classifier+history"
#: A finer metric that breaks ties of the primary one on validation. Linking's accuracy@1 over 94 queries (NYC) ties
#: often, first among a fused form's three weights, then among the classifier and four forms; the true user's
#: reciprocal rank still tells them apart. On NYC validation (3 splits × 2 inits, forms chosen on one random half of
#: the queries and scored on the other, 300 halvings) it lifted the chosen form's accuracy@1 from 0.901 to 0.908.
#: Destination's accuracy@1 over about 90 validation prefixes ties as often (the fused form's weights).
TIE_BREAK_METRIC = {LINKING: "mrr", DESTINATION: "mrr"}
#: `significant`: the share of paired validation resamples in which a form must beat the classifier to replace it.
SIGNIFICANCE = 0.95
#: Each candidate's validation scores, saved beside a fine-tuned entry's task report (`save_validation_scores`).
VALIDATION_SCORES_FILE = "validation_scores.npz"


@dataclass
class FormScores:
    """A form's `(n, n_classes)` scores of the validation (None without validation examples) and test examples;
    `encoder_weight`: the model's share in a fused form (the encoder's cosine in a `+profile` form, the classifier's
    softmax in `HISTORY_FORM`)."""

    validation: np.ndarray | None
    test: np.ndarray
    encoder_weight: float | None = None


def threshold_scores(similarities: np.ndarray, threshold: float) -> np.ndarray:
    """Two-column scores whose arg-max is `similarity >= threshold` (column 1 wins ties)."""
    margin = np.asarray(similarities, dtype=np.float64) - threshold
    return np.stack([-margin - 1e-12, margin], axis=1)


def _positive_pair_groups(columns: dict[str, list]) -> tuple[list, list, np.ndarray]:
    """Cells, timestamps and group labels of the positive pairs' segments (pair k: both segments in group k)."""
    rows = [i for i, label in enumerate(columns["label"]) if label == 1]
    cells = [columns[f"cells_{s}"][i] for i in rows for s in ("a", "b")]
    timestamps = [columns[f"timestamps_{s}"][i] for i in rows for s in ("a", "b")]
    return cells, timestamps, np.repeat(np.arange(len(rows)), 2)


def _tuned(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask, steps: int,
           seed: int) -> TrajBertPreTrainedModel:
    if steps <= 0:
        return model
    if task.name == LINKING:
        cells, timestamps, labels = task.train["cells"], task.train["timestamps"], task.train["label"]
        per_group = 4
    else:
        cells, timestamps, labels = _positive_pair_groups(task.train)
        per_group = 2
    return contrastive_finetune(copy.deepcopy(model), tokenizer, cells, timestamps, labels, steps=steps,
                                trajectories_per_user=per_group, seed=seed)


def _mix(encoder: np.ndarray, profile: np.ndarray, weight: float) -> np.ndarray:
    return weight * encoder + (1 - weight) * profile


def validation_rank(task: PreparedTask, figures: dict[str, float]) -> tuple[float, float]:
    """How a candidate with validation metrics `figures` ranks: the primary metric, then the tie-break metric."""
    tie_break = TIE_BREAK_METRIC.get(task.name)
    return figures[PRIMARY_METRIC[task.name]], figures[tie_break] if tie_break else 0.0


def _fused(task: PreparedTask, candidates: dict[float, FormScores]) -> FormScores:
    """The candidate (one per encoder weight) best on validation (`validation_rank`), remaining ties to the larger
    weight; without validation examples the middle weight."""
    if any(form.validation is None for form in candidates.values()):
        return candidates[ENCODER_WEIGHTS[len(ENCODER_WEIGHTS) // 2]]
    return candidates[max(candidates, key=lambda w: (
        *validation_rank(task, task_metrics(task, candidates[w].validation, "validation")), w))]


def _linking_profile(task: PreparedTask) -> FormScores:
    """`baselines.CellProfileKNN` scores: validation against training profiles, test against train + validation."""
    users, train, validation = task.label_names, task.train, task.validation
    on_validation = None
    if validation.get("label"):
        on_validation = bl.CellProfileKNN(users).fit(train["user_id"], train["cells"]).scores(validation["cells"])
    both = bl.CellProfileKNN(users).fit(train["user_id"] + validation.get("user_id", []),
                                        train["cells"] + validation.get("cells", []))
    return FormScores(on_validation, both.scores(task.test["cells"]))


def _linking_forms(embed, task: PreparedTask, profile_fusion: bool) -> dict[str, FormScores]:
    n = len(task.label_names)
    train, validation, test = (embed(task.train["cells"], task.train["timestamps"]),
                               embed(task.validation.get("cells", []), task.validation.get("timestamps", [])),
                               embed(task.test["cells"], task.test["timestamps"]))
    gallery = np.concatenate([train, validation])
    gallery_labels = [*task.train["label"], *task.validation.get("label", [])]
    k = PROBE_SETTINGS["knn_k"]
    on_validation = retrieval_scores(train, task.train["label"], validation, n, k) if len(validation) else {}
    on_test = retrieval_scores(gallery, gallery_labels, test, n, k)
    forms = {name: FormScores(on_validation.get(name), scores) for name, scores in on_test.items()}
    if profile_fusion:
        profile = _linking_profile(task)
        for name, form in list(forms.items()):
            forms[name + PROFILE_SUFFIX] = _fused(task, {w: FormScores(
                None if form.validation is None else _mix(form.validation, profile.validation, w),
                _mix(form.test, profile.test, w), w) for w in ENCODER_WEIGHTS})
    return forms


@dataclass
class _PairSimilarities:
    """One pair similarity as each side may see it: `validation_side` = (train, validation) pairs, fitted on
    training examples only; `test_side` = (train, validation, test) pairs, fitted on train + validation."""

    validation_side: tuple[np.ndarray, np.ndarray]
    test_side: tuple[np.ndarray, np.ndarray, np.ndarray]

    def mixed(self, other: _PairSimilarities, weight: float) -> _PairSimilarities:
        """`weight` × this similarity + (1 − `weight`) × `other`, pair by pair."""
        def mix(mine: tuple, theirs: tuple) -> tuple:
            return tuple(_mix(a, b, weight) for a, b in zip(mine, theirs))

        return _PairSimilarities(mix(self.validation_side, other.validation_side), mix(self.test_side, other.test_side))

    def thresholded(self, task: PreparedTask) -> FormScores:
        """Thresholded where F1 is best on the pairs each side may fit: validation at the training pairs'
        threshold, test at that of training + validation pairs."""
        train_labels = np.asarray(task.train["label"])
        labels = np.concatenate([train_labels, np.asarray(task.validation.get("label", []))])
        (train, validation), (fit_train, fit_validation, test) = self.validation_side, self.test_side
        return FormScores(
            threshold_scores(validation, f1_threshold(train, train_labels)) if validation.size else None,
            threshold_scores(test, f1_threshold(np.concatenate([fit_train, fit_validation]), labels)))


def _pair_segments(*splits: dict[str, list]) -> list[list[int]]:
    """Both segments of every pair of `splits`: the documents of the pairs' IDF."""
    return [cells for columns in splits for side in ("a", "b") for cells in columns.get(f"cells_{side}", [])]


def _pair_profile(task: PreparedTask) -> _PairSimilarities:
    """TF-IDF cell-profile cosines of the pairs, the pairs' segments as IDF documents."""
    seen_train = bl.TfidfCells().fit(_pair_segments(task.train))
    seen_both = bl.TfidfCells().fit(_pair_segments(task.train, task.validation))

    def cosines(tfidf: bl.TfidfCells, columns: dict[str, list]) -> np.ndarray:
        return tfidf.pair_cosines(columns.get("cells_a", []), columns.get("cells_b", []))

    return _PairSimilarities((cosines(seen_train, task.train), cosines(seen_train, task.validation)),
                             tuple(cosines(seen_both, columns) for columns in (task.train, task.validation, task.test)))


def _pair_forms(embed, task: PreparedTask, profile_fusion: bool) -> dict[str, FormScores]:
    def cosines(columns: dict[str, list]) -> np.ndarray:
        if not columns.get("label"):
            return np.zeros(0)
        return row_cosines(embed(columns["cells_a"], columns["timestamps_a"]),
                           embed(columns["cells_b"], columns["timestamps_b"]))

    train, validation, test = cosines(task.train), cosines(task.validation), cosines(task.test)
    encoder = _PairSimilarities((train, validation), (train, validation, test))
    forms = {"similarity": encoder.thresholded(task)}
    if profile_fusion:
        profile = _pair_profile(task)
        forms["similarity" + PROFILE_SUFFIX] = _fused(
            task, {w: dataclasses.replace(encoder.mixed(profile, w).thresholded(task), encoder_weight=w)
                   for w in ENCODER_WEIGHTS})
    return forms


def embedding_forms(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask,
                    batch_size: int = 64, contrastive_steps: int = 0, seed: int = 0,
                    profile_fusion: bool = True) -> dict[str, FormScores]:
    """The entry's embedding forms (`FORMS`, and with `profile_fusion` each fused with the cell profile) scored on
    validation and test; `{}` for entries without any."""
    if task.name not in FORMS:
        return {}
    encoder = _tuned(model, tokenizer, task, contrastive_steps, seed)

    def embed(cells, timestamps) -> np.ndarray:
        if not len(cells):
            return np.zeros((0, encoder.config.hidden_size), dtype=np.float32)
        return embed_trajectories(encoder, tokenizer, cells, timestamps, batch_size, PROBE_SETTINGS["pooling"])

    forms = _linking_forms if task.name == LINKING else _pair_forms
    return forms(embed, task, profile_fusion)


def _row_distribution(scores: np.ndarray) -> np.ndarray:
    """Non-negative scores (counts with a back-off) → one probability distribution per row."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores / np.maximum(scores.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _fuses_history(task: PreparedTask, profile_fusion: bool) -> bool:
    return profile_fusion and bool(task.user_history_scores)


def has_forms(task: PreparedTask, profile_fusion: bool) -> bool:
    """Whether candidates compete with the entry's classifier: embedding forms (`FORMS`), or `HISTORY_FORM`."""
    return task.name in FORMS or _fuses_history(task, profile_fusion)


def history_forms(task: PreparedTask, classifier_validation: np.ndarray | None, classifier_test: np.ndarray,
                  profile_fusion: bool = True) -> dict[str, FormScores]:
    """`{HISTORY_FORM: scores}` for a destination task that carries `user_history_scores` (module docstring), with
    `profile_fusion`, the classifier's weight chosen on validation among `ENCODER_WEIGHTS`; `{}` otherwise."""
    if not _fuses_history(task, profile_fusion):
        return {}
    history = task.user_history_scores
    on_validation = None
    if classifier_validation is not None and len(task.validation.get("label", [])):
        on_validation = (_softmax(classifier_validation), _row_distribution(history["validation"]))
    on_test = _softmax(classifier_test), _row_distribution(history["test"])
    return {HISTORY_FORM: _fused(task, {w: FormScores(None if on_validation is None else _mix(*on_validation, w),
                                                      _mix(*on_test, w), w) for w in ENCODER_WEIGHTS})}


def resample_counts(task: PreparedTask, seed: int, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """`(n_resamples, n)` counts: how often each bootstrap resample of the validation rows (`compare.resample_rows`)
    draws each row."""
    n = len(task.validation.get("label", []))
    return np.stack([np.bincount(rows, minlength=n) for rows in resample_rows(task, n_resamples, seed, "validation")])


def primary_by_resample(task: PreparedTask, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The entry's primary metric (accuracy, accuracy@1 or binary F1) of validation `scores` on each resample of
    `counts` (`resample_counts`), all at once; a row of ones gives `task_metrics`' figure."""
    labels = np.asarray(task.validation["label"])
    if task.kind == "pair":
        predicted = np.asarray(scores).argmax(axis=1)
        if PRIMARY_METRIC[task.name] == "f1":
            tp, fp, fn = (counts @ ((predicted == p) & (labels == t)) for p, t in ((1, 1), (1, 0), (0, 1)))
            return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        correct = predicted == labels
    else:  # ranked classes: user linking, destination
        correct = true_class_ranks(scores, labels) <= 1
    return counts @ correct / np.maximum(counts.sum(axis=1), 1)


def choose_form(task: PreparedTask, classifier: np.ndarray | None, forms: dict[str, FormScores],
                selection: str = "best", seed: int = 0) -> tuple[str, dict[str, float], dict[str, float]]:
    """The answering candidate by `selection` (module docstring; `classifier`: the validation logits of the
    classifier's selected checkpoint; remaining ties: the classifier, then the first form). Returns it, every
    candidate's validation primary metric and, with `significant`, each form's share of resamples that beat the
    classifier. Without validation data the classifier is kept."""
    if selection not in FORM_SELECTIONS:
        raise ValueError(f"Unknown form selection {selection!r}: choose one of {', '.join(FORM_SELECTIONS)}.")
    candidates = {"classifier": classifier} if classifier is not None else {}
    candidates |= {name: scores.validation for name, scores in forms.items() if scores.validation is not None}
    ranks = {name: validation_rank(task, task_metrics(task, scores, "validation"))
             for name, scores in candidates.items()}
    shares = {}
    if selection == "significant" and classifier is not None:
        counts = resample_counts(task, seed)
        incumbent = primary_by_resample(task, classifier, counts)
        shares = {name: float((primary_by_resample(task, scores, counts) > incumbent).mean())
                  for name, scores in candidates.items() if name != "classifier"}
    eligible = [name for name in ranks if shares.get(name, 1.0) >= SIGNIFICANCE]
    best = max(eligible, key=lambda name: (*ranks[name], name == "classifier"), default="classifier")
    return best, {name: rank[0] for name, rank in ranks.items()}, shares


def save_validation_scores(path: Path, task: PreparedTask, classifier: np.ndarray, forms: dict[str, FormScores]
                           ) -> None:
    """Write the labels, the groups the bootstrap resamples (pair entries: anchor trajectories; else one per row) and
    the validation scores of the classifier and of each form of `task` to `path`."""
    labels = np.asarray(task.validation["label"])
    groups = row_groups(task, "validation")
    scores = {name: form.validation for name, form in forms.items() if form.validation is not None}
    np.savez(path, label=labels, group=np.arange(len(labels)) if groups is None else np.asarray(groups),
             classifier=classifier, **scores)


__all__ = ["ENCODER_WEIGHTS", "FORMS", "FORM_SELECTIONS", "HISTORY_FORM", "PROFILE_SUFFIX", "SIGNIFICANCE",
           "TIE_BREAK_METRIC", "VALIDATION_SCORES_FILE", "FormScores", "choose_form", "embedding_forms", "has_forms",
           "history_forms", "primary_by_resample", "resample_counts", "save_validation_scores", "threshold_scores",
           "validation_rank"]
