"""Is a number a plausible epoch time in a given unit? Its magnitude tells the unit it was really written in.

Check-in times fall between 1971 and 2200. Read in the wrong unit they land in 1970 (seconds read as milliseconds)
or tens of thousands of years away (milliseconds read as seconds), and the four units' plausible ranges do not
overlap, so a value outside its range that fits another unit names the unit it looks like. Small values that fit
no unit (relative times, synthetic data near 1970) are left alone. Numpy only: it travels with the tokenizer.
"""

from __future__ import annotations

import numpy as np

UNITS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
EARLIEST_SECONDS = 31_536_000  # 1971-01-01 UTC
LATEST_SECONDS = 7_258_118_400  # 2200-01-01 UTC
_SECONDS_PER_YEAR = 31_556_952


def implausible_epochs(values: np.ndarray, unit: str) -> tuple[np.ndarray, str | None]:
    """(mask of values that cannot be epoch times in `unit`, the unit the first of them looks like or None).

    A value is implausible when it lies beyond 2200 (or before 1740) in `unit`, or before 1971 while it fits the
    plausible range of another unit. NaN is never flagged: missing values are the cleaning step's business.
    """
    values = np.asarray(values, dtype=np.float64)
    fits = {}
    with np.errstate(invalid="ignore"):
        for other, per_second in UNITS_PER_SECOND.items():
            seconds = values / per_second
            fits[other] = (seconds >= EARLIEST_SECONDS) & (seconds < LATEST_SECONDS)
        seconds = values / UNITS_PER_SECOND[unit]
        bad = (np.abs(seconds) >= LATEST_SECONDS) | ((seconds < EARLIEST_SECONDS) & np.any(list(fits.values()), 0))
    if not bad.any():
        return bad, None
    first = int(np.flatnonzero(bad)[0])
    return bad, next((other for other, fit in fits.items() if fit[first]), None)


def epoch_problem(value: float, unit: str, looks_like: str | None) -> str:
    """What `value` becomes in `unit` and, when known, the unit it looks like (for error messages)."""
    seconds = float(value) / UNITS_PER_SECOND[unit]
    if abs(seconds) < LATEST_SECONDS:
        when = str(np.datetime64(int(seconds), "s")).replace("T", " ") + " UTC"
    else:
        when = f"the year {1970 + seconds / _SECONDS_PER_YEAR:,.0f}"
    problem = f"as epoch {UNIT_NAMES[unit]} it is {when}"
    if looks_like is not None:
        problem += f"; it looks like epoch {UNIT_NAMES[looks_like]}"
    return problem
