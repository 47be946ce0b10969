"""Shared fixtures: the real-data location, and one tiny pre-trained-like checkpoint (model + tokenizer + corpus
description, as `run_mtm.py` leaves them, without training) that fine-tuning and API tests use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach the network

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRAJFM_SHARED_DATA", REPO.parent / "shared" / "data"))

#: The tiny synthetic corpus of the checkpoint fixture (as CorpusConfig fields and as command-line arguments).
TINY_CORPUS = dict(synthetic_users=36, synthetic_days=21, synthetic_seed=3, max_gap_minutes=360)
TINY_CORPUS_ARGS = [item for key, value in TINY_CORPUS.items() for item in (f"--{key}", str(value))]
#: Model sizes shared by the tiny test models.
TINY_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set TRAJFM_SHARED_DATA)")
    return SHARED_DATA


def make_tiny_checkpoint(folder: Path) -> dict:
    """model + tokenizer + trajfm_corpus.json, as run_mtm.py leaves them, without training: a tokenizer trained on
    the pre-training users only and a tiny TrajBertForMaskedTrajectoryModeling with every feature embedding."""
    import torch

    from modeling_trajfm import TrajBertConfig, TrajBertForMaskedTrajectoryModeling, set_auto_map
    from tokenization_trajfm import CorpusConfig, CorpusDescription, TrajTokenizer, UserSplit, select_users

    corpus = CorpusConfig(**TINY_CORPUS)
    table, report, source = corpus.load()
    split, pretrain_users = UserSplit.assign(table.column("user_id").unique().to_pylist(), 0.5, 0.0, seed=0)
    tokenizer = TrajTokenizer.train(select_users(table, pretrain_users), vocab_size=120, model_max_length=64)
    config = TrajBertConfig(vocab_size=len(tokenizer), use_hexagon_embeddings=True, use_level_embeddings=True,
                            use_time_embeddings=True, **TINY_MODEL)
    torch.manual_seed(0)
    model = TrajBertForMaskedTrajectoryModeling(config)
    set_auto_map(model.config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CorpusDescription(config=corpus, split=split, source=source, report=report.to_dict()).save(folder)
    return {"path": folder, "heldout": split.heldout_users, "pretrain": pretrain_users, "corpus": corpus}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> dict:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
