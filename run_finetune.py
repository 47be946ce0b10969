#!/usr/bin/env python
# Copyright 2025 The trajfm authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Fine-tune a pre-trained TrajBert checkpoint on the downstream tasks of arXiv 2312.00076 (run_classification shape).

Tasks (`--task`, or `--compare --tasks ...`), built by `tokenization_trajfm.tasks` from the trajectories of the users
HELD OUT from pre-training (the checkpoint's `trajfm_split.json`, or `--heldout_users`), split by trajectory into
train/test (`--test_fraction`, 0.2 as in the paper) so no trajectory is on both sides:

- `next_subtrajectory`: does sub-trajectory B directly follow A? Binary, sentence pair; negatives from the same user
  (hard) and other users (easy), reported separately (`test_f1_same_user_negatives`, `test_f1_other_user_negatives`).
- `destination`: first `--prefix_fraction` (25 %) of the visits → last cell (`TrajBertForHexagonPrediction`, candidate
  cells = training destinations). accuracy@1/@5, MRR, macro-F1, distance error (km).
- `user_association`: `--association_form linking` (which of N users? `--num_users`) or `binary` (same user?).

`--init random` fine-tunes the same config from fresh weights; `--compare` runs both inits on the same data, seeds and
budget and writes `compare_report.{json,md,png}` with simple baselines (see `tokenization_trajfm.baselines`) and the
average-F1 improvement:

    avg_f1_improvement_pct = 100 * (mean_t F1_pretrained(t) - mean_t F1_random(t)) / mean_t F1_random(t)

over the tasks t of the report, with F1 = binary F1 (next_subtrajectory, user_association_binary) or macro-F1
(destination, user_association_linking): the relative improvement of the average F1, as the paper's "33.6 % better in
average F1". `avg_f1_improvement_pct_paper_tasks` is the same over the paper's three tasks (binary association).

Examples:

    python run_finetune.py --compare --model_name_or_path trajfm-base            # embedded synthetic data, all tasks
    python run_finetune.py --task destination --model_name_or_path trajfm-base --output_dir outputs/dest
    accelerate launch run_finetune.py --task user_association --model_name_or_path trajfm-base
    python run_finetune.py args.json   # or args.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

import modeling_trajfm  # noqa: F401  (registers TrajBert with the Auto classes)
import run_mtm
from modeling_trajfm import (
    DataCollatorWithTrajectoryPadding,
    TrajBertConfig,
    TrajBertForHexagonPrediction,
    TrajBertForSequenceClassification,
    set_auto_map,
)
from modeling_trajfm.hub import check_push_possible, eval_results_from_metrics, push_checkpoint, render_model_card
from modeling_trajfm.task_metrics import binary_metrics, distance_errors_km, ranking_metrics
from run_mtm import PRETRAINING_FILE, card_dataset_name, read_args_file
from tokenization_trajfm import TrajTokenizer, UserSplit, select_users
from tokenization_trajfm import baselines as bl
from tokenization_trajfm import tasks as T
from tokenization_trajfm.corpus import SPLIT_FILE
from tokenization_trajfm.h3cells import cell_centers

logger = logging.getLogger(__name__)

INITS = ("pretrained", "random")
#: Report entries: a task name plus, for user association, its form.
TASK_ENTRIES = ("next_subtrajectory", "destination", "user_association_linking", "user_association_binary")
PAPER_TASKS = ("next_subtrajectory", "destination", "user_association_binary")
#: The F1 each report entry contributes to the average (macro-F1 for multi-class tasks).
PRIMARY_F1 = {
    "next_subtrajectory": "f1",
    "destination": "macro_f1",
    "user_association_linking": "macro_f1",
    "user_association_binary": "f1",
}
LOWER_IS_BETTER = ("distance_km_mean", "distance_km_median", "loss")
TOKENIZER_FILES = ("vocab.json", "tokenizer_config.json")


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="trajfm-base",
        metadata={"help": "Pre-trained checkpoint folder (run_mtm.py output: model, tokenizer, trajfm_split.json)."},
    )
    init: str = field(default="pretrained", metadata={"help": "pretrained | random (same config, fresh weights)."})
    compare: bool = field(
        default=False, metadata={"help": "Fine-tune both inits on the same data/seeds/budget and write a report."}
    )
    tasks: list[str] = field(
        default_factory=lambda: list(T.TASKS),
        metadata={"help": "Tasks of --compare (default: all three; user_association runs both forms)."},
    )


#: Data arguments shared with run_mtm.py: copied from `run_mtm.DataTrainingArguments` (same names, types, defaults and
#: help). Those not given on the command line default to the values the checkpoint's pre-training recorded
#: (trajfm_pretraining.json), so the same raw data is re-read and segmented the same way and the held-out users exist.
MTM_DATA_FIELDS = (
    "data", "reader", "user_col", "lat_col", "lon_col", "time_col", "time_format", "time_unit", "timezone", "separator",
    "dataset_dir", "synthetic_users", "synthetic_days", "synthetic_seed", "resolution", "window_minutes",
    "max_gap_minutes", "split_by_day", "max_visits", "min_cells", "min_points", "utc_offset_minutes", "invalid",
)
#: Where the raw data is and how to read it: an explicit --data or --dataset_dir takes none of these from the
#: checkpoint (a recorded dataset_dir would win over --data, a recorded column mapping would not fit the new file).
SOURCE_FIELDS = ("data", "dataset_dir", "reader", "user_col", "lat_col", "lon_col", "time_col", "time_format",
                 "time_unit", "timezone", "separator")
_RECORDED = " If not given: the value recorded in the checkpoint by run_mtm.py, else"
#: Report entries whose examples are (positive, negative) pairs.
PAIR_ENTRIES = ("next_subtrajectory", "user_association_binary")


@dataclass
class TaskArguments:
    """Which task, which users, and how its examples are built."""

    task: str = field(default="next_subtrajectory", metadata={"help": f"One of {', '.join(T.TASKS)}."})
    association_form: str = field(default="linking", metadata={"help": "user_association: linking | binary."})
    # --- users and splits
    heldout_users: str | None = field(
        default=None,
        metadata={"help": "Users to fine-tune on when the checkpoint has no trajfm_split.json: a trajfm_split.json, "
                          "a text file (one user per line) or a comma-separated list."},
    )
    test_fraction: float = field(default=0.2, metadata={"help": "Share of trajectories in the test split."})
    # --- task construction
    prefix_fraction: float = field(default=0.25, metadata={"help": "destination: share of visits given as input."})
    num_users: int | None = field(default=None, metadata={"help": "user linking: at most this many users (classes)."})
    min_user_trajectories: int = field(default=3, metadata={"help": "user linking: trajectories a class user needs."})
    min_segment_visits: int = field(default=2, metadata={"help": "next_subtrajectory: visits in A and in B, min."})
    max_segment_visits: int = field(default=16, metadata={"help": "next_subtrajectory: visits in A and in B, max."})
    pairs_per_trajectory: int = field(
        default=3, metadata={"help": "Pair tasks: positive pairs anchored on each trajectory (each with a negative)."}
    )
    max_input_visits: int = field(
        default=32, metadata={"help": "Visits per input trajectory (destination: the last ones of the prefix)."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example (whole hexagons truncated)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training examples."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Cap on test examples."})


def _mtm_data_fields() -> list[tuple[str, Any, Any]]:
    """`run_mtm.DataTrainingArguments`' MTM_DATA_FIELDS as make_dataclass specs, help noting the checkpoint default."""
    hints = typing.get_type_hints(run_mtm.DataTrainingArguments)
    fields = {f.name: f for f in dataclasses.fields(run_mtm.DataTrainingArguments)}
    return [
        (name, hints[name], field(default=fields[name].default, default_factory=fields[name].default_factory,
                                  metadata={**fields[name].metadata,
                                            "help": fields[name].metadata.get("help", "") + _RECORDED}))
        for name in MTM_DATA_FIELDS
    ]


#: Task arguments + the data arguments of run_mtm.py (re-read the same raw data with the same segmentation).
DataArguments = dataclasses.make_dataclass("DataArguments", _mtm_data_fields(), bases=(TaskArguments,))
DataArguments.__module__ = __name__
DataArguments.__doc__ = "Task arguments and run_mtm.py's data arguments (see MTM_DATA_FIELDS)."


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """TrainingArguments with defaults for a small CPU budget (the paper: 10 epochs, batch 64)."""

    output_dir: str | None = field(default="outputs/finetune", metadata={"help": "Where results are written."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs per fine-tuning run (paper: 10)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device (training)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device (test)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate (AdamW)."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (< 1: share of all steps)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Intermediate checkpoints: no | steps | epoch."})


def parse_args(argv: list[str] | None = None):
    """→ (model_args, data_args, training_args); `data_args.explicit` holds the names given by the caller."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuneTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    values = read_args_file(argv)
    if values is not None:
        model_args, data_args, training_args = parser.parse_dict(values)
        explicit = set(values)
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        explicit = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    data_args.explicit = explicit
    return model_args, data_args, training_args


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Cheap checks at start-up, each saying what to change."""
    tasks = model_args.tasks if model_args.compare else [data_args.task]
    for task in tasks:
        if task not in T.TASKS:
            raise ValueError(f"Unknown task {task!r}: choose --task (or --tasks) among {', '.join(T.TASKS)}.")
    if model_args.init not in INITS:
        raise ValueError(f"Unknown --init {model_args.init!r}: choose pretrained or random.")
    if data_args.association_form not in T.ASSOCIATION_FORMS:
        raise ValueError(f"Unknown --association_form {data_args.association_form!r}: choose linking or binary.")
    if not 0.0 < data_args.prefix_fraction < 1.0:
        raise ValueError(f"--prefix_fraction must be in (0, 1) (the share of visits given as input), got "
                         f"{data_args.prefix_fraction}.")
    if not 0.0 < data_args.test_fraction < 1.0:
        raise ValueError(f"--test_fraction must be in (0, 1), got {data_args.test_fraction}.")
    if data_args.num_users is not None and data_args.num_users < 2:
        raise ValueError(f"--num_users must be at least 2 (classes), got {data_args.num_users}.")
    if data_args.invalid not in ("raise", "drop"):
        raise ValueError(f"--invalid must be raise or drop, got {data_args.invalid!r}.")
    if data_args.max_input_visits < 1:
        raise ValueError(f"--max_input_visits must be at least 1 (visits per input trajectory), got "
                         f"{data_args.max_input_visits}.")
    pair_entries = [e for e in report_entries(model_args, data_args) if e in PAIR_ENTRIES]
    for name in ("max_train_samples", "max_test_samples"):
        value = getattr(data_args, name)
        if value is not None and pair_entries and value < 2:
            raise ValueError(f"--{name} {value} is too small for {', '.join(pair_entries)}: pair tasks keep whole "
                             "(positive, negative) pairs, so it must be at least 2.")
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")
    heldout = data_args.heldout_users
    if heldout and not Path(heldout).exists() and (
        os.sep in heldout or "/" in heldout or heldout.lower().endswith((".json", ".txt"))
    ):
        raise ValueError(f"--heldout_users {heldout!r}: no such file (pass an existing trajfm_split.json, a text file "
                         "with one user id per line, or a comma-separated list of user ids).")
    if model_args.compare and training_args.push_to_hub:
        raise ValueError("--push_to_hub pushes one fine-tuned checkpoint: drop --compare (or --push_to_hub) and push "
                         "the run you want, e.g. --task destination --init pretrained --push_to_hub.")
    check_push_possible(training_args.push_to_hub, training_args.hub_model_id)


# ---------------------------------------------------------------------------------------------- checkpoint/users
def load_tokenizer_and_config(path: str) -> tuple[TrajTokenizer, TrajBertConfig]:
    """The checkpoint's tokenizer and config, checked to work together; errors say what to change."""
    local = Path(path)
    if local.exists() and not local.is_dir():
        raise ValueError(f"--model_name_or_path {path!r} is a file: pass a checkpoint folder (run_mtm.py output).")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"{path!r} has no config.json: pass a checkpoint folder saved by run_mtm.py.")
        missing = [name for name in TOKENIZER_FILES if not (local / name).is_file()]
        if missing:
            raise ValueError(
                f"Checkpoint {path!r} has no compatible tokenizer (missing {', '.join(missing)}): fine-tuning needs "
                "the TrajTokenizer the model was pre-trained with. Use a folder saved by run_mtm.py (it saves the "
                "tokenizer next to the model) or save it there with tokenizer.save_pretrained(folder)."
            )
    elif not local.is_absolute() and len(path.split("/")) > 2:
        raise ValueError(f"--model_name_or_path {path!r} is neither a folder nor a Hub repo id.")
    try:
        # "left": inputs longer than max_seq_length lose their oldest visits, keeping those next to what is predicted
        tokenizer = TrajTokenizer.from_pretrained(path, truncation_side="left")
    except Exception as error:  # a Hub id without a tokenizer, or unreadable files
        raise ValueError(f"Cannot load a TrajTokenizer from {path!r} ({error}): fine-tuning needs the checkpoint's "
                         "tokenizer; use a run_mtm.py output folder.") from error
    config = TrajBertConfig.from_pretrained(path)
    try:
        config.check_tokenizer_compatibility(tokenizer)
    except ValueError as error:
        raise ValueError(f"Checkpoint {path!r}: {error}") from error
    return tokenizer, config


def resolve_heldout_users(model_path: str, heldout_users: str | None) -> tuple[list[str], str]:
    """Users to fine-tune on: `--heldout_users` if given, else the checkpoint's split file. Returns (users, source)."""
    if heldout_users:
        path = Path(heldout_users)
        if path.is_dir():
            split = UserSplit.load(path)
            if split is None:
                raise ValueError(f"--heldout_users {heldout_users!r} is a folder without {SPLIT_FILE}.")
            return list(split.heldout_users), str(path / SPLIT_FILE)
        if path.is_file():
            text = path.read_text()
            if path.suffix == ".json":
                raw = json.loads(text)
                users = raw["heldout_users"] if isinstance(raw, dict) else raw
            else:
                users = [line.strip() for line in text.splitlines() if line.strip()]
            return [str(u) for u in users], str(path)
        return [u.strip() for u in heldout_users.split(",") if u.strip()], "--heldout_users"
    split = UserSplit.load(model_path) if Path(model_path).is_dir() else None
    if split is None:
        raise ValueError(
            f"Checkpoint {model_path!r} has no {SPLIT_FILE} (the users held out from pre-training), so fine-tuning "
            "could reuse pre-training users. Use a run_mtm.py output folder, or pass --heldout_users (a split file, "
            "a file with one user id per line, or a comma-separated list of users the model never saw)."
        )
    return list(split.heldout_users), str(Path(model_path) / SPLIT_FILE)


def pretraining_data_arguments(model_path: str, data_args: DataArguments) -> tuple[dict[str, Any], dict[str, str]]:
    """The data arguments to use: given on the command line > recorded by run_mtm.py > run_mtm.py's defaults.

    An explicit --data or --dataset_dir takes none of SOURCE_FIELDS from the record (the data source and its reader
    and column mapping go together). Returns (values, where each value came from).
    """
    recorded = {}
    path = Path(model_path) / PRETRAINING_FILE
    if path.is_file():
        recorded = json.loads(path.read_text()).get("data_arguments", {}) or {}
    explicit = getattr(data_args, "explicit", set())
    source_given = bool(explicit & {"data", "dataset_dir"})
    values, origin = {}, {}
    for name in MTM_DATA_FIELDS:
        if name in explicit or name not in recorded or (source_given and name in SOURCE_FIELDS):
            values[name], origin[name] = getattr(data_args, name), "argument" if name in explicit else "default"
        else:
            values[name], origin[name] = recorded[name], "checkpoint"
    return values, origin


def load_heldout_trajectories(data_args: DataArguments, tokenizer: TrajTokenizer, heldout: list[str],
                              model_path: str | None = None):
    """Trajectories of the held-out users, built exactly as run_mtm.py built the pre-training corpus.

    Returns (trajectory table of the held-out users, PipelineReport of the whole corpus or None, source, data values).
    """
    values, origin = pretraining_data_arguments(model_path or "", data_args)
    if values["resolution"] != tokenizer.resolution:
        raise ValueError(f"--resolution {values['resolution']} differs from the tokenizer's ({tokenizer.resolution}): "
                         "drop --resolution or use a checkpoint trained at that resolution.")
    from_checkpoint = sorted(k for k, v in origin.items() if v == "checkpoint")
    if from_checkpoint:
        logger.info("Data arguments from the checkpoint's %s: %s", PRETRAINING_FILE,
                    ", ".join(f"{k}={values[k]!r}" for k in from_checkpoint))
    corpus, report, source = run_mtm.load_trajectories(run_mtm.DataTrainingArguments(**values))
    table = corpus if isinstance(corpus, pa.Table) else corpus.with_format("arrow")[:]
    present = set(table.column("user_id").cast(pa.string()).unique().to_pylist())
    found = sorted(set(heldout) & present)
    if not found:
        raise ValueError(
            f"None of the {len(set(heldout))} held-out users of the checkpoint has a trajectory in this data: pass the "
            "same --data / --reader / --synthetic_* / segmentation arguments that run_mtm.py used for pre-training."
        )
    if len(found) < len(set(heldout)):
        logger.warning("%d of %d held-out users have no trajectory in this data.", len(set(heldout)) - len(found),
                       len(set(heldout)))
    return select_users(table, found), report, source, values


# ------------------------------------------------------------------------------------------------ task building
@dataclass
class PreparedTask:
    """One report entry's data, labels, baselines and description (independent of the init)."""

    name: str
    kind: str  # "pair" (binary, sentence pair) | "single" (multi-class) | "hexagon"
    train: dict[str, list]
    test: dict[str, list]
    label_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    test_extra: dict[str, list] = field(default_factory=dict)
    candidates: list[int] = field(default_factory=list)


def _cap(columns: dict[str, list], limit: int | None, keep_pairs: bool = False) -> dict[str, list]:
    if limit is None:
        return columns
    n = len(next(iter(columns.values()), []))
    limit = min(n, limit - (limit % 2 if keep_pairs else 0))
    return {key: values[:limit] for key, values in columns.items()}


def _split_info(train_records, test_records, train, test, label_key, names=None) -> dict[str, Any]:
    return {
        "train_trajectories": len(train_records),
        "test_trajectories": len(test_records),
        "train_examples": len(train[label_key]),
        "test_examples": len(test[label_key]),
        "train_class_balance": T.class_balance(train[label_key], names),
        "test_class_balance": T.class_balance(test[label_key], names),
        "train_users": len({r.user_id for r in train_records}),
        "test_users": len({r.user_id for r in test_records}),
    }


def _binary_pair_baselines(train_records, train, test, extra_subsets: dict[str, np.ndarray] | None = None):
    labels = np.asarray(test["label"])
    majority = bl.majority_label(train["label"])
    sim = bl.PairSimilarityThreshold().fit([r.cells for r in train_records], train["cells_a"], train["cells_b"],
                                           train["label"])
    out = {}
    for name, predictions in (("majority", np.full(labels.size, majority)),
                              ("cell_profile_similarity", sim.predict(test["cells_a"], test["cells_b"]))):
        metrics = binary_metrics(predictions, labels)
        for subset, mask in (extra_subsets or {}).items():
            for key, value in binary_metrics(predictions[mask], labels[mask]).items():
                metrics[f"{key}_{subset}"] = value
        out[name] = metrics
    out["cell_profile_similarity"]["threshold"] = sim.threshold
    return out


def _slice_visits(columns: dict[str, list], keys: tuple[str, str], limit: int, last: bool = False) -> None:
    for key in keys:
        columns[key] = [v[-limit:] if last else v[:limit] for v in columns[key]]


def build_next_subtrajectory(records, data_args: DataArguments, seed: int) -> PreparedTask:
    train_ids, test_ids = T.split_trajectories([r.traj_id for r in records], data_args.test_fraction, seed)
    train_records, test_records = T.select(records, train_ids), T.select(records, test_ids)
    sizes = (data_args.min_segment_visits, data_args.max_segment_visits, data_args.pairs_per_trajectory)
    train = T.next_subtrajectory_pairs(train_records, seed, *sizes)
    test = T.next_subtrajectory_pairs(test_records, seed + 1, *sizes)
    train, test = _cap(train, data_args.max_train_samples, True), _cap(test, data_args.max_test_samples, True)
    if not train["label"] or not test["label"]:
        raise ValueError("next_subtrajectory: no pairs could be built (trajectories need >= 2 * --min_segment_visits "
                         "visits and >= 2 users per split); use more data or lower --min_segment_visits.")
    info = _split_info(train_records, test_records, train, test, "label", ["not_next", "next"])
    info["test_pair_kinds"] = T.class_balance(test["pair_kind"])
    info["train_pair_kinds"] = T.class_balance(train["pair_kind"])
    difficulty = np.asarray(test["difficulty"])
    subsets = {f"{kind}_negatives": difficulty == kind for kind in ("same_user", "other_user")}
    task = PreparedTask("next_subtrajectory", "pair", train, test, ["not_next", "next"], info,
                        test_extra={"difficulty": test["difficulty"]})
    task.baselines = _binary_pair_baselines(train_records, train, test, subsets)
    return task


def build_destination(records, data_args: DataArguments, seed: int) -> PreparedTask:
    train_ids, test_ids = T.split_trajectories([r.traj_id for r in records], data_args.test_fraction, seed)
    train_records, test_records = T.select(records, train_ids), T.select(records, test_ids)
    train = T.destination_examples(train_records, data_args.prefix_fraction)
    test = T.destination_examples(test_records, data_args.prefix_fraction)
    order = np.random.default_rng(seed).permutation(len(train["destination"]))
    train = {key: [values[i] for i in order] for key, values in train.items()}
    train, test = _cap(train, data_args.max_train_samples), _cap(test, data_args.max_test_samples)
    candidates = T.destination_candidates(train["destination"])
    if len(candidates) < 2:
        raise ValueError("destination: fewer than 2 distinct training destinations; use more data.")
    train["label"] = T.label_indices(train["destination"], candidates)
    test["label"] = T.label_indices(test["destination"], candidates)
    info = _split_info(train_records, test_records, train, test, "destination")
    info.pop("train_class_balance")
    info.pop("test_class_balance")
    unseen = sum(label == T.IGNORE_INDEX for label in test["label"])
    info.update(num_candidates=len(candidates), test_destinations_not_in_candidates=int(unseen),
                test_share_not_in_candidates=unseen / max(1, len(test["label"])),
                prefix_fraction=data_args.prefix_fraction)
    names = [format(c, "x") for c in candidates]
    task = PreparedTask("destination", "hexagon", train, test, names, info, candidates=candidates,
                        test_extra={"destination": test["destination"]})
    # Baselines on the full prefixes (the model sees the last --max_input_visits of them).
    n = len(test["label"])
    train_cells = [r.cells.tolist() for r in train_records]
    markov = bl.MarkovDestination(candidates).fit(train_cells, train["destination"])
    per_user = bl.UserFrequentCell(candidates).fit([r.user_id for r in train_records], train_cells,
                                                   train["destination"])
    scores = {
        "majority": bl.majority_scores(train["label"], n, len(candidates)),
        "markov": markov.scores(test["cells"]),
        "user_most_frequent_cell": per_user.scores(test["user_id"]),
    }
    task.baselines = {name: destination_metrics(s, task) for name, s in scores.items()}
    _slice_visits(train, ("cells", "timestamps"), data_args.max_input_visits, last=True)
    _slice_visits(test, ("cells", "timestamps"), data_args.max_input_visits, last=True)
    return task


def build_user_linking(records, data_args: DataArguments, seed: int) -> PreparedTask:
    users = T.linking_users(records, data_args.num_users, data_args.min_user_trajectories)
    chosen = [r for r in records if r.user_id in set(users)]
    train_ids, test_ids = T.split_trajectories_by_user(chosen, data_args.test_fraction, seed)
    train_records, test_records = T.select(chosen, train_ids), T.select(chosen, test_ids)
    train, test = T.linking_examples(train_records, users), T.linking_examples(test_records, users)
    order = np.random.default_rng(seed).permutation(len(train["label"]))
    train = {key: [values[i] for i in order] for key, values in train.items()}
    train, test = _cap(train, data_args.max_train_samples), _cap(test, data_args.max_test_samples)
    for columns in (train, test):
        _slice_visits(columns, ("cells", "timestamps"), data_args.max_input_visits)
    info = _split_info(train_records, test_records, train, test, "label", users)
    info["num_users"] = len(users)
    task = PreparedTask("user_association_linking", "single", train, test, list(users), info)
    n = len(test["label"])
    knn = bl.CellProfileKNN(users).fit(train["user_id"], train["cells"])
    scores = {"majority": bl.majority_scores(train["label"], n, len(users)),
              "cell_profile_knn": knn.scores(test["cells"])}
    task.baselines = {name: ranking_metrics(s, np.asarray(test["label"])) for name, s in scores.items()}
    return task


def build_user_binary(records, data_args: DataArguments, seed: int) -> PreparedTask:
    train_ids, test_ids = T.split_trajectories([r.traj_id for r in records], data_args.test_fraction, seed)
    train_records, test_records = T.select(records, train_ids), T.select(records, test_ids)
    train = T.user_pairs(train_records, seed, data_args.pairs_per_trajectory)
    test = T.user_pairs(test_records, seed + 1, data_args.pairs_per_trajectory)
    train, test = _cap(train, data_args.max_train_samples, True), _cap(test, data_args.max_test_samples, True)
    if not train["label"] or not test["label"]:
        raise ValueError("user_association binary: no pairs could be built (each split needs users with >= 2 "
                         "trajectories); use more data or a larger --test_fraction.")
    half = max(1, data_args.max_input_visits // 2)
    for columns in (train, test):
        _slice_visits(columns, ("cells_a", "timestamps_a", "cells_b", "timestamps_b"), half)
    info = _split_info(train_records, test_records, train, test, "label", ["different_user", "same_user"])
    task = PreparedTask("user_association_binary", "pair", train, test, ["different_user", "same_user"], info)
    task.baselines = _binary_pair_baselines(train_records, train, test)
    return task


BUILDERS = {
    "next_subtrajectory": build_next_subtrajectory,
    "destination": build_destination,
    "user_association_linking": build_user_linking,
    "user_association_binary": build_user_binary,
}


def report_entries(model_args: ModelArguments, data_args: DataArguments) -> list[str]:
    tasks = model_args.tasks if model_args.compare else [data_args.task]
    entries = []
    for task in dict.fromkeys(tasks):
        if task != "user_association":
            entries.append(task)
        elif model_args.compare:
            entries += ["user_association_linking", "user_association_binary"]
        else:
            entries.append(f"user_association_{data_args.association_form}")
    return entries


# ------------------------------------------------------------------------------------------------------ metrics
def destination_metrics(scores: np.ndarray, task: PreparedTask) -> dict[str, float]:
    labels = np.asarray(task.test["label"])
    truth = np.asarray(task.test_extra["destination"], dtype=np.uint64)
    candidates = np.asarray(task.candidates, dtype=np.uint64)
    out = ranking_metrics(scores, labels, class_values=candidates, true_values=truth)
    top1 = candidates[np.asarray(scores).argmax(axis=1)] if len(labels) else np.empty(0, dtype=np.uint64)
    out.update(distance_errors_km(cell_centers(top1), cell_centers(truth)))
    return out


def task_metrics(task: PreparedTask, logits: np.ndarray) -> dict[str, float]:
    labels = np.asarray(task.test["label"])
    if task.kind == "hexagon":
        return destination_metrics(logits, task)
    if task.kind == "single":
        return ranking_metrics(logits, labels)
    predictions = logits.argmax(axis=1)
    out = binary_metrics(predictions, labels)
    if "difficulty" in task.test_extra:
        difficulty = np.asarray(task.test_extra["difficulty"])
        for kind in ("same_user", "other_user"):
            mask = difficulty == kind
            for key, value in binary_metrics(predictions[mask], labels[mask]).items():
                out[f"{key}_{kind}_negatives"] = value
    return out


# ------------------------------------------------------------------------------------------------------ training
def tokenize(task: PreparedTask, columns: dict[str, list], tokenizer: TrajTokenizer, max_length: int):
    import datasets

    if task.kind == "pair":
        encoded = tokenizer(cells=columns["cells_a"], timestamps=columns["timestamps_a"],
                            pair_cells=columns["cells_b"], pair_timestamps=columns["timestamps_b"],
                            max_length=max_length, truncation=True)
    else:
        encoded = tokenizer(cells=columns["cells"], timestamps=columns["timestamps"], max_length=max_length,
                            truncation=True)
    data = {key: list(values) for key, values in encoded.items()}
    data["labels"] = list(columns["label"])
    return datasets.Dataset.from_dict(data)


def build_model(task: PreparedTask, init: str, model_path: str, base_config: TrajBertConfig, tokenizer, seed: int):
    """A fine-tuning model for `task`: pre-trained weights, or the same config with fresh weights (seeded)."""
    config = copy.deepcopy(base_config)
    id2label = dict(enumerate(task.label_names))
    config.id2label = id2label
    config.label2id = {name: i for i, name in id2label.items()}
    if task.kind == "hexagon":
        config.hexagon_candidates = tokenizer.cell_token_ids(task.candidates)
        model_class = TrajBertForHexagonPrediction
    else:
        config.hexagon_candidates = None
        config.problem_type = "single_label_classification"
        model_class = TrajBertForSequenceClassification
    config.validate()
    set_seed(seed)
    if init == "pretrained":
        model = model_class.from_pretrained(model_path, config=config)
        if task.kind == "hexagon":
            _transfer_mtm_transform(model, model_path)
    else:
        model = model_class(config)
    set_auto_map(model.config)
    return model


def _transfer_mtm_transform(model: TrajBertForHexagonPrediction, model_path: str) -> None:
    """Start the hexagon head's transform (dense + LayerNorm into word-embedding space) from the pre-trained MTM
    head's (`cls.predictions.transform.*`), which was trained for exactly that mapping; the candidate bias starts at 0.
    """
    weights = Path(model_path) / "model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    prefix = "cls.predictions.transform."
    with safe_open(str(weights), framework="pt") as handle:
        state = {k[len(prefix):]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    target = model.hexagon_head.transform.state_dict()
    if state and set(state) == set(target) and all(state[k].shape == target[k].shape for k in target):
        model.hexagon_head.transform.load_state_dict(state)
        logger.info("Hexagon head transform initialised from the pre-trained MTM head.")


def run_one(task: PreparedTask, init: str, model_args: ModelArguments, data_args: DataArguments,
            training_args: TrainingArguments, tokenizer: TrajTokenizer, base_config: TrajBertConfig,
            datasets_: tuple, output_dir: Path, heldout_source: str, pipeline_report) -> dict[str, float]:
    """Fine-tune one (task, init); save model, tokenizer, metrics, task report and card in `output_dir`."""
    args = copy.deepcopy(training_args)
    args.output_dir = str(output_dir)
    push, args.push_to_hub = args.push_to_hub, False  # pushed by modeling_trajfm.hub, curated card last
    train_dataset, test_dataset = datasets_
    model = build_model(task, init, model_args.model_name_or_path, base_config, tokenizer, args.seed)
    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=DataCollatorWithTrajectoryPadding(tokenizer))
    started = time.perf_counter()
    train_result = trainer.train()
    train_metrics = dict(train_result.metrics)
    train_metrics["train_samples"] = len(train_dataset)
    prediction = trainer.predict(test_dataset, metric_key_prefix="test")
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    metrics = {f"test_{k}": v for k, v in task_metrics(task, np.asarray(logits, dtype=np.float64)).items()}
    metrics["test_loss"] = prediction.metrics.get("test_loss")
    metrics["test_samples"] = len(test_dataset)
    metrics = {k: v for k, v in metrics.items() if v is not None}
    elapsed = time.perf_counter() - started
    trainer.save_model()
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        report = {
            "task": task.name, "init": init, "base_checkpoint": model_args.model_name_or_path,
            "heldout_users_source": heldout_source, "seed": args.seed, "fine_tune_seconds": round(elapsed, 1),
            "split": task.info, "baselines": task.baselines, "data_source": getattr(data_args, "source", None),
            "data_arguments": getattr(data_args, "resolved", None), "task_arguments": asdict(data_args),
        }
        (output_dir / "task_report.json").write_text(json.dumps(report, indent=1, default=str))
        try:
            from modeling_trajfm.plotting import plot_training_curves

            plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", metric_keys=(),
                                 title=f"{task.name} ({init} init)")
        except Exception as error:  # a plot must never fail a run
            logger.warning("No training curve plot: %s", error)
        card = build_card(task, init, model_args, data_args, args, metrics, train_metrics, pipeline_report, push)
        card.save(output_dir / "README.md")
        if push:
            repo_id = args.hub_model_id or output_dir.name
            push_checkpoint(output_dir, repo_id, card, token=args.hub_token, private=args.hub_private_repo)
    return metrics


# ------------------------------------------------------------------------------------------------------ model card
CARD_METRICS = {
    "pair": {"test_f1": ("f1", "F1"), "test_accuracy": ("accuracy", "Accuracy")},
    "single": {"test_accuracy@1": ("accuracy", "Accuracy@1"), "test_accuracy@5": ("accuracy", "Accuracy@5"),
               "test_mrr": ("mrr", "MRR"), "test_macro_f1": ("f1", "Macro-F1")},
    "hexagon": {"test_accuracy@1": ("accuracy", "Accuracy@1"), "test_accuracy@5": ("accuracy", "Accuracy@5"),
                "test_mrr": ("mrr", "MRR"), "test_macro_f1": ("f1", "Macro-F1"),
                "test_distance_km_mean": ("mean_distance_error_km", "Mean distance error (km)"),
                "test_distance_km_median": ("median_distance_error_km", "Median distance error (km)")},
}
TASK_DESCRIPTIONS = {
    "next_subtrajectory": "does sub-trajectory B directly follow sub-trajectory A? (binary, trajectory pair)",
    "destination": "the last hexagon of a trajectory from the first part of its visits",
    "user_association_linking": "which of the held-out users made this trajectory? (trajectory-user linking)",
    "user_association_binary": "were these two trajectories made by the same user? (binary, trajectory pair)",
}


def build_card(task, init, model_args, data_args, args, metrics, train_metrics, pipeline_report, push):
    kind_type = "text-classification"
    dataset_name = card_dataset_name(getattr(data_args, "resolved", None) or asdict(data_args))
    eval_results = eval_results_from_metrics(metrics, CARD_METRICS[task.kind], task_type=kind_type,
                                             task_name=task.name, dataset_type="trajectories",
                                             dataset_name=dataset_name, dataset_split="test")
    table = "\n".join(f"| {k.removeprefix('test_')} | {v:.4f} |" for k, v in metrics.items()
                      if isinstance(v, float))
    baselines = "\n".join(
        f"| {name} | " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)) + " |"
        for name, values in task.baselines.items()
    )
    default_name = f"{Path(model_args.model_name_or_path.rstrip('/')).name}-{task.name}" + (
        "-random-init" if init == "random" else "")
    model_name = args.hub_model_id if push and args.hub_model_id else default_name
    return render_model_card(
        "trajfm_finetune", metrics, model_name=model_name, eval_results=eval_results,
        pipeline_tag=None, base_model=model_args.model_name_or_path if init == "pretrained" else None,
        tags=("trajfm", "trajectory", "h3", task.name),
        task_name=task.name, task_description=TASK_DESCRIPTIONS[task.name], init=init,
        base_checkpoint=model_args.model_name_or_path, metrics_table=table, baselines_table=baselines,
        split=json.dumps(task.info, indent=1, default=str),
        data_source=getattr(data_args, "source", None) or data_args.data or "embedded synthetic city",
        pipeline_report=str(pipeline_report), epochs=args.num_train_epochs, batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate, seed=args.seed, train_samples=train_metrics.get("train_samples"),
        model_class="TrajBertForHexagonPrediction" if task.kind == "hexagon" else "TrajBertForSequenceClassification",
        repo_id=args.hub_model_id or Path(args.output_dir).name,
    )


# ------------------------------------------------------------------------------------------------------ compare
def primary_f1(entry: str, metrics: dict[str, float]) -> float:
    return float(metrics[PRIMARY_F1[entry]])


def _relative(pre: float, rand: float, lower_is_better: bool = False) -> float | None:
    if rand == 0 or not math.isfinite(rand) or not math.isfinite(pre):
        return None
    return 100.0 * ((rand - pre) if lower_is_better else (pre - rand)) / abs(rand)


def avg_f1_improvement(report_tasks: dict[str, dict], entries) -> float | None:
    """100 * (mean F1 pretrained - mean F1 random) / mean F1 random over `entries` (see the module docstring)."""
    entries = [e for e in entries if e in report_tasks]
    if not entries:
        return None
    pre = float(np.mean([primary_f1(e, report_tasks[e]["pretrained"]) for e in entries]))
    rand = float(np.mean([primary_f1(e, report_tasks[e]["random"]) for e in entries]))
    return _relative(pre, rand)


def compare_report(results: dict[str, dict[str, dict]], tasks: dict[str, PreparedTask]) -> dict[str, Any]:
    report_tasks = {}
    for entry, by_init in results.items():
        pre = {k.removeprefix("test_"): v for k, v in by_init["pretrained"].items()}
        rand = {k.removeprefix("test_"): v for k, v in by_init["random"].items()}
        improvement = {
            k: _relative(pre[k], rand[k], k in LOWER_IS_BETTER)
            for k in pre if k in rand and isinstance(pre[k], float) and not k.endswith("samples")
        }
        report_tasks[entry] = {
            "primary_metric": PRIMARY_F1[entry],
            "pretrained": pre,
            "random": rand,
            "baselines": tasks[entry].baselines,
            "improvement_pct": improvement,
            "split": tasks[entry].info,
        }
    return {
        "tasks": report_tasks,
        "avg_f1_pretrained": float(np.mean([primary_f1(e, t["pretrained"]) for e, t in report_tasks.items()])),
        "avg_f1_random": float(np.mean([primary_f1(e, t["random"]) for e, t in report_tasks.items()])),
        "avg_f1_improvement_pct": avg_f1_improvement(report_tasks, report_tasks),
        "avg_f1_improvement_pct_paper_tasks": avg_f1_improvement(report_tasks, PAPER_TASKS)
        if all(e in report_tasks for e in PAPER_TASKS) else None,
        "avg_f1_formula": "100 * (mean_t F1_pretrained(t) - mean_t F1_random(t)) / mean_t F1_random(t); F1 = "
                          "binary F1 for pair tasks, macro-F1 for destination and user linking",
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def compare_markdown(report: dict[str, Any]) -> str:
    lines = ["# Fine-tuning: pre-trained vs random init", ""]
    for entry, t in report["tasks"].items():
        baselines = list(t["baselines"])
        lines += [f"## {entry} (primary: {t['primary_metric']})", "",
                  "| metric | pretrained | random | improvement | " + " | ".join(baselines) + " |",
                  "|---|---|---|---|" + "---|" * len(baselines)]
        for metric, value in t["pretrained"].items():
            if not isinstance(value, float) or metric.endswith("samples"):
                continue
            improvement = t["improvement_pct"].get(metric)
            cells = [_fmt(value), _fmt(t["random"].get(metric)),
                     "n/a" if improvement is None else f"{improvement:+.1f}%"]
            cells += [_fmt(t["baselines"][b].get(metric)) for b in baselines]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    avg = report["avg_f1_improvement_pct"]
    paper = report.get("avg_f1_improvement_pct_paper_tasks")
    lines += [
        f"Average F1 over {len(report['tasks'])} task entries: pretrained {report['avg_f1_pretrained']:.4f}, "
        f"random {report['avg_f1_random']:.4f}, improvement "
        f"{'n/a' if avg is None else f'{avg:+.1f}%'} (paper: +33.6%).",
        "",
        f"Formula: {report['avg_f1_formula']}.",
    ]
    if paper is not None:
        lines += ["", f"Over the paper's three tasks (binary user association): {paper:+.1f}%."]
    return "\n".join(lines) + "\n"


def compare_plot(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars: per task entry its primary F1 for pretrained, random and every baseline."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    entries = list(report["tasks"])
    series: dict[str, list[float]] = {"pretrained": [], "random": []}
    for t in report["tasks"].values():
        for name in t["baselines"]:
            series.setdefault(name, [])
    for t in report["tasks"].values():
        key = t["primary_metric"]
        series["pretrained"].append(t["pretrained"][key])
        series["random"].append(t["random"][key])
        for name in list(series)[2:]:
            series[name].append(t["baselines"].get(name, {}).get(key, np.nan))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(entries)), 4), dpi=100)
    x = np.arange(len(entries))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, [e.replace("_", "\n", 1) for e in entries], fontsize=8)
    ax.set_ylabel("F1 (binary) / macro-F1 (multi-class)")
    ax.set_ylim(0, 1)
    avg = report["avg_f1_improvement_pct"]
    ax.set_title(f"Pre-trained vs random init: average F1 {'n/a' if avg is None else f'{avg:+.1f}%'}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run from the command line or in-process; returns `{entry: {init: test metrics}}` (+ "report" in --compare)."""
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    check_arguments(model_args, data_args, training_args)

    tokenizer, base_config = load_tokenizer_and_config(model_args.model_name_or_path)
    tokenizer.model_max_length = min(data_args.max_seq_length, base_config.max_position_embeddings)
    heldout, heldout_source = resolve_heldout_users(model_args.model_name_or_path, data_args.heldout_users)
    entries = report_entries(model_args, data_args)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed

    table, pipeline_report, source, data_values = load_heldout_trajectories(data_args, tokenizer, heldout,
                                                                            model_args.model_name_or_path)
    data_args.source, data_args.resolved = source, data_values
    records = T.trajectory_records(table)
    logger.info("Data: %s; pipeline (all users):\n%s", source, pipeline_report)
    prepared = {entry: BUILDERS[entry](records, data_args, seed) for entry in entries}  # fails before any training

    output_root = Path(training_args.output_dir)
    output_root.mkdir(parents=True, exist_ok=True)
    used_users = sorted({r.user_id for r in records})
    data_summary = {
        "heldout_users_source": heldout_source, "heldout_users": len(set(heldout)),
        "heldout_users_used": used_users, "trajectories": len(records), "data_source": source,
        "data_arguments": data_values,
        "pipeline_all_users": pipeline_report.to_dict() if pipeline_report is not None else None,
        "tasks": {entry: task.info for entry, task in prepared.items()},
    }
    if training_args.process_index == 0:
        (output_root / "task_data.json").write_text(json.dumps(data_summary, indent=1, default=str))
    for entry, task in prepared.items():
        print(f"[{entry}] " + json.dumps({k: v for k, v in task.info.items()}, default=str))

    inits = INITS if model_args.compare else (model_args.init,)
    results: dict[str, dict[str, dict]] = {}
    for entry, task in prepared.items():
        encoded = (tokenize(task, task.train, tokenizer, tokenizer.model_max_length),
                   tokenize(task, task.test, tokenizer, tokenizer.model_max_length))
        results[entry] = {}
        for init in inits:
            folder = output_root / entry / init if model_args.compare else output_root
            folder.mkdir(parents=True, exist_ok=True)
            logger.info("Fine-tuning %s from %s init -> %s", entry, init, folder)
            results[entry][init] = run_one(task, init, model_args, data_args, training_args, tokenizer, base_config,
                                           encoded, folder, heldout_source, pipeline_report)

    if not model_args.compare:
        return results
    report = compare_report(results, prepared)
    if training_args.process_index == 0:
        (output_root / "compare_report.json").write_text(json.dumps(report, indent=1, default=str))
        markdown = compare_markdown(report)
        (output_root / "compare_report.md").write_text(markdown)
        compare_plot(report, output_root / "compare_report.png")
        print(markdown)
    results["report"] = report
    return results


if __name__ == "__main__":
    main()
