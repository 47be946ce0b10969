#!/usr/bin/env python
# Copyright 2025 The trajfm authors. Licensed under the Apache License, Version 2.0.
"""Masked trajectory modeling (MTM) pre-training of TrajBert, in the shape of transformers' run_mlm.py.

    python run_mtm.py                                   # embedded default: synthetic city, small model, ./trajfm-base
    python run_mtm.py --data checkins.csv.gz --reader stan_nyc --max_gap_minutes 4320 --output_dir out
    python run_mtm.py --train_file train.parquet --validation_file valid.parquet   # or --dataset_name NAME|FOLDER
    python run_mtm.py --corpus_dir corpus --streaming --max_steps 20000   # a folder from tokenization_trajfm.prepare
    python run_mtm.py config.yaml --learning_rate 5e-4  # or config.json: the arguments as a mapping, then overrides
    torchrun --nproc_per_node 2 run_mtm.py ... --use_cpu --ddp_find_unused_parameters false
    accelerate launch --config_file configs/accelerate_cpu_2proc.yaml run_mtm.py ... --ddp_find_unused_parameters false

Argument parsing only: the work is `modeling_trajfm.pretrain` (its docstring describes the data flow and the output
folder; `python run_mtm.py --help` lists every argument). Bad arguments raise ValueError saying what to change.
"""

from __future__ import annotations

from transformers import TrainerCallback

from modeling_trajfm import PretrainingResult
from modeling_trajfm.arguments import end_distributed
from modeling_trajfm.pretraining import pretrain_from_argv


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> PretrainingResult:
    """Run MTM pre-training with command-line style arguments (`argv`, default `sys.argv[1:]`)."""
    return pretrain_from_argv(argv, callbacks)


if __name__ == "__main__":
    main()
    end_distributed()
