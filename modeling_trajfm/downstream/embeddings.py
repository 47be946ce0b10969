"""Trajectory embeddings from a TrajBert encoder and the heads that use them without a classifier.

* `embed_trajectories`: one vector per trajectory, the mean of the encoder's last hidden state over the tokens of its
  visits (special tokens and padding excluded), or the [CLS] hidden state.
* User linking as retrieval: `prototype_scores` (cosine with each user's mean training embedding) and `knn_scores`
  (a user's score is the mean cosine of its k most similar training trajectories). Both return an
  `(n, n_classes)` score matrix, so `metrics.ranking_metrics` applies as to a classifier's logits.
* `linear_probe_scores`: a seeded linear layer trained with a fixed budget on frozen embeddings (the probe of what
  pre-training teaches: no encoder weight moves).
* `contrastive_finetune`: optional supervised InfoNCE on the embeddings (trajectories of the same user are
  positives), which shapes the embedding space for retrieval directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tokenization_trajfm import TrajTokenizer

from ..configuration_trajbert import CLASSIFIER_POOLINGS
from ..modeling_trajbert import TrajBertPreTrainedModel, hexagon_mean_pool, supervised_contrastive_loss

POOLINGS = CLASSIFIER_POOLINGS


def _pool(encoder: TrajBertPreTrainedModel, batch: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    hidden = encoder(**batch).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    return hexagon_mean_pool(hidden, batch["hexagon_ids"])


def _encode(tokenizer: TrajTokenizer, cells, timestamps, device: torch.device) -> dict[str, torch.Tensor]:
    batch = tokenizer(cells=list(cells), timestamps=None if timestamps is None else list(timestamps), padding=True,
                      truncation=True, return_tensors="pt")
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def embed_trajectories(
    model: TrajBertPreTrainedModel,
    tokenizer: TrajTokenizer,
    cells: Sequence[Sequence[int]],
    timestamps: Sequence[Sequence[int]] | None = None,
    batch_size: int = 64,
    pooling: str = "mean",
) -> np.ndarray:
    """`(n, hidden_size)` float32 embeddings of `n` trajectories given as visit cells (and start times).

    `pooling="mean"` averages the last hidden state over the tokens that belong to a visit (`hexagon_ids > 0`), so
    [CLS], [SEP] and padding never count and the result does not depend on the batch; `"cls"` takes [CLS]'s state.
    Any TrajBert model works (its encoder is used); it is put in eval mode.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    encoder = model.base_model.eval()
    device = next(encoder.parameters()).device
    out = np.zeros((len(cells), encoder.config.hidden_size), dtype=np.float32)
    for start in range(0, len(cells), batch_size):
        stop = min(len(cells), start + batch_size)
        batch = _encode(tokenizer, cells[start:stop], None if timestamps is None else timestamps[start:stop], device)
        out[start:stop] = _pool(encoder, batch, pooling).float().cpu().numpy()
    return out


def contrastive_finetune(model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer, cells: Sequence[Sequence[int]],
                         timestamps: Sequence[Sequence[int]] | None, labels: Sequence[int], steps: int = 150,
                         users_per_batch: int = 16, trajectories_per_user: int = 4, learning_rate: float = 1e-4,
                         temperature: float = 0.1, pooling: str = "mean", seed: int = 0) -> TrajBertPreTrainedModel:
    """Fine-tune the encoder of `model` in place with `supervised_contrastive_loss` (same-user trajectories are
    positives); each batch holds `users_per_batch` users with `trajectories_per_user` of their trajectories each
    (drawn seeded, with replacement), so every anchor has positives. Returns `model` in eval mode."""
    labels = np.asarray(labels, dtype=np.int64)
    by_label = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    usable = [c for c, rows in by_label.items() if rows.size >= 2]
    if len(usable) < 2:
        raise ValueError("Contrastive fine-tuning needs at least 2 users with 2 trajectories each.")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    encoder = model.base_model.train()
    device = next(encoder.parameters()).device
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate)
    for _ in tqdm(range(steps), desc="Contrastive fine-tuning", leave=False):
        users = rng.choice(usable, size=min(users_per_batch, len(usable)), replace=False)
        rows = np.concatenate([rng.choice(by_label[u], size=trajectories_per_user) for u in users])
        batch = _encode(tokenizer, [cells[i] for i in rows],
                        None if timestamps is None else [timestamps[i] for i in rows], device)
        loss = supervised_contrastive_loss(_pool(encoder, batch, pooling),
                                           torch.as_tensor(labels[rows], device=device), temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of `a` with the same row of `b` (a zero row scores 0)."""
    return (_unit(a) * _unit(b)).sum(axis=1)


def prototype_scores(train_embeddings: np.ndarray, train_labels: Sequence[int], query_embeddings: np.ndarray,
                     n_classes: int) -> np.ndarray:
    """Cosine of each query with each class prototype (mean of the class's unit-length training embeddings);
    a class without training examples scores -inf."""
    train, labels = _unit(train_embeddings), np.asarray(train_labels, dtype=np.int64)
    prototypes = np.zeros((n_classes, train.shape[1]))
    np.add.at(prototypes, labels, train)
    scores = _unit(query_embeddings) @ _unit(prototypes).T
    scores[:, np.bincount(labels, minlength=n_classes) == 0] = -np.inf
    return scores


def knn_scores(train_embeddings: np.ndarray, train_labels: Sequence[int], query_embeddings: np.ndarray,
               n_classes: int, k: int = 3) -> np.ndarray:
    """Per class, the mean cosine of its `min(k, its size)` training trajectories most similar to the query
    (k = 1: the nearest trajectory of each class); a class without training examples scores -inf."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    similarity = _unit(query_embeddings) @ _unit(train_embeddings).T
    labels = np.asarray(train_labels, dtype=np.int64)
    scores = np.full((similarity.shape[0], n_classes), -np.inf)
    for c in np.unique(labels):
        own = np.sort(similarity[:, labels == c], axis=1)[:, ::-1][:, :k]
        scores[:, c] = own.mean(axis=1)
    return scores


def retrieval_scores(gallery_embeddings: np.ndarray, gallery_labels: Sequence[int], query_embeddings: np.ndarray,
                     n_classes: int, k: int = 3) -> dict[str, np.ndarray]:
    """User linking as retrieval: `{"retrieval_prototype": ..., "retrieval_knn": ...}` score matrices of the queries
    against a gallery of trajectories whose users are known (`prototype_scores`, `knn_scores` with `k`)."""
    return {"retrieval_prototype": prototype_scores(gallery_embeddings, gallery_labels, query_embeddings, n_classes),
            "retrieval_knn": knn_scores(gallery_embeddings, gallery_labels, query_embeddings, n_classes, k)}


def linear_probe_scores(train_embeddings: np.ndarray, train_labels: Sequence[int], query_embeddings: np.ndarray,
                        n_classes: int, steps: int = 300, learning_rate: float = 1e-2, weight_decay: float = 1e-3,
                        seed: int = 0) -> np.ndarray:
    """Logits of a linear layer trained (full batch, AdamW, fixed `steps`, seeded) on standardized frozen embeddings;
    labels outside `0..n_classes-1` are ignored in training."""
    mean = train_embeddings.mean(axis=0)
    std = train_embeddings.std(axis=0) + 1e-6
    x = torch.as_tensor((train_embeddings - mean) / std, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
    keep = (y >= 0) & (y < n_classes)
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=learning_rate, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(layer(x[keep]), y[keep]).backward()
        optimizer.step()
    with torch.no_grad():
        query = torch.as_tensor((query_embeddings - mean) / std, dtype=torch.float32)
        return layer(query).double().numpy()


__all__ = [
    "POOLINGS",
    "contrastive_finetune",
    "embed_trajectories",
    "knn_scores",
    "linear_probe_scores",
    "prototype_scores",
    "retrieval_scores",
    "row_cosines",
]
