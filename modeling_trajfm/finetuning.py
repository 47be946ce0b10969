"""Fine-tuning on the downstream tasks of arXiv 2312.00076 as library calls: `finetune` (one task, one init) and
`compare` (pre-trained vs random init on the same data, seeds and budget, beside simple baselines).

The examples come either from given splits (`corpus_overrides` with `train_file`/`validation_file`/`test_file` or
`hf_dataset`, i.e. `--dataset_name`), used exactly as given: train on train, keep the checkpoint with the lowest
validation loss, report on test; or from the users HELD OUT from pre-training (the checkpoint's corpus description,
`trajfm_corpus.json`, or `TaskConfig.heldout_users`), with their trajectories rebuilt exactly as pre-training built
them (the recorded `CorpusConfig`, updated with `corpus_overrides`, e.g. the data file's new location), or, for a
checkpoint pre-trained on a corpus folder (`--corpus_dir`), read from its held-out shards as prepared; each task
split by trajectory into train/validation/test (`TaskConfig.test_fraction`, `validation_fraction`), so no trajectory
is on two sides. Held-out user ids are only matched against the pre-training corpus itself: other data (different
counts, or fewer than half of the held-out users present) is an error unless the split is given. Fine-tuning evaluates
on validation every epoch, keeps the checkpoint with the best primary validation metric
(`downstream.builders.PRIMARY_METRIC`) and stops early; test is touched once, at the end.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from transformers import EarlyStoppingCallback, EvalPrediction, TrainingArguments, set_seed
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from tokenization_trajfm import CorpusConfig, CorpusDescription, PipelineReport, TrajTokenizer, select_users
from tokenization_trajfm.corpus import CORPUS_FILE, SPLIT_SOURCE_FIELDS
from tokenization_trajfm.prepare import read_trajectories

from .arguments import NoPinMemoryWithoutAccelerator
from .cards import PLOT_FILE, build_finetune_card
from .configuration_trajbert import CLASSIFIER_POOLINGS, PAIR_ENCODINGS, TrajBertConfig
from .data_collator import DataCollatorWithTrajectoryPadding
from .downstream import examples as T
from .downstream.builders import (
    PAIR_ENTRIES,
    PRIMARY_METRIC,
    PreparedTask,
    TaskConfig,
    build_task,
    build_task_from_splits,
    report_entries,
    task_metrics,
)
from .downstream.compare import (
    INITS,
    TEST_SCORES_FILE,
    compare_markdown,
    compare_plot,
    compare_report,
    save_test_scores,
)
from .downstream.forms import (
    VALIDATION_SCORES_FILE,
    choose_form,
    embedding_forms,
    has_forms,
    history_forms,
    save_validation_scores,
)
from .downstream.probes import frozen_probe_scores
from .hub import check_push_possible, push_checkpoint
from .modeling_trajbert import (
    TrajBertForHexagonPrediction,
    TrajBertForSequenceClassification,
    TrajBertModel,
    TrajBertPreTrainedModel,
)
from .plotting import plot_training_curves
from .run_guard import check_output_dir, wants_overwrite
from .trainer import FinetuneTrainer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("vocab.json", "tokenizer_config.json")


@dataclass
class FinetuneArguments:
    """Which checkpoint, which init, and whether to compare both inits."""

    model_name_or_path: str = field(
        default="trajfm-base",
        metadata={"help": "Pre-trained checkpoint folder (run_mtm.py output: model, tokenizer, trajfm_corpus.json)."},
    )
    init: str = field(default="pretrained", metadata={"help": "pretrained | random (same config, fresh weights)."})
    compare: bool = field(
        default=False, metadata={"help": "Fine-tune both inits on the same data/seeds/budget and write a report."}
    )
    tasks: list[str] = field(
        default_factory=lambda: list(T.TASKS),
        metadata={"help": "Tasks of --compare (default: all three; user_association runs both forms)."},
    )

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"Unknown --init {self.init!r}: choose pretrained or random.")
        report_entries(self.tasks)  # names checked


#: Pair entries whose cross classifier gets the pair match embedding by default. Chosen on validation (3 splits × 2
#: inits): same-user pairs' classifier F1 rose from 0.709 to 0.954 (pre-trained; random 0.667 to 0.936) and the
#: answer from 0.953 to 0.969; next sub-trajectory, which time decides, fell from 0.992 to 0.990 (and on the seen-user
#: splits' validation from 0.9832 to 0.9827), so it keeps the plain classifier.
MATCH_ENTRIES = ("user_association_binary",)

#: `metric_for_best_model` placeholder for the task's own primary metric (`downstream.builders.PRIMARY_METRIC`).
PRIMARY = "primary"


@dataclass
class FinetuneTrainingArguments(NoPinMemoryWithoutAccelerator, TrainingArguments):
    """TrainingArguments with the fine-tuning recipe chosen on validation data (README, "Fine-tuning recipe"): evaluate
    on validation every epoch, keep the best checkpoint by the task's primary metric, stop early; mean pooling over
    hexagon tokens, up to 30 epochs (patience 5), the fresh head at its own learning rate 3e-3 (the encoder at 2e-4):
    on NYC validation a 10-epoch budget left user linking's classifier at 0.58 accuracy@1, where this recipe reaches
    0.90. Visit-time embeddings are on whenever the tokenizer records times: on NYC validation they lift next
    sub-trajectory from 0.72 to 0.95 and the mean over the four entries from 0.707 to 0.770 (pre-trained init)."""

    output_dir: str | None = field(default="outputs/finetune", metadata={"help": "Where results are written."})
    num_train_epochs: float = field(
        default=30.0, metadata={"help": "Most epochs per fine-tuning run (early stopping usually ends it sooner)."}
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device (training)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device (evaluation)."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of the encoder (AdamW)."})
    head_learning_rate: float | None = field(
        default=3e-3,
        metadata={"help": "Peak learning rate of the task head (None, from Python: the encoder's --learning_rate)."},
    )
    classifier_pooling: str = field(
        default="mean", metadata={"help": "Sequence summary for the head: mean (over hexagon tokens) | cls ([CLS])."}
    )
    pair_encoding: str = field(
        default="cross",
        metadata={"help": "Pair tasks' classifier: cross (A and B in one sequence, attending to each other) | siamese "
                  "(A and B encoded apart, the head reads [u, v, |u - v|, u * v] of their mean-pooled states)."},
    )
    pair_match_entries: list[str] = field(
        default_factory=lambda: list(MATCH_ENTRIES),
        metadata={"help": "Pair entries whose cross classifier gets the pair match embedding, a learnt vector on every "
                          "hexagon of A that B visits too and of B that A visits (learnt from scratch at the head's "
                          f"learning rate); among {', '.join(PAIR_ENTRIES)}, or none."},
    )
    classifier_dropout: float | None = field(
        default=None, metadata={"help": "Dropout before the head (None: hidden dropout for classification, none "
                                          "for destination)."}
    )
    use_time_embeddings: bool | None = field(
        default=None,
        metadata={"help": "Give the fine-tuned model (both inits) the visits' hour-of-week and gap embeddings, learnt "
                          "from scratch (at the head's learning rate) when the checkpoint was pre-trained without "
                          "them; a pair's B starts with its gap from A's last visit, which decides next "
                          "sub-trajectory. None: on when the checkpoint's tokenizer records visit times; false: off."},
    )
    early_stopping_patience: int = field(
        default=5, metadata={"help": "Stop after this many evaluations without a better validation metric (0: never)."}
    )
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps (< 1: share of all steps)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Validation: no | steps | epoch."})
    save_strategy: str = field(
        default="best", metadata={"help": "Checkpoints: best (only when validation improves) | no | steps | epoch."}
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Restore the checkpoint with the best validation metric after training."}
    )
    metric_for_best_model: str | None = field(
        default=PRIMARY, metadata={"help": f"Validation metric that selects the checkpoint; {PRIMARY!r}: the task's "
                                           "primary metric (accuracy, accuracy@1 or f1)."}
    )
    save_only_model: bool = field(default=True, metadata={"help": "Checkpoints without optimizer state."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace what --output_dir holds; without it a non-empty one is refused."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"--classifier_pooling must be cls or mean, got {self.classifier_pooling!r}.")
        if self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"--pair_encoding must be one of {', '.join(PAIR_ENCODINGS)}, got {self.pair_encoding!r}.")
        if self.early_stopping_patience < 0:
            raise ValueError(f"--early_stopping_patience must be >= 0, got {self.early_stopping_patience}.")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ValueError(f"--head_learning_rate must be positive, got {self.head_learning_rate}.")
        self.pair_match_entries = [entry for entry in self.pair_match_entries or [] if entry != "none"]
        unknown = sorted(set(self.pair_match_entries) - set(PAIR_ENTRIES))
        if unknown:
            raise ValueError(f"--pair_match_entries {' '.join(unknown)}: choose among {', '.join(PAIR_ENTRIES)}, or "
                             "none.")


@dataclass
class FinetuneResult:
    """What `finetune` returns: the test metrics (`test_*`) of one task entry and init, and where it was saved."""

    entry: str
    init: str
    metrics: dict[str, float]
    output_dir: str


@dataclass
class CompareResult:
    """What `compare` returns: `results[entry][init]` = test metrics, and the comparison report."""

    results: dict[str, dict[str, dict[str, float]]]
    report: dict[str, Any]
    output_dir: str


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


def _has_corpus_description(model_path: str) -> bool:
    return Path(model_path).is_dir() and CorpusDescription.exists(model_path)


def check_heldout_users_argument(heldout_users: str | None) -> None:
    """A value that looks like a path must exist (a list of ids is anything else)."""
    if heldout_users and not Path(heldout_users).exists() and (
        "/" in heldout_users or heldout_users.lower().endswith((".json", ".txt"))
    ):
        raise ValueError(f"--heldout_users {heldout_users!r}: no such file (pass a checkpoint folder, a "
                         f"{CORPUS_FILE}, a text file with one user id per line, or a comma-separated list of ids).")


def resolve_heldout_users(model_path: str, heldout_users: str | None) -> tuple[list[str], str]:
    """Users to fine-tune on: `heldout_users` if given, else the checkpoint's. Returns (users, where they came from)."""
    check_heldout_users_argument(heldout_users)
    if heldout_users:
        path = Path(heldout_users)
        if path.is_dir() or path.name == CORPUS_FILE:
            folder = path if path.is_dir() else path.parent
            return list(CorpusDescription.load(folder).split.heldout_users), str(folder / CORPUS_FILE)
        if path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            return [line for line in lines if line], str(path)
        return [u.strip() for u in heldout_users.split(",") if u.strip()], "--heldout_users"
    if not _has_corpus_description(model_path):
        raise ValueError(
            f"Checkpoint {model_path!r} has no {CORPUS_FILE} (the users held out from pre-training), so fine-tuning "
            "could reuse pre-training users. Use a run_mtm.py output folder, or pass --heldout_users (a file with one "
            "user id per line, or a comma-separated list of users the model never saw)."
        )
    return list(CorpusDescription.load(model_path).split.heldout_users), str(Path(model_path) / CORPUS_FILE)


def resolve_corpus(model_path: str, corpus_overrides: dict[str, Any] | None = None) -> CorpusConfig:
    """The corpus config pre-training recorded in the checkpoint (defaults when there is none), with overrides."""
    if _has_corpus_description(model_path):
        return CorpusDescription.load(model_path, overrides=corpus_overrides).config
    return CorpusConfig().with_overrides(corpus_overrides or {})


GIVE_THE_SPLIT = ("give the split instead: --train_file/--validation_file/--test_file or --dataset_name (used as "
                  "given), or --heldout_users with users of this data")


def check_same_corpus(recorded_report: dict[str, Any] | None, report: PipelineReport | None, source: str) -> None:
    """The data's pipeline report must match the checkpoint's (`recorded_report`): other data has unrelated user ids,
    which would silently select wrong "users"."""
    if recorded_report is None or report is None:
        return
    differs = {key: (recorded_report[key], getattr(report, key)) for key in ("points_read", "users")
               if recorded_report.get(key) is not None and recorded_report[key] != getattr(report, key)}
    if differs:
        counts = ", ".join(f"{key} {was:,} at pre-training, {now:,} here" for key, (was, now) in differs.items())
        raise ValueError(f"{source} is not the checkpoint's pre-training corpus ({counts}), so its user ids are "
                         f"not the checkpoint's held-out users; {GIVE_THE_SPLIT}.")


def load_prepared_heldout(corpus: CorpusConfig, model_path: str, recorded_report: dict[str, Any] | None
                          ) -> tuple[pa.Table, PipelineReport, str]:
    """Trajectories of the users held out from a checkpoint pre-trained on a corpus folder: the folder's held-out
    shards, as prepared. The folder holds users out by a hash of their id, so there is no user list to match."""
    if corpus.corpus_dir is None:
        raise ValueError(f"{model_path} was pre-trained on a corpus folder, whose held-out users are its "
                         "trajectories/split=heldout shards: pass --corpus_dir with the folder's location instead of "
                         f"other data, or {GIVE_THE_SPLIT}.")
    report = PipelineReport(**corpus.prepared().report)
    source = f"held-out users of corpus folder {corpus.corpus_dir}"
    check_same_corpus(recorded_report, report, source)
    return read_trajectories(corpus.corpus_dir, "heldout"), report, source


def load_heldout_trajectories(corpus: CorpusConfig, tokenizer: TrajTokenizer, heldout: list[str],
                              recorded_report: dict[str, Any] | None = None
                              ) -> tuple[pa.Table, PipelineReport | None, str]:
    """Trajectories of the held-out users, built as pre-training built its corpus.

    `recorded_report` (the checkpoint's pipeline report, when `heldout` are the checkpoint's users) must match the
    data's (`check_same_corpus`). Returns (trajectory table of the held-out users, PipelineReport of the whole corpus
    or None, source).
    """
    trajectories, report, source = corpus.load()
    check_same_corpus(recorded_report, report, source)
    table = trajectories if isinstance(trajectories, pa.Table) else trajectories.with_format("arrow")[:]
    present = set(table.column("user_id").cast(pa.string()).unique().to_pylist())
    found = sorted(set(heldout) & present)
    if not found:
        raise ValueError(
            f"None of the {len(set(heldout))} held-out users of the checkpoint has a trajectory in this data: pass the "
            "same --data / --reader / --synthetic_* / segmentation arguments that run_mtm.py used for pre-training, "
            f"or {GIVE_THE_SPLIT}."
        )
    if len(found) < len(set(heldout)) / 2:
        raise ValueError(f"Only {len(found)} of the {len(set(heldout))} held-out users have a trajectory in {source}: "
                         f"it does not look like the pre-training corpus; {GIVE_THE_SPLIT}.")
    if len(found) < len(set(heldout)):
        logger.warning("%d of %d held-out users have no trajectory in this data.", len(set(heldout)) - len(found),
                       len(set(heldout)))
    return select_users(table, found), report, source


# ------------------------------------------------------------------------------------------------------ training
def tokenize_examples(task: PreparedTask, columns: dict[str, list], tokenizer: TrajTokenizer,
                      max_length: int) -> datasets.Dataset:
    """Examples → a tokenized Dataset with `labels` (visits without times get no time features)."""
    if "cells_a" in columns:  # pair tasks, and destination with the user's context as segment A
        encoded = tokenizer(cells=columns["cells_a"], timestamps=columns["timestamps_a"],
                            pair_cells=columns["cells_b"], pair_timestamps=columns["timestamps_b"],
                            max_length=max_length, truncation=True)
    else:
        encoded = tokenizer(cells=columns["cells"], timestamps=columns["timestamps"], max_length=max_length,
                            truncation=True)
    data = {key: list(values) for key, values in encoded.items()}
    data["labels"] = list(columns["label"])
    return datasets.Dataset.from_dict(data)


def build_model(task: PreparedTask, init: str, model_path: str, base_config: TrajBertConfig,
                tokenizer: TrajTokenizer, seed: int, classifier_pooling: str = "cls",
                classifier_dropout: float | None = None, pair_encoding: str = "cross",
                use_time_embeddings: bool | None = None, pair_match_embeddings: bool = False):
    """A fine-tuning model for `task`: pre-trained weights, or the same config with fresh weights (seeded).
    `pair_encoding` applies to pair tasks; every other task reads one sequence (`"cross"`). `use_time_embeddings`
    (None: the checkpoint's) adds time embeddings that pre-training did not train, fresh for both inits;
    `pair_match_embeddings` adds the pair match embedding the same way (cross-encoded pair tasks only)."""
    config = copy.deepcopy(base_config)
    if use_time_embeddings is not None:
        config.use_time_embeddings = use_time_embeddings
    config.classifier_pooling = classifier_pooling
    config.pair_encoding = pair_encoding if task.kind == "pair" else "cross"
    config.use_match_embeddings = pair_match_embeddings and task.kind == "pair" and config.pair_encoding == "cross"
    config.classifier_dropout = classifier_dropout
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
    return model


def load_encoder(model_path: str, base_config: TrajBertConfig, init: str, seed: int) -> TrajBertModel:
    """The checkpoint's bare encoder, or its config with fresh weights (seeded): what the frozen probes embed with."""
    set_seed(seed)
    if init == "pretrained":
        return TrajBertModel.from_pretrained(model_path, add_pooling_layer=False)
    return TrajBertModel(copy.deepcopy(base_config), add_pooling_layer=False)


def answer_with_forms(task: PreparedTask, model: TrajBertPreTrainedModel, tokenizer: TrajTokenizer,
                      classifier: tuple[dict[str, float], np.ndarray], classifier_validation: np.ndarray | None,
                      task_config: TaskConfig, batch_size: int, seed: int, output_dir: Path | None = None
                      ) -> tuple[dict[str, float], np.ndarray, dict[str, Any]]:
    """The entry's answer: the classifier's test metrics and logits, or (with `answer_form="auto"`) those of the
    form of `downstream.forms` (an embedding form, or destination's `classifier+history`) that `forms.choose_form`
    picks on validation by `task_config.form_selection` (`classifier_validation`: the validation logits of the
    classifier's selected checkpoint). The metrics also hold every form's test metrics (`test_classifier_*`,
    `test_retrieval_knn_*`, ...); the choice is returned with the validation figures it was made on. With
    `output_dir`, every candidate's validation scores go to `VALIDATION_SCORES_FILE` there, so the choice can be
    audited and the rules compared (`downstream.form_selection`).
    """
    metrics, logits = classifier
    steps = task_config.contrastive_steps_for(task.name)
    forms = embedding_forms(model, tokenizer, task, batch_size, steps, seed, task_config.profile_fusion)
    forms |= history_forms(task, classifier_validation, logits, task_config.profile_fusion)
    if not forms:
        return metrics, logits, {}
    form, validation, shares = choose_form(task, classifier_validation, forms, task_config.form_selection, seed)
    if task_config.answer_form == "classifier":
        form = "classifier"
    if output_dir is not None and classifier_validation is not None:
        save_validation_scores(output_dir / VALIDATION_SCORES_FILE, task, classifier_validation, forms)
    scored = {"classifier": {k.removeprefix("test_"): v for k, v in metrics.items()}}
    scored |= {name: task_metrics(task, scores.test) for name, scores in forms.items()}
    out = {f"test_{name}_{key}": value for name, values in scored.items() for key, value in values.items()}
    if form != "classifier":
        logits = forms[form].test
        out |= {f"test_{key}": value for key, value in scored[form].items()}
    else:
        out |= metrics
    choice = {"answer_form": form, "validation_by_form": validation, "contrastive_steps": steps}
    if task_config.answer_form == "auto":  # the rule that picked the answer
        choice["form_selection"] = task_config.form_selection
        if shares:
            choice["validation_share_beating_classifier"] = shares
    weights = {name: scores.encoder_weight for name, scores in forms.items() if scores.encoder_weight is not None}
    if weights:
        choice["encoder_weights"] = weights  # of every fused form, each chosen on validation
    if form in weights:
        choice["encoder_weight"] = weights[form]
    return out, logits, choice


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


@dataclass
class _Prepared:
    """Everything fine-tuning needs that does not depend on the init."""

    model_path: str
    tokenizer: TrajTokenizer
    base_config: TrajBertConfig
    tasks: dict[str, PreparedTask]
    encoded: dict[str, dict[str, datasets.Dataset]]  # entry → split ("train", "validation", "test") → dataset
    corpus: CorpusConfig
    source: str
    pipeline_report: PipelineReport | None
    heldout_source: str
    task_config: TaskConfig
    use_time_embeddings: bool  # resolved by `resolve_time_embeddings`


@dataclass
class TaskData:
    """The trajectories the tasks are built from (the checkpoint's held-out users, or given splits), with the
    checkpoint's tokenizer and config: loaded once, then built into tasks for any entries and split seed."""

    tokenizer: TrajTokenizer
    base_config: TrajBertConfig
    corpus: CorpusConfig
    records: list[T.Record]
    given_splits: dict[str, list[T.Record]] | None  # used as given; None: `build_task` splits `records`
    heldout: list[str]
    heldout_source: str
    source: str
    pipeline_report: PipelineReport | None

    def build_tasks(self, entries: Sequence[str], task_config: TaskConfig, seed: int) -> dict[str, PreparedTask]:
        """`{entry: PreparedTask}`, split by `seed` (given splits are used as given)."""
        if self.given_splits is not None:
            return {entry: build_task_from_splits(entry, self.given_splits, task_config, seed) for entry in entries}
        return {entry: build_task(entry, self.records, task_config, seed) for entry in entries}


def load_task_data(model_path: str, task_config: TaskConfig, corpus_overrides: dict[str, Any] | None = None
                   ) -> TaskData:
    """Load the checkpoint's tokenizer and config and the trajectories of its held-out users, rebuilt as pre-training
    built them (or the given splits of `corpus_overrides`)."""
    tokenizer, base_config = load_tokenizer_and_config(model_path)
    tokenizer.model_max_length = min(task_config.max_seq_length, base_config.max_position_embeddings)
    corpus = resolve_corpus(model_path, corpus_overrides)
    logger.info("Corpus: %s", corpus)
    if "utc_offset_minutes" in (corpus_overrides or {}) or _has_corpus_description(model_path):
        corpus.set_time_zone(tokenizer)
    cut = corpus.trajectory_break_minutes()
    if tokenizer.time_features and cut not in (None, tokenizer.gap_break_minutes):
        grid = ("the plain log2 grid (saved without gap_break_minutes)" if tokenizer.gap_break_minutes is None
                else f"anchored at {tokenizer.gap_break_minutes:g} minutes")
        logger.info("Gap ids: the tokenizer's grid is %s while this corpus cuts trajectories at gaps above %g minutes, "
                    "so no gap id edge marks that cut. The grid stays the checkpoint's: its time embeddings, if any, "
                    "were trained on it.", grid, cut)
    if corpus.resolution != tokenizer.resolution:
        raise ValueError(f"--resolution {corpus.resolution} differs from the tokenizer's ({tokenizer.resolution}): "
                         "drop --resolution or use a checkpoint trained at that resolution.")
    if any(name in SPLIT_SOURCE_FIELDS for name in corpus_overrides or {}):
        if task_config.heldout_users:
            raise ValueError("--heldout_users picks users of the pre-training corpus; given splits are used whole: "
                             "drop --heldout_users.")
        tables, reports, source = corpus.load_splits()
        splits = {name: T.trajectory_records(table) for name, table in tables.items()}
        records = [r for name in splits for r in splits[name]]
        logger.info("Data: %s\n%s", source, "\n".join(f"[{name}]\n{report}" for name, report in reports.items()))
        return TaskData(tokenizer, base_config, corpus, records, splits, [], "given splits", source,
                        reports.get("train"))
    if corpus.has_split_source():
        raise ValueError(f"{model_path} was pre-trained on given split files, which hold out no users: pass "
                         "the fine-tuning data (--train_file/--validation_file/--test_file or --dataset_name), or "
                         "--data with --heldout_users.")
    heldout, heldout_source = resolve_heldout_users(model_path, task_config.heldout_users)
    recorded = CorpusDescription.load(model_path) if task_config.heldout_users is None else None
    if recorded is not None and recorded.split.rule == "hash":
        table, pipeline_report, source = load_prepared_heldout(corpus, model_path, recorded.report)
        heldout, heldout_source = sorted(set(table["user_id"].to_pylist())), source
    else:
        table, pipeline_report, source = load_heldout_trajectories(
            corpus, tokenizer, heldout, recorded.report if recorded is not None else None)
    records = T.trajectory_records(table)
    logger.info("Data: %s; pipeline (all users):\n%s", source, pipeline_report)
    return TaskData(tokenizer, base_config, corpus, records, None, heldout, heldout_source, source, pipeline_report)


def prepare(model_path: str, task_config: TaskConfig, entries: Sequence[str], training_args: FinetuneTrainingArguments,
            corpus_overrides: dict[str, Any] | None = None) -> _Prepared:
    """Load the checkpoint's tokenizer, rebuild the held-out users' trajectories, build and tokenize every entry's
    examples, and write `task_data.json`; fails before any training when a task cannot be built."""
    task_config.check_entries(entries)
    check_push_possible(training_args.push_to_hub, training_args.hub_model_id)
    check_output_dir(training_args.output_dir, wants_overwrite(training_args), reads_from=(model_path,))
    data = load_task_data(model_path, task_config, corpus_overrides)
    use_time = resolve_time_embeddings(training_args.use_time_embeddings, data.tokenizer, model_path)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    tasks = data.build_tasks(entries, task_config, seed)

    output_root = Path(training_args.output_dir)
    output_root.mkdir(parents=True, exist_ok=True)
    data_summary = {
        "heldout_users_source": data.heldout_source, "heldout_users": len(set(data.heldout)),
        "heldout_users_used": sorted({r.user_id for r in data.records}), "trajectories": len(data.records),
        "data_source": data.source, "corpus": asdict(data.corpus),
        "pipeline_all_users": data.pipeline_report.to_dict() if data.pipeline_report is not None else None,
        "tasks": {entry: task.info for entry, task in tasks.items()},
    }
    if training_args.process_index == 0:
        (output_root / "task_data.json").write_text(json.dumps(data_summary, indent=1, default=str))
    for entry, task in tasks.items():
        print(f"[{entry}] " + json.dumps(task.info, default=str))
    tokenizer = data.tokenizer
    encoded = {entry: {split: tokenize_examples(task, getattr(task, split), tokenizer, tokenizer.model_max_length)
                       for split in ("train", "validation", "test") if getattr(task, split).get("label")}
               for entry, task in tasks.items()}
    return _Prepared(model_path, tokenizer, data.base_config, tasks, encoded, data.corpus, data.source,
                     data.pipeline_report, data.heldout_source, task_config, use_time)


def resolve_time_embeddings(requested: bool | None, tokenizer: TrajTokenizer, model_path: str) -> bool:
    """`--use_time_embeddings` as the fine-tuned models get it: None → on when the tokenizer records visit times;
    true without them is refused."""
    if requested and not tokenizer.time_features:
        raise ValueError(f"--use_time_embeddings needs visit times, but {model_path}'s tokenizer was built without "
                         "time features: drop --use_time_embeddings or use a checkpoint whose tokenizer has them.")
    return tokenizer.time_features if requested is None else requested


def _logits(prediction: EvalPrediction) -> np.ndarray:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return np.asarray(logits, dtype=np.float64)


def _selection_args(training_args: FinetuneTrainingArguments, entry: str, has_validation: bool
                    ) -> FinetuneTrainingArguments:
    """A copy of `training_args` for one entry: its primary metric selects the checkpoint; without validation data
    nothing is evaluated or selected (the full budget is trained)."""
    args = copy.deepcopy(training_args)
    if args.metric_for_best_model == PRIMARY:
        args.metric_for_best_model, args.greater_is_better = PRIMARY_METRIC[entry], True
    if not has_validation:
        args.eval_strategy, args.save_strategy = IntervalStrategy.NO, SaveStrategy.NO
        args.load_best_model_at_end = False
    return args


def finetune_trainer(model, args: FinetuneTrainingArguments, train_dataset: datasets.Dataset,
                     validation_dataset: datasets.Dataset | None, tokenizer: TrajTokenizer,
                     compute_metrics: Callable[[EvalPrediction], dict[str, float]],
                     fresh_parameters: Collection[str] = ()) -> FinetuneTrainer:
    """The recipe's Trainer: validation metrics every evaluation, early stopping (`args.early_stopping_patience`)
    when the best checkpoint is restored at the end, and the head's own learning rate (also for the encoder
    parameters in `fresh_parameters`, which the checkpoint did not have)."""
    callbacks = []
    if args.load_best_model_at_end and args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    return FinetuneTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=validation_dataset,
        processing_class=tokenizer, data_collator=DataCollatorWithTrajectoryPadding(tokenizer),
        compute_metrics=compute_metrics, callbacks=callbacks, head_learning_rate=args.head_learning_rate,
        fresh_parameters=fresh_parameters,
    )


#: Feature tables fine-tuning may add to a checkpoint: the config flag that switches them on → their parameter names.
ADDABLE_EMBEDDINGS = {
    "use_time_embeddings": ("embeddings.hour_embeddings.weight", "embeddings.gap_embeddings.weight"),
    "use_match_embeddings": ("embeddings.match_embeddings.weight",),
}


def added_embeddings(model: TrajBertPreTrainedModel, base_config: TrajBertConfig) -> list[str]:
    """Names of the feature-embedding parameters of `model` (time, pair match) that the checkpoint (`base_config`)
    did not have: fine-tuning learns them from scratch, at the head's learning rate."""
    suffixes = tuple(suffix for flag, names in ADDABLE_EMBEDDINGS.items() if not getattr(base_config, flag)
                     for suffix in names)
    return [name for name, _ in model.named_parameters() if suffixes and name.endswith(suffixes)]


def _run_one(prepared: _Prepared, entry: str, init: str, training_args: FinetuneTrainingArguments,
             output_dir: Path) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Fine-tune one (task entry, init) with checkpoint selection on validation; save model, tokenizer, metrics, task
    report and card in `output_dir`. Returns the test metrics, the answer's test scores and the classifier's test
    logits (the same when the classifier answers)."""
    task = prepared.tasks[entry]
    datasets_ = prepared.encoded[entry]
    train_dataset, test_dataset = datasets_["train"], datasets_["test"]
    validation_dataset = datasets_.get("validation")
    args = _selection_args(training_args, entry, validation_dataset is not None)
    args.output_dir = str(output_dir)
    push, args.push_to_hub = args.push_to_hub, False  # pushed by modeling_trajfm.hub, curated card last
    model = build_model(task, init, prepared.model_path, prepared.base_config, prepared.tokenizer, args.seed,
                        args.classifier_pooling, args.classifier_dropout, args.pair_encoding,
                        prepared.use_time_embeddings, entry in args.pair_match_entries)
    trainer = finetune_trainer(model, args, train_dataset, validation_dataset, prepared.tokenizer,
                               lambda prediction: task_metrics(task, _logits(prediction), "validation"),
                               added_embeddings(model, prepared.base_config))
    started = time.perf_counter()
    train_result = trainer.train()
    for checkpoint in output_dir.glob("checkpoint-*"):  # the best one is loaded and saved below
        shutil.rmtree(checkpoint, ignore_errors=True)
    train_metrics = dict(train_result.metrics)
    train_metrics["train_samples"] = len(train_dataset)
    if validation_dataset is not None:
        train_metrics["validation_samples"] = len(validation_dataset)
        train_metrics[f"best_eval_{args.metric_for_best_model}"] = trainer.state.best_metric
        train_metrics["best_step"] = trainer.state.best_global_step
        train_metrics["epochs_trained"] = trainer.state.epoch
    trainer.compute_metrics = None  # it scores validation; test is scored below, once
    prediction = trainer.predict(test_dataset, metric_key_prefix="test")
    classifier_logits = logits = _logits(prediction)
    metrics = {f"test_{k}": v for k, v in task_metrics(task, logits).items()}
    metrics["test_loss"] = prediction.metrics.get("test_loss")
    metrics = {k: v for k, v in metrics.items() if v is not None}
    validation_logits = None
    if validation_dataset is not None and has_forms(task, prepared.task_config.profile_fusion):  # to choose a form
        validation_logits = _logits(trainer.predict(validation_dataset, metric_key_prefix="validation"))
    metrics, logits, choice = answer_with_forms(task, trainer.model, prepared.tokenizer, (metrics, logits),
                                                validation_logits, prepared.task_config,
                                                args.per_device_eval_batch_size, args.seed,
                                                output_dir if trainer.is_world_process_zero() else None)
    metrics["test_samples"] = len(test_dataset)
    if choice:
        metrics["test_answer_form"] = train_metrics["answer_form"] = choice["answer_form"]
    elapsed = time.perf_counter() - started
    trainer.save_model()
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        report = {
            "task": task.name, "init": init, "base_checkpoint": prepared.model_path,
            "heldout_users_source": prepared.heldout_source, "seed": args.seed,
            "fine_tune_seconds": round(elapsed, 1), "split": task.info, "baselines": task.baselines, **choice,
            "data_source": prepared.source, "corpus": asdict(prepared.corpus),
            "task_config": asdict(prepared.task_config),
        }
        (output_dir / "task_report.json").write_text(json.dumps(report, indent=1, default=str))
        try:
            history = [*trainer.state.log_history, {"step": trainer.state.global_step, **metrics}]
            plot_training_curves(history, output_dir / PLOT_FILE, metric_keys=(),
                                 loss_keys=("loss", "eval_loss", "test_loss"), title=f"{task.name} ({init} init)",
                                 loss_label="loss (cross-entropy per example)")
        except Exception as error:  # a plot must never fail a run
            logger.warning("No training curve plot: %s", error)
        card = build_finetune_card(task, init, prepared.model_path, prepared.source, prepared.corpus.dataset_name(),
                                   args, metrics, train_metrics, prepared.pipeline_report, push)
        card.save(output_dir / "README.md")
        if push:
            repo_id = args.hub_model_id or output_dir.name
            push_checkpoint(output_dir, repo_id, card, token=args.hub_token, private=args.hub_private_repo)
    return metrics, logits, classifier_logits


def finetune(
    model_name_or_path: str,
    task_config: TaskConfig | None = None,
    training_args: FinetuneTrainingArguments | None = None,
    init: str = "pretrained",
    corpus_overrides: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune the checkpoint (or, with `init="random"`, its config from fresh weights) on one task entry
    (`task_config.task`, with its `association_form`) and report test metrics beside the baselines."""
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}: choose pretrained or random.")
    task_config = task_config or TaskConfig()
    training_args = training_args or FinetuneTrainingArguments()
    entry = task_config.entry()
    prepared = prepare(model_name_or_path, task_config, [entry], training_args, corpus_overrides)
    output_dir = Path(training_args.output_dir)
    logger.info("Fine-tuning %s from %s init -> %s", entry, init, output_dir)
    metrics, _, _ = _run_one(prepared, entry, init, training_args, output_dir)
    return FinetuneResult(entry, init, metrics, str(output_dir))


def compare(
    model_name_or_path: str,
    task_config: TaskConfig | None = None,
    training_args: FinetuneTrainingArguments | None = None,
    tasks: Sequence[str] = T.TASKS,
    corpus_overrides: dict[str, Any] | None = None,
) -> CompareResult:
    """Fine-tune pre-trained and random init on every entry of `tasks` (same data, seeds and budget) and write
    `compare_report.{json,md,png}` in `training_args.output_dir` (see `downstream.compare` for the formula)."""
    task_config = task_config or TaskConfig()
    training_args = training_args or FinetuneTrainingArguments()
    if training_args.push_to_hub:
        raise ValueError("--push_to_hub pushes one fine-tuned checkpoint: drop --compare (or --push_to_hub) and push "
                         "the run you want, e.g. --task destination --init pretrained --push_to_hub.")
    prepared = prepare(model_name_or_path, task_config, report_entries(tasks), training_args, corpus_overrides)
    output_root = Path(training_args.output_dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    logits: dict[str, dict[str, np.ndarray]] = {}
    classifier_logits: dict[str, dict[str, np.ndarray]] = {}  # entries another form may answer
    for entry in prepared.tasks:
        results[entry], logits[entry] = {}, {}
        for init in INITS:
            folder = output_root / entry / init
            folder.mkdir(parents=True, exist_ok=True)
            logger.info("Fine-tuning %s from %s init -> %s", entry, init, folder)
            results[entry][init], logits[entry][init], classifier = _run_one(prepared, entry, init, training_args,
                                                                             folder)
            if "test_answer_form" in results[entry][init]:
                classifier_logits.setdefault(entry, {})[init] = classifier
    probe_scores = {init: frozen_probe_scores(load_encoder(prepared.model_path, prepared.base_config, init,
                                                           training_args.seed),
                                              prepared.tokenizer, prepared.tasks, training_args.seed,
                                              training_args.per_device_eval_batch_size) for init in INITS}
    report = compare_report(results, prepared.tasks, logits, seed=training_args.seed,
                            classifier_logits=classifier_logits, probe_scores=probe_scores)
    if training_args.process_index == 0:
        for entry, task in prepared.tasks.items():  # for pooling the folds of --num_folds (downstream.folds)
            save_test_scores(output_root / entry / TEST_SCORES_FILE, task, logits[entry],
                             classifier_logits.get(entry, logits[entry]),
                             {init: scores[entry] for init, scores in probe_scores.items() if entry in scores})
        (output_root / "compare_report.json").write_text(json.dumps(report, indent=1, default=str))
        markdown = compare_markdown(report)
        (output_root / "compare_report.md").write_text(markdown)
        compare_plot(report, output_root / "compare_report.png")
        print(markdown)
    return CompareResult(results, report, str(output_root))
