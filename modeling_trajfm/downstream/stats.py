"""Seeded bootstrap confidence intervals for test metrics (numpy only).

Test sets here are small (a few hundred examples), so every reported metric gets a percentile bootstrap interval:
resample the test examples with replacement `n_resamples` times, recompute the metric on each resample and take the
2.5th and 97.5th percentiles. Examples that are not independent are resampled together as one *group* (a cluster
bootstrap): pair tasks group every pair anchored on the same trajectory, so its positive and negative pairs stay
together. The same resamples serve every scorer of a task (models and baselines), which makes differences between
them *paired*: a difference's interval comes from the per-resample differences, not from two separate intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: Default number of bootstrap resamples.
N_RESAMPLES = 1000


def bootstrap_resamples(n: int, n_resamples: int = N_RESAMPLES, seed: int | Sequence[int] = 0,
                        groups: Sequence | None = None) -> list[np.ndarray]:
    """`n_resamples` index arrays into `n` examples, drawn with replacement: whole groups when `groups` (one label per
    example) is given, single examples otherwise. Seeded: the same arguments always give the same resamples."""
    rng = np.random.default_rng(seed)
    if n == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(n_resamples)]
    if groups is None:
        return list(rng.integers(0, n, size=(n_resamples, n)))
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have one label per example ({n}), got shape {groups.shape}.")
    _, codes = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    return [np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
            for _ in range(n_resamples)]


def percentile_interval(values: Sequence[float], confidence: float = 0.95) -> list[float] | None:
    """[lo, hi] percentiles holding `confidence` of the finite `values`; None when there are none."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def bootstrap_ci(statistic: Callable[[np.ndarray], float], resamples: Sequence[np.ndarray],
                 confidence: float = 0.95) -> list[float] | None:
    """Percentile interval of `statistic(indices)` over `resamples` (see `bootstrap_resamples`)."""
    return percentile_interval([statistic(indices) for indices in resamples], confidence)


__all__ = ["N_RESAMPLES", "bootstrap_ci", "bootstrap_resamples", "percentile_interval"]
