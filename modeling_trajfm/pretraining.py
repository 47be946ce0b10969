"""Masked trajectory modeling (MTM) pre-training as a library call: `pretrain(corpus, model_args, mtm_args, args)`.

Data flow (every step logged with counts):

1. `CorpusConfig.load()`: check-ins from a file, a prepared corpus or the embedded synthetic city → H3 encoding,
   clustering and segmentation into trajectories (the PipelineReport of what was read and dropped is logged).
   A corpus folder (`--corpus_dir`, written by `tokenization_trajfm.prepare`) skips steps 1-4: its user split,
   tokenizer and sequence shards are read as they are (memory-mapped, or streamed with `--streaming`).
2. Users split, seeded by `split_seed` (default: the training seed): `heldout_fraction` of the users are held out for
   fine-tuning and never seen here, the rest split into train / validation by user (`validation_fraction`). The split
   is saved in the corpus description (`trajfm_corpus.json`) before any training, so a crash never loses it.
3. Tokenizer: `tokenizer_name` (an existing TrajTokenizer) or a new sub-hash vocabulary trained on the TRAINING users.
4. Sequences: each trajectory is ONE sequence `[CLS] visits... [SEP]`; one longer than `max_seq_length` is split into
   pieces of WHOLE hexagons. Training sequences are padded per length-grouped batch, or packed several to a row when
   that would be mostly padding (`pack_sequences`; attention, positions and masking stay per trajectory, see
   `modeling_trajfm.packing`); validation sequences are padded per batch.
5. Whole-hexagon masking (`DataCollatorForWholeHexagonMasking`); evaluation masks come from a fixed seed. The MTM
   head predicts only the masked positions during training (`sparse_prediction`). With `contrastive_weight > 0`
   each training trajectory is masked twice and a trajectory-level contrastive term joins the MTM loss (see
   `TrajBertForMaskedTrajectoryModeling`); evaluation stays MTM only.
6. Metrics at every evaluation and at step 0: `eval_perplexity` per sub-token, `eval_hexagon_acc_top1` / `top5`.

The output folder is a complete checkpoint: model + config (complete `auto_map`), tokenizer, Trainer files, results
JSONs, the corpus description, `training_curves.png` and a model card (`README.md`). Resuming: the last `checkpoint-*`
in the output folder is continued unless `overwrite_output_dir`.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments, set_seed

from tokenization_trajfm import FEATURE_KEYS, CorpusConfig, CorpusDescription, PipelineReport, TrajTokenizer, UserSplit
from tokenization_trajfm.corpus import SOURCE_FIELDS, select_users
from tokenization_trajfm.prepare import CORPUS_LAYOUT, sequence_files, vocab_regime
from tokenization_trajfm.subhash import (
    PRETRAINING_SPELLING,
    SPELLINGS,
    check_spelling,
    max_cell_tokens,
    shortest_sequence,
)

from .arguments import NoPinMemoryWithoutAccelerator, parse_arguments, setup_logging
from .cards import PLOT_FILE, build_mtm_card
from .configuration_trajbert import TrajBertConfig
from .data_collator import CONTRASTIVE_POSITIVES, CONTRASTIVE_VIEWS, DataCollatorForWholeHexagonMasking
from .hub import check_push_possible, push_checkpoint
from .metrics import compute_mtm_metrics, preprocess_logits_for_mtm_metrics
from .modeling_trajbert import TrajBertForMaskedTrajectoryModeling
from .packing import pack_trajectories, padding_share
from .plotting import plot_training_curves
from .run_guard import (
    RunRecord,
    argument_defaults,
    check_output_dir,
    check_resume,
    is_complete,
    last_complete_checkpoint,
    remove_checkpoints,
    wants_overwrite,
)
from .trainer import MTMTrainer, TrainingStream, sequence_lengths

logger = logging.getLogger(__name__)


@dataclass
class MTMTrainingArguments(NoPinMemoryWithoutAccelerator, TrainingArguments):
    """TrainingArguments with pre-training defaults (tuned for the embedded synthetic run: a few minutes on 2 CPU
    cores). Ratios < 1 for eval/logging/save/warm-up steps are fractions of all steps."""

    output_dir: str | None = field(default="trajfm-base", metadata={"help": "Where the checkpoint is written."})
    do_train: bool = field(default=True, metadata={"help": "Train (else only evaluate)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation users."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: no | steps | epoch."})
    eval_steps: float | None = field(default=0.1, metadata={"help": "Evaluate every N steps (< 1: share of all)."})
    logging_steps: float = field(default=0.02, metadata={"help": "Log every N steps (< 1: share of all)."})
    save_steps: float = field(default=0.5, metadata={"help": "Checkpoint every N steps (< 1: share of all)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (< 1: share of all steps)."})
    num_train_epochs: float = field(default=8.0, metadata={"help": "Epochs (ignored when --max_steps is set)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device (training)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device (evaluation)."})
    seed: int = field(default=42, metadata={"help": "Seed of the run (and of the user split by default)."})
    train_sampling_strategy: str = field(
        default="group_by_length", metadata={"help": "group_by_length (little padding: lengths vary a lot) | random."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace what --output_dir holds (its checkpoints are deleted) and train from scratch; "
                  "without it a non-empty --output_dir is refused unless it holds a run to resume."},
    )


@dataclass
class MTMModelArguments:
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
    spelling: str = field(
        default=PRETRAINING_SPELLING,
        metadata={"help": f"Sub-hash spelling of a new tokenizer: {SPELLINGS} ({PRETRAINING_SPELLING}: chosen by the "
                  "NYC ablation, README)."},
    )
    gap_break_minutes: float | None = field(
        default=None,
        metadata={"help": "Gap (minutes) on which a new tokenizer puts a gap-id edge: the break that cut the "
                  "trajectories. Default: --max_gap_minutes when trajfm cuts them (raw check-ins, the synthetic city); "
                  "given splits and prepared Datasets, which may come cut anywhere, get the plain log2 grid unless "
                  "you give their break here."},
    )
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
    sparse_prediction: bool = field(
        default=True,
        metadata={"help": "Training computes MTM logits and loss only at masked positions (same loss, less compute); "
                  "false: at every position."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})

    def __post_init__(self):
        check_spelling(self.spelling, "--spelling")


#: How `--contrastive_batches` draws training batches (the first is the default).
CONTRASTIVE_BATCHES = ("random", "nearby")


@dataclass
class MTMArguments:
    """How the corpus is split into users and turned into masked sequences."""

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
    mask_span: int = field(
        default=1,
        metadata={"help": "Mask runs of this many consecutive hexagons (about --mlm_probability of them in all) "
                  "instead of single ones: along a GPS track a lone masked cell lies between two visible neighbours. "
                  "Evaluation masks the same way, so perplexities compare only at the same span."},
    )
    mask_replace_prob: float = field(default=0.8, metadata={"help": "Masked hexagons replaced by [MASK]."})
    random_replace_prob: float = field(default=0.1, metadata={"help": "Masked hexagons replaced by random tokens."})
    contrastive_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of a trajectory-level contrastive term beside MTM: each training trajectory is "
                  "masked twice, the two views' mean-pooled embeddings are positives (see --contrastive_positives) "
                  "and the batch's other trajectories negatives (InfoNCE). MTM alone blurs which trajectory is "
                  "which; this keeps it (1.0 with same-user positives: chosen on NYC and GeoLife validation data, "
                  "README). 0: MTM only (the paper). Doubles the rows of a batch; not with packing."},
    )
    contrastive_temperature: float = field(default=0.1, metadata={"help": "Temperature of the contrastive term."})
    contrastive_positives: str = field(
        default="user",
        metadata={"help": "What the contrastive term treats as positives: views (the two masked views of each "
                  "trajectory) | user (also the other trajectories of the same user: training batches are made of "
                  "pairs of one user's trajectories, so the term learns what tells users apart; reads the "
                  "pre-training users' ids and needs an even --per_device_train_batch_size; with --streaming the "
                  "pairs are made within the shuffle buffer)."},
    )
    contrastive_views: str = field(
        default="masked",
        metadata={"help": "What each of a trajectory's two views shows: masked (the whole trajectory, masked twice) | "
                  "pieces (two disjoint runs of its hexagons, cut near the middle, each masked: the views share few "
                  "cells, so matching them is not solved by shared tokens, as it is for long GPS trajectories)."},
    )
    contrastive_batches: str = field(
        default="random",
        metadata={"help": "How training batches, and so the contrastive term's negatives, are drawn: random | nearby "
                  "(trajectories whose most visited cells are neighbours in H3's hierarchy share a batch: the "
                  "negatives come from one district and cannot be told apart by where they are; no length grouping)."},
    )
    visible_token_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of a term beside MTM in which every visible (unmasked) hexagon token predicts "
                  "itself through the MTM head: MTM asks only masked positions for their cell, so the others' "
                  "states drift towards their surroundings; this keeps each state, and the token table, specific to "
                  "its cell (1.0: chosen by the NYC ablation and confirmed on GeoLife validation, README). 0: off. "
                  "Training only: validation perplexity stays MTM's."},
    )
    freeze_token_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the token table (and the tied MTM decoder) at its initial values while pre-training; "
                  "the rest of the model trains on top of it. Tried against MTM making nearby cells' tokens alike "
                  "(README, GeoLife). Fine-tuning trains the table as usual."},
    )
    pack_sequences: str = field(
        default="auto",
        metadata={"help": "Pack several training trajectories into each row of --max_seq_length tokens (attention, "
                  "positions and masking stay per trajectory): true | false | auto (pack only without "
                  "group_by_length sampling, when random batches would be more than 25%% padding; length-grouped "
                  "batches are little padding and a packed row pays full-length attention). "
                  "--per_device_train_batch_size still counts trajectories."},
    )

    def __post_init__(self):
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"--mlm_probability must be in (0, 1) (share of hexagons masked), got "
                             f"{self.mlm_probability}.")
        if self.mask_span < 1:
            raise ValueError(f"--mask_span must be at least 1 (hexagons per masked run), got {self.mask_span}.")
        for name in ("mask_replace_prob", "random_replace_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            raise ValueError(
                f"--mask_replace_prob + --random_replace_prob must be <= 1 (the rest stays unchanged), got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}; lower one of them."
            )
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"--heldout_fraction must be in (0, 1), got {self.heldout_fraction}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        if self.pack_sequences not in PACKING_CHOICES:
            raise ValueError(f"--pack_sequences must be one of {', '.join(PACKING_CHOICES)}, got "
                             f"{self.pack_sequences!r}.")
        if self.visible_token_weight < 0:
            raise ValueError(f"--visible_token_weight must be >= 0 (0: off), got {self.visible_token_weight}.")
        if self.contrastive_weight < 0 or self.contrastive_temperature <= 0:
            raise ValueError(f"--contrastive_weight must be >= 0 and --contrastive_temperature > 0, got "
                             f"{self.contrastive_weight} and {self.contrastive_temperature}.")
        for name, choices in (("contrastive_positives", CONTRASTIVE_POSITIVES),
                              ("contrastive_views", CONTRASTIVE_VIEWS), ("contrastive_batches", CONTRASTIVE_BATCHES)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}, got {value!r}.")
            plain = (choices[0], self.__dataclass_fields__[name].default)  # what a run without the term has anyway
            if value not in plain and self.contrastive_weight == 0:
                raise ValueError(f"--{name} {value} has no effect without the contrastive term: give "
                                 "--contrastive_weight > 0 (e.g. 1.0).")
        if self.streaming and self.contrastive_batches == "nearby":
            raise ValueError("--contrastive_batches nearby sorts the training trajectories by place, which needs the "
                             "whole training split: drop --streaming, or use --contrastive_batches random.")
        if self.contrastive_weight > 0 and self.pack_sequences == "true":
            raise ValueError("--contrastive_weight needs one trajectory per row: drop --pack_sequences true, or "
                             "pass --contrastive_weight 0 (MTM only) to pack.")

    @property
    def positives_used(self) -> str:
        """The contrastive term's positives as training uses them: the plain views without the term (weight 0)."""
        return self.contrastive_positives if self.contrastive_weight > 0 else CONTRASTIVE_POSITIVES[0]


#: What a run recorded before these arguments existed trained with, where the default has changed since: a resumed
#: run is compared with these (`RunRecord.differences`), so it is refused rather than changed silently.
TRAINED_BEFORE_ARGUMENT_EXISTED = {"contrastive_weight": 0.0, "contrastive_positives": "views",
                                   "visible_token_weight": 0.0, "pack_sequences": "true"}


@dataclass
class PretrainingResult:
    """What `pretrain` returns."""

    output_dir: str
    metrics: dict[str, float]
    model: Any = None
    tokenizer: Any = None
    datasets: dict[str, Any] = field(default_factory=dict)
    split: dict[str, list[str]] = field(default_factory=dict)


def check_pretrainable(config: TrajBertConfig) -> None:
    """Refuse what MTM cannot train. The pair match table only acts on a pair's two segments; MTM reads single
    trajectories, so the table would stay at its random init and fine-tuning would take it for a pre-trained one."""
    if config.use_match_embeddings:
        raise ValueError("use_match_embeddings marks the cells two segments of a pair share, and masked trajectory "
                         "modeling reads single trajectories, so its table would never train: pre-train without it "
                         "(run_finetune.py adds it to the pair tasks, see --pair_match_entries).")


def check_pretraining_arguments(corpus: CorpusConfig, model_args: MTMModelArguments, mtm_args: MTMArguments,
                                training_args: TrainingArguments) -> None:
    """The checks that involve several argument groups; raises ValueError saying what to change."""
    check_push_possible(training_args.push_to_hub, training_args.hub_model_id)
    if model_args.config_overrides:
        overridden = TrajBertConfig()
        overridden.update_from_string(model_args.config_overrides)
        check_pretrainable(overridden)
    if mtm_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        raise ValueError("--streaming has no length: give --max_steps N (total optimizer steps).")
    if mtm_args.positives_used == "user" and training_args.per_device_train_batch_size % 2:
        raise ValueError(f"--contrastive_positives user fills batches with pairs of one user's trajectories: give an "
                         f"even --per_device_train_batch_size, not {training_args.per_device_train_batch_size}.")
    if corpus.corpus_dir is not None:
        length = corpus.prepared().recipe["max_seq_length"]
        if mtm_args.max_seq_length != length:
            raise ValueError(f"--max_seq_length {mtm_args.max_seq_length} differs from that of --corpus_dir "
                             f"{corpus.corpus_dir}, whose sequences were cut at {length} tokens: pass --max_seq_length "
                             f"{length}, or prepare the corpus again with --max_seq_length {mtm_args.max_seq_length}.")
        return
    longest = shortest_sequence(corpus.resolution, model_args.spelling)
    if mtm_args.max_seq_length < longest:
        raise ValueError(
            f"--max_seq_length {mtm_args.max_seq_length} is below the longest hexagon: a resolution-"
            f"{corpus.resolution} cell takes up to {longest - 2} '{model_args.spelling}' sub-tokens plus 2 special "
            f"tokens; use --max_seq_length >= {longest}."
        )


# ------------------------------------------------------------------------------------------------ data


def _arrow_column(dataset: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column as Arrow, through the dataset's indices (so a filtered or selected dataset reads right)."""
    return dataset.select_columns([name]).with_format("arrow")[:][name]


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


def _num_tokens(dataset: datasets.Dataset) -> int:
    return int(sequence_lengths(dataset).sum())


def load_tokenizer(model_args: MTMModelArguments, corpus: CorpusConfig, mtm_args: MTMArguments,
                   train: datasets.Dataset | None, resume_dir: str | None) -> TrajTokenizer:
    """Existing tokenizer (`tokenizer_name`, or the checkpoint being resumed) or one trained on `train`."""
    name = model_args.tokenizer_name or resume_dir or model_args.model_name_or_path
    if name is not None:
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=model_args.cache_dir)
        if getattr(tokenizer, "resolution", corpus.resolution) != corpus.resolution:
            raise ValueError(f"Tokenizer {name} works at H3 resolution {tokenizer.resolution} but --resolution is "
                             f"{corpus.resolution}: pass --resolution {tokenizer.resolution}.")
        longest = shortest_sequence(tokenizer.resolution, tokenizer.spelling)
        if mtm_args.max_seq_length < longest:
            raise ValueError(f"--max_seq_length {mtm_args.max_seq_length} is below the longest hexagon of tokenizer "
                             f"{name} ({longest} tokens with specials); use --max_seq_length >= {longest}.")
        given_break, own_break = model_args.gap_break_minutes, getattr(tokenizer, "gap_break_minutes", None)
        if given_break is not None and given_break != own_break:
            raise ValueError(f"--gap_break_minutes {given_break:g} is for a new tokenizer; {name}'s gap ids keep its "
                             f"own grid (gap_break_minutes={own_break}): drop --gap_break_minutes.")
        tokenizer.model_max_length = mtm_args.max_seq_length
        corpus.set_time_zone(tokenizer)
        return tokenizer
    settings = corpus.tokenizer_settings()
    if model_args.gap_break_minutes is not None:
        settings["gap_break_minutes"] = model_args.gap_break_minutes
    return TrajTokenizer.train(
        train,  # a Dataset: training honours its user filter
        vocab_size=model_args.vocab_size,
        resolution=corpus.resolution,
        spelling=model_args.spelling,
        model_max_length=mtm_args.max_seq_length,
        **settings,
    )


SHARED_TOKENIZER_DIR = "trajfm_tokenizer_rank0"


def _shared_tokenizer(model_args: MTMModelArguments, corpus: CorpusConfig, mtm_args: MTMArguments,
                      train: datasets.Dataset, resume_dir: str | None, training_args: TrainingArguments
                      ) -> TrajTokenizer:
    """One tokenizer for every rank, trained once: under DDP rank 0 trains it (inside `main_process_first`, it runs
    first) and the other ranks load rank 0's copy instead of repeating the work (training is deterministic, so the
    copy is what they would have trained)."""
    if training_args.world_size == 1 or model_args.tokenizer_name or resume_dir or model_args.model_name_or_path:
        return load_tokenizer(model_args, corpus, mtm_args, train, resume_dir)
    shared = Path(training_args.output_dir) / SHARED_TOKENIZER_DIR
    if training_args.process_index == 0:
        tokenizer = load_tokenizer(model_args, corpus, mtm_args, train, resume_dir)
        tokenizer.save_pretrained(shared)
        return tokenizer
    tokenizer = TrajTokenizer.from_pretrained(shared)
    tokenizer.model_max_length = mtm_args.max_seq_length
    return tokenizer


def tokenize(tokenizer: TrajTokenizer, dataset: datasets.Dataset, mtm_args: MTMArguments, name: str, streaming: bool
             ) -> datasets.Dataset | datasets.IterableDataset:
    """Trajectories → sequences, all at once or, `streaming`, on the fly (ordered by `TrainingStream`)."""
    keep = [c for c in ("cells", "timestamps", "user_id") if c in dataset.column_names]
    dataset = dataset.select_columns(keep)
    if not streaming:
        return tokenizer.tokenize_dataset(dataset, max_length=mtm_args.max_seq_length, overflow="split",
                                          num_proc=mtm_args.preprocessing_num_workers,
                                          desc=f"Tokenizing {name} trajectories")
    iterable = dataset.to_iterable_dataset(num_shards=max(1, min(64, dataset.num_rows)))
    # the batch function `tokenize_dataset` maps; IterableDataset.map has no num_proc/desc arguments
    return iterable.map(tokenizer.encode_trajectory_batch, batched=True, remove_columns=keep,
                        fn_kwargs={"max_length": mtm_args.max_seq_length, "split": True})


#: The columns of a sequence shard that the model reads (`user_id`, `traj_id`, `piece` say where it came from).
SEQUENCE_FEATURES = ("input_ids", "attention_mask", *FEATURE_KEYS)


def corpus_sequences(corpus_dir: str | Path, split: str, streaming: bool, cache_dir: str | None = None
                     ) -> datasets.Dataset | datasets.IterableDataset | None:
    """One split's sequence shards of a corpus folder, None when it has none: memory-mapped and used like sequences
    tokenized here, or streamed; with the model's columns and `user_id` (same-user positives pair by it)."""
    files = sequence_files(corpus_dir, split)
    if not files:
        return None
    dataset = datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming,
                                    cache_dir=cache_dir)
    return dataset.select_columns(["user_id", *SEQUENCE_FEATURES])


def _limit(dataset: datasets.Dataset | datasets.IterableDataset, mtm_args: MTMArguments, name: str
           ) -> datasets.Dataset | datasets.IterableDataset:
    """At most `--max_train_samples` / `--max_eval_samples` sequences of split `name`."""
    limit = mtm_args.max_train_samples if name == "train" else mtm_args.max_eval_samples
    if limit is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(limit)
    return dataset.select(range(min(limit, len(dataset))))


def _splits_used(training_args: TrainingArguments) -> list[str]:
    return [name for name, used in (("train", training_args.do_train), ("validation", training_args.do_eval)) if used]


PACKING_CHOICES = ("auto", "true", "false")
#: `--pack_sequences auto` packs when unpacked batches would hold more than this share of padding.
AUTO_PACKING_PADDING_SHARE = 0.25


def _should_pack(train: datasets.Dataset, mtm_args: MTMArguments, training_args: TrainingArguments) -> bool:
    """`--pack_sequences`, resolving `auto`: pack only when the train sampler does not group lengths and its random
    batches would be more than `AUTO_PACKING_PADDING_SHARE` padding. Length-grouped batches are little padding (NYC:
    6%) while a packed row pays attention over its full length, which measured slower on CPU (see the README)."""
    if mtm_args.pack_sequences != "auto":
        return mtm_args.pack_sequences == "true"
    if mtm_args.contrastive_weight > 0:
        return False
    if training_args.train_sampling_strategy == "group_by_length":
        return False
    lengths = sequence_lengths(train)
    order = np.random.default_rng(training_args.data_seed or training_args.seed).permutation(lengths.size)
    share = padding_share(lengths[order], training_args.per_device_train_batch_size)
    logger.info(f"Random training batches would be {share:.1%} padding: "
                f"{'packing' if share > AUTO_PACKING_PADDING_SHARE else 'not packing'} (--pack_sequences auto).")
    return share > AUTO_PACKING_PADDING_SHARE


def _pack(train: datasets.Dataset, mtm_args: MTMArguments, training_args: TrainingArguments) -> datasets.Dataset:
    """Pack the training trajectories into rows and scale the rows per batch so that a batch still holds about
    `per_device_train_batch_size` trajectories (same number of optimizer steps per epoch as unpacked)."""
    packed = pack_trajectories(train, mtm_args.max_seq_length)
    per_row = len(train) / max(1, len(packed))
    rows = max(1, round(training_args.per_device_train_batch_size / per_row))
    logger.info(f"Packing: {len(train):,} training sequences -> {len(packed):,} rows of <= {mtm_args.max_seq_length} "
                f"tokens ({per_row:.1f} per row); {rows} rows per device batch hold about "
                f"{training_args.per_device_train_batch_size} trajectories.")
    training_args.per_device_train_batch_size = rows
    return packed


# ------------------------------------------------------------------------------------------------ model


def build_model(model_args: MTMModelArguments, mtm_args: MTMArguments,
                tokenizer: TrajTokenizer) -> TrajBertForMaskedTrajectoryModeling:
    if model_args.model_name_or_path is not None:
        model = TrajBertForMaskedTrajectoryModeling.from_pretrained(model_args.model_name_or_path,
                                                                     cache_dir=model_args.cache_dir)
        model.config.check_tokenizer_compatibility(tokenizer)
        check_pretrainable(model.config)
        model.config.sparse_prediction = model_args.sparse_prediction
        model.config.contrastive_weight = mtm_args.contrastive_weight
        model.config.contrastive_temperature = mtm_args.contrastive_temperature
        model.config.visible_token_weight = mtm_args.visible_token_weight
        return model
    config = TrajBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        hidden_dropout_prob=model_args.hidden_dropout_prob,
        attention_probs_dropout_prob=model_args.attention_probs_dropout_prob,
        max_position_embeddings=mtm_args.max_seq_length,
        use_hexagon_embeddings=model_args.use_hexagon_embeddings,
        use_level_embeddings=model_args.use_level_embeddings,
        use_time_embeddings=model_args.use_time_embeddings,
        sparse_prediction=model_args.sparse_prediction,
        contrastive_weight=mtm_args.contrastive_weight,
        contrastive_temperature=mtm_args.contrastive_temperature,
        visible_token_weight=mtm_args.visible_token_weight,
        max_levels=getattr(tokenizer, "max_levels", 16),
        pad_token_id=tokenizer.pad_token_id,
    )
    if model_args.config_overrides:
        logger.info(f"Overriding config: {model_args.config_overrides}")
        config.update_from_string(model_args.config_overrides)
        config.validate()
    config.check_tokenizer_compatibility(tokenizer)
    return TrajBertForMaskedTrajectoryModeling(config)


# ------------------------------------------------------------------------------------------------ the run


def _no_evaluation(training_args: TrainingArguments, why: str) -> None:
    if training_args.do_eval:
        logger.warning(f"{why}: evaluation is disabled.")
    training_args.do_eval = False
    training_args.eval_strategy = "no"


def _stage_data(corpus: CorpusConfig, mtm_args: MTMArguments, split_seed: int
                ) -> tuple[dict[str, datasets.Dataset], dict[str, list[str]], UserSplit, Any, str]:
    """Trajectories of each stage → (parts, users per part, the user split, pipeline report, source).

    Given split files replace the user split: the train file trains, the validation file validates, nobody is held
    out (fine-tuning then needs its own data). Otherwise users are split by `heldout_fraction` and
    `validation_fraction`, seeded.
    """
    if corpus.has_split_source():
        tables, reports, source = corpus.load_splits()
        if "train" not in tables:
            raise ValueError(f"{source}: pre-training needs a train split (--train_file, or a dataset with one).")
        if "test" in tables:
            logger.info("The test split is for fine-tuning: pre-training does not read it.")
        parts = {name: datasets.Dataset(tables[name]) for name in ("train", "validation") if name in tables}
        users = {name: _users(tables[name]) for name in parts}
        for name, part_report in reports.items():
            logger.info(f"Read {name} split of {source}:\n{part_report}")
        return parts, users, UserSplit(split_seed, 0.0, [], 0.0, users.get("validation", [])), reports["train"], source
    trajectories, report, source = corpus.load()
    logger.info(f"Read {source}")
    if report is not None:
        logger.info(f"Pipeline report (resolution {corpus.resolution}, {corpus.window_minutes:g}-minute "
                    f"clustering, {corpus.segmentation()}):\n{report}")
    split, train_users = UserSplit.assign(_users(trajectories), mtm_args.heldout_fraction,
                                          mtm_args.validation_fraction, split_seed)
    users = {"train": train_users, "validation": split.validation_users, "heldout": split.heldout_users}
    parts = {name: _select(trajectories, users[name]) for name in ("train", "validation", "heldout") if users[name]}
    return parts, users, split, report, source


def _resume_checkpoint(training_args: TrainingArguments, output_dir: Path) -> str | None:
    """The checkpoint to continue: `resume_from_checkpoint`, else the last complete one in `output_dir`."""
    if training_args.resume_from_checkpoint:
        checkpoint = training_args.resume_from_checkpoint
        if not Path(checkpoint).is_dir():
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: no such checkpoint folder.")
        if not is_complete(checkpoint):
            raise ValueError(f"--resume_from_checkpoint {checkpoint} is incomplete (the run stopped while saving it); "
                             "pass an earlier checkpoint.")
        return checkpoint
    if not training_args.do_train or wants_overwrite(training_args):
        return None
    checkpoint = last_complete_checkpoint(output_dir, remove_incomplete=training_args.process_index == 0)
    if checkpoint is not None:
        logger.info(f"Resuming from {checkpoint} (pass --overwrite_output_dir to train from scratch).")
    return checkpoint


def _guard_output(corpus: CorpusConfig, model_args: MTMModelArguments, mtm_args: MTMArguments,
                  training_args: TrainingArguments, output_dir: Path) -> tuple[str | None, RunRecord]:
    """Refuse an output folder where work would be lost; → (checkpoint to resume, the run's record)."""
    last_checkpoint = _resume_checkpoint(training_args, output_dir)
    check_output_dir(output_dir, wants_overwrite(training_args),
                     reads_from=(model_args.model_name_or_path, model_args.tokenizer_name),
                     resumable=last_checkpoint is not None)
    model_values = {k: v for k, v in asdict(model_args).items() if k != "cache_dir"}
    mtm_values = {k: v for k, v in asdict(mtm_args).items() if k != "preprocessing_num_workers"}
    mtm_values["contrastive_positives"] = mtm_args.positives_used  # without the term either value trains the same
    record = RunRecord.from_arguments({"corpus": asdict(corpus), "model": model_values, "mtm": mtm_values},
                                      training_args)
    if last_checkpoint is not None:
        defaults = {"corpus": argument_defaults(CorpusConfig), "model": argument_defaults(MTMModelArguments),
                    "mtm": {**argument_defaults(MTMArguments), **TRAINED_BEFORE_ARGUMENT_EXISTED}}
        check_resume(output_dir, last_checkpoint, record, defaults)
    elif wants_overwrite(training_args) and training_args.process_index == 0:
        remove_checkpoints(output_dir)
    return last_checkpoint, record


def _check_split_unchanged(output_dir: Path, last_checkpoint: str | None, split: UserSplit) -> None:
    """A resumed run must hold out the same users as the run it continues (same data, same seed): checked before
    any training, against the corpus description the interrupted run wrote at its start."""
    if last_checkpoint is None or not CorpusDescription.exists(output_dir):
        return
    previous = CorpusDescription.load(output_dir).split
    fixed = ("rule", "seed", "heldout_fraction", "heldout_users")  # the hash rule (a corpus folder) has no user lists
    if any(getattr(previous, name) != getattr(split, name) for name in fixed):
        raise ValueError(f"The held-out users differ from those of {last_checkpoint}: the data or --split_seed "
                         "changed since that run; resume with the same data and seed, or --overwrite_output_dir.")


@dataclass
class _Staged:
    """A run's data, whichever its source: the tokenizer, the sequences of each split used, the corpus description
    (config, user split, counts) and pipeline report it records, and the users of each split when they are listed."""

    tokenizer: TrajTokenizer
    tokenized: dict[str, datasets.Dataset | datasets.IterableDataset]
    description: CorpusDescription
    report: PipelineReport | None
    users: dict[str, list[str]] = field(default_factory=dict)


def _stage_built(corpus: CorpusConfig, model_args: MTMModelArguments, mtm_args: MTMArguments,
                 training_args: TrainingArguments, last_checkpoint: str | None) -> _Staged:
    """Trajectories built here and split into users (`_stage_data`), a tokenizer trained on the training users (or
    given), and their sequences (tokenized on the fly with `--streaming`)."""
    from tqdm.auto import tqdm

    split_seed = training_args.seed if mtm_args.split_seed is None else mtm_args.split_seed
    bar = tqdm(total=4, desc="Preparing data", disable=not training_args.should_log or training_args.disable_tqdm)
    parts, users, split, report, source = _stage_data(corpus, mtm_args, split_seed)
    if "validation" not in parts and training_args.do_eval:
        _no_evaluation(training_args, f"{source} has no validation split")
    bar.update()
    _check_split_unchanged(Path(training_args.output_dir), last_checkpoint, split)
    bar.update()
    tokenizer = _shared_tokenizer(model_args, corpus, mtm_args, parts["train"], last_checkpoint, training_args)
    train_cells = _arrow_column(parts["train"], "cells").combine_chunks().flatten()
    distinct_cells = int(pc.count_distinct(train_cells).as_py())
    regime = vocab_regime(len(tokenizer), distinct_cells, max_cell_tokens(tokenizer.resolution, tokenizer.spelling))
    logger.info(f"Tokenizer: {type(tokenizer).__name__}, {tokenizer.spelling} spelling, {len(tokenizer)} tokens; "
                f"{regime}.")
    bar.update()
    tokenized = {name: _limit(tokenize(tokenizer, parts[name], mtm_args, name, mtm_args.streaming and name == "train"),
                              mtm_args, name) for name in _splits_used(training_args) if name in parts}
    bar.update()
    bar.close()

    counts: dict[str, dict[str, int | None]] = {}
    for name, part in parts.items():
        seqs = tokenized.get(name)
        is_map = isinstance(seqs, datasets.Dataset)
        counts[name] = {"users": len(users[name]), "trajectories": part.num_rows,
                        "sequences": len(seqs) if is_map else None, "tokens": _num_tokens(seqs) if is_map else None}
    if report is not None and counts.get("train", {}).get("tokens") is not None:
        report.tokens = counts["train"]["tokens"]
    description = CorpusDescription(
        config=corpus, split=split, source=source, report=report.to_dict() if report is not None else None,
        counts=counts, distinct_train_cells=distinct_cells, vocab_regime=regime, recipe=asdict(mtm_args),
    )
    return _Staged(tokenizer, tokenized, description, report, users)


def _corpus_folder_tokenizer(corpus_dir: str, model_args: MTMModelArguments, mtm_args: MTMArguments
                             ) -> TrajTokenizer:
    """The corpus folder's tokenizer: its sequences hold this tokenizer's ids, so any other is refused."""
    tokenizer = TrajTokenizer.from_pretrained(Path(corpus_dir) / CORPUS_LAYOUT["tokenizer"])
    if model_args.tokenizer_name is not None:
        given = AutoTokenizer.from_pretrained(model_args.tokenizer_name, cache_dir=model_args.cache_dir)
        if getattr(given, "fingerprint", None) != tokenizer.fingerprint:
            raise ValueError(f"--tokenizer_name {model_args.tokenizer_name} is not the tokenizer of --corpus_dir "
                             f"{corpus_dir}, whose sequences hold that tokenizer's ids: drop --tokenizer_name (the "
                             "corpus folder's is used), or prepare the corpus again.")
    tokenizer.model_max_length = mtm_args.max_seq_length
    return tokenizer


def _fixed_by_corpus_folder(corpus: CorpusConfig, prepared: CorpusDescription, model_args: MTMModelArguments,
                            mtm_args: MTMArguments) -> list[str]:
    """Arguments whose values differ from those the corpus folder was prepared with (which are the ones used)."""
    settings = [(name, getattr(corpus, name), value) for name, value in asdict(prepared.config).items()
                if name not in SOURCE_FIELDS and not name.startswith("synthetic_")]
    split, recipe = prepared.split, prepared.recipe
    settings += [("vocab_size", model_args.vocab_size, recipe.get("vocab_size")),
                 ("spelling", model_args.spelling, recipe.get("spelling")),
                 ("heldout_fraction", mtm_args.heldout_fraction, split.heldout_fraction),
                 ("validation_fraction", mtm_args.validation_fraction, split.validation_fraction),
                 ("split_seed", mtm_args.split_seed, split.seed)]
    return [f"--{name} {fixed} (not {given})" for name, given, fixed in settings
            if given is not None and given != fixed]


def _stage_corpus_folder(corpus: CorpusConfig, model_args: MTMModelArguments, mtm_args: MTMArguments,
                         training_args: TrainingArguments, last_checkpoint: str | None) -> _Staged:
    """A corpus folder (`--corpus_dir`) as prepared: its tokenizer, user split and sequence shards (memory-mapped, or
    streamed with `--streaming`); nothing is built or tokenized again, and the counts are those it records."""
    folder, prepared = corpus.corpus_dir, corpus.prepared()
    fixed = _fixed_by_corpus_folder(corpus, prepared, model_args, mtm_args)
    if fixed:
        logger.info(f"The corpus folder fixes data settings, tokenizer and user split; using its {', '.join(fixed)}.")
    report = PipelineReport(**prepared.report)
    logger.info(f"Read corpus folder {folder}, prepared from {prepared.source}:\n{report}")
    _check_split_unchanged(Path(training_args.output_dir), last_checkpoint, prepared.split)
    tokenizer = _corpus_folder_tokenizer(folder, model_args, mtm_args)
    logger.info(f"Tokenizer: {type(tokenizer).__name__}, {tokenizer.spelling} spelling, {len(tokenizer)} tokens; "
                f"{prepared.vocab_regime}.")
    counts = {name: dict(c) for name, c in prepared.counts.items()}
    tokenized = {}
    for name in _splits_used(training_args):
        sequences = corpus_sequences(folder, name, mtm_args.streaming and name == "train", model_args.cache_dir)
        if sequences is None and name == "validation":
            _no_evaluation(training_args, f"corpus folder {folder} has no validation sequences")
            continue
        if sequences is None:
            raise ValueError(f"Corpus folder {folder} has no training sequences ({CORPUS_LAYOUT['sequences']}/"
                             "split=train is empty): prepare it with more users or a lower --heldout_fraction.")
        tokenized[name] = _limit(sequences, mtm_args, name)
        if isinstance(tokenized[name], datasets.Dataset):
            counts[name].update(sequences=len(tokenized[name]), tokens=_num_tokens(tokenized[name]))
        elif mtm_args.max_train_samples is not None:  # streamed: the first sequences, whose tokens are not counted
            counts[name].update(sequences=min(mtm_args.max_train_samples, counts[name]["sequences"]), tokens=None)
    source = f"corpus folder {folder} (prepared from {prepared.source})"
    description = CorpusDescription(
        config=prepared.config, split=prepared.split, source=source, report=prepared.report, counts=counts,
        distinct_train_cells=prepared.distinct_train_cells, vocab_regime=prepared.vocab_regime, recipe=asdict(mtm_args),
    )
    return _Staged(tokenizer, tokenized, description, report)


def _count_line(name: str, counts: dict[str, int | None]) -> str:
    line = f"  {name:<10} users {counts['users']:>7,}  trajectories {counts['trajectories']:>9,}  "
    if counts["sequences"] is None:
        return line + ("not used here (fine-tuning only)" if name == "heldout" else "tokenized on the fly")
    tokens = f"  tokens {counts['tokens']:>12,}" if counts["tokens"] is not None else ""
    return line + f"sequences {counts['sequences']:>9,}" + tokens


def pretrain(
    corpus: CorpusConfig | None = None,
    model_args: MTMModelArguments | None = None,
    mtm_args: MTMArguments | None = None,
    training_args: TrainingArguments | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> PretrainingResult:
    """Pre-train TrajBert by whole-hexagon MTM (see the module docstring); every argument has a working default
    (the embedded synthetic city, a small model, `MTMTrainingArguments`)."""
    corpus = corpus or CorpusConfig()
    model_args = model_args or MTMModelArguments()
    mtm_args = mtm_args or MTMArguments()
    training_args = training_args or MTMTrainingArguments()
    check_pretraining_arguments(corpus, model_args, mtm_args, training_args)
    push, hub_model_id = training_args.push_to_hub, training_args.hub_model_id
    training_args.push_to_hub = False  # we push ourselves at the end, with the curated card last
    training_args.label_names = ["labels", "hexagon_ids"]  # hexagon_ids reach compute_metrics next to the labels
    training_args.eval_do_concat_batches = True
    if corpus.corpus_dir is None and not corpus.has_split_source() and mtm_args.validation_fraction == 0:
        _no_evaluation(training_args, "--validation_fraction 0: no validation users")
    elif corpus.has_split_source() and corpus.validation_file is None and corpus.hf_dataset is None:
        _no_evaluation(training_args, "no --validation_file")
    if not training_args.do_eval:
        training_args.eval_strategy = "no"
    output_dir = Path(training_args.output_dir)
    logger.info(f"Process rank {training_args.process_index}/{training_args.world_size}, device {training_args.device}")
    last_checkpoint, record = _guard_output(corpus, model_args, mtm_args, training_args, output_dir)

    set_seed(training_args.seed)
    if not training_args.should_log:  # progress bars of `datasets` (tokenization, filters) once, on the main process
        datasets.disable_progress_bars()
    with training_args.main_process_first(desc="data preparation"):
        stage = _stage_corpus_folder if corpus.corpus_dir is not None else _stage_built
        staged = stage(corpus, model_args, mtm_args, training_args, last_checkpoint)
    tokenizer, tokenized, description, report = staged.tokenizer, staged.tokenized, staged.description, staged.report
    counts = description.counts
    lines = [_count_line(name, c) for name, c in counts.items()]
    logger.info("Users split (no user in two splits):\n" + "\n".join(lines))
    if training_args.process_index == 0:  # written before training: a crash must not lose which users are held out
        output_dir.mkdir(parents=True, exist_ok=True)
        description.save(output_dir)
        record.save(output_dir)

    model = build_model(model_args, mtm_args, tokenizer)
    if mtm_args.freeze_token_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        logger.info("The token table stays at its initial values (--freeze_token_embeddings).")
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"TrajBert MTM: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
                f"{model.config.num_attention_heads} heads, vocab {model.config.vocab_size}, {n_params / 1e6:.2f}M "
                "parameters")

    collator_kwargs = {"mlm_probability": mtm_args.mlm_probability, "mask_span": mtm_args.mask_span,
                       "mask_replace_prob": mtm_args.mask_replace_prob,
                       "random_replace_prob": mtm_args.random_replace_prob}
    # Training masks are a function of (seed, epoch, batch): a resumed run masks exactly as an uninterrupted one.
    # With the contrastive term each trajectory is masked twice (two views); evaluation stays one view, MTM only.
    train_collator = DataCollatorForWholeHexagonMasking(tokenizer, seed=training_args.seed, reseed_per_batch=True,
                                                        views=2 if mtm_args.contrastive_weight > 0 else 1,
                                                        positives=mtm_args.positives_used,
                                                        view_kind=mtm_args.contrastive_views,
                                                        **collator_kwargs)
    eval_collator = DataCollatorForWholeHexagonMasking(tokenizer, seed=training_args.seed, **collator_kwargs)
    resuming = last_checkpoint is not None
    training_args.eval_on_start = training_args.do_eval and training_args.do_train and not resuming

    train_dataset = tokenized.get("train")
    if isinstance(train_dataset, datasets.IterableDataset):
        train_dataset = TrainingStream(train_dataset, training_args.seed, mtm_args.shuffle_buffer_size,
                                       training_args.process_index, training_args.world_size,
                                       pair_users=mtm_args.positives_used == "user")
    packed = isinstance(train_dataset, datasets.Dataset) and _should_pack(train_dataset, mtm_args, training_args)
    if packed:
        train_dataset = _pack(train_dataset, mtm_args, training_args)

    trainer = MTMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        eval_mask_seed=training_args.seed,
        nearby_batches=mtm_args.contrastive_batches == "nearby",
        compute_metrics=compute_mtm_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_mtm_metrics if training_args.do_eval else None,
        callbacks=callbacks,
    )

    metrics: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        trainer.save_model()  # model + tokenizer (+ code files) + training_args.bin
        train_metrics = dict(train_result.metrics)
        for metric, key in (("train_samples", "sequences"), ("train_tokens", "tokens")):
            if counts.get("train", {}).get(key) is not None:
                train_metrics[metric] = counts["train"][key]
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
        shutil.rmtree(output_dir / SHARED_TOKENIZER_DIR, ignore_errors=True)  # saved with the model by now
        if not training_args.do_train:
            trainer.save_model()
        plot = plot_training_curves(trainer.state.log_history, output_dir / PLOT_FILE,
                                    title=f"MTM pre-training: {output_dir.name}")
        card = build_mtm_card(model, tokenizer, description, mtm_args, training_args, metrics, report, plot,
                              hub_model_id or output_dir.name, packed=packed)
        card.save(output_dir / "README.md")
        if push:
            repo_id = push_checkpoint(output_dir, hub_model_id or output_dir.name, card,
                                      token=training_args.hub_token, private=training_args.hub_private_repo)
            logger.info(f"Pushed to {repo_id}")
        record.finished, record.results = True, metrics
        record.save(output_dir)
        _print_summary(output_dir, metrics)
    return PretrainingResult(output_dir=str(output_dir), metrics=metrics, model=trainer.model, tokenizer=tokenizer,
                             datasets=tokenized, split=staged.users)


def parse_pretraining_arguments(argv: Sequence[str] | None = None
                                ) -> tuple[CorpusConfig, MTMModelArguments, MTMArguments, MTMTrainingArguments]:
    """`run_mtm.py`'s command line (`argv`, default `sys.argv[1:]`; an argument file may come first) → the checked
    arguments of `pretrain`."""
    (model_args, corpus, mtm_args, training_args), _ = parse_arguments(
        (MTMModelArguments, CorpusConfig, MTMArguments, MTMTrainingArguments), argv)
    check_pretraining_arguments(corpus, model_args, mtm_args, training_args)
    return corpus, model_args, mtm_args, training_args


def pretrain_from_argv(argv: Sequence[str] | None = None, callbacks: list[TrainerCallback] | None = None
                       ) -> PretrainingResult:
    """`python run_mtm.py ARGS` as a call: parse `argv`, log as the script does, and `pretrain`."""
    corpus, model_args, mtm_args, training_args = parse_pretraining_arguments(argv)
    setup_logging(training_args, logging.getLogger("run_mtm"), logging.getLogger("modeling_trajfm"))
    return pretrain(corpus, model_args, mtm_args, training_args, callbacks=callbacks)


def _print_summary(output_dir: Path, metrics: dict[str, float]) -> None:
    keys = ("init_eval_perplexity", "eval_perplexity", "eval_hexagon_acc_top1", "eval_hexagon_acc_top5", "eval_loss",
            "train_loss", "train_runtime")
    shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))
                      and math.isfinite(metrics[k]))
    print(f"\nCheckpoint saved in {output_dir.resolve()}\n  {shown}\n"
          f"Load it with: import modeling_trajfm; AutoModelForMaskedLM.from_pretrained({str(output_dir)!r})",
          flush=True)


__all__ = ["MTMArguments", "MTMModelArguments", "MTMTrainingArguments", "PretrainingResult", "pretrain"]
