#!/usr/bin/env python
# Copyright 2025 The trajfm authors. Licensed under the Apache License, Version 2.0.
"""Masked trajectory modeling (MTM) pre-training of TrajBert from scratch, in the shape of transformers' run_mlm.py.

    python run_mtm.py                                   # embedded default: synthetic city, small model, ./trajfm-base
    python run_mtm.py --data checkins.csv.gz --reader stan_nyc --max_gap_minutes 4320 --output_dir out
    python run_mtm.py config.yaml                       # or config.json: the same arguments as a mapping
    torchrun --nproc_per_node 2 run_mtm.py ... --use_cpu --ddp_find_unused_parameters false
    accelerate launch run_mtm.py ...

Data flow (every step logged with counts; `python run_mtm.py --help` lists all arguments):

1. Check-ins from `--data` (any reader of `tokenization_trajfm.readers`, column mapping for `--reader table`), or a
   prepared corpus saved with `datasets.Dataset.save_to_disk` (`--dataset_dir`: trajectories with `user_id`, `cells`,
   `timestamps` columns as built by `tokenization_trajfm.build_trajectories`, or raw check-ins with `user_id`,
   `latitude`, `longitude`, `timestamp`), or nothing: the embedded synthetic city (`tokenization_trajfm.synthetic`).
2. H3 encoding, 10-minute clustering and segmentation into trajectories (`build_trajectories`; the PipelineReport of
   what was read and dropped is printed).
3. Users split, seeded by `--split_seed` (default: `--seed`): `--heldout_fraction` of the users are held out for
   fine-tuning and never seen here (`trajfm_split.json` in the output folder lists them: `run_finetune.py` must use
   exactly those users), then the remaining users are split into train / validation by user (`--validation_fraction`),
   so no user is in two splits.
4. Tokenizer: `--tokenizer_name` (an existing TrajTokenizer) or a new sub-hash vocabulary trained on the TRAINING
   users only (`--vocab_size`, `--spelling`).
5. Sequences. Each trajectory is ONE sequence, `[CLS] visits... [SEP]`, never concatenated with other trajectories
   (unlike run_mlm's `group_texts`): attention, the hexagon index and the time-gap feature stay within one trajectory.
   A trajectory longer than `--max_seq_length` tokens is split into consecutive pieces of WHOLE hexagons (no hexagon
   is ever cut between two sequences, nothing is dropped); every piece starts a new `[CLS]` sequence. Short
   trajectories are padded per batch, not packed.
6. Whole-hexagon masking (`DataCollatorForWholeHexagonMasking`): each hexagon is chosen with `--mlm_probability`;
   all its sub-tokens become [MASK] (`--mask_replace_prob`), random tokens (`--random_replace_prob`) or stay.
   Evaluation masks are drawn from a fixed seed, so every evaluation of a run scores the same masked hexagons.
7. Metrics at every evaluation (and at step 0, before training): `eval_perplexity` = exp(eval_loss) per sub-token,
   `eval_hexagon_acc_top1` / `eval_hexagon_acc_top5` (a masked hexagon counts only if ALL its sub-tokens are right;
   top-5 = every sub-token's true id is within that position's top-5, see `modeling_trajfm.metrics`).

Output folder (a complete checkpoint): model + config (complete `auto_map`, code files copied), tokenizer (+ its
code), `training_args.bin`, `trainer_state.json`, `all_results.json` (+ train/eval/init results), `trajfm_split.json`
(held-out users), `trajfm_pretraining.json` (data source, segmentation, split and token counts, validation users),
`training_curves.png` and a model card `README.md` rendered from `model_cards/trajfm_mtm.md` with the metrics in its
`model-index` metadata. `--push_to_hub` uploads the folder and then the card (last). With `HF_HUB_OFFLINE=1` a
push request fails at start-up, before any work.

Resuming: a run finds the last `checkpoint-*` in `--output_dir` and continues from it (or pass
`--resume_from_checkpoint PATH`); `--overwrite_output_dir` starts from scratch instead. `--streaming` tokenizes on the
fly from an iterable dataset (corpora larger than memory; `--dataset_dir` is memory-mapped) and needs `--max_steps`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import transformers
from transformers import (
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the packages live next to this script

import modeling_trajfm  # noqa: E402
import tokenization_trajfm  # noqa: E402
from modeling_trajfm import (  # noqa: E402
    DataCollatorForWholeHexagonMasking,
    TrajBertConfig,
    TrajBertForMaskedTrajectoryModeling,
    set_auto_map,
)
from modeling_trajfm.hub import (  # noqa: E402
    check_push_possible,
    eval_results_from_metrics,
    push_checkpoint,
    render_model_card,
)
from modeling_trajfm.metrics import compute_mtm_metrics, perplexity, preprocess_logits_for_mtm_metrics  # noqa: E402
from modeling_trajfm.plotting import plot_training_curves  # noqa: E402
from tokenization_trajfm import READERS, SegmentationConfig, TrajTokenizer, UserSplit  # noqa: E402
from tokenization_trajfm.corpus import (
    SPLIT_FILE,
    load_checkins,
    select_users,
    split_users,
    trajectories_with_report,
)  # noqa: E402
from tokenization_trajfm.subhash import SPELLINGS, max_cell_tokens  # noqa: E402

logger = logging.getLogger("run_mtm")

DEFAULT_OUTPUT_DIR = "trajfm-base"
PRETRAINING_FILE = "trajfm_pretraining.json"
PLOT_FILE = "training_curves.png"
CARD_TEMPLATE = "trajfm_mtm.md"
SPECIAL_TOKENS_PER_SEQUENCE = 2  # [CLS] ... [SEP]

# Defaults that differ from TrainingArguments' (tuned for the embedded synthetic run: a few minutes on 2 CPU cores).
# Ratios < 1 for eval/logging/save steps are fractions of the total number of steps.
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": DEFAULT_OUTPUT_DIR,
    "do_train": True,
    "do_eval": True,
    "eval_strategy": "steps",
    "eval_steps": 0.1,
    "logging_steps": 0.02,
    "save_steps": 0.5,
    "save_total_limit": 2,
    "learning_rate": 1e-3,
    "weight_decay": 0.01,
    "warmup_steps": 0.05,
    "num_train_epochs": 8,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "report_to": "none",
    "seed": 42,
    "train_sampling_strategy": "group_by_length",  # little padding: trajectory lengths vary a lot
}


@dataclass
class ModelArguments:
    """Which model and tokenizer to train (from scratch unless `model_name_or_path`)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue pre-training this TrajBert checkpoint instead of a random init."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Override config fields of a from-scratch model, e.g. 'hidden_act=gelu,max_levels=12'."},
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "An existing TrajTokenizer (path or Hub id); default: train on train users."}
    )
    vocab_size: int = field(
        default=1000,
        metadata={"help": "Sub-hash vocabulary size of a new tokenizer. Choose it relative to the number of distinct "
                  "cells (logged): at or above it every cell is its own token and sub-hashing does nothing."},
    )
    spelling: str = field(default="hex", metadata={"help": f"Sub-hash spelling of a new tokenizer: {SPELLINGS}."})
    hidden_size: int = field(default=128, metadata={"help": "Encoder width."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Encoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads (must divide hidden_size)."})
    intermediate_size: int = field(default=512, metadata={"help": "Feed-forward width."})
    hidden_dropout_prob: float = field(default=0.1, metadata={"help": "Dropout on hidden states."})
    attention_probs_dropout_prob: float = field(default=0.1, metadata={"help": "Dropout on attention weights."})
    use_hexagon_embeddings: bool = field(
        default=False, metadata={"help": "Add an embedding of the visit index (hexagon_ids). Off = the paper's BERT."}
    )
    use_level_embeddings: bool = field(
        default=False, metadata={"help": "Add an embedding of the sub-token position inside its hexagon."}
    )
    use_time_embeddings: bool = field(
        default=False, metadata={"help": "Add hour-of-week and time-gap embeddings (the paper ignores time)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})


@dataclass
class DataTrainingArguments:
    """Where the check-ins come from and how they become masked sequences."""

    data: str | None = field(default=None, metadata={"help": "Raw check-in file (or STAN NYC folder)."})
    reader: str = field(default="auto", metadata={"help": f"Reader of --data: auto, {', '.join(sorted(READERS))}."})
    user_col: str | None = field(default=None, metadata={"help": "--reader table: user id column."})
    lat_col: str | None = field(default=None, metadata={"help": "--reader table: latitude column."})
    lon_col: str | None = field(default=None, metadata={"help": "--reader table: longitude column."})
    time_col: str | None = field(default=None, metadata={"help": "--reader table: timestamp column."})
    time_format: str | None = field(default=None, metadata={"help": "--reader table: strftime format of times."})
    time_unit: str | None = field(default=None, metadata={"help": "--reader table: epoch unit s|ms|us."})
    timezone: str | None = field(default=None, metadata={"help": "--reader table: IANA zone of naive times."})
    separator: str | None = field(default=None, metadata={"help": "--reader table: CSV separator."})
    dataset_dir: str | None = field(
        default=None, metadata={"help": "Corpus saved with datasets' save_to_disk (trajectories or check-ins)."}
    )
    synthetic_users: int = field(default=300, metadata={"help": "Embedded default: synthetic users."})
    synthetic_days: int = field(default=42, metadata={"help": "Embedded default: synthetic days."})
    synthetic_seed: int = field(default=0, metadata={"help": "Embedded default: generator seed."})
    resolution: int = field(default=8, metadata={"help": "H3 resolution."})
    window_minutes: float = field(default=10.0, metadata={"help": "Same-cell check-ins this close form one visit."})
    max_gap_minutes: float | None = field(
        default=24 * 60, metadata={"help": "A longer gap between visits starts a new trajectory (None: never)."}
    )
    split_by_day: bool = field(default=False, metadata={"help": "Start a new trajectory each local day."})
    max_visits: int | None = field(default=None, metadata={"help": "Cut trajectories into pieces of this many visits."})
    min_cells: int = field(default=3, metadata={"help": "Drop trajectories with fewer distinct cells (paper: 3)."})
    min_points: int = field(default=10, metadata={"help": "Drop trajectories with fewer raw points (paper: 10)."})
    utc_offset_minutes: int = field(default=0, metadata={"help": "Local time = UTC + offset (days, hour features)."})
    invalid: str = field(default="raise", metadata={"help": "Invalid check-ins: raise | drop (and report)."})
    heldout_fraction: float = field(
        default=0.2, metadata={"help": "Share of users held out for fine-tuning, never seen in pre-training."}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the remaining users used for validation (0: no evaluation)."}
    )
    split_seed: int | None = field(default=None, metadata={"help": "Seed of the user split (default: --seed)."})
    max_seq_length: int = field(
        default=512, metadata={"help": "Longest sequence in tokens; longer trajectories are split into pieces."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    streaming: bool = field(default=False, metadata={"help": "Tokenize on the fly from an iterable dataset."})
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "--streaming: shuffle buffer (sequences)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many train sequences."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many eval sequences."})
    mlm_probability: float = field(default=0.2, metadata={"help": "Share of hexagons masked, in (0, 1)."})
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Masked hexagons replaced by [MASK]."})
    random_replace_prob: float = field(default=0.1, metadata={"help": "Masked hexagons replaced by random tokens."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Ignore checkpoints in --output_dir and train from scratch."}
    )


@dataclass
class MTMResult:
    """What `main` returns (for notebooks and tests)."""

    output_dir: str
    metrics: dict[str, float]
    model: Any = None
    tokenizer: Any = None
    datasets: dict[str, Any] = field(default_factory=dict)
    split: dict[str, list[str]] = field(default_factory=dict)


class BucketedLengthSampler(torch.utils.data.Sampler):
    """Length-grouped order that depends only on (seed, epoch): shuffle, sort by length within buckets of
    `batch_size * bucket_batches` sequences, cut into batches, shuffle the batches.

    Trajectory lengths are heavy-tailed (a few sequences of `max_seq_length`, most of a few dozen tokens); random
    batches would almost all be padded to the longest. Unlike transformers' `LengthGroupedSampler` the order does not
    come from the global RNG, so a resumed run replays exactly the batches of an uninterrupted one (accelerate forwards
    `set_epoch` to the sampler), and buckets are large enough that the few long sequences share batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, bucket_batches: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = batch_size * bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, order.size, self.bucket):
            bucket = order[start : start + self.bucket]
            bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
            batches += [bucket[i : i + self.batch_size] for i in range(0, bucket.size, self.batch_size)]
        for index in rng.permutation(len(batches)):
            yield from batches[index].tolist()


class MTMTrainer(Trainer):
    """Trainer that adds `*_perplexity = exp(*_loss)` to every logged evaluation, uses fixed evaluation masks and
    groups sequences of similar length into batches with a seeded, resumable order (`train_sampling_strategy
    group_by_length`, see `BucketedLengthSampler`)."""

    def __init__(self, *args, eval_data_collator: DataCollatorForWholeHexagonMasking | None = None,
                 eval_mask_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        self.eval_mask_seed = eval_mask_seed

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not isinstance(train_dataset, datasets.Dataset):
            return super()._get_train_sampler(train_dataset)
        column = train_dataset.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]
        lengths = pc.list_value_length(column).to_numpy().tolist()
        return BucketedLengthSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                     seed=self.args.data_seed or self.args.seed)

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        # Same masks at every evaluation, and no draw from the global RNG that training (and resuming) relies on.
        self.eval_data_collator.generator = torch.Generator().manual_seed(self.eval_mask_seed)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for key in [k for k in logs if k.endswith("_loss") and k != "train_loss"]:
            logs[key[: -len("loss")] + "perplexity"] = perplexity(logs[key])
        super().log(logs, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ arguments


def read_args_file(argv: list[str]) -> dict[str, Any] | None:
    """The arguments of `script.py args.json|args.yaml` as a mapping; None for an ordinary command line."""
    if len(argv) != 1 or not argv[0].endswith((".json", ".yaml", ".yml")):
        return None
    path = Path(argv[0])
    if not path.is_file():
        raise ValueError(f"Argument file {path} does not exist.")
    import yaml

    return (json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())) or {}


def parse_arguments(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        values = read_args_file(argv)
    except ValueError as error:
        parser.error(str(error))
    if values is not None:
        model_args, data_args, training_args = parser.parse_dict({**TRAINING_DEFAULTS, **values})
    else:
        parser.set_defaults(**TRAINING_DEFAULTS)
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        check_arguments(model_args, data_args, training_args)
    except ValueError as error:
        parser.error(str(error))
    return model_args, data_args, training_args


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments, args: TrainingArguments) -> None:
    """Every check that can fail before reading data or training; raises ValueError saying what to change."""
    check_push_possible(args.push_to_hub, args.hub_model_id)
    if data_args.data is not None and data_args.dataset_dir is not None:
        raise ValueError("Give either --data (raw check-ins) or --dataset_dir (prepared corpus), not both.")
    if data_args.reader not in ("auto", *READERS):
        raise ValueError(
            f"Unknown --reader {data_args.reader!r}: choose one of auto, {', '.join(sorted(READERS))}."
        )
    mapping = _table_mapping(data_args)
    if data_args.data is not None:
        if not Path(data_args.data).exists():
            raise ValueError(f"--data {data_args.data}: no such file or directory; check the path.")
        if mapping and data_args.reader not in ("table", "auto"):
            raise ValueError(f"Column mapping arguments ({', '.join(mapping)}) only apply to --reader table.")
    elif mapping:
        raise ValueError(f"Column mapping arguments ({', '.join(mapping)}) need --data FILE --reader table.")
    if data_args.dataset_dir is not None and not Path(data_args.dataset_dir).is_dir():
        raise ValueError(f"--dataset_dir {data_args.dataset_dir}: no such directory (expected datasets' save_to_disk).")
    if data_args.invalid not in ("raise", "drop"):
        raise ValueError(f"--invalid {data_args.invalid!r}: choose raise or drop.")
    if not 0 < data_args.mlm_probability < 1:
        raise ValueError(f"--mlm_probability must be in (0, 1) (share of hexagons masked), got "
                         f"{data_args.mlm_probability}.")
    for name in ("mask_replace_prob", "random_replace_prob"):
        if not 0 <= getattr(data_args, name) <= 1:
            raise ValueError(f"--{name} must be in [0, 1], got {getattr(data_args, name)}.")
    if data_args.mask_replace_prob + data_args.random_replace_prob > 1 + 1e-9:
        raise ValueError(
            f"--mask_replace_prob + --random_replace_prob must be <= 1 (the rest stays unchanged), got "
            f"{data_args.mask_replace_prob} + {data_args.random_replace_prob}; lower one of them."
        )
    if not 0 < data_args.heldout_fraction < 1:
        raise ValueError(f"--heldout_fraction must be in (0, 1), got {data_args.heldout_fraction}.")
    if not 0 <= data_args.validation_fraction < 1:
        raise ValueError(f"--validation_fraction must be in [0, 1), got {data_args.validation_fraction}.")
    if model_args.spelling not in SPELLINGS:
        raise ValueError(f"Unknown --spelling {model_args.spelling!r}: choose one of {', '.join(SPELLINGS)}.")
    longest = max_cell_tokens(data_args.resolution, model_args.spelling) + SPECIAL_TOKENS_PER_SEQUENCE
    if data_args.max_seq_length < longest:
        raise ValueError(
            f"--max_seq_length {data_args.max_seq_length} is below the longest hexagon: a resolution-"
            f"{data_args.resolution} cell takes up to {longest - 2} '{model_args.spelling}' sub-tokens plus 2 special "
            f"tokens; use --max_seq_length >= {longest}."
        )
    if data_args.streaming and args.do_train and args.max_steps <= 0:
        raise ValueError("--streaming has no length: give --max_steps N (total optimizer steps).")


def _table_mapping(data_args: DataTrainingArguments) -> dict[str, str]:
    keys = ("user_col", "lat_col", "lon_col", "time_col", "time_format", "time_unit", "timezone", "separator")
    return {k: getattr(data_args, k) for k in keys if getattr(data_args, k) is not None}


# ------------------------------------------------------------------------------------------------ data


def segmentation_config(data_args: DataTrainingArguments) -> SegmentationConfig:
    return SegmentationConfig(
        max_gap_minutes=data_args.max_gap_minutes,
        split_by_day=data_args.split_by_day,
        max_visits=data_args.max_visits,
        min_cells=data_args.min_cells,
        min_points=data_args.min_points,
        utc_offset_minutes=data_args.utc_offset_minutes,
    )


def load_trajectories(data_args: DataTrainingArguments) -> tuple[pa.Table | datasets.Dataset, Any, str]:
    """→ (trajectories as an Arrow table or a memory-mapped Dataset, PipelineReport or None, source description)."""
    segmentation = segmentation_config(data_args)
    if data_args.dataset_dir is not None:
        corpus = datasets.load_from_disk(data_args.dataset_dir)
        if isinstance(corpus, datasets.DatasetDict):
            if len(corpus) != 1:
                raise ValueError(f"--dataset_dir holds several splits ({list(corpus)}): save one Dataset, the split "
                                 "into users is done here.")
            corpus = next(iter(corpus.values()))
        source = f"prepared corpus {data_args.dataset_dir} ({corpus.num_rows:,} rows)"
        if {"user_id", "cells"} <= set(corpus.column_names):
            return corpus, None, source
        if {"user_id", "latitude", "longitude", "timestamp"} <= set(corpus.column_names):
            checkins = corpus.with_format("arrow")[:]
        else:
            raise ValueError(f"--dataset_dir columns {corpus.column_names}: need trajectories (user_id, cells, "
                             "timestamps) or check-ins (user_id, latitude, longitude, timestamp).")
    elif data_args.data is not None:
        reader = data_args.reader
        if reader == "auto":
            from tokenization_trajfm.readers import sniff_reader

            reader = sniff_reader(data_args.data)
        checkins = load_checkins(data_args.data, reader=reader, **_table_mapping(data_args))
        source = f"{data_args.data} (reader {reader})"
    else:
        checkins = load_checkins(None, synthetic_users=data_args.synthetic_users,
                                 synthetic_days=data_args.synthetic_days, seed=data_args.synthetic_seed)
        source = (f"embedded synthetic city ({data_args.synthetic_users} users, {data_args.synthetic_days} days, "
                  f"seed {data_args.synthetic_seed})")
    table, report = trajectories_with_report(
        checkins, data_args.resolution, data_args.window_minutes, segmentation, data_args.invalid
    )
    return table, report, source


def _users(corpus: pa.Table | datasets.Dataset) -> list[str]:
    column = corpus["user_id"] if isinstance(corpus, pa.Table) else _arrow_column(corpus, "user_id")
    return sorted(pc.unique(column.combine_chunks().cast(pa.string())).to_pylist())


def _select(corpus: pa.Table | datasets.Dataset, users: list[str]) -> datasets.Dataset:
    """Trajectories of `users` as a Dataset (in memory for a table; filtered on disk for a memory-mapped corpus)."""
    if isinstance(corpus, pa.Table):
        return datasets.Dataset(select_users(corpus, users))
    wanted = set(users)
    return corpus.filter(lambda batch: [str(u) in wanted for u in batch], input_columns="user_id", batched=True,
                         desc="Selecting users")


def split_corpus(corpus, data_args: DataTrainingArguments, seed: int):
    """→ ({"train", "validation", "heldout"} user lists), following the module docstring."""
    users = _users(corpus)
    rest, heldout = split_users(users, data_args.heldout_fraction, seed)
    if data_args.validation_fraction > 0:
        train, validation = split_users(rest, data_args.validation_fraction, seed + 1)
    else:
        train, validation = rest, []
    return {"train": train, "validation": validation, "heldout": heldout}


def _arrow_column(dataset: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column as Arrow, through the dataset's indices (so a filtered or selected dataset reads right)."""
    return dataset.select_columns([name]).with_format("arrow")[:][name]


def _num_tokens(dataset: datasets.Dataset) -> int:
    column = _arrow_column(dataset, "input_ids")
    return int(pc.sum(pc.list_value_length(column)).as_py() or 0)


def load_tokenizer(model_args: ModelArguments, data_args: DataTrainingArguments, train: datasets.Dataset | None,
                   resume_dir: str | None):
    """Existing tokenizer (`--tokenizer_name`, or the checkpoint being resumed) or one trained on `train`."""
    name = model_args.tokenizer_name or resume_dir or model_args.model_name_or_path
    if name is not None:
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=model_args.cache_dir)
        if getattr(tokenizer, "resolution", data_args.resolution) != data_args.resolution:
            raise ValueError(f"Tokenizer {name} works at H3 resolution {tokenizer.resolution} but --resolution is "
                             f"{data_args.resolution}: pass --resolution {tokenizer.resolution}.")
        longest = max_cell_tokens(tokenizer.resolution, tokenizer.spelling) + SPECIAL_TOKENS_PER_SEQUENCE
        if data_args.max_seq_length < longest:
            raise ValueError(f"--max_seq_length {data_args.max_seq_length} is below the longest hexagon of tokenizer "
                             f"{name} ({longest} tokens with specials); use --max_seq_length >= {longest}.")
        tokenizer.model_max_length = data_args.max_seq_length
        return tokenizer
    return TrajTokenizer.train(
        train,  # a Dataset: training honours its user filter
        vocab_size=model_args.vocab_size,
        resolution=data_args.resolution,
        spelling=model_args.spelling,
        window_minutes=data_args.window_minutes,
        utc_offset_minutes=data_args.utc_offset_minutes,
        model_max_length=data_args.max_seq_length,
    )


def tokenize(tokenizer, dataset: datasets.Dataset, data_args: DataTrainingArguments, name: str, streaming: bool,
             seed: int):
    keep = [c for c in ("cells", "timestamps", "user_id") if c in dataset.column_names]
    dataset = dataset.select_columns(keep)
    if not streaming:
        return tokenizer.tokenize_dataset(dataset, max_length=data_args.max_seq_length, overflow="split",
                                          num_proc=data_args.preprocessing_num_workers,
                                          desc=f"Tokenizing {name} trajectories")
    iterable = dataset.to_iterable_dataset(num_shards=max(1, min(64, dataset.num_rows)))
    iterable = iterable.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    # the batch function `tokenize_dataset` maps; IterableDataset.map has no num_proc/desc arguments
    return iterable.map(tokenizer.encode_trajectory_batch, batched=True, remove_columns=keep,
                        fn_kwargs={"max_length": data_args.max_seq_length, "split": True})


# ------------------------------------------------------------------------------------------------ model


def build_model(model_args: ModelArguments, data_args: DataTrainingArguments, tokenizer):
    if model_args.model_name_or_path is not None:
        model = TrajBertForMaskedTrajectoryModeling.from_pretrained(model_args.model_name_or_path,
                                                                     cache_dir=model_args.cache_dir)
        model.config.check_tokenizer_compatibility(tokenizer)
        return model
    config = TrajBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        hidden_dropout_prob=model_args.hidden_dropout_prob,
        attention_probs_dropout_prob=model_args.attention_probs_dropout_prob,
        max_position_embeddings=data_args.max_seq_length,
        use_hexagon_embeddings=model_args.use_hexagon_embeddings,
        use_level_embeddings=model_args.use_level_embeddings,
        use_time_embeddings=model_args.use_time_embeddings,
        max_levels=getattr(tokenizer, "max_levels", 16),
        pad_token_id=tokenizer.pad_token_id,
    )
    if model_args.config_overrides:
        logger.info(f"Overriding config: {model_args.config_overrides}")
        config.update_from_string(model_args.config_overrides)
        config.validate()
    config.check_tokenizer_compatibility(tokenizer)
    return TrajBertForMaskedTrajectoryModeling(config)


# ------------------------------------------------------------------------------------------------ main


def _setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], force=True)
    level = logging.INFO if training_args.should_log else logging.WARNING
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    datasets.utils.logging.set_verbosity(logging.WARNING)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def _vocab_regime(vocab: int, distinct_cells: int, longest: int) -> str:
    if vocab >= distinct_cells + longest * 16:
        return (f"vocabulary {vocab:,} >= distinct cells {distinct_cells:,}: most cells get their own token, "
                "sub-hashing changes little")
    return f"vocabulary {vocab:,} for {distinct_cells:,} distinct cells ({vocab / max(distinct_cells, 1):.0%})"


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> MTMResult:
    """Run MTM pre-training with command-line style arguments (`argv`, default `sys.argv[1:]`)."""
    model_args, data_args, training_args = parse_arguments(argv)
    _setup_logging(training_args)
    push, hub_model_id = training_args.push_to_hub, training_args.hub_model_id
    training_args.push_to_hub = False  # we push ourselves at the end, with the curated card last
    training_args.label_names = ["labels", "hexagon_ids"]  # hexagon_ids reach compute_metrics next to the labels
    training_args.eval_do_concat_batches = True
    if data_args.validation_fraction == 0 and training_args.do_eval:
        logger.warning("--validation_fraction 0: no validation users, evaluation is disabled.")
        training_args.do_eval = False
    if not training_args.do_eval:
        training_args.eval_strategy = "no"
    output_dir = Path(training_args.output_dir)
    logger.info(f"Process rank {training_args.process_index}/{training_args.world_size}, device {training_args.device}")

    # Resuming: the last checkpoint in output_dir unless told otherwise.
    last_checkpoint = None
    if training_args.do_train and output_dir.is_dir() and not data_args.overwrite_output_dir:
        last_checkpoint = training_args.resume_from_checkpoint or get_last_checkpoint(str(output_dir))
        if last_checkpoint is not None:
            logger.info(f"Resuming from {last_checkpoint} (pass --overwrite_output_dir to train from scratch).")
    elif training_args.resume_from_checkpoint:
        last_checkpoint = training_args.resume_from_checkpoint
    if last_checkpoint is not None and not Path(last_checkpoint).is_dir():
        raise ValueError(f"--resume_from_checkpoint {last_checkpoint}: no such checkpoint folder.")

    set_seed(training_args.seed)
    split_seed = training_args.seed if data_args.split_seed is None else data_args.split_seed

    from tqdm.auto import tqdm

    with training_args.main_process_first(desc="data preparation"):
        bar = tqdm(total=4, desc="Preparing data", disable=not training_args.should_log or training_args.disable_tqdm)
        corpus, report, source = load_trajectories(data_args)
        bar.update()
        logger.info(f"Read {source}")
        if report is not None:
            logger.info(f"Pipeline report (resolution {data_args.resolution}, {data_args.window_minutes:g}-minute "
                        f"clustering, {segmentation_config(data_args)}):\n{report}")
        users = split_corpus(corpus, data_args, split_seed)
        split = UserSplit(seed=split_seed, heldout_fraction=data_args.heldout_fraction, heldout_users=users["heldout"])
        _check_split_unchanged(output_dir, last_checkpoint, split)
        if training_args.process_index == 0:  # written before training: a crash must not lose which users are held out
            output_dir.mkdir(parents=True, exist_ok=True)
            split.save(output_dir)
        parts = {name: _select(corpus, users[name]) for name in ("train", "validation", "heldout") if users[name]}
        bar.update()
        tokenizer = load_tokenizer(model_args, data_args, parts["train"], last_checkpoint)
        train_cells = _arrow_column(parts["train"], "cells").combine_chunks().flatten()
        distinct_cells = int(pc.count_distinct(train_cells).as_py())
        longest = max_cell_tokens(tokenizer.resolution, tokenizer.spelling)
        regime = _vocab_regime(len(tokenizer), distinct_cells, longest)
        logger.info(f"Tokenizer: {type(tokenizer).__name__}, {tokenizer.spelling} spelling, {len(tokenizer)} tokens; "
                    f"{regime}.")
        bar.update()
        tokenized = {}
        for name in ("train", "validation"):
            if name not in parts or (name == "train" and not training_args.do_train) or (
                    name == "validation" and not training_args.do_eval):
                continue
            stream = data_args.streaming and name == "train"
            tokenized[name] = tokenize(tokenizer, parts[name], data_args, name, stream, training_args.seed)
            limit = data_args.max_train_samples if name == "train" else data_args.max_eval_samples
            if limit is not None:
                tokenized[name] = (tokenized[name].take(limit) if stream else
                                   tokenized[name].select(range(min(limit, len(tokenized[name])))))
        bar.update()
        bar.close()

    counts: dict[str, dict[str, int | None]] = {}
    for name, part in parts.items():
        seqs = tokenized.get(name)
        is_map = isinstance(seqs, datasets.Dataset)
        counts[name] = {"users": len(users[name]), "trajectories": part.num_rows,
                        "sequences": len(seqs) if is_map else None, "tokens": _num_tokens(seqs) if is_map else None}
    lines = [f"  {name:<10} users {c['users']:>7,}  trajectories {c['trajectories']:>9,}  "
             + (f"sequences {c['sequences']:>9,}  tokens {c['tokens']:>12,}" if c["sequences"] is not None
                else ("not used here (fine-tuning only)" if name == "heldout" else "tokenized on the fly"))
             for name, c in counts.items()]
    logger.info("Users split (no user in two splits):\n" + "\n".join(lines))
    if report is not None and counts.get("train", {}).get("tokens") is not None:
        report.tokens = counts["train"]["tokens"]

    model = build_model(model_args, data_args, tokenizer)
    set_auto_map(model.config)  # complete auto_map (every head + tokenizer) in every saved config.json
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"TrajBert MTM: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
                f"{model.config.num_attention_heads} heads, vocab {model.config.vocab_size}, {n_params / 1e6:.2f}M "
                "parameters")

    collator_kwargs = {"mlm_probability": data_args.mlm_probability, "mask_replace_prob": data_args.mask_replace_prob,
                       "random_replace_prob": data_args.random_replace_prob}
    # Training masks use the global torch RNG, which Trainer seeds and saves in checkpoints (exact resumes).
    train_collator = DataCollatorForWholeHexagonMasking(tokenizer, **collator_kwargs)
    eval_collator = DataCollatorForWholeHexagonMasking(tokenizer, seed=training_args.seed, **collator_kwargs)
    resuming = last_checkpoint is not None
    training_args.eval_on_start = training_args.do_eval and training_args.do_train and not resuming

    trainer = MTMTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train"),
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        eval_mask_seed=training_args.seed,
        compute_metrics=compute_mtm_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_mtm_metrics if training_args.do_eval else None,
        callbacks=callbacks,
    )

    metrics: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        trainer.save_model()  # model + tokenizer (+ code files) + training_args.bin
        train_metrics = dict(train_result.metrics)
        if counts.get("train", {}).get("sequences") is not None:
            train_metrics["train_samples"] = counts["train"]["sequences"]
            train_metrics["train_tokens"] = counts["train"]["tokens"]
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_samples"] = counts["validation"]["sequences"]
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
        init = next((e for e in trainer.state.log_history if e.get("step") == 0 and "eval_loss" in e), None)
        if init is not None:
            init_metrics = {f"init_{k}": v for k, v in init.items() if k.startswith("eval_")}
            trainer.save_metrics("init", init_metrics)
            metrics.update(init_metrics)

    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        if not training_args.do_train:
            trainer.save_model()
        info = {
            "source": source,
            "data_arguments": asdict(data_args),
            "segmentation": asdict(segmentation_config(data_args)),
            "pipeline_report": report.to_dict() if report is not None else None,
            "split_seed": split_seed,
            "split_counts": counts,
            "validation_users": users["validation"],
            "distinct_train_cells": distinct_cells,
            "vocab_regime": regime,
            "split_file": SPLIT_FILE,
        }
        (output_dir / PRETRAINING_FILE).write_text(json.dumps(info, indent=1, default=str))
        plot = plot_training_curves(trainer.state.log_history, output_dir / PLOT_FILE,
                                    title=f"MTM pre-training: {output_dir.name}")
        card = build_card(model, tokenizer, model_args, data_args, training_args, metrics, report, source, counts,
                          distinct_cells, regime, plot, hub_model_id or output_dir.name)
        card.save(output_dir / "README.md")
        if push:
            repo_id = push_checkpoint(output_dir, hub_model_id or output_dir.name, card,
                                      token=training_args.hub_token, private=training_args.hub_private_repo)
            logger.info(f"Pushed to {repo_id}")
        _print_summary(output_dir, metrics)
    return MTMResult(output_dir=str(output_dir), metrics=metrics, model=trainer.model, tokenizer=tokenizer,
                     datasets=tokenized, split=users)


def _check_split_unchanged(output_dir: Path, last_checkpoint: str | None, split: UserSplit) -> None:
    """A resumed run must hold out the same users as the run it continues (same data, same seed): checked before
    any training, against the split file the interrupted run wrote at its start."""
    if last_checkpoint is None:
        return
    previous = UserSplit.load(output_dir)
    if previous is not None and previous.heldout_users != split.heldout_users:
        raise ValueError(f"The held-out users differ from those of {last_checkpoint}: the data or --split_seed "
                         "changed since that run; resume with the same data and seed, or --overwrite_output_dir.")


def card_dataset_name(values: dict[str, Any]) -> str:
    """Dataset name for a model card from the data arguments used (dataset_dir wins, as in `load_trajectories`)."""
    for key in ("dataset_dir", "data"):
        if values.get(key):
            return Path(str(values[key]).rstrip("/")).name
    return "trajfm synthetic city"


def build_card(model, tokenizer, model_args, data_args, training_args, metrics, report, source, counts,
               distinct_cells, regime, plot, repo_id):
    def fmt(key, pattern):
        value = metrics.get(key)
        return pattern % value if isinstance(value, (int, float)) else "n/a"

    specs = {
        "eval_perplexity": ("perplexity", "Perplexity per sub-token"),
        "eval_hexagon_acc_top1": ("accuracy", "Hexagon accuracy top-1"),
        "eval_hexagon_acc_top5": ("top_5_accuracy", "Hexagon accuracy top-5"),
        "eval_loss": ("loss", "MTM loss"),
    }
    dataset_name = card_dataset_name(asdict(data_args))
    eval_results = eval_results_from_metrics(
        metrics, specs, task_type="fill-mask", task_name="Masked trajectory modeling",
        dataset_type="trajectories", dataset_name=dataset_name, dataset_split="validation users",
    )
    config = model.config
    hidden = "paper (plain BERT inputs)" if not (config.use_hexagon_embeddings or config.use_level_embeddings
                                                 or config.use_time_embeddings) else ", ".join(
        n for n, on in (("hexagon", config.use_hexagon_embeddings), ("level", config.use_level_embeddings),
                        ("time", config.use_time_embeddings)) if on) + " embeddings"
    train_counts = counts.get("train", {})
    split_summary = ", ".join(f"{name} {c['users']:,} users / {c['trajectories']:,} trajectories"
                              for name, c in counts.items())
    return render_model_card(
        CARD_TEMPLATE,
        metrics,
        model_name=Path(repo_id).name,
        eval_results=eval_results,
        pipeline_tag="fill-mask",
        repo_id=repo_id,
        init_perplexity=fmt("init_eval_perplexity", "%.4g"),
        init_top1=fmt("init_eval_hexagon_acc_top1", "%.4f"),
        init_top5=fmt("init_eval_hexagon_acc_top5", "%.4f"),
        plot_file=PLOT_FILE if plot is not None else "",
        data_source=source,
        resolution=data_args.resolution,
        window_minutes=f"{data_args.window_minutes:g}",
        segmentation=segmentation_config(data_args),
        pipeline_report=str(report) if report is not None else "(prepared corpus: no pipeline run here)",
        split_summary=split_summary,
        heldout_users=counts.get("heldout", {}).get("users", 0),
        spelling=tokenizer.spelling,
        vocab_size=len(tokenizer),
        distinct_cells=f"{distinct_cells:,}",
        vocab_regime=regime,
        max_cell_tokens=max_cell_tokens(tokenizer.resolution, tokenizer.spelling),
        max_seq_length=data_args.max_seq_length,
        model_summary=(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                       f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
                       f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {hidden}"),
        mlm_probability=data_args.mlm_probability,
        mask_replace_prob=data_args.mask_replace_prob,
        random_replace_prob=data_args.random_replace_prob,
        keep_prob=round(1 - data_args.mask_replace_prob - data_args.random_replace_prob, 4),
        training_summary=(f"{metrics.get('epoch', 'n/a')} epochs, {trainer_steps(training_args)} "
                          f"steps, batch {training_args.per_device_train_batch_size} x {training_args.world_size} "
                          f"process(es) x {training_args.gradient_accumulation_steps} accumulation, learning rate "
                          f"{training_args.learning_rate}, seed {training_args.seed}"),
        train_tokens=f"{train_counts.get('tokens'):,}" if train_counts.get("tokens") is not None else "n/a",
        train_sequences=f"{train_counts.get('sequences'):,}" if train_counts.get("sequences") is not None else "n/a",
    )


def trainer_steps(training_args: TrainingArguments) -> str:
    return str(training_args.max_steps) if training_args.max_steps > 0 else "all"


def _print_summary(output_dir: Path, metrics: dict[str, float]) -> None:
    keys = ("init_eval_perplexity", "eval_perplexity", "eval_hexagon_acc_top1", "eval_hexagon_acc_top5", "eval_loss",
            "train_loss", "train_runtime")
    shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))
                      and math.isfinite(metrics[k]))
    print(f"\nCheckpoint saved in {output_dir.resolve()}\n  {shown}\n"
          f"Load it with: import modeling_trajfm, tokenization_trajfm; "
          f"AutoModelForMaskedLM.from_pretrained({str(output_dir)!r})", flush=True)


if __name__ == "__main__":
    main()

# The two package imports register TrajBert and TrajTokenizer with the Auto classes.
_ = (modeling_trajfm, tokenization_trajfm)
