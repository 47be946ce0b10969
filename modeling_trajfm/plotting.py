"""Training curves from a `Trainer` log history (`trainer.state.log_history`), saved as a PNG.

Used by `run_mtm.py` (train/eval loss + hexagon accuracy) and reusable by fine-tuning scripts (pass other
`metric_keys`, e.g. `("eval_f1",)`). Headless: uses matplotlib's Agg backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


def _series(log_history: Iterable[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for entry in log_history:
        if key in entry and "step" in entry and entry[key] is not None:
            steps.append(entry["step"])
            values.append(float(entry[key]))
    return steps, values


def plot_training_curves(
    log_history: Sequence[dict],
    path: str | Path,
    metric_keys: Sequence[str] = ("eval_hexagon_acc_top1", "eval_hexagon_acc_top5"),
    loss_keys: Sequence[str] = ("loss", "eval_loss", "contrastive_loss", "visible_token_loss"),
    title: str | None = None,
    loss_label: str = "loss (cross-entropy per sub-token)",
) -> Path | None:
    """Plot losses (left axis, `loss_label`: what one loss value averages over) and metrics (right axis, e.g.
    accuracies) against the optimizer step; a key logged once (e.g. `test_loss`) shows as one marker.

    Returns the written path, or None when the history holds none of the keys (nothing to plot).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    labels = {"loss": "train loss", "eval_loss": "validation loss", "test_loss": "test loss",
              "contrastive_loss": "contrastive term (unweighted)",
              "visible_token_loss": "visible-token term (unweighted)"}
    losses = {key: _series(log_history, key) for key in loss_keys}
    metrics = {key: _series(log_history, key) for key in metric_keys}
    if not any(s for s, _ in losses.values()) and not any(s for s, _ in metrics.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, (steps, values) in losses.items():
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3 if len(steps) > 1 else 7,
                    label=labels.get(key, key))
    ax.set_xlabel("step")
    ax.set_ylabel(loss_label)
    handles, names = ax.get_legend_handles_labels()
    if any(s for s, _ in metrics.values()):
        right = ax.twinx()
        for index, (key, (steps, values)) in enumerate(metrics.items()):
            if steps:
                right.plot(
                    steps, values, ls="--", marker="s", ms=3, color=f"C{2 + index}", label=key.removeprefix("eval_")
                )
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1)
        more_handles, more_names = right.get_legend_handles_labels()
        handles, names = handles + more_handles, names + more_names
    ax.legend(handles, names, loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["plot_training_curves"]
