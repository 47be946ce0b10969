"""From trajectory records and a `TaskConfig` to a `PreparedTask`: train/validation/test examples, labels and the
baselines' test scores and metrics, independent of the model init.

Splits are by trajectory (see `examples`), seeded: test first (`test_fraction`), then validation is carved from the
training side (`validation_fraction` of the non-test trajectories), so choosing a checkpoint or a recipe on validation
never looks at test. Records given as partitions (`GivenSplit`, `build_task_from_splits`) are used exactly as given.
Pair tasks build their pairs inside each partition. Baselines are fitted on every non-test example (train +
validation): the model uses validation too, to choose its checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenization_trajfm.h3cells import cell_centers

from . import baselines as bl
from . import examples as T
from .metrics import binary_metrics, distance_errors_km, ranking_metrics

#: Report entries: a task name plus, for user association, its form.
TASK_ENTRIES = ("next_subtrajectory", "destination", "user_association_linking", "user_association_binary")
#: Report entries whose examples are (positive, negative) pairs.
PAIR_ENTRIES = ("next_subtrajectory", "user_association_binary")
#: Each entry's primary metric (the issue's acceptance metric): checkpoint selection on validation, and the headline.
PRIMARY_METRIC = {
    "next_subtrajectory": "accuracy",
    "destination": "accuracy@1",
    "user_association_linking": "accuracy@1",
    "user_association_binary": "f1",
}
#: What each model and baseline sees at prediction time (parts joined by " + "; "none" = training labels only).
#: "user history" = trajectories of the same user from the training side. A report compares the model only with
#: baselines whose inputs it also sees (`downstream.compare.comparable_baselines`).
MODEL_INPUTS = {"next_subtrajectory": "trajectory pair", "destination": "prefix",
                "user_association_linking": "trajectory", "user_association_binary": "trajectory pair"}
BASELINE_INPUTS = {"majority": "none", "markov": "prefix", "user_most_frequent_cell": "user history",
                   "cell_profile_knn": "trajectory", "cell_profile_similarity": "trajectory pair",
                   "time_gap": "trajectory pair"}

#: `TaskConfig.answer_form`: choose on validation among the classifier and the entry's other forms, or the classifier.
ANSWER_FORMS = ("auto", "classifier")
#: `TaskConfig.form_selection`: how validation picks the answering candidate (see `downstream.forms`).
FORM_SELECTIONS = ("best", "significant")


@dataclass
class TaskConfig:
    """Which task, which users, and how its examples are built. Invalid values raise `ValueError` at construction."""

    task: str = field(default="next_subtrajectory", metadata={"help": f"One of {', '.join(T.TASKS)}."})
    association_form: str = field(default="linking", metadata={"help": "user_association: linking | binary."})
    # --- users and splits
    heldout_users: str | None = field(
        default=None,
        metadata={"help": "Users to fine-tune on instead of the checkpoint's held-out users: a checkpoint folder, "
                          "a trajfm_corpus.json, a text file (one user per line) or a comma-separated list."},
    )
    test_fraction: float = field(default=0.2, metadata={"help": "Share of trajectories in the test split."})
    num_folds: int | None = field(
        default=None,
        metadata={"help": "k-fold over the held-out users' trajectories instead of --test_fraction: cut them into this "
                          "many disjoint folds (seeded by --data_seed) and test on fold --test_fold; run every fold "
                          "and pool them with `python -m modeling_trajfm.downstream.folds` (`make nyc-folds`)."},
    )
    test_fold: int = field(default=0, metadata={"help": "With --num_folds: the fold tested, 0 to num_folds - 1."})
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "Share of the non-test trajectories held out for validation (checkpoint selection, early "
                          "stopping); 0 trains on all of them for the full budget."},
    )
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
    contrastive_steps: int = field(
        default=0,
        metadata={"help": "Embedding forms (user linking retrieval, pair similarity): steps of supervised InfoNCE "
                          "on a copy of the fine-tuned encoder before they are scored (linking: same user = positive; "
                          "pairs: the two segments of a positive training pair); 0: off."},
    )
    linking_contrastive_steps: int | None = field(
        default=None,
        metadata={"help": "User linking's steps of that tuning, when they should differ from the pair entries' "
                          "(None: --contrastive_steps)."},
    )
    answer_form: str = field(
        default="auto",
        metadata={"help": "What answers an entry on test: auto (the classifier or one of the entry's other forms, "
                          "whichever --form_selection picks on validation: retrieval for user linking, embedding "
                          "similarity for pair tasks, the fusion with the user's cell frequencies for destination "
                          "with --destination_user_context) | classifier."},
    )
    form_selection: str = field(
        default="best",
        metadata={"help": "How --answer_form auto picks on validation: best (the candidate best on validation) | "
                          "significant (another form replaces the classifier only when it beats it in >= 95%% of "
                          "paired bootstrap resamples of validation; lower on NYC's validation halves, see README)."},
    )
    profile_fusion: bool = field(
        default=True,
        metadata={"help": "Embedding forms also come fused with the TF-IDF cell-profile cosine (`<form>+profile`, the "
                          "encoder's weight chosen on validation among 0.25/0.5/0.75), and destination under "
                          "--destination_user_context with the user's cell frequencies (`classifier+history`), for "
                          "--answer_form auto to choose on validation; false: the encoder's forms only."},
    )
    destination_user_context: bool = field(
        default=False,
        metadata={"help": "destination: give the model the user's most recent earlier training-side trajectory as "
                          "segment A and the prefix as segment B (what the user-history baselines see); with "
                          "--profile_fusion the classifier also comes fused with the user's cell frequencies."},
    )

    def __post_init__(self):
        if self.task not in T.TASKS:
            raise ValueError(f"Unknown task {self.task!r}: choose --task among {', '.join(T.TASKS)}.")
        if self.association_form not in T.ASSOCIATION_FORMS:
            raise ValueError(f"Unknown --association_form {self.association_form!r}: choose linking or binary.")
        if not 0.0 < self.prefix_fraction < 1.0:
            raise ValueError(f"--prefix_fraction must be in (0, 1) (the share of visits given as input), got "
                             f"{self.prefix_fraction}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test_fraction must be in (0, 1), got {self.test_fraction}.")
        if self.num_folds is not None and (self.num_folds < 2 or not 0 <= self.test_fold < self.num_folds):
            raise ValueError(f"--num_folds must be at least 2 and --test_fold in 0..num_folds - 1, got --num_folds "
                             f"{self.num_folds} --test_fold {self.test_fold}.")
        if self.num_folds is not None and self.max_test_samples is not None:
            raise ValueError("--num_folds tests every trajectory once across the folds, and --max_test_samples would "
                             "drop some of them: drop one of the two.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}.")
        if self.num_users is not None and self.num_users < 2:
            raise ValueError(f"--num_users must be at least 2 (classes), got {self.num_users}.")
        if self.max_input_visits < 1:
            raise ValueError(f"--max_input_visits must be at least 1 (visits per input trajectory), got "
                             f"{self.max_input_visits}.")
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}.")
        for name in ("contrastive_steps", "linking_contrastive_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name} must be >= 0 (0: off), got {value}.")
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"Unknown --answer_form {self.answer_form!r}: choose one of {', '.join(ANSWER_FORMS)}.")
        if self.form_selection not in FORM_SELECTIONS:
            raise ValueError(f"Unknown --form_selection {self.form_selection!r}: choose one of "
                             f"{', '.join(FORM_SELECTIONS)}.")

    def entry(self) -> str:
        """The report entry of `task` (user association with its form)."""
        return f"user_association_{self.association_form}" if self.task == "user_association" else self.task

    def contrastive_steps_for(self, entry: str) -> int:
        """Contrastive-tuning steps of the entry's embedding forms."""
        if entry == "user_association_linking" and self.linking_contrastive_steps is not None:
            return self.linking_contrastive_steps
        return self.contrastive_steps

    def check_entries(self, entries: Sequence[str]) -> None:
        """Checks that depend on which entries run: pair tasks keep whole (positive, negative) pairs."""
        pairs = [e for e in entries if e in PAIR_ENTRIES]
        for name in ("max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and pairs and value < 2:
                raise ValueError(f"--{name} {value} is too small for {', '.join(pairs)}: pair tasks keep whole "
                                 "(positive, negative) pairs, so it must be at least 2.")


def report_entries(tasks: Sequence[str]) -> list[str]:
    """Report entries of a comparison over `tasks`: user association runs both forms."""
    entries = []
    for task in dict.fromkeys(tasks):
        if task not in T.TASKS:
            raise ValueError(f"Unknown task {task!r}: choose --tasks among {', '.join(T.TASKS)}.")
        entries += ["user_association_linking", "user_association_binary"] if task == "user_association" else [task]
    return entries


@dataclass
class PreparedTask:
    """One report entry's data, labels, baselines and description (independent of the init).

    `baseline_scores[name]` is the baseline's `(n_test, n_classes)` score matrix (binary predictions one-hot), so that
    `task_metrics` and the bootstrap treat models and baselines alike; `baselines[name]` its test metrics.
    """

    name: str
    kind: str  # "pair" (binary, sentence pair) | "single" (multi-class) | "hexagon"
    train: dict[str, list]
    test: dict[str, list]
    label_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    candidates: list[int] = field(default_factory=list)
    validation: dict[str, list] = field(default_factory=dict)
    baseline_scores: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: str | None = None  # what the model sees; None: MODEL_INPUTS of the entry
    #: destination under `destination_user_context`: each example's user cell frequencies
    #: (`baselines.UserFrequentCell`) as each side may see them, `{"validation": fitted on the training trajectories,
    #: "test": on train + validation}`, for `forms.history_forms` to fuse with the classifier.
    user_history_scores: dict[str, np.ndarray] = field(default_factory=dict)

    def set_baselines(self, scores: dict[str, np.ndarray]) -> None:
        self.baseline_scores = {name: np.asarray(s, dtype=np.float64) for name, s in scores.items()}
        self.baselines = {name: task_metrics(self, s) for name, s in self.baseline_scores.items()}


class GivenSplit(list):
    """Records of given train, validation and test partitions (a list of all): builders take these partitions as
    they are instead of splitting, and user linking takes its classes from the training users."""

    def __init__(self, train: Sequence[T.Record], test: Sequence[T.Record], validation: Sequence[T.Record] = ()):
        super().__init__([*train, *validation, *test])
        self.train, self.validation, self.test = list(train), list(validation), list(test)


def _cap(columns: dict[str, list], limit: int | None, keep_pairs: bool = False) -> dict[str, list]:
    if limit is None:
        return columns
    n = len(next(iter(columns.values()), []))
    limit = min(n, limit - (limit % 2 if keep_pairs else 0))
    return {key: values[:limit] for key, values in columns.items()}


def _split_info(records, columns, label_key, names=None) -> dict[str, Any]:
    """Sizes, class balance and users of each split; `records` and `columns` map split name → records / examples."""
    splits = ("train", "validation", "test")
    info: dict[str, Any] = {f"{split}_trajectories": len(records[split]) for split in splits}
    info.update({f"{split}_examples": len(columns[split].get(label_key, [])) for split in splits})
    info.update({f"{split}_class_balance": T.class_balance(columns[split].get(label_key, []), names)
                 for split in splits})
    info.update({f"{split}_users": len({r.user_id for r in records[split]}) for split in splits})
    return info


def _three_way(records: Sequence[T.Record], config: TaskConfig, seed: int, by_user: bool = False):
    """(train, validation, test) records: the given partitions, or test first (a `test_fraction` or, with `num_folds`,
    fold `test_fold`), then validation from the rest, so it never touches test. `by_user` splits each user's
    trajectories (user linking: every class user keeps trajectories in train)."""
    if isinstance(records, GivenSplit):
        if config.num_folds is not None:
            raise ValueError("--num_folds cuts the held-out users' trajectories into folds, but split files already "
                             "fix the test split: drop --num_folds or the split files.")
        return records.train, records.validation, records.test
    split = T.split_trajectories_by_user if by_user else (
        lambda rs, fraction, s: T.split_trajectories([r.traj_id for r in rs], fraction, s))
    if config.num_folds is None:
        rest_ids, test_ids = split(records, config.test_fraction, seed)
    elif by_user:
        rest_ids, test_ids = T.fold_trajectories_by_user(records, config.num_folds, config.test_fold, seed)
    else:
        rest_ids, test_ids = T.fold_trajectories([r.traj_id for r in records], config.num_folds, config.test_fold,
                                                 seed)
    rest = T.select(records, rest_ids)
    if config.validation_fraction == 0:
        return rest, [], T.select(records, test_ids)
    train_ids, validation_ids = split(rest, config.validation_fraction, seed + 1)
    return T.select(rest, train_ids), T.select(rest, validation_ids), T.select(records, test_ids)


def _merge(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    return {key: a[key] + b.get(key, []) for key in a}


def _check_validation(entry: str, config: TaskConfig, validation: dict[str, list]) -> None:
    if config.validation_fraction > 0 and not validation["label"]:
        raise ValueError(f"{entry}: the validation split (--validation_fraction {config.validation_fraction}) has no "
                         "examples; raise --validation_fraction, use more data, or pass --validation_fraction 0 "
                         "(no checkpoint selection).")


def _binary_pair_baseline_scores(fit_records, fit, test) -> tuple[dict[str, np.ndarray], float]:
    """One-hot scores of the binary pair baselines, and the similarity threshold chosen on the `fit` pairs."""
    n = len(test["label"])
    majority = bl.majority_label(fit["label"])
    sim = bl.PairSimilarityThreshold().fit([r.cells for r in fit_records], fit["cells_a"], fit["cells_b"],
                                           fit["label"])
    one_hot = np.eye(2)
    scores = {"majority": one_hot[np.full(n, majority)],
              "cell_profile_similarity": one_hot[np.asarray(sim.predict(test["cells_a"], test["cells_b"]), dtype=int)]}
    return scores, sim.threshold


def _slice_visits(columns: dict[str, list], keys: tuple[str, ...], limit: int, last: bool = False) -> None:
    for key in keys:
        columns[key] = [v[-limit:] if last else v[:limit] for v in columns[key]]


def build_next_subtrajectory(records: Sequence[T.Record], config: TaskConfig, seed: int) -> PreparedTask:
    train_records, validation_records, test_records = _three_way(records, config, seed)
    sizes = (config.min_segment_visits, config.max_segment_visits, config.pairs_per_trajectory)
    train = T.next_subtrajectory_pairs(train_records, seed, *sizes)
    validation = T.next_subtrajectory_pairs(validation_records, seed + 2, *sizes)
    test = T.next_subtrajectory_pairs(test_records, seed + 1, *sizes)
    train, test = _cap(train, config.max_train_samples, True), _cap(test, config.max_test_samples, True)
    if not train["label"] or not test["label"]:
        raise ValueError("next_subtrajectory: no pairs could be built (trajectories need >= 2 * --min_segment_visits "
                         "visits and >= 2 users per split); use more data or lower --min_segment_visits.")
    _check_validation("next_subtrajectory", config, validation)
    info = _split_info({"train": train_records, "validation": validation_records, "test": test_records},
                       {"train": train, "validation": validation, "test": test}, "label", ["not_next", "next"])
    info["test_pair_kinds"] = T.class_balance(test["pair_kind"])
    info["train_pair_kinds"] = T.class_balance(train["pair_kind"])
    task = PreparedTask("next_subtrajectory", "pair", train, test, ["not_next", "next"], info, validation=validation)
    fit = _merge(train, validation)
    scores, threshold = _binary_pair_baseline_scores(train_records + validation_records, fit, test)
    timed = all(_has_times(columns) for columns in (fit, test))
    if timed:
        gap = bl.TimeGapThreshold().fit(fit["timestamps_a"], fit["timestamps_b"], fit["label"], fit["cells_a"],
                                        fit["cells_b"])
        scores["time_gap"] = np.eye(2)[gap.predict(test["timestamps_a"], test["timestamps_b"], test["cells_a"],
                                                   test["cells_b"])]
    task.set_baselines(scores)
    task.baselines["cell_profile_similarity"]["threshold"] = threshold
    if timed:
        task.baselines["time_gap"]["threshold_minutes"] = gap.threshold
    else:
        task.info["time_gap"] = "not reported: some pairs have no visit times"
    return task


def _has_times(columns: dict[str, list]) -> bool:
    """Whether every pair has the visit times of A and B (trajectories saved without times have None)."""
    return all(a[-1] is not None and b[0] is not None
               for a, b in zip(columns["timestamps_a"], columns["timestamps_b"]))


def build_destination(records: Sequence[T.Record], config: TaskConfig, seed: int) -> PreparedTask:
    train_records, validation_records, test_records = _three_way(records, config, seed)
    train = T.destination_examples(train_records, config.prefix_fraction)
    validation = T.destination_examples(validation_records, config.prefix_fraction)
    test = T.destination_examples(test_records, config.prefix_fraction)
    order = np.random.default_rng(seed).permutation(len(train["destination"]))
    train = {key: [values[i] for i in order] for key, values in train.items()}
    train, test = _cap(train, config.max_train_samples), _cap(test, config.max_test_samples)
    candidates = T.destination_candidates(train["destination"])
    if len(candidates) < 2:
        raise ValueError("destination: fewer than 2 distinct training destinations; use more data.")
    for columns in (train, validation, test):
        columns["label"] = T.label_indices(columns["destination"], candidates)
    _check_validation("destination", config, validation)
    info = _split_info({"train": train_records, "validation": validation_records, "test": test_records},
                       {"train": train, "validation": validation, "test": test}, "destination")
    for split in ("train", "validation", "test"):
        info.pop(f"{split}_class_balance")
    unseen = sum(label == T.IGNORE_INDEX for label in test["label"])
    info.update(num_candidates=len(candidates), test_destinations_not_in_candidates=int(unseen),
                test_share_not_in_candidates=unseen / max(1, len(test["label"])),
                prefix_fraction=config.prefix_fraction)
    names = [format(c, "x") for c in candidates]
    task = PreparedTask("destination", "hexagon", train, test, names, info, candidates=candidates,
                        validation=validation)
    # Baselines on the full prefixes (the model sees the last `max_input_visits` of them).
    fit, fit_records = _merge(train, validation), train_records + validation_records
    fit_cells = [r.cells.tolist() for r in fit_records]
    markov = bl.MarkovDestination(candidates).fit(fit_cells, fit["destination"])
    per_user = bl.UserFrequentCell(candidates).fit([r.user_id for r in fit_records], fit_cells, fit["destination"])
    task.set_baselines({
        "majority": bl.majority_scores(fit["label"], len(test["label"]), len(candidates)),
        "markov": markov.scores(test["cells"]),
        "user_most_frequent_cell": per_user.scores(test["user_id"]),
    })
    for columns in (train, validation, test):
        _slice_visits(columns, ("cells", "timestamps"), config.max_input_visits, last=True)
    if config.destination_user_context:
        # What each side may know of a user: the training trajectories, and for test the validation ones too (as the
        # baselines), so that validation mirrors test and no validation destination reaches a training input.
        known = {"train": train_records, "validation": train_records, "test": fit_records}
        _add_user_context(task, known, [*fit_records, *test_records], max(1, config.max_input_visits // 2))
        per_user_train = bl.UserFrequentCell(candidates).fit(
            [r.user_id for r in train_records], [r.cells.tolist() for r in train_records], train["destination"])
        task.user_history_scores = {"validation": per_user_train.scores(validation["user_id"]),
                                    "test": task.baseline_scores["user_most_frequent_cell"]}
    return task


def _add_user_context(task: PreparedTask, known: dict[str, Sequence[T.Record]], records: Sequence[T.Record],
                      history_visits: int) -> None:
    """Segment A of every destination example: the last `history_visits` visits of the user's most recent earlier
    trajectory among those its side may know (`known[side]`), or the prefix itself when there is none (no history
    beyond it); the prefix is segment B."""
    task.inputs = "prefix + user history"
    start_of = {r.traj_id: int(r.timestamps[0]) for r in records}
    for side, columns in (("train", task.train), ("validation", task.validation), ("test", task.test)):
        if not columns.get("traj_id"):
            continue
        starts = [start_of[i] for i in columns["traj_id"]]
        earlier = T.most_recent_earlier(known[side], columns["user_id"], starts)
        columns["history_traj_id"] = [None if r is None else r.traj_id for r in earlier]
        columns["cells_a"] = [c if r is None else r.cells[-history_visits:].tolist()
                              for r, c in zip(earlier, columns["cells"])]
        columns["timestamps_a"] = [t if r is None else r.timestamps[-history_visits:].tolist()
                                   for r, t in zip(earlier, columns["timestamps"])]
        columns["cells_b"], columns["timestamps_b"] = columns["cells"], columns["timestamps"]
        task.info[f"{side}_examples_with_history"] = sum(r is not None for r in earlier)


def build_user_linking(records: Sequence[T.Record], config: TaskConfig, seed: int) -> PreparedTask:
    given = isinstance(records, GivenSplit)
    users = T.linking_users(records.train if given else records, config.num_users, config.min_user_trajectories)
    wanted = set(users)
    if given:  # trajectories of users without a class are left out of validation and test
        chosen = GivenSplit(*([r for r in part if r.user_id in wanted] for part in (records.train, records.test,
                                                                                    records.validation)))
    else:
        chosen = [r for r in records if r.user_id in wanted]
    train_records, validation_records, test_records = _three_way(chosen, config, seed, by_user=True)
    train, test = T.linking_examples(train_records, users), T.linking_examples(test_records, users)
    validation = T.linking_examples(validation_records, users)
    order = np.random.default_rng(seed).permutation(len(train["label"]))
    train = {key: [values[i] for i in order] for key, values in train.items()}
    train, test = _cap(train, config.max_train_samples), _cap(test, config.max_test_samples)
    for columns in (train, validation, test):
        _slice_visits(columns, ("cells", "timestamps"), config.max_input_visits)
    _check_validation("user_association_linking", config, validation)
    info = _split_info({"train": train_records, "validation": validation_records, "test": test_records},
                       {"train": train, "validation": validation, "test": test}, "label", users)
    info["num_users"] = len(users)
    task = PreparedTask("user_association_linking", "single", train, test, list(users), info, validation=validation)
    fit = _merge(train, validation)
    knn = bl.CellProfileKNN(users).fit(fit["user_id"], fit["cells"])
    task.set_baselines({"majority": bl.majority_scores(fit["label"], len(test["label"]), len(users)),
                        "cell_profile_knn": knn.scores(test["cells"])})
    return task


def build_user_binary(records: Sequence[T.Record], config: TaskConfig, seed: int) -> PreparedTask:
    train_records, validation_records, test_records = _three_way(records, config, seed)
    train = T.user_pairs(train_records, seed, config.pairs_per_trajectory)
    validation = T.user_pairs(validation_records, seed + 2, config.pairs_per_trajectory)
    test = T.user_pairs(test_records, seed + 1, config.pairs_per_trajectory)
    train, test = _cap(train, config.max_train_samples, True), _cap(test, config.max_test_samples, True)
    if not train["label"] or not test["label"]:
        raise ValueError("user_association binary: no pairs could be built (each split needs users with >= 2 "
                         "trajectories); use more data or a larger --test_fraction.")
    _check_validation("user_association_binary", config, validation)
    half = max(1, config.max_input_visits // 2)
    for columns in (train, validation, test):
        _slice_visits(columns, ("cells_a", "timestamps_a", "cells_b", "timestamps_b"), half)
    info = _split_info({"train": train_records, "validation": validation_records, "test": test_records},
                       {"train": train, "validation": validation, "test": test}, "label",
                       ["different_user", "same_user"])
    task = PreparedTask("user_association_binary", "pair", train, test, ["different_user", "same_user"], info,
                        validation=validation)
    scores, threshold = _binary_pair_baseline_scores(train_records + validation_records, _merge(train, validation),
                                                     test)
    task.set_baselines(scores)
    task.baselines["cell_profile_similarity"]["threshold"] = threshold
    return task


BUILDERS: dict[str, Callable[[Sequence[T.Record], TaskConfig, int], PreparedTask]] = {
    "next_subtrajectory": build_next_subtrajectory,
    "destination": build_destination,
    "user_association_linking": build_user_linking,
    "user_association_binary": build_user_binary,
}


def build_task(entry: str, records: Sequence[T.Record], config: TaskConfig, seed: int) -> PreparedTask:
    """The prepared task of report `entry` (see `TASK_ENTRIES`)."""
    if entry not in BUILDERS:
        raise ValueError(f"Unknown task entry {entry!r}: choose one of {', '.join(BUILDERS)}.")
    task = BUILDERS[entry](records, config, seed)
    task.inputs = task.inputs or MODEL_INPUTS[entry]
    for name, row in task.baselines.items():
        row["inputs"] = BASELINE_INPUTS[name]
    return task


def build_task_from_splits(entry: str, splits: dict[str, Sequence[T.Record]], config: TaskConfig,
                           seed: int) -> PreparedTask:
    """The prepared task of `entry` on given partitions: train on `splits["train"]`, select on
    `splits["validation"]` (if given; else no checkpoint selection), report on `splits["test"]`."""
    missing = [name for name in ("train", "test") if not splits.get(name)]
    if missing:
        raise ValueError(f"Given splits need trajectories in train and test; {', '.join(missing)} has none (pass "
                         "--train_file and --test_file, or a dataset with both splits).")
    validation = splits.get("validation") or []
    if not validation:
        config = dataclasses.replace(config, validation_fraction=0.0)
    task = build_task(entry, GivenSplit(splits["train"], splits["test"], validation), config, seed)
    task.info["given_split_trajectories"] = {name: len(records) for name, records in splits.items()}
    return task


def destination_metrics(scores: np.ndarray, task: PreparedTask, columns: dict[str, list]) -> dict[str, float]:
    labels = np.asarray(columns["label"])
    truth = np.asarray(columns["destination"], dtype=np.uint64)
    candidates = np.asarray(task.candidates, dtype=np.uint64)
    out = ranking_metrics(scores, labels, class_values=candidates, true_values=truth)
    top1 = candidates[np.asarray(scores).argmax(axis=1)] if len(labels) else np.empty(0, dtype=np.uint64)
    out.update(distance_errors_km(cell_centers(top1), cell_centers(truth)))
    return out


def task_metrics(task: PreparedTask, logits: np.ndarray, split: str = "test") -> dict[str, float]:
    """Metrics of a model's (or baseline's) `logits` on `task`'s `split` ("test" or "validation"): the same
    functions for models and baselines, and for checkpoint selection and the final test."""
    columns = getattr(task, split)
    labels = np.asarray(columns["label"])
    if task.kind == "hexagon":
        return destination_metrics(logits, task, columns)
    if task.kind == "single":
        return ranking_metrics(logits, labels)
    predictions = np.asarray(logits).argmax(axis=1)
    out = binary_metrics(predictions, labels)
    if "difficulty" in columns:
        difficulty = np.asarray(columns["difficulty"])
        for kind in ("same_user", "other_user"):
            mask = difficulty == kind
            for key, value in binary_metrics(predictions[mask], labels[mask]).items():
                out[f"{key}_{kind}_negatives"] = value
    return out
