"""Spatiotemporal clustering: consecutive points of one user in the same cell become one visit.

A point joins the current visit when it has the same user and cell as the previous point and came at most `window`
after it (the window chains, so a long stay sampled every 15 s stays one visit). Inputs are sorted by user, then
time. Pure numpy, so it serves both the corpus pipeline and the tokenizer (it travels with pushed checkpoints).
"""

from __future__ import annotations

import numpy as np


def visit_starts(
    cells: np.ndarray, times: np.ndarray | None, window: float, users: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the first point of each visit. `times` and `window` share a unit; no times → cells alone decide."""
    n = cells.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = cells[1:] != cells[:-1]
    if times is not None:
        new[1:] |= (times[1:] - times[:-1]) > window
    if users is not None:
        new[1:] |= users[1:] != users[:-1]
    return np.flatnonzero(new)


def visit_spans(starts: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(index of the last point of each visit, number of points merged into it)."""
    ends = np.append(starts[1:], n_points) - 1
    return ends, (ends - starts + 1)
