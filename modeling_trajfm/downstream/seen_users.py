"""Seen users, the paper's split, as files: fine-tuning users whose other trajectories pre-training has seen.

`make nyc` holds users out: pre-training never sees a trajectory of a fine-tuning user, so it can help them only
through what transfers to new people. The paper (arXiv 2312.00076) pre-trains on the users it then fine-tunes on and
tests on other trajectories of theirs. `seen_user_splits` builds that protocol from the user split run_mtm.py makes
(`UserSplit.assign` with the same seed and fractions, so with `--seed 42` the fine-tuning users are `make nyc`'s
held-out users): their trajectories are split per user as user linking splits them (test first, then validation from
the rest; every user with two or more trajectories keeps one in train), and their training trajectories join the
pre-training corpus. Validation and test trajectories never enter pre-training, so nothing scored was pre-trained on.

Files (built trajectories: user_id, cells, timestamps), read by the scripts' given-split arguments:

    pretrain_train.parquet, pretrain_validation.parquet  run_mtm.py --train_file / --validation_file
    train.parquet, validation.parquet, test.parquet       run_finetune.py --train_file / --validation_file / --test_file
    seen_users_split.json                                 the arguments, the source and the counts per file

(`pretrain_validation.parquet` is not written with `--validation_fraction 0`.) The source is raw data (`--data`, the
synthetic city) or a `--dataset_dir`; a corpus folder splits users by a hash of their id, not as here, and given
split files are already a split, so both are refused. `make nyc-seen` runs the three steps on NYC:

    python -m modeling_trajfm.downstream.seen_users --data checkins.csv --output_dir seen
    python run_mtm.py --train_file seen/pretrain_train.parquet --validation_file seen/pretrain_validation.parquet \
        --output_dir seen-base
    python run_finetune.py --compare --model_name_or_path seen-base --train_file seen/train.parquet \
        --validation_file seen/validation.parquet --test_file seen/test.parquet --output_dir seen-compare
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenization_trajfm import CorpusConfig, UserSplit

from ..arguments import parse_arguments
from . import examples as T

logger = logging.getLogger(__name__)

SPLIT_FILES = ("pretrain_train", "pretrain_validation", "train", "validation", "test")
SPLIT_RECORD = "seen_users_split.json"


@dataclass
class SeenUsersArguments:
    """Who fine-tunes (the same user split as run_mtm.py) and how their trajectories divide."""

    output_dir: str = field(metadata={"help": "Folder for the split files (see the module docstring)."})
    heldout_fraction: float = field(
        default=0.2, metadata={"help": "Share of users who fine-tune (run_mtm.py's --heldout_fraction)."})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the other users that score pre-training (run_mtm.py's default)."})
    test_fraction: float = field(
        default=0.2, metadata={"help": "Share of each fine-tuning user's trajectories in test."})
    finetune_validation_fraction: float = field(
        default=0.2, metadata={"help": "Share of each fine-tuning user's other trajectories in validation."})
    seed: int = field(default=42, metadata={"help": "Seed of the user split (run_mtm.py's --split_seed) and the "
                                                    "trajectory split."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace the files of an earlier run."})

    def __post_init__(self):
        for name in ("heldout_fraction", "test_fraction", "finetune_validation_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in (0, 1), got {getattr(self, name)}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must be in [0, 1), got {self.validation_fraction}.")


def seen_user_splits(trajectories: pa.Table, args: SeenUsersArguments) -> dict[str, pa.Table]:
    """{file name: trajectories} of the protocol (`SPLIT_FILES`); `trajectories` has unique `traj_id`s."""
    records = T.trajectory_records(trajectories)
    split, pretrain_users = UserSplit.assign({r.user_id for r in records}, args.heldout_fraction,
                                             args.validation_fraction, args.seed)
    finetune_users = set(split.heldout_users)
    finetune = [r for r in records if r.user_id in finetune_users]
    rest_ids, test_ids = T.split_trajectories_by_user(finetune, args.test_fraction, args.seed)
    train_ids, validation_ids = T.split_trajectories_by_user(T.select(finetune, rest_ids),
                                                             args.finetune_validation_fraction, args.seed + 1)
    by_users = {name: {r.traj_id for r in records if r.user_id in users}
                for name, users in (("train", set(pretrain_users)), ("validation", set(split.validation_users)))}
    ids = {"pretrain_train": by_users["train"] | set(train_ids), "pretrain_validation": by_users["validation"],
           "train": set(train_ids), "validation": set(validation_ids), "test": set(test_ids)}
    empty = [name for name in ("train", "validation", "test") if not ids[name]]
    if empty:
        raise ValueError(f"No fine-tuning trajectory for {' or '.join(empty)}: the {len(finetune_users)} fine-tuning "
                         f"users have {len(finetune)} trajectories; raise --heldout_fraction or use more data.")
    columns = ["user_id", "cells", "timestamps"]
    return {name: trajectories.filter(pc.is_in(trajectories["traj_id"], pa.array(sorted(ids[name]), pa.int64())))
            .select(columns) for name in SPLIT_FILES if ids[name]}


def write_seen_user_splits(corpus: CorpusConfig, args: SeenUsersArguments) -> dict[str, dict[str, int]]:
    """Build the trajectories of `corpus`, write the protocol's split files to `args.output_dir`; returns the
    users and trajectories of each file."""
    if corpus.has_split_source() or corpus.corpus_dir is not None:
        raise ValueError("seen_users splits raw data (--data, or the synthetic city) or a --dataset_dir: given split "
                         "files are already a split, and a --corpus_dir splits users by a hash of their id; pass the "
                         "raw data the corpus was prepared from instead.")
    output_dir = Path(args.output_dir)
    written = [output_dir / f"{name}.parquet" for name in SPLIT_FILES] + [output_dir / SPLIT_RECORD]
    if any(path.exists() for path in written) and not args.overwrite_output_dir:
        raise ValueError(f"{output_dir} already holds split files: pass --overwrite_output_dir to replace them.")
    trajectories, report, source = corpus.load()
    if not isinstance(trajectories, pa.Table):  # a prepared `datasets.Dataset`
        trajectories = trajectories.with_format("arrow")[:]
    if "traj_id" not in trajectories.column_names:  # trajectories saved without ids: number them in row order
        trajectories = trajectories.append_column("traj_id", pa.array(range(trajectories.num_rows), pa.int64()))
    logger.info(f"Read {source}" + (f":\n{report}" if report is not None else ""))
    tables = seen_user_splits(trajectories, args)
    if "pretrain_validation" not in tables:
        logger.info("No pretrain_validation.parquet (--validation_fraction 0): pre-train without --validation_file.")
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in written:
        path.unlink(missing_ok=True)
    counts = {}
    for name, table in tables.items():
        pq.write_table(table, output_dir / f"{name}.parquet")
        counts[name] = {"users": len(pc.unique(table["user_id"])), "trajectories": table.num_rows}
    record = {"arguments": asdict(args), "source": source, "counts": counts}
    (output_dir / SPLIT_RECORD).write_text(json.dumps(record, indent=1))
    return counts


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (corpus, args), _ = parse_arguments((CorpusConfig, SeenUsersArguments), argv)
    counts = write_seen_user_splits(corpus, args)
    print(f"\nSplit files in {Path(args.output_dir).resolve()}\n" + "\n".join(
        f"  {name:<20} users {c['users']:>6,}  trajectories {c['trajectories']:>7,}" for name, c in counts.items()))
    return counts


if __name__ == "__main__":
    main()
