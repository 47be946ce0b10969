"""Retrieval heads for user linking and probes of frozen encoders (the paper's open question 2: what does
pre-training teach?), computed on a prepared task's own train/test split with settings fixed in advance.

* `retrieval_metrics`: user linking by embedding similarity, per-user prototype and k nearest training trajectories
  (`embeddings.prototype_scores` / `knn_scores`), with the classifier's ranking metrics.
* `frozen_probes`: for an encoder that is not fine-tuned, the retrieval forms on user linking and a linear probe
  (`embeddings.linear_probe_scores`) on destination; `compare` runs it on the pre-trained and the random-init
  encoder, so any difference comes from pre-training alone.
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


def retrieval_metrics(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask,
                      batch_size: int = 64) -> dict[str, dict[str, float]]:
    """`{"retrieval_prototype": metrics, "retrieval_knn": metrics}` of a user-linking task, test queries against
    the training trajectories, with `ranking_metrics` (accuracy@1/@5, MRR, macro-F1)."""
    train, test = _embed(model, tokenizer, task.train, batch_size), _embed(model, tokenizer, task.test, batch_size)
    truth = np.asarray(task.test["label"])
    return {name: ranking_metrics(scores, truth) for name, scores in
            retrieval_scores(train, task.train["label"], test, len(task.label_names), PROBE_SETTINGS["knn_k"]).items()}


def linear_probe_metrics(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, task: PreparedTask,
                         seed: int, batch_size: int = 64) -> dict[str, float]:
    """Destination metrics of a linear probe over the candidate cells, trained on the frozen prefix embeddings."""
    train, test = _embed(model, tokenizer, task.train, batch_size), _embed(model, tokenizer, task.test, batch_size)
    scores = linear_probe_scores(train, task.train["label"], test, len(task.candidates),
                                 PROBE_SETTINGS["linear_probe_steps"], PROBE_SETTINGS["linear_probe_learning_rate"],
                                 PROBE_SETTINGS["linear_probe_weight_decay"], seed)
    return task_metrics(task, scores)


def frozen_probes(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, tasks: dict[str, PreparedTask],
                  seed: int, batch_size: int = 64) -> dict[str, dict[str, dict[str, float]]]:
    """`{entry: {probe: test metrics}}` of a frozen encoder for the entries among `tasks` that have probes."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    if LINKING in tasks:
        out[LINKING] = retrieval_metrics(model, tokenizer, tasks[LINKING], batch_size)
    if DESTINATION in tasks:
        out[DESTINATION] = {"linear_probe": linear_probe_metrics(model, tokenizer, tasks[DESTINATION], seed,
                                                                 batch_size)}
    return out


__all__ = ["PROBE_SETTINGS", "frozen_probes", "linear_probe_metrics", "retrieval_metrics"]
