"""The fine-tuning recipe's pieces on tiny models: checkpoint selection on validation with early stopping, the head's
own learning rate, and mean pooling over hexagon tokens."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import TrainerCallback

from modeling_trajfm import TrajBertConfig, TrajBertForHexagonPrediction, TrajBertForSequenceClassification
from modeling_trajfm.finetuning import (
    FinetuneTrainingArguments,
    _selection_args,
    added_embeddings,
    finetune_trainer,
)
from modeling_trajfm.modeling_trajbert import hexagon_mean_pool
from modeling_trajfm.trainer import FinetuneTrainer, is_head_parameter
from tokenization_trajfm import TrajTokenizer
from tokenization_trajfm.h3cells import encode_cells

LAT = np.array([40.700, 40.712, 40.724, 40.736, 40.748, 40.760])
LON = np.array([-73.98, -73.97, -73.96, -73.98, -73.97, -73.96])
ALL_CELLS = encode_cells(LAT, LON, 8).tolist()
CELLS = [ALL_CELLS[:3], ALL_CELLS[3:5], ALL_CELLS[1:6]]


@pytest.fixture(scope="module")
def tokenizer():
    return TrajTokenizer.train(np.asarray(ALL_CELLS, dtype=np.uint64), vocab_size=60, model_max_length=32)


def _config(tokenizer, **kwargs) -> TrajBertConfig:
    if "id2label" not in kwargs:
        kwargs["num_labels"] = 2
    return TrajBertConfig(vocab_size=len(tokenizer), use_hexagon_embeddings=True, **TINY_MODEL, **kwargs)


def _dataset(tokenizer, n: int = 12) -> datasets.Dataset:
    encoded = tokenizer(cells=[CELLS[i % len(CELLS)] for i in range(n)])
    return datasets.Dataset.from_dict({**{k: list(v) for k, v in encoded.items()}, "labels": [i % 2 for i in range(n)]})


def _args(tmp_path, **kwargs) -> FinetuneTrainingArguments:
    return FinetuneTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True,
                                     disable_tqdm=True, report_to="none", logging_steps=1, **kwargs)


# --------------------------------------------------------------------------------------------- early stopping
class _Snapshots(TrainerCallback):
    """The weights at every evaluation, by global step."""

    def __init__(self):
        self.weights = {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_early_stopping_restores_the_best_checkpoint(tokenizer, tmp_path):
    """Validation accuracy@1 0.2, 0.9, 0.5, 0.4, ... with patience 2: training stops after epoch 4 and the model is
    the one evaluated after epoch 2."""
    scripted = iter([0.2, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    args = _selection_args(_args(tmp_path, num_train_epochs=8, early_stopping_patience=2), "destination", True)
    assert args.metric_for_best_model == "accuracy@1" and args.greater_is_better
    torch.manual_seed(0)
    model = TrajBertForSequenceClassification(_config(tokenizer))
    trainer = finetune_trainer(model, args, _dataset(tokenizer, 8), _dataset(tokenizer, 2), tokenizer,
                               lambda prediction: {"accuracy@1": next(scripted)})
    snapshots = _Snapshots()
    trainer.add_callback(snapshots)
    trainer.train()
    steps_per_epoch = 2  # 8 examples, batch 4
    assert sorted(snapshots.weights) == [steps_per_epoch * e for e in (1, 2, 3, 4)]  # stopped after 2 worse epochs
    assert trainer.state.best_metric == 0.9 and trainer.state.best_global_step == 2 * steps_per_epoch
    best, last = snapshots.weights[2 * steps_per_epoch], snapshots.weights[4 * steps_per_epoch]
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, best[name])
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the restore changed something


def test_without_validation_nothing_is_selected(tmp_path):
    args = _selection_args(_args(tmp_path), "user_association_binary", False)
    assert args.eval_strategy == "no" and args.save_strategy == "no" and not args.load_best_model_at_end
    explicit = _selection_args(_args(tmp_path, metric_for_best_model="loss"), "destination", True)
    assert explicit.metric_for_best_model == "loss" and not explicit.greater_is_better
    with pytest.raises(ValueError, match="--classifier_pooling must be cls or mean"):
        _args(tmp_path, classifier_pooling="max")


# -------------------------------------------------------------------------------------------- learning rates
def test_head_and_encoder_learning_rates(tokenizer, tmp_path):
    model = TrajBertForSequenceClassification(_config(tokenizer))
    args = _selection_args(_args(tmp_path, learning_rate=1e-4, weight_decay=0.01, warmup_steps=0,
                                 lr_scheduler_type="constant"), "destination", has_validation=False)
    trainer = FinetuneTrainer(model=model, args=args, train_dataset=_dataset(tokenizer), head_learning_rate=1e-2)
    optimizer = trainer.create_optimizer()
    by_id = {id(p): n for n, p in model.named_parameters()}
    seen = [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(by_id.values())  # every parameter exactly once
    for group in optimizer.param_groups:
        names = [by_id[id(p)] for p in group["params"]]
        heads = {is_head_parameter(n, "trajbert") for n in names}
        assert len(heads) == 1
        assert group["lr"] == (1e-2 if heads.pop() else 1e-4), names
        assert group["weight_decay"] == (0.0 if all("bias" in n or "LayerNorm" in n for n in names) else 0.01)
    head = {by_id[id(p)] for g in optimizer.param_groups if g["lr"] == 1e-2 for p in g["params"]}
    assert head == {"classifier.weight", "classifier.bias", "trajbert.pooler.dense.weight",
                    "trajbert.pooler.dense.bias"}
    trainer.create_scheduler(num_training_steps=4, optimizer=optimizer)
    optimizer.step()
    trainer.lr_scheduler.step()
    assert sorted(set(trainer.lr_scheduler.get_last_lr())) == [1e-4, 1e-2]
    # Without a head learning rate: Trainer's own two groups.
    plain = FinetuneTrainer(model=model, args=args, train_dataset=_dataset(tokenizer)).create_optimizer()
    assert len(plain.param_groups) == 2 and {g["lr"] for g in plain.param_groups} == {1e-4}


def test_embeddings_added_at_fine_tuning_train_at_the_head_rate(tokenizer, tmp_path):
    """Time and pair-match embeddings the checkpoint did not have start fresh, so they take the head's learning
    rate."""
    untimed = _config(tokenizer)
    untimed.use_time_embeddings = False
    timed = _config(tokenizer)
    timed.use_time_embeddings = True
    timed.use_match_embeddings = True
    model = TrajBertForSequenceClassification(timed)
    fresh = added_embeddings(model, untimed)
    assert sorted(fresh) == ["trajbert.embeddings.gap_embeddings.weight", "trajbert.embeddings.hour_embeddings.weight",
                             "trajbert.embeddings.match_embeddings.weight"]
    assert added_embeddings(model, timed) == []  # pre-trained with them: encoder parameters like the others
    args = _selection_args(_args(tmp_path, learning_rate=1e-4), "destination", has_validation=False)
    optimizer = FinetuneTrainer(model=model, args=args, train_dataset=_dataset(tokenizer), head_learning_rate=1e-2,
                                fresh_parameters=fresh).create_optimizer()
    by_id = {id(p): n for n, p in model.named_parameters()}
    head = {by_id[id(p)] for g in optimizer.param_groups if g["lr"] == 1e-2 for p in g["params"]}
    assert set(fresh) < head and not any(n.startswith("trajbert.encoder.") for n in head)


# ------------------------------------------------------------------------------------------------- pooling
def test_mean_pool_ignores_special_tokens_and_padding():
    hidden = torch.full((2, 6, 3), 1000.0)  # special tokens and padding hold huge values
    hidden[0, 1:4] = torch.tensor([[1.0, 2, 3], [3, 4, 5], [5, 6, 7]])
    hidden[1, 1:2] = torch.tensor([[2.0, 2, 2]])
    hexagon_ids = torch.tensor([[0, 1, 1, 2, 0, 0], [0, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(hexagon_mean_pool(hidden, hexagon_ids), torch.tensor([[3.0, 4, 5], [2, 2, 2]]))
    with pytest.raises(ValueError, match="needs `hexagon_ids`"):
        hexagon_mean_pool(hidden, None)


@pytest.mark.parametrize("head", ["classification", "hexagon"])
def test_mean_pooling_heads(tokenizer, tmp_path, head):
    """Padding does not change a trajectory's logits, and save → load gives identical outputs."""
    if head == "hexagon":
        candidates = tokenizer.cell_token_ids(CELLS[0])
        config = _config(tokenizer, classifier_pooling="mean", hexagon_candidates=candidates,
                         id2label={i: str(i) for i in range(len(candidates))})
        model_class = TrajBertForHexagonPrediction
    else:
        config = _config(tokenizer, classifier_pooling="mean")
        model_class = TrajBertForSequenceClassification
    torch.manual_seed(0)
    model = model_class(config).eval()
    if head == "classification":
        assert model.trajbert.pooler is None  # unused with mean pooling: no parameter without a gradient
    alone = tokenizer(cells=[CELLS[1]], return_tensors="pt")
    padded = tokenizer(cells=[CELLS[1], CELLS[2]], padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        logits = model(**alone).logits
        torch.testing.assert_close(model(**padded).logits[:1], logits, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "saved")
    again = model_class.from_pretrained(tmp_path / "saved").eval()
    assert again.config.classifier_pooling == "mean"
    with torch.no_grad():
        torch.testing.assert_close(again(**padded).logits, model(**padded).logits)


def test_classifier_pooling_is_checked():
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match="classifier_pooling"):
        TrajBertConfig(classifier_pooling="max")
    assert TrajBertConfig.from_dict({}).classifier_pooling == "cls"  # existing checkpoints keep the pooled [CLS]
