"""The corpus: where check-ins come from, how they become trajectories, and which users each stage may see.

`CorpusConfig` says how to build the trajectories (data source, reader mapping, H3 resolution, clustering,
segmentation); `CorpusDescription` is what a pre-training run saves beside its checkpoint (`trajfm_corpus.json`): the
config, the user split and the counts. Fine-tuning reads it back with `CorpusDescription.load(checkpoint)`, so it
rebuilds exactly the same trajectories and uses exactly the held-out users. A corpus folder prepared out of core
(`tokenization_trajfm.prepare`, `CorpusConfig.corpus_dir`) holds its description too, and its trajectories and
sequences already built: pre-training and fine-tuning read them instead of rebuilding anything.

Pre-training and fine-tuning must never share users, and a run must be repeatable, so users are split by a seeded
permutation of the sorted distinct user ids: the same data and seed always give the same split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from glob import glob
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import EmptyInputError
from .pipeline import build_trajectories
from .readers import READERS
from .report import PipelineReport
from .segment import SegmentationConfig
from .splits import SPLITS, file_builder, given_trajectories, load_split_datasets, points_to_trajectories, renumber

logger = logging.getLogger(__name__)

CORPUS_FILE = "trajfm_corpus.json"
#: Reader arguments of `reader="table"` (column mapping and time parsing).
TABLE_MAPPING_FIELDS = ("user_col", "lat_col", "lon_col", "time_col", "time_format", "time_unit", "timezone",
                        "separator")
#: Given splits (`tokenization_trajfm.splits`): files or a `datasets.load_dataset` source, and their extra columns.
SPLIT_SOURCE_FIELDS = ("train_file", "validation_file", "test_file", "hf_dataset", "dataset_config_name")
SPLIT_COLUMN_FIELDS = ("trajectory_col", "label_column", "weekday_col", "hour_col")
#: Where the raw data is and how to read it: these go together (a column mapping belongs to one file).
SOURCE_FIELDS = ("data", "dataset_dir", "corpus_dir", "reader", *TABLE_MAPPING_FIELDS, *SPLIT_SOURCE_FIELDS,
                 *SPLIT_COLUMN_FIELDS)
#: Fields that name a whole data source: a new one replaces the recorded source, reader and column mapping included.
SOURCE_ROOTS = ("data", "dataset_dir", "corpus_dir")
INVALID_POLICIES = ("raise", "drop")


@dataclass
class CorpusConfig:
    """How raw check-ins become trajectories: data source, reader mapping, H3 resolution, clustering, segmentation.

    With neither `data` nor `dataset_dir` the corpus is the embedded default, a seeded synthetic city. Invalid values
    raise `ValueError` at construction, with what to change.
    """

    data: str | None = field(default=None, metadata={"help": "Raw check-in file (or STAN NYC folder)."})
    reader: str = field(default="auto", metadata={"help": f"Reader of --data: auto, {', '.join(sorted(READERS))}."})
    user_col: str | None = field(default=None, metadata={"help": "--reader table: user id column."})
    lat_col: str | None = field(default=None, metadata={"help": "--reader table: latitude column."})
    lon_col: str | None = field(default=None, metadata={"help": "--reader table: longitude column."})
    time_col: str | None = field(default=None, metadata={"help": "--reader table: timestamp column."})
    time_format: str | None = field(default=None, metadata={"help": "--reader table: strftime format of times."})
    time_unit: str | None = field(default=None, metadata={"help": "--reader table: epoch unit s|ms|us|ns."})
    timezone: str | None = field(default=None, metadata={"help": "--reader table: IANA zone of naive times."})
    separator: str | None = field(default=None, metadata={"help": "--reader table: CSV separator."})
    dataset_dir: str | None = field(
        default=None, metadata={"help": "Corpus saved with datasets' save_to_disk (trajectories or check-ins)."}
    )
    corpus_dir: str | None = field(
        default=None, metadata={"help": "Corpus folder written by `python -m tokenization_trajfm.prepare`: its "
                                "sequences, tokenizer, user split and settings (resolution, segmentation, "
                                "max_seq_length) are used as they are."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training split: CSV/JSON/Parquet of points or of built trajectories."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation split (same layout)."})
    test_file: str | None = field(default=None, metadata={"help": "Test split, fine-tuning only (same layout)."})
    hf_dataset: str | None = field(
        default=None, metadata={"aliases": ["--dataset_name"], "help": "A datasets.load_dataset source (Hub id, "
                                "local folder or script) with train/validation/test splits, instead of split files."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    trajectory_col: str | None = field(
        default=None, metadata={"help": "Split files: trajectory id column; a (user, id)'s rows, in file order, form "
                                "one trajectory."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Split files: the label column. The tasks' label is the user (user linking "
                                "classifies users), so this is the user column (same as --user_col)."}
    )
    weekday_col: str | None = field(
        default=None, metadata={"help": "Split files without dates: weekday column (0-6, Monday = 0), with --hour_col."}
    )
    hour_col: str | None = field(default=None, metadata={"help": "Split files without dates: hour column (0-23)."})
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

    def __post_init__(self):
        if self.data is not None and self.dataset_dir is not None:
            raise ValueError("Give either --data (raw check-ins) or --dataset_dir (prepared corpus), not both.")
        if self.corpus_dir is not None:
            self._check_corpus_dir()
        if self.reader not in ("auto", *READERS):
            raise ValueError(f"Unknown --reader {self.reader!r}: choose one of auto, {', '.join(sorted(READERS))}.")
        self._check_split_source()
        mapping = self.table_mapping()
        if self.data is not None:
            if not Path(self.data).exists() and not glob(self.data):
                raise ValueError(f"--data {self.data}: no such file or directory (and no file matches it as a "
                                 "pattern); check the path.")
            if mapping and self.reader not in ("table", "auto"):
                raise ValueError(f"Column mapping arguments ({', '.join(mapping)}) only apply to --reader table.")
        elif mapping and not self.has_split_source():
            raise ValueError(f"Column mapping arguments ({', '.join(mapping)}) need --data FILE --reader table, or "
                             "split files.")
        if self.dataset_dir is not None and not Path(self.dataset_dir).is_dir():
            raise ValueError(f"--dataset_dir {self.dataset_dir}: no such directory (expected datasets' save_to_disk).")
        if self.invalid not in INVALID_POLICIES:
            raise ValueError(f"--invalid {self.invalid!r}: choose raise or drop.")
        if not 0 <= self.resolution <= 15:
            raise ValueError(f"--resolution must be an H3 resolution in 0..15, got {self.resolution}.")
        self.segmentation()  # its own checks, with their messages

    def _check_corpus_dir(self) -> None:
        """A prepared corpus folder and no other source; read as raw JSON (a `CorpusDescription` would build and so
        validate this config again)."""
        others = [f"--{name}" for name in ("data", "dataset_dir", *SPLIT_SOURCE_FIELDS) if getattr(self, name)]
        if others:
            raise ValueError(f"Give either --corpus_dir (a prepared corpus folder) or {', '.join(others)}, not both.")
        folder = Path(self.corpus_dir)
        prepare_hint = f"python -m tokenization_trajfm.prepare --output_dir {folder} writes one"
        if not folder.is_dir():
            raise ValueError(f"--corpus_dir {folder}: no such directory ({prepare_hint}).")
        path = folder / CORPUS_FILE
        if not path.is_file():
            raise ValueError(f"--corpus_dir {folder} has no {CORPUS_FILE}: it is not a corpus folder ({prepare_hint}).")
        try:
            recipe = json.loads(path.read_text()).get("recipe") or {}
        except (json.JSONDecodeError, AttributeError) as error:
            raise ValueError(f"--corpus_dir {folder}: {path} is not a corpus description ({error}).") from error
        if not recipe.get("prepared"):
            raise ValueError(f"--corpus_dir {folder} is not a prepared corpus (its {CORPUS_FILE} has no "
                             "recipe.prepared): a pre-training output goes to --model_name_or_path; "
                             f"{prepare_hint}.")

    def prepared(self) -> CorpusDescription:
        """The description of the corpus folder `corpus_dir` (counts, user split, recipe), its config pointing at the
        folder: the raw source it was prepared from is recorded in `source`, and need not exist any more."""
        return CorpusDescription.load(self.corpus_dir, overrides={"corpus_dir": self.corpus_dir})

    def has_split_source(self) -> bool:
        """Whether the data comes as given splits (split files or `dataset_name`)."""
        return any(getattr(self, name) is not None for name in SPLIT_SOURCE_FIELDS)

    def split_files(self) -> dict[str, str]:
        """{split name: file} of the split files given."""
        return {name: getattr(self, f"{name}_file") for name in SPLITS if getattr(self, f"{name}_file") is not None}

    def _check_split_source(self) -> None:
        if self.label_column is not None:
            if self.user_col not in (None, self.label_column):
                raise ValueError(f"--label_column {self.label_column!r} and --user_col {self.user_col!r} differ: the "
                                 "label of the tasks is the user, give one of them.")
            self.user_col = self.label_column
        files = self.split_files()
        if not self.has_split_source():
            given = [f"--{name}" for name in SPLIT_COLUMN_FIELDS if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} describe split files: give --train_file/--validation_file/"
                                 "--test_file or --dataset_name (for --data, use --reader table and its mapping).")
            return
        if self.data is not None or self.dataset_dir is not None:
            raise ValueError("Give either --data/--dataset_dir or split files/--dataset_name, not both.")
        if self.hf_dataset is not None and files:
            raise ValueError("Give either --dataset_name or --train_file/--validation_file/--test_file, not both.")
        if self.dataset_config_name is not None and self.hf_dataset is None:
            raise ValueError("--dataset_config_name needs --dataset_name.")
        for name, path in files.items():
            if not Path(path).is_file():
                raise ValueError(f"--{name}_file {path}: no such file; check the path.")
            file_builder(path)  # a known type, or an error naming it
        if (self.weekday_col is None) != (self.hour_col is None):
            raise ValueError("Give --weekday_col and --hour_col together (time as hour of week).")
        if self.weekday_col is not None and self.time_col is not None:
            raise ValueError("Give either --time_col or --weekday_col/--hour_col, not both.")

    def load_splits(self) -> tuple[dict[str, pa.Table], dict[str, PipelineReport], str]:
        """The given splits as trajectory tables (ids unique across splits), their pipeline reports and a one-line
        description of the source; see `tokenization_trajfm.splits` for the accepted layouts."""
        loaded = load_split_datasets(self.split_files(), self.hf_dataset, self.dataset_config_name, self.separator)
        if not loaded:
            raise ValueError(f"--dataset_name {self.hf_dataset}: no train/validation/test split in it.")
        mapping = {**self.table_mapping(), **{k: getattr(self, k) for k in SPLIT_COLUMN_FIELDS}}
        tables, reports = {}, {}
        for name, dataset in loaded.items():
            table = dataset.with_format("arrow")[:]
            where = self.split_files().get(name) or f"{self.hf_dataset} [{name}]"
            if "cells" in table.column_names:
                tables[name], reports[name] = given_trajectories(table, where, self.user_col, self.resolution)
            else:
                tables[name], reports[name] = points_to_trajectories(
                    table, where, mapping, self.resolution, self.window_minutes, self.segmentation(), self.invalid)
            if tables[name].num_rows == 0:
                raise EmptyInputError(f"{where}: no trajectory survived filtering:\n{reports[name]}\nLower "
                                      "--min_points/--min_cells.")
        source = self.hf_dataset or ", ".join(f"{name}: {path}" for name, path in self.split_files().items())
        return renumber(tables), reports, f"given splits ({source})"

    def table_mapping(self) -> dict[str, str]:
        """The column mapping given for `reader="table"` (only the fields that are set)."""
        return {k: getattr(self, k) for k in TABLE_MAPPING_FIELDS if getattr(self, k) is not None}

    def segmentation(self) -> SegmentationConfig:
        return SegmentationConfig(
            max_gap_minutes=self.max_gap_minutes,
            split_by_day=self.split_by_day,
            max_visits=self.max_visits,
            min_cells=self.min_cells,
            min_points=self.min_points,
            utc_offset_minutes=self.utc_offset_minutes,
        )

    def tokenizer_settings(self) -> dict[str, Any]:
        """The TrajTokenizer settings a tokenizer trained on this corpus takes from it."""
        return dict(window_minutes=self.window_minutes, utc_offset_minutes=self.utc_offset_minutes,
                    gap_break_minutes=self.trajectory_break_minutes())

    def set_time_zone(self, tokenizer: Any) -> None:
        """Give a loaded tokenizer this corpus's `utc_offset_minutes` (logged when it changes): hour-of-week ids are
        the local time of the data being read, and a checkpoint may come from a city in another zone. A model saved
        with the tokenizer keeps the new offset."""
        before = tokenizer.utc_offset_minutes
        if before != self.utc_offset_minutes:
            tokenizer.set_utc_offset(self.utc_offset_minutes)
            logger.info(f"Hour-of-week ids use this data's local time: the tokenizer's UTC offset {before} min "
                        f"becomes {self.utc_offset_minutes} min (--utc_offset_minutes).")

    def trajectory_break_minutes(self) -> float | None:
        """The gap above which trajfm cuts this corpus into trajectories (`max_gap_minutes`); None for given splits
        or a prepared Dataset, which may come already cut, where trajfm cannot know."""
        return None if self.has_split_source() or self.dataset_dir is not None else self.max_gap_minutes

    def with_overrides(self, overrides: dict[str, Any]) -> CorpusConfig:
        """A copy with `overrides` applied (see `merge_corpus_values`)."""
        return CorpusConfig(**merge_corpus_values(asdict(self), overrides))

    def load(self) -> tuple[pa.Table | Any, PipelineReport | None, str]:
        """→ (trajectories as an Arrow table or a memory-mapped `datasets.Dataset`, PipelineReport or None for a
        prepared trajectory corpus, a one-line description of the source). A corpus folder (`corpus_dir`) gives the
        trajectories of every split, as built when it was prepared."""
        if self.corpus_dir is not None:
            from .prepare import read_trajectories

            description = self.prepared()
            return (read_trajectories(self.corpus_dir), PipelineReport(**description.report),
                    f"corpus folder {self.corpus_dir} (prepared from {description.source})")
        if self.dataset_dir is not None:
            import datasets

            corpus = datasets.load_from_disk(self.dataset_dir)
            if isinstance(corpus, datasets.DatasetDict):
                if len(corpus) != 1:
                    raise ValueError(f"--dataset_dir holds several splits ({list(corpus)}): save one Dataset, the "
                                     "split into users is done by trajfm.")
                corpus = next(iter(corpus.values()))
            source = f"prepared corpus {self.dataset_dir} ({corpus.num_rows:,} rows)"
            if {"user_id", "cells"} <= set(corpus.column_names):
                return corpus, None, source
            if not {"user_id", "latitude", "longitude", "timestamp"} <= set(corpus.column_names):
                raise ValueError(f"--dataset_dir columns {corpus.column_names}: need trajectories (user_id, cells, "
                                 "timestamps) or check-ins (user_id, latitude, longitude, timestamp).")
            checkins = corpus.with_format("arrow")[:]
        elif self.data is not None:
            reader = self.reader
            if reader == "auto":
                from .readers import sniff_reader

                reader = sniff_reader(self.data)
            checkins = load_checkins(self.data, reader=reader, **self.table_mapping())
            source = f"{self.data} (reader {reader})"
        else:
            checkins = load_checkins(None, synthetic_users=self.synthetic_users, synthetic_days=self.synthetic_days,
                                     seed=self.synthetic_seed)
            source = (f"embedded synthetic city ({self.synthetic_users} users, {self.synthetic_days} days, "
                      f"seed {self.synthetic_seed})")
        table, report = trajectories_with_report(checkins, self.resolution, self.window_minutes, self.segmentation(),
                                                 self.invalid)
        return table, report, source

    def dataset_name(self) -> str:
        """A short name of the data for model cards."""
        for value in (self.hf_dataset, self.train_file, self.corpus_dir, self.dataset_dir, self.data):
            if value:
                return Path(str(value).rstrip("/")).name
        return "trajfm synthetic city"


def merge_corpus_values(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`values` (CorpusConfig fields) updated with `overrides`; a new `data`, `dataset_dir` or `corpus_dir` replaces
    the whole data source (reader and column mapping included), since a recorded mapping would not fit another file."""
    values = dict(values)
    if set(SOURCE_ROOTS) & set(overrides):
        values.update({f.name: f.default for f in fields(CorpusConfig) if f.name in SOURCE_FIELDS})
    values.update(overrides)
    return values


def load_checkins(
    data: str | None = None,
    reader: str = "auto",
    synthetic_users: int = 300,
    synthetic_days: int = 42,
    seed: int = 0,
    **mapping,
) -> pa.Table:
    """Check-ins from a file (any reader of `tokenization_trajfm.readers`) or, with no file, the embedded default:
    a seeded synthetic city (`tokenization_trajfm.synthetic`)."""
    if data is None:
        from .synthetic import generate_checkins

        return generate_checkins(n_users=synthetic_users, days=synthetic_days, seed=seed)
    from .readers import read_checkins

    return read_checkins(data, reader=reader, **mapping)


def seeded_split(items: Iterable, fraction: float, seed: int, what: str = "items") -> tuple[list, list]:
    """Seeded split of distinct `items` into (rest, held out), `fraction` of them (at least one each side) held out.

    A seeded permutation of the sorted distinct items: the same items and seed always give the same split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The held-out fraction of {what} must be in (0, 1), got {fraction}.")
    distinct = sorted(set(items))
    if len(distinct) < 2:
        raise ValueError(f"Need at least 2 {what} to split, got {len(distinct)}.")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_held = min(max(1, round(fraction * len(distinct))), len(distinct) - 1)
    held = sorted(distinct[i] for i in order[:n_held])
    held_set = set(held)
    return [item for item in distinct if item not in held_set], held


def split_users(users: Iterable[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of distinct users into (rest, held out) with `fraction` of them held out (at least one)."""
    return seeded_split(users, fraction, seed, "users")


def select_users(table: pa.Table, users: Iterable[str]) -> pa.Table:
    """Rows of `users` (compared as strings, whatever the column's type)."""
    user_ids = table["user_id"].cast(pa.string())
    return table.filter(pc.is_in(user_ids, value_set=pa.array([str(u) for u in users], type=pa.string())))


@dataclass
class UserSplit:
    """Which users each stage sees: `heldout_users` are kept for fine-tuning, `validation_users` score pre-training,
    every other user trains it. No user is in two groups."""

    seed: int
    heldout_fraction: float
    heldout_users: list[str]
    validation_fraction: float = 0.0
    validation_users: list[str] = field(default_factory=list)
    #: "permutation": the user lists above, from a seeded permutation of the sorted users (in-memory corpora);
    #: "hash": each user's split is a seeded hash of its id (`tokenization_trajfm.prepare.user_splits`), lists empty.
    rule: str = "permutation"

    @classmethod
    def assign(cls, users: Iterable[str], heldout_fraction: float, validation_fraction: float, seed: int
               ) -> tuple[UserSplit, list[str]]:
        """Split distinct `users`: `heldout_fraction` of them held out, then `validation_fraction` of the rest for
        validation (seed + 1). Returns (the split, the training users)."""
        rest, heldout = split_users(users, heldout_fraction, seed)
        train, validation = split_users(rest, validation_fraction, seed + 1) if validation_fraction > 0 else (rest, [])
        return cls(seed, heldout_fraction, heldout, validation_fraction, validation), train


@dataclass
class CorpusDescription:
    """What a pre-training run saved beside its checkpoint: the corpus config, the user split, where the data came
    from, the pipeline report and the counts per split. `load(checkpoint)` reads it back in one call."""

    config: CorpusConfig
    split: UserSplit
    source: str
    report: dict[str, Any] | None = None
    counts: dict[str, dict[str, int | None]] = field(default_factory=dict)
    distinct_train_cells: int | None = None
    vocab_regime: str | None = None
    #: Pre-training settings beside the corpus (masking, sequence length), for the record.
    recipe: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CORPUS_FILE
        path.write_text(json.dumps(asdict(self), indent=1, default=str))
        return path

    @classmethod
    def load(cls, directory: str | Path, overrides: dict[str, Any] | None = None) -> CorpusDescription:
        """The description saved in `directory`, its corpus config updated with `overrides` (`merge_corpus_values`:
        e.g. the data file's new location); `FileNotFoundError` naming the file when there is none."""
        path = Path(directory) / CORPUS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a trajfm pre-training output (run_mtm.py / "
                "modeling_trajfm.pretrain save the corpus description there)."
            )
        raw = json.loads(path.read_text())
        config = CorpusConfig(**merge_corpus_values(raw["config"], overrides or {}))
        return cls(**{**raw, "config": config, "split": UserSplit(**raw["split"])})

    @staticmethod
    def exists(directory: str | Path) -> bool:
        return (Path(directory) / CORPUS_FILE).is_file()


def trajectories_with_report(
    checkins: pa.Table, resolution: int, window_minutes: float, segmentation: SegmentationConfig, invalid: str
) -> tuple[pa.Table, PipelineReport]:
    """`build_trajectories`, with an error that says what to change when nothing survives."""
    table, report = build_trajectories(checkins, resolution, window_minutes, segmentation, invalid)
    if table.num_rows == 0:
        raise EmptyInputError(
            f"No trajectory survived segmentation and filtering:\n{report}\nLower min_points/min_cells or raise "
            "max_gap_minutes."
        )
    return table, report
