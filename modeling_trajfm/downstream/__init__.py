"""Downstream tasks in one place: example builders (`examples`), the task config and prepared tasks (`builders`),
simple baselines (`baselines`), task metrics (`metrics`), bootstrap intervals (`stats`), the pre-trained-vs-random
report (`compare`), its summary across split seeds (`seeds`) and the pooling of k-fold runs (`folds`), trajectory
embeddings with the heads that use them (`embeddings`), the frozen-encoder probes (`probes`) and the split files of
the paper's seen-user protocol (`seen_users`)."""

from .builders import (
    BUILDERS,
    PRIMARY_METRIC,
    GivenSplit,
    PreparedTask,
    TaskConfig,
    build_task,
    build_task_from_splits,
    report_entries,
    task_metrics,
)
from .compare import avg_f1_improvement, compare_markdown, compare_plot, compare_report

__all__ = [
    "BUILDERS",
    "GivenSplit",
    "PRIMARY_METRIC",
    "PreparedTask",
    "TaskConfig",
    "avg_f1_improvement",
    "build_task",
    "build_task_from_splits",
    "compare_markdown",
    "compare_plot",
    "compare_report",
    "report_entries",
    "task_metrics",
]
