"""Corpus preparation at scale, measured side by side in one run.

1. A synthetic raw corpus of `--points` GPS-like points (default 40 M) is streamed to Parquet in chunks
   (`synthetic.write_checkins_parquet`), then prepared out of core by the single-machine engine in a child process:
   wall time, points/s and the child's peak resident memory (`peak_rss_mb`, goal < 3000).
2. `ratio prepare_vs_inmemory`: throughput of the out-of-core path ÷ the in-memory pipeline (read → clean → H3 →
   cluster → segment → vocabulary on the training users → tokenize training and validation sequences), each in its
   own child process, on the same GeoLife 15 s file (4.3 M points; a synthetic file of the same size without it).
3. `ratio spark_vs_prepare` on a smaller synthetic sample (`--spark-points`), Spark `local[2]` against the local
   engine, and `identical: true|false`: both corpus folders hold exactly the same sequences and trajectories.
4. A short streaming pre-training run from the large corpus folder (`--train-steps`), proving the wiring, after one
   pass of its stream paired by user as same-user positives pair it (`--pair-buffer`): `self_paired_early` counts
   the sequences paired with themselves because the buffer was full while a later sequence of their user was still
   to come (0: only the last sequence of a user with an odd number of them goes alone).

    python bench/bench_corpus.py [--points 40000000] [--spark-points 2000000] [--workdir /tmp/trajfm-bench-corpus]

Ends with machine-readable lines: `peak_rss_mb`, `ratio prepare_vs_inmemory`, `ratio spark_vs_prepare`,
`identical`, `self_paired_early`. The work folder (several GB at 40 M points) is removed unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_GEOLIFE = REPO.parent / "shared" / "data" / "geolife" / "geolife_15s.csv.gz"


def child(task: str, **kwargs) -> dict:
    """Run one measured task in a fresh interpreter; → its JSON result with `seconds` and `peak_rss_mb`."""
    command = [sys.executable, __file__, "--child", task, "--child-args", json.dumps(kwargs)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_task(task: str, args: dict) -> dict:
    from tokenization_trajfm import CorpusConfig
    from tokenization_trajfm.prepare import SEQUENCE_SPLITS, PrepareArguments, prepare_corpus

    start = time.perf_counter()
    if task in ("prepare", "spark"):
        corpus = CorpusConfig(data=args["data"], invalid="drop")
        prepared = prepare_corpus(corpus, PrepareArguments(
            output_dir=args["output_dir"], engine="local" if task == "prepare" else "spark", vocab_size=1000,
            num_partitions=args.get("num_partitions", 64), overwrite_output_dir=True, spark_master="local[2]"))
        result = {"points": prepared.description.report["points_read"], "stages": prepared.seconds,
                  "sequences": sum(prepared.description.counts[name]["sequences"] for name in SEQUENCE_SPLITS)}
    elif task == "inmemory":
        result = in_memory(args["data"])
    elif task == "pairs":
        result = stream_pairing(args["corpus_dir"], args["buffer_size"])
    elif task == "train":
        result = stream_pretraining(args["corpus_dir"], args["output_dir"], args["steps"])
    else:
        raise ValueError(task)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def in_memory(data: str) -> dict:
    """Today's in-memory path on one file: the same work as preparing it (users split by the same rule)."""
    import datasets

    from tokenization_trajfm import CorpusConfig, TrajTokenizer
    from tokenization_trajfm.prepare import PREPARED_SPLITS, PrepareArguments, user_splits

    table, report, _ = CorpusConfig(data=data, invalid="drop").load()
    splits = user_splits(table["user_id"], PrepareArguments().split())
    train = table.filter(splits == PREPARED_SPLITS.index("train"))
    tokenizer = TrajTokenizer.train(train, vocab_size=1000)
    sequences = 0
    for code in (0, 1):
        part = table.filter(splits == code).select(["cells", "timestamps", "user_id"])
        sequences += len(tokenizer.tokenize_dataset(datasets.Dataset(part), max_length=512))
    return {"points": report.points_read, "sequences": sequences}


def stream_pretraining(corpus_dir: str, output_dir: str, steps: int) -> dict:
    from modeling_trajfm import pretrain
    from modeling_trajfm.pretraining import MTMArguments, MTMModelArguments, MTMTrainingArguments
    from tokenization_trajfm import CorpusConfig

    result = pretrain(
        CorpusConfig(corpus_dir=corpus_dir),
        MTMModelArguments(hidden_size=64, num_hidden_layers=2, intermediate_size=128),
        MTMArguments(streaming=True, max_eval_samples=256),
        MTMTrainingArguments(output_dir=output_dir, max_steps=steps, overwrite_output_dir=True, eval_steps=steps,
                             save_steps=steps, logging_steps=1, per_device_train_batch_size=16, report_to=[]),
    )
    return {"steps": steps, "train_loss": result.metrics.get("train_loss"),
            "eval_perplexity": result.metrics.get("eval_perplexity")}


def stream_pairing(corpus_dir: str, buffer_size: int) -> dict:
    """One pass of the folder's training stream, shuffled and paired by user as `--contrastive_positives user` pairs
    it while streaming: how many sequences found no partner and were paired with themselves."""
    from collections import Counter

    from modeling_trajfm.pretraining import corpus_sequences
    from modeling_trajfm.trainer import TrainingStream, same_user_pairs

    stream = TrainingStream(corpus_sequences(corpus_dir, "train", streaming=True).select_columns(["user_id"]),
                            seed=42, buffer_size=buffer_size).part
    rows = [{"user_id": row["user_id"], "position": i} for i, row in enumerate(stream)]
    last = {row["user_id"]: row["position"] for row in rows}
    paired = list(same_user_pairs(iter(rows), buffer_size))
    alone = [first for first, second in zip(paired[0::2], paired[1::2], strict=True) if first is second]
    counts = Counter(row["user_id"] for row in rows)
    return {"sequences": len(rows), "users": len(counts), "self_paired": len(alone),
            "odd_users": sum(count % 2 for count in counts.values()),
            "self_paired_early": sum(row["position"] < last[row["user_id"]] for row in alone)}


def same_corpus(a: Path, b: Path) -> bool:
    from tokenization_trajfm.prepare import read_shards

    return all(read_shards(a, kind).equals(read_shards(b, kind)) for kind in ("sequences", "trajectories")) and (
        json.loads((a / "tokenizer" / "vocab.json").read_text()) == json.loads((b / "tokenizer" / "vocab.json")
                                                                             .read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=40_000_000)
    parser.add_argument("--gps-samples", type=int, default=10)
    parser.add_argument("--spark-points", type=int, default=2_000_000)
    parser.add_argument("--geolife", default=str(DEFAULT_GEOLIFE))
    parser.add_argument("--train-steps", type=int, default=20, help="0: no pre-training run")
    parser.add_argument("--pair-buffer", type=int, default=10_000, help="shuffle buffer of the pairing pass")
    parser.add_argument("--workdir", default="/tmp/trajfm-bench-corpus")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_task(args.child, json.loads(args.child_args))), flush=True)
        return

    from tokenization_trajfm.synthetic import write_checkins_parquet

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        raw = write_checkins_parquet(work / "raw.parquet", args.points, gps_samples=args.gps_samples, seed=0)
        print(f"generated {raw.rows:,} points of {raw.users:,} users in {raw.seconds:.1f} s "
              f"({(work / 'raw.parquet').stat().st_size / 1e9:.2f} GB Parquet)", flush=True)
        big = child("prepare", data=str(work / "raw.parquet"), output_dir=str(work / "corpus"))
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in big["stages"].items())
        print(f"prepare (local engine): {big['points']:,} points in {big['seconds']:.1f} s "
              f"({big['points'] / big['seconds']:,.0f} points/s; {stages}), peak RSS {big['peak_rss_mb']:,.0f} MB",
              flush=True)
        (work / "raw.parquet").unlink()

        same = Path(args.geolife)
        if not same.is_file():
            same = work / "same.parquet"
            write_checkins_parquet(same, 4_325_981, gps_samples=args.gps_samples, seed=1)
        memory = child("inmemory", data=str(same))
        prepared = child("prepare", data=str(same), output_dir=str(work / "same-corpus"))
        print(f"{same.name}: in-memory {memory['seconds']:.1f} s (peak RSS {memory['peak_rss_mb']:,.0f} MB), "
              f"prepare {prepared['seconds']:.1f} s (peak RSS {prepared['peak_rss_mb']:,.0f} MB); "
              f"sequences {memory['sequences']:,} vs {prepared['sequences']:,}", flush=True)

        sample = work / "sample.parquet"
        write_checkins_parquet(sample, args.spark_points, gps_samples=args.gps_samples, seed=2)
        local = child("prepare", data=str(sample), output_dir=str(work / "sample-local"), num_partitions=8)
        spark = child("spark", data=str(sample), output_dir=str(work / "sample-spark"), num_partitions=8)
        identical = same_corpus(work / "sample-local", work / "sample-spark")
        print(f"{args.spark_points:,}-point sample: local engine {local['seconds']:.1f} s, Spark local[2] "
              f"{spark['seconds']:.1f} s (including Spark start-up)", flush=True)

        pairs = child("pairs", corpus_dir=str(work / "corpus"), buffer_size=args.pair_buffer)
        print(f"streamed same-user pairs (buffer {args.pair_buffer:,}): {pairs['sequences']:,} training sequences of "
              f"{pairs['users']:,} users, {pairs['self_paired']:,} paired with themselves, {pairs['odd_users']:,} "
              f"users with an odd number of sequences, {pairs['self_paired_early']:,} before their user's last "
              f"sequence, {pairs['seconds']:.1f} s", flush=True)

        if args.train_steps:
            trained = child("train", corpus_dir=str(work / "corpus"), output_dir=str(work / "mtm"),
                            steps=args.train_steps)
            print(f"streaming pre-training from the {big['points']:,}-point corpus: {trained['steps']} steps in "
                  f"{trained['seconds']:.1f} s, train loss {trained['train_loss']:.3f}, validation perplexity "
                  f"{trained['eval_perplexity']:.1f}", flush=True)

        print(f"peak_rss_mb: {big['peak_rss_mb']:.0f}")
        print(f"ratio prepare_vs_inmemory: {memory['seconds'] / prepared['seconds']:.2f}")
        print(f"ratio spark_vs_prepare: {local['seconds'] / spark['seconds']:.2f}")
        print(f"identical: {str(identical).lower()}")
        print(f"self_paired_early: {pairs['self_paired_early']}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
