"""Command-line parsing shared by the scripts: argv or one JSON/YAML file of arguments, defaults, and which
arguments the caller gave explicitly."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers import HfArgumentParser, TrainingArguments


def read_args_file(argv: Sequence[str]) -> dict[str, Any] | None:
    """The arguments of `script.py args.json|args.yaml` as a mapping; None for an ordinary command line."""
    if len(argv) != 1 or not argv[0].endswith((".json", ".yaml", ".yml")):
        return None
    path = Path(argv[0])
    if not path.is_file():
        raise ValueError(f"Argument file {path} does not exist.")
    import yaml

    return (json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())) or {}


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[tuple, set[str]]:
    """Parse `argv` (default `sys.argv[1:]`) or an argument file into instances of `dataclass_types`.

    Returns (the instances, the names given explicitly). Invalid values raise `ValueError` from the dataclasses'
    `__post_init__`, saying what to change.
    """
    parser = HfArgumentParser(tuple(dataclass_types))
    argv = list(sys.argv[1:] if argv is None else argv)
    values = read_args_file(argv)
    if values is not None:
        return parser.parse_dict(values), set(values)
    instances = parser.parse_args_into_dataclasses(args=argv)
    return instances, {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


def setup_logging(training_args: TrainingArguments, *loggers: logging.Logger) -> None:
    """Log to stdout, INFO on the main process and WARNING elsewhere, as transformers' example scripts do."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], force=True)
    level = logging.INFO if training_args.should_log else logging.WARNING
    for logger in loggers:
        logger.setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(logging.WARNING)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
