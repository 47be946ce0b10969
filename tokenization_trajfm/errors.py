"""The errors trajfm raises for input it refuses: one family, so callers can catch bad input and nothing else.

Every class is a `ValueError`. The message says where the problem is (file, column, row, or the position of a
point in a trajectory) and what to do about it. This module is copied next to pushed checkpoints with the tokenizer,
so it imports nothing.
"""

from __future__ import annotations


class TrajInputError(ValueError):
    """Input data, settings or files that trajfm refuses; the message names where and what to do."""


class CheckinReadError(TrajInputError):
    """A file or array cannot be turned into a canonical check-in table (message names file, column, row)."""


class EmptyInputError(TrajInputError):
    """Nothing is left to build trajectories from; the message gives the rows read and the drops by reason."""


class TokenizerFileError(TrajInputError):
    """Saved tokenizer files are missing, unreadable or disagree with each other (message names the file)."""


__all__ = ["CheckinReadError", "EmptyInputError", "TokenizerFileError", "TrajInputError"]
