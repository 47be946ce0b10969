"""Corpus preparation for corpora larger than memory: raw files → a corpus folder of Parquet shards.

The in-memory pipeline (`CorpusConfig.load`) holds every point at once, about 370 bytes a point. Preparing in
partitions bounds memory by the largest partition instead, and every step here is a function of one partition,
so the same functions run on one machine (`engine="local"`, the default) or on Apache Spark
(`engine="spark"`, `tokenization_trajfm.spark`):

1. **Partition** (streamed): the raw files are read in batches (`readers.iter_file_checkins`) and each point goes
   to partition `user_partition(user) = blake2b(user) mod num_partitions`, so all points of a user meet.
2. **Build** (`build_partition`): the vectorized in-memory pipeline on one partition → trajectories and its
   `PipelineReport`. Each user's split (train / validation / held out) is `user_splits(user, seed)`, a pure
   function of the id and the seed, so partitions never need each other. Trajectories are ordered by user, and
   `traj_id = partition * 2**40 + row`, the same whichever engine ran the partition.
3. **Vocabulary**: cell visit counts of the training users are summed over partitions and the sub-hash
   vocabulary is trained on them (`TrajTokenizer.train_from_counts`: the vocabulary `train` gives on the visits).
4. **Tokenize** (`tokenize_partition`): training and validation trajectories → sequences of at most
   `max_seq_length` tokens (longer trajectories split into pieces of whole hexagons).

The corpus folder (`CORPUS_LAYOUT`): ``trajfm_corpus.json`` (the `CorpusDescription`: config, user split rule,
summed report, counts), ``tokenizer/``, ``trajectories/split=NAME/*.parquet`` (every split, held-out users for
fine-tuning) and ``sequences/split={train,validation}/*.parquet`` (what pre-training streams).

Command line: ``python -m tokenization_trajfm.prepare --data 'raw/*.csv' --output_dir corpus`` (all `CorpusConfig`
and `PrepareArguments` options; see the README, "Preparing a large corpus"). With ``--engine spark``, and for
spark-submit (``run_prepare.py``), see `tokenization_trajfm.spark`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .corpus import CorpusConfig, CorpusDescription, UserSplit
from .errors import TrajInputError
from .pipeline import TRAJECTORY_SCHEMA, build_trajectories
from .report import PipelineReport
from .schema import CHECKIN_COLUMNS, CHECKIN_TYPES, USER_ID
from .subhash import PRETRAINING_SPELLING, SPELLINGS, check_spelling, max_cell_tokens, shortest_sequence
from .tokenization_trajfm import TrajTokenizer
from .validation import invalid_rows

logger = logging.getLogger(__name__)

ENGINES = ("local", "spark")
#: Split names of a prepared corpus, in the order of `user_splits` codes.
PREPARED_SPLITS = ("train", "validation", "heldout")
#: Splits that pre-training reads as sequences (held-out users are for fine-tuning only).
SEQUENCE_SPLITS = ("train", "validation")
CORPUS_LAYOUT = {"tokenizer": "tokenizer", "trajectories": "trajectories", "sequences": "sequences"}
#: `traj_id = partition << TRAJ_ID_BITS | row`: unique over the corpus without a global counter.
TRAJ_ID_BITS = 40
CHECKIN_SCHEMA = pa.schema([(name, CHECKIN_TYPES[name]) for name in CHECKIN_COLUMNS])
PARTITIONED_TRAJECTORY_SCHEMA = TRAJECTORY_SCHEMA.append(pa.field("split", pa.string()))
SEQUENCE_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("traj_id", pa.int64()), ("piece", pa.int32()),
     *[(name, pa.list_(pa.int32())) for name in ("input_ids", "hexagon_ids", "level_ids", "hour_ids", "gap_ids",
                                                 "attention_mask")]]
)


@dataclass
class PrepareArguments:
    """Where the corpus folder goes and how it is cut: partitions, user split, vocabulary, sequence length."""

    output_dir: str = field(default="trajfm-corpus", metadata={"help": "The corpus folder to write."})
    engine: str = field(default="local", metadata={"help": "local (out of core, one machine) | spark."})
    num_partitions: int = field(
        default=64, metadata={"help": "Partitions by user hash; the largest one must fit in memory (~370 B/point)."}
    )
    batch_rows: int = field(default=1_000_000, metadata={"help": "Rows read from the raw files at a time."})
    heldout_fraction: float = field(default=0.2, metadata={"help": "Share of users held out for fine-tuning."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the other users for validation."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the user split."})
    vocab_size: int = field(default=1000, metadata={"help": "Sub-hash vocabulary size."})
    spelling: str = field(
        default=PRETRAINING_SPELLING,
        metadata={"help": f"Sub-hash spelling: {', '.join(SPELLINGS)} ({PRETRAINING_SPELLING}: chosen by the NYC "
                  "ablation)."},
    )
    max_seq_length: int = field(default=512, metadata={"help": "Longest sequence in tokens (pre-training's)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing corpus folder."})
    spark_master: str | None = field(
        default=None, metadata={"help": "--engine spark: master URL (default: the session's, else local[*])."}
    )

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"--engine {self.engine!r}: choose one of {', '.join(ENGINES)}.")
        if not 1 <= self.num_partitions < 2 ** (63 - TRAJ_ID_BITS):
            raise ValueError(f"--num_partitions must be in 1..{2 ** (63 - TRAJ_ID_BITS) - 1}, got "
                             f"{self.num_partitions}.")
        if self.batch_rows < 1:
            raise ValueError(f"--batch_rows must be >= 1, got {self.batch_rows}.")
        if not 0 < self.heldout_fraction < 1 or not 0 <= self.validation_fraction < 1:
            raise ValueError(f"--heldout_fraction must be in (0, 1) and --validation_fraction in [0, 1), got "
                             f"{self.heldout_fraction} and {self.validation_fraction}.")
        check_spelling(self.spelling, "--spelling")

    def split(self) -> UserSplit:
        """The user split rule as the corpus description records it (no user lists: the rule is the split)."""
        return UserSplit(self.split_seed, self.heldout_fraction, [], self.validation_fraction, [], rule="hash")


@dataclass
class PreparedCorpus:
    """What `prepare_corpus` returns: the folder, its description and the wall time of each stage (seconds)."""

    output_dir: str
    description: CorpusDescription
    seconds: dict[str, float]


# ------------------------------------------------------------------------------------------- pure functions


def _digests(values: list[str], key: bytes) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8, key=key).digest(), "little")
                     for v in values], dtype=np.uint64)


def _per_user(user_ids: pa.Array | pa.ChunkedArray, key: bytes) -> np.ndarray:
    """A 64-bit keyed hash of each id, computed once per distinct id (stable across processes and machines, unlike
    Python's `hash`). A null id hashes as the empty string: its row is dropped and counted by the pipeline."""
    column = user_ids.combine_chunks() if isinstance(user_ids, pa.ChunkedArray) else user_ids
    encoded = pc.dictionary_encode(pc.fill_null(column.cast(pa.string()), ""))
    return _digests(encoded.dictionary.to_pylist(), key)[encoded.indices.to_numpy(zero_copy_only=False)]


def user_partition(user_ids: pa.Array | pa.ChunkedArray, num_partitions: int) -> np.ndarray:
    """Partition of each row: blake2b(user id) mod `num_partitions`, so that every point of a user meets."""
    return (_per_user(user_ids, b"trajfm-partition") % np.uint64(num_partitions)).astype(np.int64)


def user_splits(user_ids: pa.Array | pa.ChunkedArray, split: UserSplit) -> np.ndarray:
    """Split code of each row (index into `PREPARED_SPLITS`), a pure function of the user id and the seed: a
    uniform number u from a seeded hash; u < heldout → held out, then validation for its share of the rest."""
    u = _per_user(user_ids, f"trajfm-split-{split.seed}".encode()).astype(np.float64) / 2.0**64
    validation_edge = split.heldout_fraction + (1 - split.heldout_fraction) * split.validation_fraction
    return np.where(u < split.heldout_fraction, 2, np.where(u < validation_edge, 1, 0)).astype(np.int8)


def build_partition(checkins: pa.Table, partition: int, corpus: CorpusConfig, split: UserSplit
                    ) -> tuple[pa.Table, PipelineReport]:
    """One partition's check-ins → its trajectories (with `split`) and `PipelineReport`.

    The in-memory pipeline, made independent of row order: trajectories are sorted by user (a stable sort keeps
    each user's in time order), so any engine that delivers the same points gives the same table."""
    table, report = build_trajectories(checkins, corpus.resolution, corpus.window_minutes, corpus.segmentation(),
                                       corpus.invalid, allow_empty=True)
    table = table.take(pc.sort_indices(table, sort_keys=[("user_id", "ascending")]))
    ids = (np.int64(partition) << np.int64(TRAJ_ID_BITS)) + np.arange(table.num_rows, dtype=np.int64)
    table = table.set_column(table.schema.get_field_index("traj_id"), "traj_id", pa.array(ids))
    names = pa.array(PREPARED_SPLITS).take(pa.array(user_splits(table["user_id"], split)))
    return table.append_column("split", names), report


def train_cell_counts(trajectories: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(distinct cells, visits) of the training users' trajectories: what the vocabulary is trained on."""
    train = trajectories.filter(pc.equal(trajectories["split"], "train"))
    cells = train["cells"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.unique(cells, return_counts=True)


def merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum (cells, counts) pairs over partitions."""
    cells = np.concatenate([c for c, _ in parts]) if parts else np.zeros(0, np.uint64)
    counts = np.concatenate([n for _, n in parts]) if parts else np.zeros(0, np.int64)
    unique, inverse = np.unique(cells, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=unique.size).astype(np.int64)


def tokenize_partition(trajectories: pa.Table, tokenizer: TrajTokenizer, max_seq_length: int,
                       batch_size: int = 1000) -> pa.Table:
    """Trajectories → sequences (`SEQUENCE_SCHEMA`): what pre-training's `tokenize_dataset` gives, plus the
    trajectory id and the index of the piece (a trajectory longer than `max_seq_length` gives several)."""
    tables = []
    for start in range(0, trajectories.num_rows, batch_size):
        batch = trajectories.slice(start, batch_size).select(["cells", "timestamps", "user_id", "traj_id"])
        encoded = tokenizer.encode_trajectory_batch(batch.to_pydict(), max_length=max_seq_length, split=True)
        traj = np.asarray(encoded["traj_id"], dtype=np.int64)
        first = np.r_[True, traj[1:] != traj[:-1]]
        starts = np.flatnonzero(first)
        encoded["piece"] = (np.arange(traj.size) - np.repeat(starts, np.diff(np.r_[starts, traj.size]))).tolist()
        tables.append(pa.table({name: encoded[name] for name in SEQUENCE_SCHEMA.names}, schema=SEQUENCE_SCHEMA))
    return pa.concat_tables(tables) if tables else SEQUENCE_SCHEMA.empty_table()


def vocab_regime(vocab: int, distinct_cells: int, longest: int) -> str:
    """Which regime a vocabulary is in for a corpus: sub-hashing, or (nearly) one token per cell."""
    if vocab >= distinct_cells + longest * 16:
        return (f"vocabulary {vocab:,} >= distinct cells {distinct_cells:,}: most cells get their own token, "
                "sub-hashing changes little")
    return f"vocabulary {vocab:,} for {distinct_cells:,} distinct cells ({vocab / max(distinct_cells, 1):.0%})"


def new_tokenizer(cells: np.ndarray, counts: np.ndarray, corpus: CorpusConfig, args: PrepareArguments
                  ) -> TrajTokenizer:
    if cells.size == 0:
        raise TrajInputError("No training trajectory in the corpus (every user held out or in validation, or "
                             "nothing survived filtering): lower --heldout_fraction/--validation_fraction or "
                             "--min_points/--min_cells.")
    tokenizer = TrajTokenizer.train_from_counts(
        cells, counts, args.vocab_size, corpus.resolution, args.spelling, model_max_length=args.max_seq_length,
        **corpus.tokenizer_settings())
    logger.info(f"Tokenizer: {len(tokenizer)} tokens, "
                f"{vocab_regime(len(tokenizer), cells.size, max_cell_tokens(corpus.resolution, args.spelling))}.")
    return tokenizer


def merged_report(reports: list[PipelineReport], corpus: CorpusConfig) -> PipelineReport:
    """The corpus report: the sum of the partitions' (none at all: the input had no row)."""
    if not reports:
        raise TrajInputError(f"No check-ins in {corpus.data}: 0 rows read.")
    return PipelineReport.merge(reports)


def split_counts(trajectories: Mapping[str, Sequence[int]], sequences: Mapping[str, Sequence[int]]
                 ) -> dict[str, dict[str, int | None]]:
    """The description's counts from (users, trajectories) and (sequences, tokens) per split name, whichever engine
    counted them: every split has its row, held-out users have no sequences (None)."""
    counts = {}
    for name in PREPARED_SPLITS:
        users, rows = trajectories.get(name, (0, 0))
        pieces, tokens = sequences.get(name, (0, 0)) if name in SEQUENCE_SPLITS else (None, None)
        counts[name] = {"users": users, "trajectories": rows, "sequences": pieces, "tokens": tokens}
    return counts


def save_description(output_dir: Path, corpus: CorpusConfig, args: PrepareArguments, sources: list[str],
                     engine: str, report: PipelineReport, counts: dict[str, dict[str, int | None]],
                     distinct_cells: int, tokenizer: TrajTokenizer) -> CorpusDescription:
    """Write the corpus description (`trajfm_corpus.json`, the file a pre-training run writes too), the last step of
    either engine (`engine` says which, for the record)."""
    report.tokens = counts.get("train", {}).get("tokens")
    recipe = {"prepared": True, "engine": args.engine, "num_partitions": args.num_partitions,
              "max_seq_length": args.max_seq_length, "vocab_size": args.vocab_size, "spelling": args.spelling}
    regime = vocab_regime(len(tokenizer), distinct_cells, max_cell_tokens(corpus.resolution, args.spelling))
    description = CorpusDescription(
        config=corpus, split=args.split(), source=f"{', '.join(sources)} (reader {corpus.reader}, prepared by "
        f"{engine})", report=report.to_dict(), counts=counts, distinct_train_cells=distinct_cells,
        vocab_regime=regime, recipe=recipe)
    description.save(output_dir)
    logger.info(f"Prepared corpus in {output_dir}: {report.trajectories_kept:,} trajectories.")
    return description


# ----------------------------------------------------------------------------------------- reading a corpus folder


def shard_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """One shard in the project's schema: Spark writes `cells` as int64 (it has no unsigned type) and may order
    columns its own way; the values are the same."""
    return pq.read_table(path).select(schema.names).cast(schema)


def read_trajectories(corpus_dir: str | Path, split: str | None = None) -> pa.Table:
    """The trajectories of one split of a corpus folder (of every split when None), as one table: what fine-tuning
    reads for the held-out users instead of rebuilding them from raw data."""
    pattern = f"split={split or '*'}/part-*.parquet"
    files = sorted((Path(corpus_dir) / CORPUS_LAYOUT["trajectories"]).glob(pattern))
    if not files:
        raise FileNotFoundError(f"{corpus_dir}: no {CORPUS_LAYOUT['trajectories']}/{pattern}; is it a complete corpus "
                                "folder (python -m tokenization_trajfm.prepare)?")
    return pa.concat_tables([shard_table(path, TRAJECTORY_SCHEMA) for path in files])


def sequence_files(corpus_dir: str | Path, split: str) -> list[str]:
    """The sequence shards of one split of a corpus folder that hold rows (a partition may have no user of a split),
    in partition order."""
    files = sorted((Path(corpus_dir) / CORPUS_LAYOUT["sequences"] / f"split={split}").glob("part-*.parquet"))
    return [str(path) for path in files if pq.ParquetFile(path).metadata.num_rows > 0]


# ------------------------------------------------------------------------------------------------ local engine


def raw_batches(corpus: CorpusConfig, batch_rows: int) -> Iterator[tuple[str, int, pa.Table]]:
    """(file, rows of that file before the batch, raw check-ins) for each batch of the raw input; the embedded
    synthetic city when `corpus.data` is None."""
    if corpus.data is None:
        from .corpus import load_checkins

        yield "embedded synthetic city", 0, load_checkins(None, synthetic_users=corpus.synthetic_users,
                                                         synthetic_days=corpus.synthetic_days,
                                                         seed=corpus.synthetic_seed)
        return
    from .readers import input_files

    for path in input_files(corpus.data):
        yield from file_batches(path, corpus, batch_rows)


def file_batches(path: str | Path, corpus: CorpusConfig, batch_rows: int) -> Iterator[tuple[str, int, pa.Table]]:
    """`raw_batches` of one file: what a Spark task reads (`tokenization_trajfm.spark`)."""
    from .readers import iter_file_checkins

    rows_before = 0
    for batch in iter_file_checkins(path, corpus.reader, batch_rows, **corpus.table_mapping()):
        yield str(path), rows_before, batch
        rows_before += batch.num_rows


def canonical_checkins(batch: pa.Table, where: str, rows_before: int, invalid: str) -> pa.Table:
    """The four pipeline columns of a raw batch (extras are not used downstream). With `invalid="raise"` a bad
    row is an error here, naming its file and row, rather than later in a partition where the row is anonymous."""
    batch = batch.select(list(CHECKIN_COLUMNS)).cast(CHECKIN_SCHEMA)
    if invalid == "raise":
        try:
            invalid_rows(batch, "raise", rows_before)
        except TrajInputError as error:
            raise TrajInputError(f"{where}: {error}") from error
    return batch


def _partition_raw(corpus: CorpusConfig, args: PrepareArguments, spill: Path) -> list[str]:
    """Stream the raw input into one Parquet file of check-ins per partition; → the files read."""
    from tqdm.auto import tqdm

    spill.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    sources: list[str] = []
    bar = tqdm(desc="Partitioning check-ins", unit=" points", unit_scale=True)
    try:
        for where, rows_before, batch in raw_batches(corpus, args.batch_rows):
            if not sources or sources[-1] != where:
                sources.append(where)
            batch = canonical_checkins(batch, where, rows_before, corpus.invalid)
            parts = user_partition(batch[USER_ID], args.num_partitions)
            order = np.argsort(parts, kind="stable")
            batch, parts = batch.take(pa.array(order)), parts[order]
            bounds = np.r_[0, np.cumsum(np.bincount(parts, minlength=args.num_partitions))]
            for part in np.flatnonzero(np.diff(bounds)):
                if part not in writers:
                    writers[part] = pq.ParquetWriter(spill / f"part-{part:05d}.parquet", CHECKIN_SCHEMA)
                writers[part].write_table(batch.slice(bounds[part], bounds[part + 1] - bounds[part]))
            bar.update(batch.num_rows)
    finally:
        for writer in writers.values():
            writer.close()
        bar.close()
    return sources


def _write(table: pa.Table, folder: Path, split_name: str, partition: int) -> None:
    path = folder / f"split={split_name}" / f"part-{partition:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"--output_dir {output_dir} is not empty: pass --overwrite_output_dir to replace it, or "
                             "choose another folder.")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def prepare_local(corpus: CorpusConfig, args: PrepareArguments) -> PreparedCorpus:
    """The single-machine engine: partition to disk, then build, count and tokenize one partition at a time."""
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.overwrite_output_dir)
    spill = output_dir / "_partitions"
    seconds, clock = {}, time.perf_counter()
    sources = _partition_raw(corpus, args, spill)
    seconds["partition"], clock = time.perf_counter() - clock, time.perf_counter()

    split, reports, cell_counts = args.split(), [], []
    trajectories_dir = output_dir / CORPUS_LAYOUT["trajectories"]
    built = sorted(spill.glob("part-*.parquet"))
    for path in tqdm(built, desc="Building trajectories", unit=" partitions"):
        partition = int(path.stem.split("-")[1])
        table, report = build_partition(pq.read_table(path), partition, corpus, split)
        path.unlink()  # the raw points are no longer needed: disk stays bounded by the corpus itself
        reports.append(report)
        cell_counts.append(train_cell_counts(table))
        for name in PREPARED_SPLITS:
            _write(table.filter(pc.equal(table["split"], name)).drop_columns(["split"]), trajectories_dir, name,
                   partition)
        del table
    shutil.rmtree(spill, ignore_errors=True)
    seconds["build"], clock = time.perf_counter() - clock, time.perf_counter()
    report = merged_report(reports, corpus)

    cells, counts = merge_counts(cell_counts)
    tokenizer = new_tokenizer(cells, counts, corpus, args)
    tokenizer.save_pretrained(output_dir / CORPUS_LAYOUT["tokenizer"])
    seconds["vocabulary"], clock = time.perf_counter() - clock, time.perf_counter()

    shards = {name: [0, 0] for name in PREPARED_SPLITS}  # per split: users, trajectories
    pieces = {name: [0, 0] for name in SEQUENCE_SPLITS}  # sequences, tokens
    for path in tqdm(sorted(trajectories_dir.glob("split=*/part-*.parquet")), desc="Tokenizing", unit=" shards"):
        name, partition = path.parent.name.split("=")[1], int(path.stem.split("-")[1])
        table = pq.read_table(path)
        shards[name][0] += int(pc.count_distinct(table["user_id"]).as_py()) if table.num_rows else 0
        shards[name][1] += table.num_rows
        if name in SEQUENCE_SPLITS:
            sequences = tokenize_partition(table, tokenizer, args.max_seq_length)
            pieces[name][0] += sequences.num_rows
            pieces[name][1] += int(pc.sum(pc.list_value_length(sequences["input_ids"])).as_py() or 0)
            _write(sequences, output_dir / CORPUS_LAYOUT["sequences"], name, partition)
    seconds["tokenize"] = time.perf_counter() - clock

    description = save_description(output_dir, corpus, args, sources, "the local engine", report,
                                   split_counts(shards, pieces), int(cells.size), tokenizer)
    return PreparedCorpus(str(output_dir), description, seconds)


def read_shards(folder: str | Path, kind: str = "sequences") -> pa.Table:
    """Every shard of `kind` ("sequences" or "trajectories") of a corpus folder as one table in the project's schema
    (Spark writes `cells` as int64: it has no unsigned type), with its `split` (from the folder name), ordered by
    (user_id, traj_id[, piece]): the same table whichever engine wrote it. In memory, so for inspection and checks
    of small corpora; training streams the shards instead."""
    paths = sorted((Path(folder) / CORPUS_LAYOUT[kind]).glob("split=*/*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no {kind} shards (not a prepared corpus folder?)")
    schema = SEQUENCE_SCHEMA if kind == "sequences" else TRAJECTORY_SCHEMA
    tables = []
    for path in paths:
        table = shard_table(path, schema)
        tables.append(table.append_column("split", pa.array([path.parent.name.split("=", 1)[1]] * table.num_rows,
                                                            pa.string())))
    table = pa.concat_tables(tables)
    keys = ["user_id", "traj_id"] + (["piece"] if kind == "sequences" else [])
    return table.take(pc.sort_indices(table, sort_keys=[(key, "ascending") for key in keys]))


def prepare_corpus(corpus: CorpusConfig | None = None, args: PrepareArguments | None = None) -> PreparedCorpus:
    """Raw check-ins (one file, a glob or a folder; default: the embedded synthetic city) → a corpus folder, with
    the engine `args.engine`. See the module docstring for the steps and the folder layout."""
    corpus = corpus or CorpusConfig()
    args = args or PrepareArguments()
    if corpus.has_split_source() or corpus.dataset_dir is not None or corpus.corpus_dir is not None:
        raise ValueError("prepare reads raw check-ins (--data, or the embedded default); split files, --dataset_dir "
                         "and --corpus_dir are read directly by run_mtm.py / run_finetune.py.")
    if args.max_seq_length < shortest_sequence(corpus.resolution, args.spelling):
        raise ValueError(f"--max_seq_length {args.max_seq_length} cannot hold one resolution-{corpus.resolution} "
                         f"hexagon; use at least {shortest_sequence(corpus.resolution, args.spelling)}.")
    if args.engine == "spark":
        from .spark import prepare_spark

        return prepare_spark(corpus, args)
    return prepare_local(corpus, args)


def main(argv: list[str] | None = None) -> PreparedCorpus:
    from transformers import HfArgumentParser

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser((CorpusConfig, PrepareArguments), description=__doc__.split("\n")[0])
    corpus, args = parser.parse_args_into_dataclasses(args=argv)
    prepared = prepare_corpus(corpus, args)
    counts = prepared.description.counts
    print(f"\nCorpus folder {Path(prepared.output_dir).resolve()}\n{PipelineReport(**prepared.description.report)}\n"
          + "\n".join(f"  {name:<10} users {c['users']:>9,}  trajectories {c['trajectories']:>10,}"
                      + (f"  sequences {c['sequences']:>10,}  tokens {c['tokens']:>13,}" if c["sequences"] is not None
                         else "") for name, c in counts.items())
          + "\n  " + "  ".join(f"{stage} {s:.1f}s" for stage, s in prepared.seconds.items()), flush=True)
    return prepared


if __name__ == "__main__":
    main()


__all__ = ["PrepareArguments", "PreparedCorpus", "build_partition", "prepare_corpus", "read_shards",
           "read_trajectories", "sequence_files", "tokenize_partition", "user_partition", "user_splits"]
