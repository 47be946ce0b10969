"""Spatial tokenizer for trajfm: check-ins → H3 cells → visits → trajectories → sub-hash tokens."""

from .pipeline import TRAJECTORY_SCHEMA, build_trajectories
from .report import PipelineReport
from .segment import SegmentationConfig
from .validation import clean_checkins

__all__ = ["TRAJECTORY_SCHEMA", "PipelineReport", "SegmentationConfig", "build_trajectories", "clean_checkins"]
