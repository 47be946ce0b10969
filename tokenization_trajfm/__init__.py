"""Spatial tokenizer for trajfm: check-ins → H3 cells → visits → trajectories → sub-hash tokens.

Importing it also imports `modeling_trajfm`, which registers `TrajTokenizer` with `AutoTokenizer` (a tokenizer is
registered against a config class, and the config lives with the model).
"""

from .corpus import UserSplit, load_checkins, select_users, split_users
from .pipeline import TRAJECTORY_SCHEMA, build_trajectories
from .readers import READERS, read_checkins
from .report import PipelineReport
from .segment import SegmentationConfig
from .tokenization_trajfm import TrajTokenizer
from .validation import clean_checkins

TrajTokenizer.register_for_auto_class("AutoTokenizer")

import modeling_trajfm  # noqa: E402,F401  (registers the Auto classes, the tokenizer included)

__all__ = [
    "READERS",
    "TRAJECTORY_SCHEMA",
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
