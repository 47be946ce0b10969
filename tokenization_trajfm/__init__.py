"""Spatial tokenizer for trajfm: check-ins → H3 cells → visits → trajectories → sub-hash tokens.

This package knows nothing of the model. `import modeling_trajfm` registers `TrajTokenizer` (with the TrajBert
classes) with the transformers Auto classes.
"""

from .corpus import CorpusConfig, CorpusDescription, UserSplit, load_checkins, select_users, split_users
from .errors import CheckinReadError, EmptyInputError, TokenizerFileError, TrajInputError
from .pipeline import TRAJECTORY_SCHEMA, build_trajectories
from .readers import READERS, read_checkins
from .report import PipelineReport
from .segment import SegmentationConfig
from .tokenization_trajfm import FEATURE_KEYS, TrajTokenizer
from .validation import clean_checkins

__all__ = [
    "FEATURE_KEYS",
    "CheckinReadError",
    "EmptyInputError",
    "TokenizerFileError",
    "TrajInputError",
    "READERS",
    "TRAJECTORY_SCHEMA",
    "CorpusConfig",
    "CorpusDescription",
    "PipelineReport",
    "SegmentationConfig",
    "TrajTokenizer",
    "UserSplit",
    "build_trajectories",
    "clean_checkins",
    "load_checkins",
    "read_checkins",
    "select_users",
    "split_users",
]
