"""Apache Spark as the engine of `prepare_corpus` beyond one machine (``--engine spark``).

Spark applies the local engine's per-partition functions (`tokenization_trajfm.prepare`) through its Arrow
operations and writes the same corpus folder, so the corpus does not depend on the engine that prepared it:

1. **Read**: the input files are distributed, one task per file; each task streams its file through the project's
   readers (`prepare.file_batches`, `canonical_checkins`: same validation, same errors) in `mapInArrow` and tags
   every point with its `user_partition`.
2. **Build**: ``groupBy("partition").applyInArrow(build_partition)``. Each group returns its trajectories plus one
   row holding its `PipelineReport` (JSON), so the reports come back without building twice; the result is
   persisted, and what follows reads it rather than building again.
3. **Vocabulary**: the training users' cell visits are counted in Spark (explode, group by cell), the distinct
   cells collected to the driver and `new_tokenizer` trains the local engine's vocabulary.
4. **Tokenize**: ``mapInArrow(tokenize_partition)``, the tokenizer broadcast to the executors.
5. **Write**: ``partitionBy("split")`` writes ``trajectories/split=NAME/`` and ``sequences/split=NAME/``; the
   description's counts are aggregated from the written folders.

What differs from the local engine's folder: shard names are Spark's (``part-00000-<uuid>.c000.snappy.parquet``,
with ``_SUCCESS`` markers), and `cells` is int64 since Spark has no unsigned type (H3 indexes are below 2**63, so the
values are the same; cast to uint64 on reading).

Where things run: executors read the input files and write the shards, the driver writes the tokenizer and the
description, so the input and `--output_dir` must be on a filesystem that every node sees at the same path (NFS,
Lustre, a mounted bucket), and every node needs trajfm installed (``pip install trajfm[spark]``). Reading runs one
task per input file (a gzipped file cannot be split): give a folder of many files.

Command lines (Spark needs Java 17 or later):

    python -m tokenization_trajfm.prepare --engine spark --data 'raw/*.csv.gz' --output_dir corpus   # local[*]
    spark-submit --master spark://host:7077 run_prepare.py --engine spark --data /shared/raw \\
        --output_dir /shared/corpus

spark-submit runs a Python file, not a module, and prepare.py imports relatively, so the file is ``run_prepare.py``
(the repository root; installed with trajfm: ``python -c 'import run_prepare; print(run_prepare.__file__)'``).
Under spark-submit the session is spark-submit's: its ``--master`` and ``--conf`` apply.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import errors
from .corpus import CorpusConfig
from .prepare import (
    CHECKIN_SCHEMA,
    CORPUS_LAYOUT,
    PARTITIONED_TRAJECTORY_SCHEMA,
    SEQUENCE_SCHEMA,
    SEQUENCE_SPLITS,
    PrepareArguments,
    PreparedCorpus,
    build_partition,
    canonical_checkins,
    check_output_dir,
    file_batches,
    merged_report,
    new_tokenizer,
    raw_batches,
    save_description,
    split_counts,
    tokenize_partition,
    user_partition,
)
from .report import PipelineReport
from .schema import TIMESTAMP, USER_ID

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession

    from .tokenization_trajfm import TrajTokenizer


def _retyped(schema: pa.Schema, name: str, type_: pa.DataType) -> pa.Schema:
    return schema.set(schema.get_field_index(name), pa.field(name, type_))


#: Check-ins as Spark carries them: times as int64 microseconds (no session time zone on the way), and the partition.
SPARK_CHECKINS = _retyped(CHECKIN_SCHEMA, TIMESTAMP, pa.int64()).append(pa.field("partition", pa.int64()))
#: What a partition's build returns: its trajectories (cells int64) and one row with its report (JSON).
SPARK_BUILT = _retyped(PARTITIONED_TRAJECTORY_SCHEMA, "cells", pa.list_(pa.int64())).append(
    pa.field("report", pa.string()))
SPARK_SEQUENCES = SEQUENCE_SCHEMA.append(pa.field("split", pa.string()))
#: Errors an executor raises again on the driver as themselves: bad input, and input that an executor cannot see.
REPORTED_ERRORS = {cls.__name__: cls for cls in (FileNotFoundError, *(getattr(errors, n) for n in errors.__all__))}
_MARK = "trajfm-error"


@contextmanager
def _marked_errors() -> Iterator[None]:
    """Executor side: mark a reported error, so that the driver can raise it again by class and message."""
    try:
        yield
    except tuple(REPORTED_ERRORS.values()) as error:
        raise RuntimeError(f"<{_MARK} {type(error).__name__}>{error}</{_MARK}>") from error


@contextmanager
def _executor_errors() -> Iterator[None]:
    """Driver side: an executor's reported error surfaces as itself, not inside a Java stack trace."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JJavaError) as error:
        found = re.search(rf"<{_MARK} (\w+)>(.*?)</{_MARK}>", str(error), re.DOTALL)
        if found is None or found[1] not in REPORTED_ERRORS:
            raise
        raise REPORTED_ERRORS[found[1]](found[2]) from None


def _tagged(raw: pa.Table, where: str, rows_before: int, corpus: CorpusConfig, num_partitions: int) -> pa.Table:
    """A raw batch → canonical check-ins as Spark carries them (`SPARK_CHECKINS`)."""
    checkins = canonical_checkins(raw, where, rows_before, corpus.invalid)
    partitions = pa.array(user_partition(checkins[USER_ID], num_partitions))
    return checkins.cast(pa.schema(list(SPARK_CHECKINS)[:-1])).append_column("partition", partitions)


def spark_session(args: PrepareArguments) -> tuple[SparkSession, bool]:
    """The active session (a notebook's, a test's: its master wins over --spark_master), else a new one;
    → (session, whether it was created here)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName("trajfm-prepare").config("spark.sql.execution.arrow.pyspark.enabled", "true")
    if args.spark_master is not None:
        builder = builder.master(args.spark_master)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit, whose --master and --conf apply
        master = args.spark_master or "local[*]"
        builder = builder.master(master).config("spark.ui.enabled", "false").config(
            "spark.sql.shuffle.partitions", str(args.num_partitions))
        if master.startswith("local"):
            # Python workers run `python3` from PATH by default, which may lack trajfm or be another copy of it: run
            # this interpreter, importing this trajfm.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = builder.config("spark.executorEnv.PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    try:
        return builder.getOrCreate(), True
    except Exception as error:  # e.g. JAVA_GATEWAY_EXITED: the JVM did not start
        raise RuntimeError(f"Spark did not start ({error}). It needs Java 17 or later: java on PATH, or "
                           "JAVA_HOME.") from error


def _checkins(spark: SparkSession, corpus: CorpusConfig, args: PrepareArguments) -> tuple[DataFrame, list[str]]:
    """The tagged check-ins (`SPARK_CHECKINS`) and the sources read: the files are read by the executors, one task
    per file; the embedded synthetic city is generated on the driver."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if corpus.data is None:
        batches = list(raw_batches(corpus, args.batch_rows))
        tagged = [_tagged(raw, where, rows, corpus, args.num_partitions) for where, rows, raw in batches]
        return spark.createDataFrame(pa.concat_tables(tagged)), list(dict.fromkeys(where for where, _, _ in batches))

    from .readers import input_files

    files = [str(path) for path in input_files(corpus.data)]

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with _marked_errors():
            for paths in batches:
                for path in paths.column(0).to_pylist():
                    for where, rows_before, raw in file_batches(path, corpus, args.batch_rows):
                        yield from _tagged(raw, where, rows_before, corpus, args.num_partitions).to_batches()

    paths = spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
    return paths.mapInArrow(read, from_arrow_schema(SPARK_CHECKINS)), files


def _built(checkins: DataFrame, corpus: CorpusConfig, args: PrepareArguments) -> DataFrame:
    """`build_partition` on each partition's check-ins → trajectories and report rows (`SPARK_BUILT`)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    split = args.split()

    def build(key: tuple[pa.Scalar, ...], table: pa.Table) -> pa.Table:
        with _marked_errors():
            checkins = table.drop_columns(["partition"]).cast(CHECKIN_SCHEMA)
            trajectories, report = build_partition(checkins, key[0].as_py(), corpus, split)
            trajectories = trajectories.append_column("report", pa.nulls(trajectories.num_rows, pa.string()))
            return pa.concat_tables([trajectories.cast(SPARK_BUILT),
                                     pa.Table.from_pylist([{"report": report.to_json()}], schema=SPARK_BUILT)])

    grouped = checkins.repartition(args.num_partitions, "partition").groupBy("partition")
    return grouped.applyInArrow(build, from_arrow_schema(SPARK_BUILT))


def _sequences(trajectories: DataFrame, tokenizer_ref: Broadcast[TrajTokenizer], max_seq_length: int) -> DataFrame:
    """`tokenize_partition` on the trajectories of the sequence splits (`SPARK_SEQUENCES`)."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    def tokenize(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with _marked_errors():
            tokenizer = tokenizer_ref.value
            for batch in batches:
                table = pa.Table.from_batches([batch]).cast(PARTITIONED_TRAJECTORY_SCHEMA)
                for name in SEQUENCE_SPLITS:
                    sequences = tokenize_partition(table.filter(pc.equal(table["split"], name)), tokenizer,
                                                   max_seq_length)
                    split = pa.array([name] * sequences.num_rows, pa.string())
                    yield from sequences.append_column("split", split).to_batches()

    return trajectories.where(F.col("split").isin(*SEQUENCE_SPLITS)).mapInArrow(
        tokenize, from_arrow_schema(SPARK_SEQUENCES))


def _counts(spark: SparkSession, output_dir: Path) -> dict[str, dict[str, int | None]]:
    """The description's counts per split, from the written folders."""
    from pyspark.sql import functions as F

    def per_split(layout: str, *columns) -> dict[str, tuple[int, ...]]:
        rows = spark.read.parquet(str(output_dir / CORPUS_LAYOUT[layout])).groupBy("split").agg(*columns).collect()
        return {row[0]: tuple(int(v) for v in row[1:]) for row in rows}

    return split_counts(per_split("trajectories", F.countDistinct(USER_ID), F.count("*")),
                        per_split("sequences", F.count("*"), F.sum(F.size("input_ids"))))


def prepare_spark(corpus: CorpusConfig, args: PrepareArguments) -> PreparedCorpus:
    """The Spark engine (see the module docstring); stops the session only if it started it."""
    try:
        import pyspark  # noqa: F401
    except ImportError as error:
        raise ImportError("--engine spark needs PySpark: pip install pyspark (or trajfm[spark]); Spark also needs "
                          "Java 17 or later.") from error
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.overwrite_output_dir)
    spark, created = spark_session(args)
    try:
        with _executor_errors():
            return _prepare(spark, corpus, args, output_dir)
    finally:
        if created:
            spark.stop()


def _prepare(spark: SparkSession, corpus: CorpusConfig, args: PrepareArguments, output_dir: Path) -> PreparedCorpus:
    from pyspark.sql import functions as F

    seconds, clock = {}, time.perf_counter()
    checkins, sources = _checkins(spark, corpus, args)
    built = _built(checkins, corpus, args).persist()
    try:
        reports = [PipelineReport(**json.loads(row[0]))
                   for row in built.where(F.col("report").isNotNull()).select("report").collect()]
        report = merged_report(reports, corpus)
        trajectories = built.where(F.col("report").isNull()).drop("report")
        trajectories.write.partitionBy("split").parquet(str(output_dir / CORPUS_LAYOUT["trajectories"]))
        seconds["build"], clock = time.perf_counter() - clock, time.perf_counter()

        visits = trajectories.where(F.col("split") == "train").select(F.explode("cells").alias("cell"))
        cell_counts = visits.groupBy("cell").count().toArrow()
        cells = cell_counts["cell"].to_numpy().astype(np.uint64)
        tokenizer = new_tokenizer(cells, cell_counts["count"].to_numpy(), corpus, args)
        tokenizer.save_pretrained(output_dir / CORPUS_LAYOUT["tokenizer"])
        seconds["vocabulary"], clock = time.perf_counter() - clock, time.perf_counter()

        tokenizer_ref = spark.sparkContext.broadcast(tokenizer)
        sequences = _sequences(trajectories, tokenizer_ref, args.max_seq_length)
        sequences.write.partitionBy("split").parquet(str(output_dir / CORPUS_LAYOUT["sequences"]))
        tokenizer_ref.unpersist()
    finally:
        built.unpersist()
    seconds["tokenize"], clock = time.perf_counter() - clock, time.perf_counter()

    counts = _counts(spark, output_dir)
    seconds["count"] = time.perf_counter() - clock
    description = save_description(output_dir, corpus, args, sources, f"Spark (master {spark.sparkContext.master})",
                                   report, counts, int(cells.size), tokenizer)
    return PreparedCorpus(str(output_dir), description, seconds)


__all__ = ["prepare_spark", "spark_session"]
