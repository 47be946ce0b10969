#!/usr/bin/env python
# Copyright 2025 The trajfm authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a pre-trained TrajBert checkpoint on the downstream tasks of arXiv 2312.00076 (run_classification shape).

Tasks (`--task`, or `--compare --tasks ...`): `next_subtrajectory` (does B follow A?), `destination` (first 25 % of
the visits → last cell), `user_association` (`--association_form linking`: which of N users; `binary`: same user?).
`--init random` fine-tunes the same config from fresh weights; `--compare` runs both inits on the same data, seeds and
budget and writes `compare_report.{json,md,png}` with simple baselines and the average-F1 improvement.

    python run_finetune.py --compare --model_name_or_path trajfm-base            # embedded synthetic data, all tasks
    python run_finetune.py --task destination --model_name_or_path trajfm-base --output_dir outputs/dest
    python run_finetune.py --task user_association --model_name_or_path trajfm-base \
        --train_file train.csv --validation_file valid.csv --test_file test.csv --trajectory_col tid --user_col label
    accelerate launch --config_file configs/accelerate_cpu_2proc.yaml run_finetune.py --task destination ...
    python run_finetune.py args.json --learning_rate 1e-4   # or args.yaml, then command-line overrides

Argument parsing only: the work is `modeling_trajfm.finetune` / `modeling_trajfm.compare`. Data arguments
(`--data`, `--reader`, segmentation, ...) default to what the checkpoint's pre-training recorded
(`trajfm_corpus.json`); those given here override it (a new `--data`, `--dataset_dir` or `--corpus_dir` replaces
the whole source). A checkpoint pre-trained on a corpus folder reads its held-out shards.
Given splits (`--train_file/--validation_file/--test_file`, `--dataset_name`) are used exactly as given.
Bad arguments raise ValueError saying what to change.
"""

from __future__ import annotations

import logging
from dataclasses import fields

from modeling_trajfm import CompareResult, FinetuneResult, FinetuneTrainingArguments, compare, finetune
from modeling_trajfm.arguments import end_distributed, parse_arguments, setup_logging
from modeling_trajfm.downstream import TaskConfig
from modeling_trajfm.finetuning import FinetuneArguments, check_heldout_users_argument
from tokenization_trajfm import CorpusConfig

logger = logging.getLogger("run_finetune")


def parse_args(argv: list[str] | None = None):
    """→ (FinetuneArguments, TaskConfig, corpus overrides {name: value given}, FinetuneTrainingArguments)."""
    (run_args, task_config, corpus, training_args), given = parse_arguments(
        (FinetuneArguments, TaskConfig, CorpusConfig, FinetuneTrainingArguments), argv)
    check_heldout_users_argument(task_config.heldout_users)
    overrides = {f.name: getattr(corpus, f.name) for f in fields(CorpusConfig) if f.name in given}
    return run_args, task_config, overrides, training_args


def main(argv: list[str] | None = None) -> FinetuneResult | CompareResult:
    """Run from the command line or in-process."""
    run_args, task_config, corpus_overrides, training_args = parse_args(argv)
    setup_logging(training_args, logger, logging.getLogger("modeling_trajfm"))
    if run_args.compare:
        return compare(run_args.model_name_or_path, task_config, training_args, run_args.tasks, corpus_overrides)
    return finetune(run_args.model_name_or_path, task_config, training_args, run_args.init, corpus_overrides)


if __name__ == "__main__":
    main()
    end_distributed()
