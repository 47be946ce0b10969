"""Metrics for masked trajectory modeling (MTM), computed locally (no `evaluate` download).

Under `Trainer`, pass `preprocess_logits_for_metrics=preprocess_logits_for_mtm_metrics` (keeps only the top-5 ids per
position, so evaluation never accumulates full `(batch, seq, vocab)` logits) and
`compute_metrics=compute_mtm_metrics` with `TrainingArguments(label_names=["labels", "hexagon_ids"])`, so that the
hexagon index of every token reaches `compute_metrics` next to the labels.

Definitions (over the masked positions only, i.e. `labels != -100`):

- **token top-k accuracy**: share of masked sub-tokens whose true id is among that position's k best ids.
- **hexagon top-1 accuracy**: share of masked hexagons (a `(sequence, hexagon_ids)` pair) whose sub-tokens are ALL
  predicted right by the arg-max; one wrong sub-token makes the hexagon wrong.
- **hexagon top-5 accuracy**: share of masked hexagons where EVERY sub-token's true id is within that position's top-5.
  This is a per-position criterion, not "the cell is among 5 ranked whole-cell guesses": for a hexagon of n sub-tokens
  it accepts up to 5**n spellings, so it is an upper bound on a cell-level top-5 (they agree for one-token cells).
- **perplexity**: `exp(eval_loss)`, the per-sub-token perplexity of the masked tokens (the paper's number); it only
  compares runs that share a tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

IGNORE_INDEX = -100
TOP_K = 5


def perplexity(loss: float) -> float:
    """`exp(loss)`, `inf` on overflow (a diverged run), `nan` stays `nan`."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def preprocess_logits_for_mtm_metrics(logits: Any, labels: Any = None) -> torch.Tensor:
    """Reduce `(batch, seq, vocab)` logits to the `(batch, seq, 5)` best token ids (best first).

    Sparse logits (`(num_labelled, vocab)`, from `config.sparse_prediction`) are scattered back to the labelled
    positions of `labels` (Trainer passes the batch's label tensors, `labels` first); other positions get -100.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    top_ids = logits.topk(k=min(TOP_K, logits.shape[-1]), dim=-1).indices
    if logits.ndim == 3:
        return top_ids
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    if labels is None:
        raise ValueError("Sparse MTM logits need the batch's `labels` to know which positions they belong to.")
    labelled = labels.to(top_ids.device) != IGNORE_INDEX
    dense = top_ids.new_full((*labels.shape, top_ids.shape[-1]), IGNORE_INDEX)
    dense[labelled] = top_ids
    return dense


def mtm_accuracies(top_ids: np.ndarray, labels: np.ndarray, hexagon_ids: np.ndarray) -> dict[str, float]:
    """Token and hexagon top-1 / top-5 accuracies (see the module docstring) from padded numpy arrays.

    `top_ids` is `(n, seq, k)` ids (best first), `labels` and `hexagon_ids` are `(n, seq)`; positions padded by the
    evaluation loop carry `-100` in `labels` and are ignored.
    """
    top_ids, labels, hexagon_ids = np.asarray(top_ids), np.asarray(labels), np.asarray(hexagon_ids)
    if top_ids.ndim == 2:  # arg-max ids only
        top_ids = top_ids[..., None]
    seq = min(top_ids.shape[1], labels.shape[1], hexagon_ids.shape[1])
    top_ids, labels, hexagon_ids = top_ids[:, :seq], labels[:, :seq], hexagon_ids[:, :seq]
    rows, cols = np.nonzero(labels != IGNORE_INDEX)
    out = {}
    if rows.size == 0:
        return {
            "token_acc_top1": float("nan"),
            "hexagon_acc_top1": float("nan"),
            "hexagon_acc_top5": float("nan"),
            "masked_hexagons": 0,
        }
    truth = labels[rows, cols]
    guesses = top_ids[rows, cols]
    width = int(hexagon_ids.max()) + 1
    _, group = np.unique(rows.astype(np.int64) * width + hexagon_ids[rows, cols].astype(np.int64), return_inverse=True)
    n_groups = int(group.max()) + 1
    for k in (1, TOP_K):
        hit = (guesses[:, :k] == truth[:, None]).any(axis=1)
        misses = np.bincount(group, weights=(~hit).astype(np.float64), minlength=n_groups)
        out[f"hexagon_acc_top{k}"] = float((misses == 0).mean())
        if k == 1:
            out["token_acc_top1"] = float(hit.mean())
    out["masked_hexagons"] = n_groups
    return out


def compute_mtm_metrics(eval_pred: Any) -> dict[str, float]:
    """`Trainer` `compute_metrics` for MTM: needs `label_names=["labels", "hexagon_ids"]` (see module docstring)."""
    predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    if not isinstance(label_ids, (tuple, list)) or len(label_ids) < 2:
        raise ValueError(
            "compute_mtm_metrics needs the hexagon ids next to the labels: set "
            "TrainingArguments(label_names=['labels', 'hexagon_ids'])."
        )
    return mtm_accuracies(predictions, label_ids[0], label_ids[1])


__all__ = ["compute_mtm_metrics", "mtm_accuracies", "perplexity", "preprocess_logits_for_mtm_metrics"]
