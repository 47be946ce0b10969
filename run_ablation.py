#!/usr/bin/env python
# Copyright 2025 The trajfm authors. Licensed under the Apache License, Version 2.0.
"""Ablation of pre-training choices, scored by frozen-encoder probes on VALIDATION data (never test).

    python run_ablation.py configs/ablation_nyc.yaml                 # the NYC study; overrides may follow
    python run_ablation.py --base_args="--data checkins.csv.gz --split_seed 42 --max_steps 600" \\
        --rows rows.yaml --seeds 1 2 3 --output_dir ablation          # rows.yaml: row name → run_mtm.py arguments

Every row is pre-trained with every seed (`run_mtm.py` base arguments + the row's + --seed), then probed on the
validation split of the held-out users' tasks; `ablation_results.json` and `ablation_table.md` (mean ± std per row,
with the command that reproduces it) are rewritten after every run, and a second call continues where the first
stopped. Argument parsing only: the work is `modeling_trajfm.ablation.run_ablation`.
"""

from __future__ import annotations

import shlex
from typing import Any

from modeling_trajfm.ablation import AblationArguments, load_rows, run_ablation
from modeling_trajfm.arguments import parse_arguments


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the study from the command line or in-process; returns it (the content of ablation_results.json)."""
    (args,), _ = parse_arguments((AblationArguments,), argv)
    return run_ablation(load_rows(args.rows), args.seeds, shlex.split(args.base_args), args.output_dir,
                        args.keep_checkpoints)


if __name__ == "__main__":
    main()
