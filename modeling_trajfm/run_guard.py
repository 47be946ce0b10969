"""Guards that keep training runs from losing work: output folders that are never silently overwritten, resumes
that refuse changed arguments, and checkpoints that count only once complete.

- `check_output_dir`: a non-empty output folder is refused unless the caller overwrites it or resumes in it, and a
  run never writes into the folder of the model (or tokenizer) it reads.
- `RunRecord` (`trajfm_run.json`): the arguments that change what a run computes, written before training; a resume
  with different ones is refused with the list of differences, and a finished run is not re-run as a no-op.
- Complete checkpoints: `MTMTrainer` writes `COMPLETE_MARKER` into a checkpoint folder after everything else, so a
  run killed mid-save leaves a folder that `last_complete_checkpoint` skips (and says so).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

RUN_FILE = "trajfm_run.json"
COMPLETE_MARKER = "trajfm_checkpoint_complete"
#: TrainingArguments that change what a run computes (the others only change logging, saving or speed).
RUN_CHANGING_TRAINING_ARGUMENTS = (
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "num_train_epochs",
    "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "seed", "data_seed", "optim", "optim_args", "bf16", "fp16",
    "train_sampling_strategy", "label_smoothing_factor",
)


class OutputDirError(ValueError):
    """The output folder cannot be used as asked; the message says what to pass instead."""


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def check_output_dir(output_dir: str | Path, overwrite: bool, reads_from: tuple[str | None, ...] = (),
                     resumable: bool = False) -> None:
    """Refuse to write where work would be lost.

    `reads_from`: folders the run loads a model or tokenizer from (never written into). `resumable`: the folder holds
    a checkpoint this run may continue.
    """
    for source in reads_from:
        if source is not None and Path(source).is_dir() and _same_folder(source, output_dir):
            raise OutputDirError(
                f"--output_dir {output_dir} is the folder the model is loaded from: writing there would replace it. "
                "Pass another --output_dir."
            )
    folder = Path(output_dir)
    if overwrite or resumable or not folder.is_dir() or not any(folder.iterdir()):
        return
    raise OutputDirError(
        f"--output_dir {output_dir} already holds files of another run. Pass --overwrite_output_dir to replace them, "
        "or another --output_dir."
    )


def wants_overwrite(training_args: Any) -> bool:
    """`--overwrite_output_dir` of trajfm's TrainingArguments subclasses (plain TrainingArguments never overwrite)."""
    return bool(getattr(training_args, "overwrite_output_dir", False))


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """`checkpoint-<step>` folders, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def is_complete(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def last_complete_checkpoint(output_dir: str | Path, remove_incomplete: bool = False) -> str | None:
    """The newest complete checkpoint; incomplete ones (a run killed while saving) are skipped with a warning, and
    removed with `remove_incomplete` (on the main process only)."""
    last = None
    for checkpoint in checkpoint_folders(output_dir):
        if is_complete(checkpoint):
            last = str(checkpoint)
            continue
        logger.warning(f"Skipping {checkpoint}: incomplete (the run stopped while saving it).")
        if remove_incomplete:
            shutil.rmtree(checkpoint, ignore_errors=True)
    return last


def remove_checkpoints(output_dir: str | Path) -> None:
    """Drop the checkpoints of a run that is being overwritten, so they can never be resumed by mistake."""
    for checkpoint in checkpoint_folders(output_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)


def mark_complete(checkpoint: str | Path) -> None:
    (Path(checkpoint) / COMPLETE_MARKER).write_text("")


@dataclass
class RunRecord:
    """The arguments that change what a run computes, and whether it finished."""

    arguments: dict[str, Any]
    finished: bool = False
    results: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_arguments(groups: dict[str, dict[str, Any]], training_args: Any) -> RunRecord:
        training = training_args.to_dict()
        groups = {**groups, "training": {k: training.get(k) for k in RUN_CHANGING_TRAINING_ARGUMENTS if k in training}}
        # JSON round trip: what is compared is exactly what is saved (tuples become lists, enums strings).
        return RunRecord(json.loads(json.dumps(groups, default=str)))

    def save(self, output_dir: str | Path) -> None:
        path = Path(output_dir) / RUN_FILE
        path.write_text(json.dumps({"arguments": self.arguments, "finished": self.finished, "results": self.results},
                                   indent=1, default=str))

    @staticmethod
    def load(output_dir: str | Path) -> RunRecord | None:
        path = Path(output_dir) / RUN_FILE
        return RunRecord(**json.loads(path.read_text())) if path.is_file() else None

    def differences(self, other: RunRecord, defaults: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
        """`group.name: recorded -> new` for every argument that differs. An argument this record lacks (added to
        trajfm after the run) counts as `defaults[group][name]`, what the run trained with before it existed."""
        out = []
        defaults = defaults or {}
        for group in sorted(set(self.arguments) | set(other.arguments)):
            old, new = self.arguments.get(group, {}), other.arguments.get(group, {})
            before = defaults.get(group, {})
            for name in sorted(set(old) | set(new)):
                if name in old or name not in before:
                    recorded, shown = old.get(name), repr(old.get(name))
                else:
                    recorded = before[name]
                    shown = f"{recorded!r} (recorded before the argument existed)"
                if recorded != new.get(name):
                    out.append(f"{group}.{name}: {shown} -> {new.get(name)!r}")
        return out


def argument_defaults(argument_class: type) -> dict[str, Any]:
    """The plain defaults of a dataclass of arguments (fields with a default factory left out)."""
    return {f.name: f.default for f in fields(argument_class) if f.default is not MISSING}


def check_resume(output_dir: str | Path, checkpoint: str, new: RunRecord,
                 defaults: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Refuse to continue `checkpoint` with arguments that change the run, or to re-run a finished run. `defaults`:
    group → {argument: value of a run recorded before it existed}, see `RunRecord.differences`."""
    recorded = RunRecord.load(output_dir)
    if recorded is None:
        return
    if recorded.finished:
        raise OutputDirError(
            f"--output_dir {output_dir} holds a finished run (its results are kept). Pass --overwrite_output_dir to "
            "train again from scratch, or another --output_dir."
        )
    changed = recorded.differences(new, defaults)
    if changed:
        raise OutputDirError(
            f"Resuming {checkpoint} with arguments that change the run:\n  " + "\n  ".join(changed)
            + "\nResume with the recorded arguments, or pass --overwrite_output_dir to start again from scratch."
        )
