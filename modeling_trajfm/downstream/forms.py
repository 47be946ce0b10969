"""Embedding forms of the task entries: predictions from trajectory embeddings instead of a classifier, scored on
validation and test, so that `finetuning` can choose per init, on validation only, which form answers an entry.

* User linking: `retrieval_prototype` and `retrieval_knn` (`embeddings.prototype_scores` / `knn_scores`). Validation
  queries are matched against the training trajectories; test queries against training + validation trajectories,
  whose users are known (the baselines are fitted on both too).
* Pair entries (next sub-trajectory, same-user pairs): `similarity`, a bi-encoder: the cosine of the two segments'
  embeddings, thresholded where it maximises F1 on the training pairs (test: training + validation pairs), the way
  `baselines.PairSimilarityThreshold` thresholds cell profiles.

With `contrastive_steps > 0` a copy of the encoder is first fine-tuned by `embeddings.contrastive_finetune` on the
training split only: trajectories of the same user are positives for linking, the two segments of a positive pair
for pair entries. Score matrices have one column per class, so `task_metrics` and the bootstrap apply unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from tokenization_trajfm import TrajTokenizer

from ..modeling_trajbert import TrajBertPreTrainedModel
from .builders import PRIMARY_METRIC, PreparedTask, task_metrics
from .embeddings import contrastive_finetune, embed_trajectories, retrieval_scores, row_cosines
from .metrics import f1_threshold
from .probes import LINKING, PROBE_SETTINGS

#: The embedding forms of each entry that has any.
FORMS = {LINKING: ("retrieval_prototype", "retrieval_knn"),
         "next_subtrajectory": ("similarity",), "user_association_binary": ("similarity",)}


@dataclass
class FormScores:
    """A form's `(n, n_classes)` scores of the validation (None without validation examples) and test examples."""

    validation: np.ndarray | None
    test: np.ndarray


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


def _linking_forms(embed, task: PreparedTask) -> dict[str, FormScores]:
    n = len(task.label_names)
    train, validation, test = (embed(task.train["cells"], task.train["timestamps"]),
                               embed(task.validation.get("cells", []), task.validation.get("timestamps", [])),
                               embed(task.test["cells"], task.test["timestamps"]))
    gallery = np.concatenate([train, validation])
    gallery_labels = [*task.train["label"], *task.validation.get("label", [])]
    k = PROBE_SETTINGS["knn_k"]
    on_validation = retrieval_scores(train, task.train["label"], validation, n, k) if len(validation) else {}
    on_test = retrieval_scores(gallery, gallery_labels, test, n, k)
    return {name: FormScores(on_validation.get(name), scores) for name, scores in on_test.items()}


def _pair_forms(embed, task: PreparedTask) -> dict[str, FormScores]:
    def cosines(columns: dict[str, list]) -> np.ndarray:
        if not columns.get("label"):
            return np.zeros(0)
        return row_cosines(embed(columns["cells_a"], columns["timestamps_a"]),
                           embed(columns["cells_b"], columns["timestamps_b"]))

    train, validation, test = cosines(task.train), cosines(task.validation), cosines(task.test)
    train_labels = np.asarray(task.train["label"])
    validation_labels = np.asarray(task.validation.get("label", []))
    fit_all = f1_threshold(np.concatenate([train, validation]), np.concatenate([train_labels, validation_labels]))
    return {"similarity": FormScores(
        threshold_scores(validation, f1_threshold(train, train_labels)) if validation.size else None,
        threshold_scores(test, fit_all))}


def embedding_forms(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask,
                    batch_size: int = 64, contrastive_steps: int = 0, seed: int = 0) -> dict[str, FormScores]:
    """The entry's embedding forms (`FORMS`) scored on validation and test; `{}` for entries without any."""
    if task.name not in FORMS:
        return {}
    encoder = _tuned(model, tokenizer, task, contrastive_steps, seed)

    def embed(cells, timestamps) -> np.ndarray:
        if not len(cells):
            return np.zeros((0, encoder.config.hidden_size), dtype=np.float32)
        return embed_trajectories(encoder, tokenizer, cells, timestamps, batch_size, PROBE_SETTINGS["pooling"])

    return _linking_forms(embed, task) if task.name == LINKING else _pair_forms(embed, task)


def choose_form(task: PreparedTask, classifier_validation: float | None, forms: dict[str, FormScores]
                ) -> tuple[str, dict[str, float]]:
    """The form with the best validation primary metric (`"classifier"` wins ties; without validation data the
    classifier is kept), and every candidate's validation figure."""
    metric = PRIMARY_METRIC[task.name]
    figures = {"classifier": classifier_validation}
    for name, scores in forms.items():
        if scores.validation is not None:
            figures[name] = task_metrics(task, scores.validation, "validation")[metric]
    known = {name: value for name, value in figures.items() if value is not None}
    best = max(known, key=lambda name: (known[name], name == "classifier"), default="classifier")
    return best, known


__all__ = ["FORMS", "FormScores", "choose_form", "embedding_forms", "threshold_scores"]
