"""Every script's `--help` prints its arguments: argparse %-formats each help string, so one stray `%` breaks it."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("script", ["run_mtm", "run_finetune", "run_prepare", "run_ablation"])
def test_help_prints_every_argument(script, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(script).main(["--help"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "--output_dir" in printed
    if script == "run_finetune":
        assert ">= 95% of paired bootstrap" in printed
