"""Retrieval heads for user linking and probes of frozen encoders (the paper's open question 2: what does
pre-training teach?), computed on a prepared task's own train/test split with settings fixed in advance.

* `retrieval_probe_scores`: user linking by embedding similarity, per-user prototype and k nearest training
  trajectories (`embeddings.prototype_scores` / `knn_scores`), scored with the classifier's ranking metrics.
* `frozen_probe_scores` / `frozen_probes`: for an encoder that is not fine-tuned, the retrieval forms on user linking
  and a linear probe (`embeddings.linear_probe_scores`) on destination, as test scores / as metrics (`probe_metrics`);
  `compare` runs them on the pre-trained and the random-init encoder, so any difference comes from pre-training
  alone, and bootstraps the scores (`compare.probe_intervals`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenization_trajfm import TrajTokenizer

from ..modeling_trajbert import TrajBertPreTrainedModel
from .builders import PreparedTask, task_metrics
from .embeddings import embed_trajectories, linear_probe_scores, retrieval_scores
from .metrics import ranking_metrics

#: Probe settings, fixed before any result is seen (never tuned on a test split).
PROBE_SETTINGS: dict[str, Any] = {"pooling": "mean", "knn_k": 3, "linear_probe_steps": 300,
                                  "linear_probe_learning_rate": 1e-2, "linear_probe_weight_decay": 1e-3}
LINKING = "user_association_linking"
DESTINATION = "destination"


def _embed(model, tokenizer, columns: dict[str, list], batch_size: int) -> np.ndarray:
    return embed_trajectories(model, tokenizer, columns["cells"], columns["timestamps"], batch_size,
                              PROBE_SETTINGS["pooling"])


def retrieval_probe_scores(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask,
                           batch_size: int = 64) -> dict[str, np.ndarray]:
    """`{"retrieval_prototype": scores, "retrieval_knn": scores}` of a user-linking task: `(n_test, n_users)`, test
    queries against the training trajectories."""
    train, test = _embed(model, tokenizer, task.train, batch_size), _embed(model, tokenizer, task.test, batch_size)
    return retrieval_scores(train, task.train["label"], test, len(task.label_names), PROBE_SETTINGS["knn_k"])


def destination_probe_scores(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask,
                             seed: int, batch_size: int = 64) -> np.ndarray:
    """Destination test scores `(n_test, n_candidates)` of a linear probe trained on the frozen prefix embeddings."""
    train, test = _embed(model, tokenizer, task.train, batch_size), _embed(model, tokenizer, task.test, batch_size)
    return linear_probe_scores(train, task.train["label"], test, len(task.candidates),
                               PROBE_SETTINGS["linear_probe_steps"], PROBE_SETTINGS["linear_probe_learning_rate"],
                               PROBE_SETTINGS["linear_probe_weight_decay"], seed)


def frozen_probe_scores(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, tasks: dict[str, PreparedTask],
                        seed: int, batch_size: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """`{entry: {probe: test scores}}` of a frozen encoder for the entries among `tasks` that have probes; kept as
    scores so that a report can bootstrap them and `downstream.folds` can pool them."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if LINKING in tasks:
        out[LINKING] = retrieval_probe_scores(model, tokenizer, tasks[LINKING], batch_size)
    if DESTINATION in tasks:
        out[DESTINATION] = {"linear_probe": destination_probe_scores(model, tokenizer, tasks[DESTINATION], seed,
                                                                     batch_size)}
    return out


def probe_metrics(tasks: dict[str, PreparedTask], scores: dict[str, dict[str, np.ndarray]]
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """`{entry: {probe: test metrics}}` of `frozen_probe_scores`' output: user linking's ranking metrics
    (accuracy@1/@5, MRR, macro-F1), destination's task metrics."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for entry, by_probe in scores.items():
        task = tasks[entry]
        out[entry] = {probe: ranking_metrics(matrix, np.asarray(task.test["label"])) if entry == LINKING
                      else task_metrics(task, matrix) for probe, matrix in by_probe.items()}
    return out


def frozen_probes(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, tasks: dict[str, PreparedTask],
                  seed: int, batch_size: int = 64) -> dict[str, dict[str, dict[str, float]]]:
    """`{entry: {probe: test metrics}}` of a frozen encoder for the entries among `tasks` that have probes."""
    return probe_metrics(tasks, frozen_probe_scores(model, tokenizer, tasks, seed, batch_size))


__all__ = ["PROBE_SETTINGS", "destination_probe_scores", "frozen_probe_scores", "frozen_probes", "probe_metrics",
           "retrieval_probe_scores"]
