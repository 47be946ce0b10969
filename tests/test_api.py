"""The library seams under the scripts: package layering, the sampler, the comparison formula, and pre-training and
fine-tuning called from Python as a notebook user would."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import REPO, TINY_CORPUS
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_trajfm import (
    FinetuneTrainingArguments,
    MTMArguments,
    MTMModelArguments,
    MTMTrainingArguments,
    finetune,
    pretrain,
)
from modeling_trajfm.downstream import PreparedTask, TaskConfig, report_entries
from modeling_trajfm.downstream.compare import avg_f1_improvement, compare_report, relative_improvement
from modeling_trajfm.trainer import BucketedLengthSampler, TrainingStream, same_user_pairs
from tokenization_trajfm import CorpusConfig, CorpusDescription


def _fresh_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_tokenizer_package_does_not_load_the_model_package():
    loaded = _fresh_python("import sys, tokenization_trajfm; print(sorted(m for m in sys.modules if m.startswith("
                           "('modeling_trajfm', 'run_'))))")
    assert loaded == "[]"


def test_model_package_registers_everything_once_alone():
    out = _fresh_python(
        "import modeling_trajfm\n"
        "from transformers import AutoConfig, AutoTokenizer\n"
        "from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING\n"
        "config = AutoConfig.for_model('trajbert')\n"
        "print(type(config).__name__, TOKENIZER_MAPPING[type(config)].__name__)"
    )
    assert out == "TrajBertConfig TrajTokenizer"


def test_scripts_never_import_each_other():
    for script, other in (("run_mtm.py", "run_finetune"), ("run_finetune.py", "run_mtm")):
        source = (REPO / script).read_text()
        assert f"import {other}" not in source and f"from {other}" not in source


# ------------------------------------------------------------------------------------------------------ sampler
def test_sampler_is_a_permutation_grouped_by_length_and_seeded():
    lengths = np.random.default_rng(0).integers(3, 500, size=1000).tolist()
    sampler = BucketedLengthSampler(lengths, batch_size=8, seed=1, bucket_batches=10)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and len(sampler) == 1000
    assert order == list(BucketedLengthSampler(lengths, batch_size=8, seed=1, bucket_batches=10))
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order each epoch, reproducible from (seed, epoch)
    # Batches are cut from length-sorted buckets: far less padding than random batches.
    def padding(indices):
        batches = [np.asarray(lengths)[indices[i:i + 8]] for i in range(0, len(indices), 8)]
        return sum(int(b.max() * b.size - b.sum()) for b in batches)

    assert padding(order) < 0.2 * padding(np.random.default_rng(2).permutation(1000).tolist())


def test_sampler_with_users_yields_same_user_pairs():
    """Every sequence once per epoch, in adjacent same-user pairs that never straddle a batch; an odd one out is
    paired with another of its user's sequences, a user's only sequence with itself."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 500, size=301).tolist()
    users = [f"u{u}" for u in rng.integers(0, 40, size=300)] + ["alone"]
    for grouped in (True, False):
        sampler = BucketedLengthSampler(lengths, batch_size=8, seed=1, users=users, group_lengths=grouped)
        order = list(sampler)
        counts = np.bincount(np.unique(users, return_inverse=True)[1])
        assert len(order) == len(sampler) == 2 * int(((counts + 1) // 2).sum())
        assert set(order) == set(range(301))
        assert all(users[a] == users[b] for a, b in zip(order[0::2], order[1::2], strict=True))
        extra = len(order) - 301  # one repeat per user with an odd number of sequences
        assert extra == int((counts % 2).sum())
        assert order == list(BucketedLengthSampler(lengths, batch_size=8, seed=1, users=users, group_lengths=grouped))
    alone = order.index(300)
    assert order[alone ^ 1] == 300
    with pytest.raises(ValueError, match="one id per sequence"):
        BucketedLengthSampler(lengths, batch_size=8, users=users[:-1])
    with pytest.raises(ValueError, match="even batch size .* got 7"):
        BucketedLengthSampler(lengths, batch_size=7, users=users)


@settings(max_examples=200, deadline=None)
@given(users=st.lists(st.integers(0, 6), max_size=60), max_waiting=st.integers(1, 5))
def test_streamed_same_user_pairs(users, max_waiting):
    """Streamed pairing: adjacent same-user pairs, a partner being the next sequence of its user; every sequence comes
    out once, or twice when paired with itself; at most `max_waiting` sequences wait (one more just read)."""
    pulled = []

    def examples():
        for i, u in enumerate(users):
            pulled.append(i)
            yield {"user_id": f"u{u}", "index": i}

    out: list[int] = []
    for example in same_user_pairs(examples(), max_waiting):
        assert len(pulled) - len(set(out)) <= max_waiting + 1
        out.append(example["index"])
    pairs = list(zip(out[0::2], out[1::2], strict=True))
    assert sorted(set(out)) == list(range(len(users)))
    assert all(out.count(i) == (2 if (i, i) in pairs else 1) for i in range(len(users)))
    for a, b in pairs:
        assert a == b or (a < b and users[a] == users[b] and users[a] not in users[a + 1 : b])


def test_same_user_pairs_need_an_even_batch_only_with_the_contrastive_term(tmp_path):
    from modeling_trajfm.pretraining import check_pretraining_arguments

    odd = MTMTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3)
    check_pretraining_arguments(CorpusConfig(), MTMModelArguments(), MTMArguments(contrastive_weight=0), odd)
    with pytest.raises(ValueError, match="even --per_device_train_batch_size, not 3"):
        check_pretraining_arguments(CorpusConfig(), MTMModelArguments(), MTMArguments(), odd)


def test_training_stream_pairs_users_within_a_rank():
    stream = datasets.Dataset.from_dict({"user_id": [f"u{i % 5}" for i in range(40)], "index": list(range(40))})
    stream = stream.to_iterable_dataset(num_shards=4)
    for rank in range(2):
        part = TrainingStream(stream, seed=3, buffer_size=8, rank=rank, world_size=2, pair_users=True)
        first_pass = [row for row, _ in zip(part, range(20), strict=False)]
        assert all(a["user_id"] == b["user_id"] for a, b in zip(first_pass[0::2], first_pass[1::2], strict=True))
    with pytest.raises(ValueError, match="need a `user_id`"):
        list(same_user_pairs(iter([{"index": 0}]), 1))
    # Past max_waiting the longest-waiting sequence is paired with itself (user a's first), not the newest.
    rows = [{"user_id": user, "index": i} for i, user in enumerate("abcb")]
    assert [row["index"] for row in same_user_pairs(iter(rows), 2)] == [0, 0, 1, 3, 2, 2]


def test_sampler_with_places_batches_neighbours_in_index_order():
    """`places`: each batch holds units whose places are neighbours in sorted order (far less spread than random
    batches), every sequence comes once per epoch, batches change between epochs, and same-user pairs stay pairs."""
    rng = np.random.default_rng(0)
    n = 400
    lengths = rng.integers(3, 100, size=n).tolist()
    places = rng.integers(0, 50, size=n) * 1_000_000  # 50 districts, 8 sequences each on average

    def spread(order: list[int], size: int) -> float:
        return float(np.mean([np.ptp(places[order[i:i + size]]) for i in range(0, len(order), size)]))

    sampler = BucketedLengthSampler(lengths, batch_size=8, seed=1, places=places.tolist())
    order = list(sampler)
    assert sorted(order) == list(range(n))
    assert spread(order, 8) < 0.2 * spread(rng.permutation(n).tolist(), 8)
    assert order == list(BucketedLengthSampler(lengths, batch_size=8, seed=1, places=places.tolist()))
    sampler.set_epoch(1)
    assert list(sampler) != order
    users = [f"u{u}" for u in rng.integers(0, 60, size=n)]
    paired = list(BucketedLengthSampler(lengths, batch_size=8, seed=1, users=users, places=places.tolist()))
    assert set(paired) == set(range(n))
    assert all(users[a] == users[b] for a, b in zip(paired[0::2], paired[1::2], strict=True))
    with pytest.raises(ValueError, match="one cell per sequence"):
        BucketedLengthSampler(lengths, batch_size=8, places=places[:-1].tolist())


def test_trajectory_places_is_the_most_visited_cell():
    """The place of a sequence is its most visited cell, decoded from its tokens (the smallest among equals)."""
    import datasets
    import h3

    from modeling_trajfm.trainer import trajectory_places
    from tokenization_trajfm import TrajTokenizer

    a, b, c = sorted(h3.str_to_int(cell) for cell in h3.grid_disk(h3.latlng_to_cell(40.75, -73.99, 8), 1))[:3]
    tokenizer = TrajTokenizer.train(np.asarray([a, b, c] * 5, dtype=np.uint64), vocab_size=60)
    cells = [[a, b, b, c], [c, c, a, a], [b]]
    sequences = datasets.Dataset.from_dict({"input_ids": [tokenizer(cells=trajectory)["input_ids"]
                                                         for trajectory in cells]})
    assert trajectory_places(tokenizer, sequences).tolist() == [b, a, b]


# ------------------------------------------------------------------------------------------------------ compare
def _task(entry: str) -> PreparedTask:
    return PreparedTask(entry, "pair", {}, {}, [], info={"n": 1}, baselines={"majority": {"f1": 0.1}})


def test_compare_formula_by_hand():
    results = {
        "next_subtrajectory": {"pretrained": {"test_f1": 0.6, "test_loss": 0.5, "test_classifier_loss": 0.5},
                               "random": {"test_f1": 0.4, "test_loss": 1.0, "test_classifier_loss": 1.0}},
        "destination": {"pretrained": {"test_macro_f1": 0.3, "test_classifier+history_distance_km_mean": 2.0},
                        "random": {"test_macro_f1": 0.1, "test_classifier+history_distance_km_mean": 4.0}},
        "user_association_binary": {"pretrained": {"test_f1": 0.9}, "random": {"test_f1": 0.5}},
    }
    report = compare_report(results, {e: _task(e) for e in results})
    # mean pre-trained F1 = 0.6, mean random F1 = 1/3 -> +80 %
    assert math.isclose(report["avg_f1_improvement_pct"], 80.0)
    assert math.isclose(report["avg_f1_improvement_pct_paper_tasks"], 80.0)
    assert math.isclose(report["tasks"]["next_subtrajectory"]["improvement_pct"]["loss"], 50.0)  # lower is better
    assert math.isclose(report["tasks"]["next_subtrajectory"]["improvement_pct"]["classifier_loss"], 50.0)  # a form's
    assert math.isclose(report["tasks"]["destination"]["improvement_pct"]["classifier+history_distance_km_mean"], 50.0)
    assert avg_f1_improvement(report["tasks"], ["destination"]) == pytest.approx(200.0)
    assert relative_improvement(0.5, 0.0) is None and relative_improvement(float("nan"), 0.5) is None
    without_paper_task = {k: v for k, v in results.items() if k != "destination"}
    assert compare_report(without_paper_task, {e: _task(e) for e in results})[
        "avg_f1_improvement_pct_paper_tasks"] is None


def test_report_entries_and_task_config_checks():
    assert report_entries(["user_association", "destination"]) == [
        "user_association_linking", "user_association_binary", "destination"]
    assert TaskConfig(task="user_association", association_form="binary").entry() == "user_association_binary"
    with pytest.raises(ValueError, match="Unknown task 'trip'"):
        report_entries(["trip"])
    with pytest.raises(ValueError, match="--test_fraction must be in"):
        TaskConfig(test_fraction=1.0)
    with pytest.raises(ValueError, match="too small for next_subtrajectory"):
        TaskConfig(max_train_samples=1).check_entries(["next_subtrajectory"])


def test_corpus_config_errors_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="either --data .* or --dataset_dir"):
        CorpusConfig(data=str(tmp_path), dataset_dir=str(tmp_path))
    with pytest.raises(ValueError, match="only apply to --reader table"):
        CorpusConfig(data=str(tmp_path), reader="tsmc", user_col="u")
    with pytest.raises(ValueError, match="--invalid 'skip'"):
        CorpusConfig(invalid="skip")
    with pytest.raises(ValueError, match="max_gap_minutes must be positive"):
        CorpusConfig(max_gap_minutes=0)


# ------------------------------------------------------------------------------------------------ from Python
def test_pretrain_then_finetune_from_python(tmp_path):
    """The README's Python example at tiny sizes: plain config objects in, result objects out."""
    corpus = CorpusConfig(**TINY_CORPUS)
    model_args = MTMModelArguments(vocab_size=150, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64)
    args = MTMTrainingArguments(output_dir=str(tmp_path / "base"), max_steps=4, per_device_train_batch_size=8,
                                eval_strategy="no", save_strategy="no", use_cpu=True, disable_tqdm=True)
    result = pretrain(corpus, model_args, MTMArguments(max_seq_length=64, validation_fraction=0.0), args)
    assert result.metrics["train_loss"] > 0 and (tmp_path / "base" / "README.md").is_file()
    description = CorpusDescription.load(tmp_path / "base")
    assert description.config == corpus and description.split.heldout_users == result.split["heldout"]

    tuned = finetune(str(tmp_path / "base"), TaskConfig(task="destination", max_seq_length=64),
                     FinetuneTrainingArguments(output_dir=str(tmp_path / "dest"), max_steps=2, use_cpu=True,
                                               disable_tqdm=True, report_to="none"))
    assert tuned.entry == "destination" and 0 <= tuned.metrics["test_accuracy@1"] <= 1
    used = json.loads((tmp_path / "dest" / "task_data.json").read_text())["heldout_users_used"]
    assert set(used) <= set(description.split.heldout_users)
