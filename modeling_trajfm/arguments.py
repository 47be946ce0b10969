"""Command-line parsing shared by the scripts: argv, or a JSON/YAML file of arguments followed by command-line
overrides (`run_finetune.py args.yaml --learning_rate 1e-4`), defaults, and which arguments the caller gave
explicitly; and the set-up every run shares (logging, a warning when a launcher started fewer processes than asked)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import datasets
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

logger = logging.getLogger(__name__)

ARGS_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def read_args_file(argv: Sequence[str]) -> tuple[dict[str, Any] | None, list[str]]:
    """(the arguments of `script.py args.json|args.yaml [--overrides ...]` as a mapping, the rest of argv);
    (None, argv) for an ordinary command line."""
    if not argv or argv[0].startswith("-") or not argv[0].endswith(ARGS_FILE_SUFFIXES):
        return None, list(argv)
    path = Path(argv[0])
    if not path.is_file():
        raise ValueError(f"Argument file {path} does not exist.")
    import yaml

    values = (json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Argument file {path} must hold a mapping of argument names to values.")
    return values, list(argv[1:])


def _field_names(dataclass_types: Sequence[type]) -> dict[str, str]:
    """{argument name or alias (no dashes): field name} of every field of `dataclass_types`."""
    names = {}
    for dataclass_type in dataclass_types:
        for f in fields(dataclass_type):
            if f.init:
                names[f.name] = f.name
                names.update({alias.lstrip("-"): f.name for alias in f.metadata.get("aliases", ())})
    return names


def _list_fields(dataclass_types: Sequence[type]) -> set[str]:
    """Names of the fields typed as lists (on the command line they take several values)."""
    return {name for dataclass_type in dataclass_types for name, hint in get_type_hints(dataclass_type).items()
            if get_origin(hint) is list}


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[tuple, set[str]]:
    """Parse `argv` (default `sys.argv[1:]`), or an argument file and command-line overrides after it, into
    instances of `dataclass_types`.

    Returns (the instances, the field names given explicitly, in the file or on the command line). Invalid values
    raise `ValueError` from the dataclasses' `__post_init__`, saying what to change.
    """
    parser = HfArgumentParser(tuple(dataclass_types))
    values, argv = read_args_file(list(sys.argv[1:] if argv is None else argv))
    names = _field_names(dataclass_types)
    given = {names.get(a[2:].split("=", 1)[0].replace("-", "_"), "") for a in argv if a.startswith("--")}
    if values is not None:
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"Unknown argument(s) in the argument file: {', '.join(unknown)} (see --help).")
        values = {names[key]: value for key, value in values.items()}
        for name in _list_fields(dataclass_types) & set(values):  # `tasks: destination` as `--tasks destination`
            if isinstance(values[name], str):
                values[name] = values[name].split()
        given |= set(values)
        # file values become the defaults; strings among them are converted as command-line values are
        parser.set_defaults(**{k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                               for k, v in values.items()})
    instances = parser.parse_args_into_dataclasses(args=argv)
    return instances, given - {""}


def setup_logging(training_args: TrainingArguments, *loggers: logging.Logger) -> None:
    """Log to stdout, INFO on the main process and WARNING elsewhere, as transformers' example scripts do."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], force=True)
    level = logging.INFO if training_args.should_log else logging.WARNING
    for each in (*loggers, logger, logging.getLogger("tokenization_trajfm")):
        each.setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(logging.WARNING)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    warn_if_fewer_processes(training_args)


def requested_processes(parent_cmdline: Sequence[str]) -> int:
    """Processes an `accelerate launch` command line asks for (`--num_processes`, else its `--config_file`'s
    `num_processes`); 1 for any other command."""
    if not any(Path(a).name == "accelerate" for a in parent_cmdline[:2]) or "launch" not in parent_cmdline:
        return 1
    options: dict[str, str] = {}
    for i, arg in enumerate(parent_cmdline):
        name, _, value = arg.partition("=")
        name = name.replace("-", "_")
        if name in ("__num_processes", "__config_file"):
            options[name] = value or (parent_cmdline[i + 1] if i + 1 < len(parent_cmdline) else "")
    if "__num_processes" in options:
        return int(options["__num_processes"])
    if options.get("__config_file") and Path(options["__config_file"]).is_file():
        import yaml

        return int((yaml.safe_load(Path(options["__config_file"]).read_text()) or {}).get("num_processes", 1))
    return 1


def warn_if_fewer_processes(training_args: TrainingArguments) -> None:
    """`accelerate launch --cpu --num_processes 2` starts ONE process without a word: say so, and what to run."""
    cmdline = Path(f"/proc/{os.getppid()}/cmdline")
    if training_args.world_size > 1 or not cmdline.is_file():
        return
    requested = requested_processes([a for a in cmdline.read_bytes().decode(errors="replace").split("\0") if a])
    if requested > 1:
        logger.warning(
            f"accelerate launch asked for {requested} processes but this run has 1: on CPU, accelerate starts several "
            "processes only with its multi-GPU launcher; run accelerate launch --config_file "
            "configs/accelerate_cpu_2proc.yaml (or --multi_gpu --use_cpu --num_processes N), or torchrun "
            "--nproc_per_node N ... --use_cpu."
        )


class NoPinMemoryWithoutAccelerator:
    """TrainingArguments mixin: pinned memory only helps copies to an accelerator; on CPU it only warns."""

    def __post_init__(self):
        super().__post_init__()
        if self.use_cpu or not torch.accelerator.is_available():
            self.dataloader_pin_memory = False


def end_distributed() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits: a rank that exits while
    its process group is still alive can abort in the group's destructor ("terminate called without an active
    exception") while another rank is still saving."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
