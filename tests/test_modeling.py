"""Tests of modeling_trajfm: TrajBert config, models, heads, save/load (in-process and remote code) and collators."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter

import datasets
import pytest
import torch
from conftest import TINY_MODEL
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
)

from modeling_trajfm import (
    DataCollatorForWholeHexagonMasking,
    DataCollatorWithTrajectoryPadding,
    TrajBertConfig,
    TrajBertForHexagonPrediction,
    TrajBertForMaskedTrajectoryModeling,
    TrajBertForSequenceClassification,
    TrajBertModel,
    set_auto_map,
)
from modeling_trajfm.data_collator import pad_trajectory_features
from modeling_trajfm.metrics import compute_mtm_metrics, preprocess_logits_for_mtm_metrics
from modeling_trajfm.modeling_trajbert import hexagon_mean_pool, supervised_contrastive_loss
from modeling_trajfm.packing import first_fit_decreasing, pack_trajectories, padding_share

CONFIG_ERRORS = (ValueError, StrictDataclassClassValidationError)
SPECIAL_IDS = [0, 1, 2, 3, 4]
PAD, CLS, SEP, MASK = 0, 2, 3, 4
VOCAB = 100
ALL_FEATURES = dict(use_hexagon_embeddings=True, use_level_embeddings=True, use_time_embeddings=True)


class FakeTokenizer:
    """The attributes the model config and collators rely on, nothing more."""

    pad_token_id = PAD
    mask_token_id = MASK
    all_special_ids = SPECIAL_IDS

    def __init__(self, size: int = VOCAB, model_max_length: int = 64, time_features: bool = True):
        self.size = size
        self.model_max_length = model_max_length
        self.time_features = time_features

    def __len__(self) -> int:
        return self.size


TINY_SIZES = dict(vocab_size=VOCAB, **TINY_MODEL)


def tiny_config(**kwargs) -> TrajBertConfig:
    return TrajBertConfig(**{**TINY_SIZES, **kwargs})


def make_trajectory(gen: torch.Generator, n_hex: int, max_sub: int = 4) -> dict[str, list[int]]:
    """`[CLS] visit tokens… [SEP]` with the per-token features of docs/design.md."""
    ids, hexes, levels, hours, gaps = [CLS], [0], [0], [0], [0]
    for h in range(1, n_hex + 1):
        n_sub = int(torch.randint(1, max_sub + 1, (1,), generator=gen))
        hour = int(torch.randint(1, 169, (1,), generator=gen))
        gap = 0 if h == 1 else int(torch.randint(1, 24, (1,), generator=gen))
        for level in range(1, n_sub + 1):
            ids.append(int(torch.randint(5, VOCAB, (1,), generator=gen)))
            hexes.append(h)
            levels.append(level)
            hours.append(hour)
            gaps.append(gap)
    ids.append(SEP)
    hexes.append(0)
    levels.append(0)
    hours.append(0)
    gaps.append(0)
    n = len(ids)
    return dict(
        input_ids=ids,
        attention_mask=[1] * n,
        token_type_ids=[0] * n,
        hexagon_ids=hexes,
        level_ids=levels,
        hour_ids=hours,
        gap_ids=gaps,
    )


def make_batch(batch_size: int = 3, seed: int = 0, n_hex: tuple[int, ...] = (6, 3, 5)) -> dict[str, torch.Tensor]:
    """A padded batch (sequences of different lengths, so padding is present)."""
    gen = torch.Generator().manual_seed(seed)
    feats = [make_trajectory(gen, n_hex[i % len(n_hex)]) for i in range(batch_size)]
    batch = DataCollatorWithTrajectoryPadding(FakeTokenizer())(feats)
    assert (batch["attention_mask"] == 0).any()
    return batch


def real_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["attention_mask"].bool()


# ---------------------------------------------------------------------------------------------------------- config


def test_config_validation_errors():
    with pytest.raises(CONFIG_ERRORS, match="multiple of `num_attention_heads`"):
        tiny_config(hidden_size=31)
    with pytest.raises(CONFIG_ERRORS, match="positive"):
        tiny_config(num_hidden_layers=0)
    with pytest.raises(CONFIG_ERRORS, match=r"\[0, 1\)"):
        tiny_config(hidden_dropout_prob=1.0)
    with pytest.raises(CONFIG_ERRORS, match="outside"):
        tiny_config(hexagon_candidates=[[5, 6], [VOCAB]])
    with pytest.raises(CONFIG_ERRORS, match="same candidate cells"):
        tiny_config(hexagon_candidates=[[5], [6]], id2label={0: "a", 1: "b", 2: "c"})
    # Overriding a field afterwards is checked by validate().
    config = tiny_config()
    config.num_attention_heads = 5
    with pytest.raises(CONFIG_ERRORS, match="multiple"):
        config.validate()
    assert tiny_config(hexagon_candidates=[[5], [6], [7, 8]]).num_labels == 3


def test_check_tokenizer_compatibility():
    tiny_config().check_tokenizer_compatibility(FakeTokenizer())
    with pytest.raises(ValueError, match="vocab_size >= 120"):
        tiny_config().check_tokenizer_compatibility(FakeTokenizer(size=120))
    with pytest.raises(ValueError, match="provides no visit times"):
        tiny_config(use_time_embeddings=True).check_tokenizer_compatibility(FakeTokenizer(time_features=False))
    tiny_config(use_time_embeddings=False).check_tokenizer_compatibility(FakeTokenizer(time_features=False))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_config().check_tokenizer_compatibility(FakeTokenizer(model_max_length=65))


# ------------------------------------------------------------------------------------------------------ model math


def test_plain_model_is_exactly_bert():
    """All options off: same parameter names/shapes and same outputs as transformers' BertForMaskedLM."""
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(**TINY_SIZES)).eval()
    model = TrajBertForMaskedTrajectoryModeling(tiny_config()).eval()
    state = {("trajbert." + k[5:] if k.startswith("bert.") else k): v for k, v in bert.state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    batch = make_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ours = model(**inputs, hexagon_ids=batch["hexagon_ids"]).logits  # ignored: option off
        ref = bert(**inputs).logits
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)


def test_sdpa_matches_eager_with_padding():
    torch.manual_seed(0)
    config = tiny_config(**ALL_FEATURES)
    sdpa = TrajBertModel(config).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager_config = tiny_config(**ALL_FEATURES)
    eager_config._attn_implementation = "eager"
    eager = TrajBertModel(eager_config).eval()
    eager.load_state_dict(sdpa.state_dict())
    batch = make_batch()
    with torch.no_grad():
        a = sdpa(**batch).last_hidden_state
        b = eager(**batch).last_hidden_state
    mask = real_positions(batch)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=0)
    # An encoder must not silently become causal: the first token sees later tokens.
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][:, 2] = 7
    with torch.no_grad():
        c = sdpa(**changed).last_hidden_state
    assert not torch.allclose(a[:, 0], c[:, 0])


def _encoder(attn: str) -> TrajBertModel:
    torch.manual_seed(0)
    config = tiny_config(**ALL_FEATURES)
    config._attn_implementation = attn
    return TrajBertModel(config).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_tokens_change_nothing(attn):
    model = _encoder(attn)
    batch = make_batch()
    pad = ~real_positions(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    for key in ("input_ids", "hexagon_ids", "level_ids", "hour_ids", "gap_ids", "token_type_ids"):
        changed[key][pad] = torch.randint(1, 2 if key == "token_type_ids" else 9, (int(pad.sum()),))
    with torch.no_grad():
        a = model(**batch).last_hidden_state
        b = model(**changed).last_hidden_state
    mask = real_positions(batch)
    torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=0)


def test_feature_embeddings_change_outputs_and_padding_rows_are_zero():
    torch.manual_seed(0)
    model = TrajBertModel(tiny_config(**ALL_FEATURES)).eval()
    emb = model.embeddings
    for table in (emb.hexagon_embeddings, emb.level_embeddings, emb.hour_embeddings, emb.gap_embeddings):
        assert table.padding_idx == 0
        assert torch.count_nonzero(table.weight[0]) == 0
    assert emb.hexagon_embeddings.num_embeddings == 65
    assert emb.level_embeddings.num_embeddings == 16
    assert emb.hour_embeddings.num_embeddings == 169
    assert emb.gap_embeddings.num_embeddings == 24

    batch = make_batch()
    base_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        full = model(**batch).last_hidden_state
        for key in ("hexagon_ids", "level_ids", "hour_ids", "gap_ids"):
            without = model(**{k: v for k, v in batch.items() if k != key}).last_hidden_state
            assert not torch.allclose(full, without), key
            # All-zero features add nothing: same as not passing them.
            zeros = model(**base_inputs, **{key: torch.zeros_like(batch[key])}).last_hidden_state
            torch.testing.assert_close(zeros, model(**base_inputs).last_hidden_state, atol=0, rtol=0)
        # Out-of-range ids are clamped, not an index error.
        big = dict(batch, hexagon_ids=batch["hexagon_ids"] + 1000, level_ids=batch["level_ids"] + 50)
        assert torch.isfinite(model(**big).last_hidden_state).all()

    # Options off: no tables, features ignored.
    plain = TrajBertModel(tiny_config()).eval()
    assert plain.embeddings.hexagon_embeddings is None and plain.embeddings.hour_embeddings is None
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).last_hidden_state, plain(**base_inputs).last_hidden_state)


def test_output_hidden_states_and_attentions():
    config = tiny_config()
    config._attn_implementation = "eager"
    model = TrajBertForMaskedTrajectoryModeling(config).eval()
    batch = make_batch()
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert len(out.attentions) == config.num_hidden_layers
    b, n = batch["input_ids"].shape
    assert out.attentions[0].shape == (b, 4, n, n)
    # Padding keys get zero attention.
    pad = ~real_positions(batch)
    key_is_pad = pad[:, None, None, :].expand_as(out.attentions[0])
    assert out.attentions[0][key_is_pad].abs().max() == 0
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)


def test_bf16_forward():
    model = TrajBertForMaskedTrajectoryModeling(tiny_config(**ALL_FEATURES)).to(torch.bfloat16)
    batch = make_batch()
    labels = torch.where(batch["hexagon_ids"] == 1, batch["input_ids"], -100)
    out = model(**batch, labels=labels)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()


# ----------------------------------------------------------------------------------------------------------- heads


def test_mtm_decoder_tied_and_loss_ignores_minus_100():
    model = TrajBertForMaskedTrajectoryModeling(tiny_config()).eval()
    word = model.trajbert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight.data_ptr() == word.data_ptr()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    batch = make_batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 1] = batch["input_ids"][:, 1]
    out = model(**batch, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 1].float(), labels[:, 1])
    torch.testing.assert_close(out.loss, expected)
    # With Trainer's num_items_in_batch the loss is sum / that count.
    out2 = model(**batch, labels=labels, num_items_in_batch=torch.tensor(6))
    torch.testing.assert_close(out2.loss, expected * 3 / 6)


def test_contrastive_term_joins_the_mtm_loss_only_with_views():
    """loss = MTM + weight * SupCon(mean-pooled views) * labelled share; without `view_ids` or weight it is MTM."""
    torch.manual_seed(0)
    model = TrajBertForMaskedTrajectoryModeling(tiny_config(contrastive_weight=0.5, contrastive_temperature=0.2))
    model.eval()
    batch = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2)(_collator_features(3, seed=0,
                                                                                                   n_hex=6))
    views = batch.pop("view_ids")
    mtm = model(**batch).loss
    hidden = model.trajbert(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    supcon = supervised_contrastive_loss(hexagon_mean_pool(hidden, batch["hexagon_ids"]), views, 0.2)
    assert supcon > 0
    torch.testing.assert_close(model(**batch, view_ids=views).loss, mtm + 0.5 * supcon)
    n_items = (batch["labels"] != -100).sum()
    torch.testing.assert_close(model(**batch, view_ids=views, num_items_in_batch=2 * n_items).loss,
                               (mtm + 0.5 * supcon) / 2)
    model.config.contrastive_weight = 0.0
    torch.testing.assert_close(model(**batch, view_ids=views).loss, mtm)
    with pytest.raises(CONFIG_ERRORS, match="contrastive_weight"):
        tiny_config(contrastive_weight=-1.0)
    with pytest.raises(CONFIG_ERRORS, match="contrastive_temperature"):
        tiny_config(contrastive_temperature=0.0)


def test_visible_token_term_joins_the_mtm_loss_in_training():
    """In training, loss = MTM + weight * cross-entropy of every visible hexagon token predicting itself (labelled
    share under DDP); in eval mode, or at weight 0, it is MTM alone. Dense and sparse prediction agree."""
    for sparse in (False, True):
        torch.manual_seed(0)
        model = TrajBertForMaskedTrajectoryModeling(tiny_config(visible_token_weight=0.7, sparse_prediction=sparse,
                                                                hidden_dropout_prob=0.0,
                                                                attention_probs_dropout_prob=0.0))
        batch = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0)(_collator_features(3, seed=0, n_hex=6))
        mtm = model.eval()(**batch).loss
        assert model(**batch).visible_token_loss is None
        hidden = model.trajbert(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
        visible = (batch["labels"] == -100) & (batch["hexagon_ids"] > 0)
        assert 0 < visible.sum() < (batch["attention_mask"] > 0).sum()
        by_hand = torch.nn.functional.cross_entropy(model.cls(hidden[visible]), batch["input_ids"][visible])
        out = model.train()(**batch)
        torch.testing.assert_close(out.visible_token_loss, by_hand)
        torch.testing.assert_close(out.loss, mtm + 0.7 * by_hand)
        n_items = (batch["labels"] != -100).sum()
        torch.testing.assert_close(model(**batch, num_items_in_batch=2 * n_items).loss, (mtm + 0.7 * by_hand) / 2)
        model.config.visible_token_weight = 0.0
        torch.testing.assert_close(model(**batch).loss, mtm)
    with pytest.raises(CONFIG_ERRORS, match="visible_token_weight"):
        tiny_config(visible_token_weight=-1.0)


def test_contrastive_term_separates_trajectories():
    """A few steps on the contrastive term alone pull each trajectory's two views together, apart from the others."""
    torch.manual_seed(0)
    model = TrajBertForMaskedTrajectoryModeling(tiny_config(contrastive_weight=1.0))
    collator = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2)
    batch = collator(_collator_features(8, seed=3, n_hex=8))
    views = batch.pop("view_ids")
    labels = batch.pop("labels")

    def supcon() -> torch.Tensor:
        hidden = model.trajbert(**batch).last_hidden_state
        return supervised_contrastive_loss(hexagon_mean_pool(hidden, batch["hexagon_ids"]), views, 0.1)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = supcon().item()
    for _ in range(15):
        optimizer.zero_grad()
        (model(**batch, labels=labels, view_ids=views).loss).backward()
        optimizer.step()
    assert supcon().item() < 0.5 * before


def _dense_and_sparse_mtm(**config_kwargs) -> tuple[TrajBertForMaskedTrajectoryModeling, ...]:
    """Two MTM models with the same weights, one with sparse prediction."""
    torch.manual_seed(0)
    dense = TrajBertForMaskedTrajectoryModeling(tiny_config(**config_kwargs)).eval()
    sparse = TrajBertForMaskedTrajectoryModeling(tiny_config(sparse_prediction=True, **config_kwargs)).eval()
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


def test_sparse_prediction_same_loss_and_gradients_as_dense():
    assert TrajBertConfig().sparse_prediction is False  # old checkpoints keep full logits
    dense, sparse = _dense_and_sparse_mtm(**ALL_FEATURES)
    batch = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0)(_collator_features(4, seed=0, n_hex=10))
    labelled = batch["labels"] != -100
    assert 0 < int(labelled.sum()) < labelled.numel() // 2
    for kwargs in ({}, {"num_items_in_batch": torch.tensor(50)}):
        out_dense, out_sparse = dense(**batch, **kwargs), sparse(**batch, **kwargs)
        assert out_sparse.logits.shape == (int(labelled.sum()), VOCAB)
        torch.testing.assert_close(out_sparse.logits, out_dense.logits[labelled], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_sparse.loss, out_dense.loss, atol=1e-6, rtol=1e-6)
    for model in (dense, sparse):
        model.zero_grad()
        model(**batch).loss.backward()
    for (name, p_dense), p_sparse in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p_sparse.grad, p_dense.grad, atol=1e-6, rtol=1e-4, msg=name)
    # Without labels (fill-mask, embeddings) the logits are full.
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(sparse(**inputs).logits, dense(**inputs).logits, atol=0, rtol=0)


def test_sparse_logits_give_the_same_trainer_metrics(tmp_path):
    """Trainer evaluation with `compute_mtm_metrics`: sparse logits are scattered back, metrics are unchanged."""
    from transformers import Trainer, TrainingArguments

    dense, sparse = _dense_and_sparse_mtm()
    eval_set = datasets.Dataset.from_list(_collator_features(10, seed=3, n_hex=8))
    results = []
    for model in (dense, sparse):
        args = TrainingArguments(
            output_dir=str(tmp_path),
            per_device_eval_batch_size=4,
            label_names=["labels", "hexagon_ids"],
            report_to="none",
            use_cpu=True,
        )
        collator = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=11)
        trainer = Trainer(
            model=model,
            args=args,
            eval_dataset=eval_set,
            data_collator=collator,
            compute_metrics=compute_mtm_metrics,
            preprocess_logits_for_metrics=preprocess_logits_for_mtm_metrics,
        )
        results.append(trainer.evaluate())
    dense_metrics, sparse_metrics = results
    assert dense_metrics["eval_masked_hexagons"] == sparse_metrics["eval_masked_hexagons"] > 10
    for key in ("eval_loss", "eval_token_acc_top1", "eval_hexagon_acc_top1", "eval_hexagon_acc_top5"):
        assert sparse_metrics[key] == pytest.approx(dense_metrics[key], abs=1e-6), key
    assert dense_metrics["eval_hexagon_acc_top5"] > 0


def test_sequence_classification_problem_types():
    batch = make_batch()
    single = TrajBertForSequenceClassification(tiny_config(num_labels=3))
    out = single(**batch, labels=torch.tensor([0, 2, 1]))
    assert single.config.problem_type == "single_label_classification" and out.loss.ndim == 0
    assert out.logits.shape == (3, 3)

    regression = TrajBertForSequenceClassification(tiny_config(num_labels=1))
    out = regression(**batch, labels=torch.tensor([0.5, -1.0, 2.0]))
    assert regression.config.problem_type == "regression" and torch.isfinite(out.loss)

    multi = TrajBertForSequenceClassification(tiny_config(num_labels=4))
    out = multi(**batch, labels=torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]]))
    assert multi.config.problem_type == "multi_label_classification" and torch.isfinite(out.loss)
    out.loss.backward()

    # Pairs: segment B changes the pooled output.
    pair = {k: v.clone() for k, v in batch.items()}
    pair["token_type_ids"][:, 3:] = 1
    pair["token_type_ids"][~real_positions(batch)] = 0
    single.eval()
    with torch.no_grad():
        assert not torch.allclose(single(**batch).logits, single(**pair).logits)


def _pair(gen: torch.Generator, n_a: int, n_b: int) -> tuple[dict, dict, dict]:
    """Trajectories A and B and their pair `[CLS] A [SEP] B [SEP]` (B in segment 1, its visits numbered on from A's,
    as TrajTokenizer numbers them)."""
    a, b = make_trajectory(gen, n_a), make_trajectory(gen, n_b)
    pair = {key: a[key] + b[key][1:] for key in a}
    pair["hexagon_ids"] = a["hexagon_ids"] + [h + n_a if h else 0 for h in b["hexagon_ids"][1:]]
    pair["token_type_ids"] = [0] * len(a["input_ids"]) + [1] * (len(b["input_ids"]) - 1)
    return a, b, pair


def _alone(trajectory: dict, model: TrajBertForSequenceClassification) -> torch.Tensor:
    """Mean-pooled encoding of `trajectory` without its [CLS], numbered from position 1."""
    inputs = {key: torch.tensor([values[1:]]) for key, values in trajectory.items()}
    inputs["position_ids"] = torch.arange(1, len(trajectory["input_ids"]))[None]
    return hexagon_mean_pool(model.trajbert(**inputs).last_hidden_state, inputs["hexagon_ids"])


def test_siamese_pair_encoding_encodes_a_and_b_apart(tmp_path):
    """The siamese head's logits are those of `A [SEP]` and of `B [SEP]` each encoded alone by the same function
    (position 1 on, visits numbered from 1), whatever the padding; swapping A and B swaps u and v; save → load keeps
    them; single trajectories and given positions are refused."""
    gen = torch.Generator().manual_seed(4)
    triples = [_pair(gen, 4, 6), _pair(gen, 7, 2)]
    batch = DataCollatorWithTrajectoryPadding(FakeTokenizer())([pair for _, _, pair in triples])
    config = tiny_config(num_labels=2, pair_encoding="siamese", use_hexagon_embeddings=True,
                         use_level_embeddings=True, use_time_embeddings=True)
    model = TrajBertForSequenceClassification(config).eval()
    assert model.classifier.in_features == 4 * model.config.hidden_size
    with torch.no_grad():
        logits = model(**batch).logits
        for row, (a, b, _) in enumerate(triples):
            u, v = _alone(a, model), _alone(b, model)
            expected = model.classifier(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
            torch.testing.assert_close(logits[row : row + 1], expected, atol=1e-5, rtol=1e-4)
        # The tokenizer gives B's first visit its gap from A's last; encoded apart, B ignores it.
        b_first = (batch["token_type_ids"] == 1) & (batch["hexagon_ids"] == batch["hexagon_ids"].masked_fill(
            batch["token_type_ids"] == 1, 0).amax(dim=1, keepdim=True) + 1)
        assert b_first.any(dim=1).all()
        timed = {**batch, "gap_ids": batch["gap_ids"].masked_fill(b_first, 7)}
        torch.testing.assert_close(model(**timed).logits, logits)
        a, b, _ = triples[0]
        swapped = {key: a[key][:1] + b[key][1:] + a[key][1:] for key in a}
        swapped["hexagon_ids"] = [0] + b["hexagon_ids"][1:] + [h + 6 if h else 0 for h in a["hexagon_ids"][1:]]
        swapped["token_type_ids"] = [0] * len(b["input_ids"]) + [1] * (len(a["input_ids"]) - 1)
        u, v = _alone(a, model), _alone(b, model)
        expected = model.classifier(torch.cat([v, u, (v - u).abs(), v * u], dim=-1))
        swapped_batch = DataCollatorWithTrajectoryPadding(FakeTokenizer())([swapped])
        torch.testing.assert_close(model(**swapped_batch).logits, expected, atol=1e-5, rtol=1e-4)
        cross = TrajBertForSequenceClassification(tiny_config(num_labels=2)).eval()
        assert cross.classifier.in_features == cross.config.hidden_size
        model.save_pretrained(tmp_path)
        loaded = TrajBertForSequenceClassification.from_pretrained(tmp_path).eval()
        assert loaded.config.pair_encoding == "siamese"
        torch.testing.assert_close(loaded(**batch).logits, logits)
        with pytest.raises(ValueError, match="every row needs hexagons in segment B"):
            model(**make_batch())
        with pytest.raises(ValueError, match="do not pass `position_ids`"):
            model(**batch, position_ids=torch.zeros_like(batch["input_ids"]))
    with pytest.raises(CONFIG_ERRORS, match="pair_encoding"):
        tiny_config(pair_encoding="late")


def test_hexagon_prediction():
    candidates = [[5, 6, 7], [5, 6, 8], [9], [10, 11]]
    config = tiny_config(hexagon_candidates=candidates, id2label={i: f"cell{i}" for i in range(4)})
    model = TrajBertForHexagonPrediction(config).eval()
    assert model.hexagon_head.candidate_ids.shape == (4, 3)
    assert "hexagon_head.candidate_ids" not in model.state_dict()
    batch = make_batch()
    out = model(**batch, labels=torch.tensor([0, 3, 2]))
    assert out.logits.shape == (3, 4) and out.loss.ndim == 0
    # Logits are query @ mean(sub-token embeddings).T + bias.
    word = model.trajbert.embeddings.word_embeddings.weight
    with torch.no_grad():
        cls_state = model.trajbert(**batch).last_hidden_state[:, 0]
        query = model.hexagon_head.transform(cls_state)
        cand = torch.stack([word[ids].mean(0) for ids in candidates])
        torch.testing.assert_close(out.logits, query @ cand.T + model.hexagon_head.bias)
    out.loss.backward()
    assert (
        model.hexagon_head.bias.grad is not None
        and model.trajbert.embeddings.word_embeddings.weight.grad[5].abs().sum() > 0
    )
    with pytest.raises(ValueError, match="hexagon_candidates"):
        TrajBertForHexagonPrediction(tiny_config())


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **ALL_FEATURES)
    batch = make_batch()
    labels = torch.where(batch["level_ids"] == 1, batch["input_ids"], -100)
    grads = []
    model = TrajBertForMaskedTrajectoryModeling(config)
    state = model.state_dict()
    for checkpointing in (False, True):
        model = TrajBertForMaskedTrajectoryModeling(config)
        model.load_state_dict(state)
        model.train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        model(**batch, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------ save / load


def _heads_config() -> TrajBertConfig:
    return tiny_config(num_labels=3, **ALL_FEATURES)


@pytest.mark.parametrize(
    "model_cls, auto_cls",
    [
        (TrajBertModel, AutoModel),
        (TrajBertForMaskedTrajectoryModeling, AutoModelForMaskedLM),
        (TrajBertForSequenceClassification, AutoModelForSequenceClassification),
    ],
)
def test_save_load_auto_classes(tmp_path, model_cls, auto_cls):
    torch.manual_seed(0)
    model = model_cls(_heads_config()).eval()
    set_auto_map(model.config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "configuration_trajbert.py").exists() and (tmp_path / "modeling_trajbert.py").exists()
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_trajbert.TrajBertConfig",
        "AutoModel": "modeling_trajbert.TrajBertModel",
        "AutoModelForMaskedLM": "modeling_trajbert.TrajBertForMaskedTrajectoryModeling",
        "AutoModelForSequenceClassification": "modeling_trajbert.TrajBertForSequenceClassification",
        "AutoTokenizer": ["tokenization_trajfm.TrajTokenizer", None],
    }
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TrajBertConfig)
    loaded = auto_cls.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_cls
    batch = make_batch()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    key = "last_hidden_state" if model_cls is TrajBertModel else "logits"
    assert torch.equal(a[key], b[key])
    if model_cls is TrajBertForMaskedTrajectoryModeling:
        dec = loaded.cls.predictions.decoder.weight
        assert dec.data_ptr() == loaded.trajbert.embeddings.word_embeddings.weight.data_ptr()


def test_hexagon_prediction_save_load(tmp_path):
    config = tiny_config(hexagon_candidates=[[5, 6, 7], [9], [10, 11]], id2label={0: "a", 1: "b", 2: "c"})
    model = TrajBertForHexagonPrediction(config).eval()
    model.save_pretrained(tmp_path)
    loaded = TrajBertForHexagonPrediction.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.hexagon_head.candidate_ids, model.hexagon_head.candidate_ids)
    assert torch.equal(loaded.hexagon_head.candidate_mask, model.hexagon_head.candidate_mask)
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys

    # a user without the package: drop the editable install's import hook (the project may be pip install -e'd)
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    import importlib.util

    assert importlib.util.find_spec("modeling_trajfm") is None, sys.path
    batch = torch.load("batch.pt")
    outputs = {}
    for name, auto, path in [
        ("model", AutoModel, "ckpt"),
        ("mlm", AutoModelForMaskedLM, "ckpt"),
        ("cls", AutoModelForSequenceClassification, "ckpt_cls"),
    ]:
        model = auto.from_pretrained(path, trust_remote_code=True).eval()
        assert model.__class__.__module__.startswith("transformers_modules"), model.__class__.__module__
        with torch.no_grad():
            out = model(**batch)
        outputs[name] = out.last_hidden_state if name == "model" else out.logits
        if name == "mlm":
            assert model.cls.predictions.decoder.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert "modeling_trajfm" not in sys.modules
    assert type(AutoConfig.from_pretrained("ckpt", trust_remote_code=True)).__name__ == "TrajBertConfig"
    torch.save(outputs, "outputs.pt")
    """
)


def test_remote_code_load_in_fresh_process(tmp_path):
    """A copied checkpoint loads with trust_remote_code where modeling_trajfm is not importable."""
    torch.manual_seed(0)
    mlm = TrajBertForMaskedTrajectoryModeling(_heads_config()).eval()
    classifier = TrajBertForSequenceClassification(_heads_config()).eval()
    work = tmp_path / "fresh"
    for model, folder in ((mlm, "ckpt"), (classifier, "ckpt_cls")):
        set_auto_map(model.config)
        model.save_pretrained(tmp_path / folder)
        shutil.copytree(tmp_path / folder, work / folder)
    batch = make_batch()
    torch.save(batch, work / "batch.pt")
    (work / "check.py").write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-I", "check.py"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(work / "outputs.pt")

    with torch.no_grad():
        assert torch.equal(mlm(**batch).logits, remote["mlm"])
        assert torch.equal(mlm.trajbert(**batch).last_hidden_state, remote["model"])
        assert torch.equal(classifier(**batch).logits, remote["cls"])


# ------------------------------------------------------------------------------------------------------ collators


def _collator_features(n: int, seed: int, n_hex: int = 30) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    return [make_trajectory(gen, n_hex - (i % 5)) for i in range(n)]


def test_collator_validation():
    tok = FakeTokenizer()
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="mlm_probability"):
            DataCollatorForWholeHexagonMasking(tok, mlm_probability=bad)
    with pytest.raises(ValueError, match="mask_replace_prob"):
        DataCollatorForWholeHexagonMasking(tok, mask_replace_prob=1.2)
    with pytest.raises(ValueError, match="<= 1"):
        DataCollatorForWholeHexagonMasking(tok, mask_replace_prob=0.8, random_replace_prob=0.3)


def test_collator_padding_and_features_visible():
    feats = _collator_features(4, seed=1, n_hex=8)
    collator = DataCollatorForWholeHexagonMasking(FakeTokenizer(), pad_to_multiple_of=8, seed=0)
    batch = collator(feats)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "hexagon_ids",
        "level_ids",
        "hour_ids",
        "gap_ids",
        "labels",
    }
    assert batch["input_ids"].shape[1] % 8 == 0
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        for key in ("hexagon_ids", "level_ids", "hour_ids", "gap_ids", "attention_mask"):
            assert batch[key][i, :n].tolist() == f[key]
            assert (batch[key][i, n:] == 0).all()
        assert (batch["input_ids"][i, n:] == PAD).all()
        assert (batch["labels"][i, n:] == -100).all()


def _masked_trajectories(collator, feats: list[dict], packed: bool):
    """Collate `feats` (packed into rows of 256 tokens or not) and yield `(row, sequence id, original ids, masked ids,
    labels, hexagon ids)` for every trajectory of the batch."""
    rows = pack_trajectories(datasets.Dataset.from_list(feats), 256).to_list() if packed else feats
    batch = collator(rows)
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        sequence_ids = torch.tensor(row.get("sequence_ids", [1] * n))
        for sid in sequence_ids.unique().tolist():
            pos = torch.nonzero(sequence_ids == sid).squeeze(1)
            yield (
                r,
                sid,
                torch.tensor(row["input_ids"])[pos],
                batch["input_ids"][r, pos],
                batch["labels"][r, pos],
                batch["hexagon_ids"][r, pos],
            )


@pytest.mark.parametrize("packed", [False, True])
def test_collator_masking_statistics(packed):
    p = 0.2
    collator = DataCollatorForWholeHexagonMasking(FakeTokenizer(), mlm_probability=p, seed=123)
    chosen_total = hexes_total = 0
    actions = Counter()
    chosen_in_row = {}  # (rep, row, hexagon id) -> chosen flags of that hexagon id in the row's trajectories
    for rep in range(12):
        feats = _collator_features(32, seed=rep)
        for row, _, orig, ids, labels, hexes in _masked_trajectories(collator, feats, packed):
            special = torch.isin(orig, torch.tensor(SPECIAL_IDS))
            # Special tokens are never masked, replaced or labelled.
            assert torch.equal(ids[special], orig[special]) and (labels[special] == -100).all()
            assert not torch.isin(ids[~special], torch.tensor([0, 1, 2, 3])).any()
            seq_chosen = 0
            for h in hexes.unique().tolist():
                if h == 0:
                    continue
                pos = hexes == h
                hexes_total += 1
                lab = labels[pos]
                chosen_in_row.setdefault((rep, row, h), []).append(bool((lab != -100).any()))
                if (lab == -100).all():
                    assert torch.equal(ids[pos], orig[pos])
                    continue
                # Whole hexagon: every sub-token labelled with its original id.
                assert torch.equal(lab, orig[pos])
                chosen_total += 1
                seq_chosen += 1
                if (ids[pos] == MASK).all():
                    actions["mask"] += 1
                elif torch.equal(ids[pos], orig[pos]):
                    actions["keep"] += 1
                else:
                    assert not (ids[pos] == MASK).any()
                    actions["random"] += 1
            # At least one masked hexagon per trajectory, packed or not.
            assert seq_chosen >= 1
            # Labels only where a chosen hexagon is.
            assert ((labels != -100) == (labels == orig) & (labels != -100)).all()
    if packed:
        # The same hexagon id in two trajectories of a row is two independent draws (both chosen ~ p**2, not p).
        pairs = [(a, b) for flags in chosen_in_row.values() for a, b in zip(flags, flags[1:])]
        assert len(pairs) > 1000
        assert abs(sum(a and b for a, b in pairs) / len(pairs) - p * p) < 0.02
    frac = chosen_total / hexes_total
    assert abs(frac - p) < 0.02, frac
    total = sum(actions.values())
    # A random replacement can draw the original id for 1-token hexagons; that lands in "keep" (rare with 95 ids).
    assert abs(actions["mask"] / total - 0.8) < 0.04, actions
    assert abs(actions["random"] / total - 0.1) < 0.03, actions
    assert abs(actions["keep"] / total - 0.1) < 0.03, actions


@pytest.mark.parametrize("packed", [False, True])
def test_collator_masks_runs_of_hexagons(packed):
    """`mask_span=L`: chosen hexagons come in runs of at least L (shorter only at a trajectory's end, forced runs
    included), never across trajectories of a packed row; about 1 - (1 - p/L)^L of them are chosen."""
    p, span = 0.2, 4
    collator = DataCollatorForWholeHexagonMasking(FakeTokenizer(), mlm_probability=p, mask_span=span, seed=11)
    chosen_total = hexes_total = 0
    run_lengths = Counter()
    for rep in range(6):
        for _, _, _, _, labels, hexes in _masked_trajectories(collator, _collator_features(32, seed=rep), packed):
            n = int(hexes.max())
            flags = [bool((labels[hexes == h] != -100).any()) for h in range(1, n + 1)]
            hexes_total += n
            chosen_total += sum(flags)
            starts = [h for h in range(n) if flags[h] and (h == 0 or not flags[h - 1])]
            for start in starts:
                length = next((k for k in range(start, n) if not flags[k]), n) - start
                assert length >= span or start + length == n, (flags, start)
                run_lengths[min(length, span)] += 1
    assert run_lengths[span] > 0.8 * sum(run_lengths.values()), run_lengths
    # The forced run of trajectories without one adds to the share (26-30 hexagons: P(no run) is about 0.2).
    assert 1 - (1 - p / span) ** span < chosen_total / hexes_total < p + 0.03, chosen_total / hexes_total
    with pytest.raises(ValueError, match="mask_span"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), mask_span=0)


def test_collator_span_one_masks_as_before():
    feats = _collator_features(16, seed=2)
    default = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=3)(feats)
    spanned = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=3, mask_span=1)(feats)
    assert all(torch.equal(default[k], spanned[k]) for k in default)


def test_collator_at_least_one_hexagon_and_reproducible():
    feats = _collator_features(64, seed=5, n_hex=6)  # 2..6 hexagons
    a = DataCollatorForWholeHexagonMasking(FakeTokenizer(), mlm_probability=0.05, seed=7)(feats)
    b = DataCollatorForWholeHexagonMasking(FakeTokenizer(), mlm_probability=0.05, seed=7)(feats)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert ((a["labels"] != -100).sum(dim=1) > 0).all()
    # A sequence with no hexagon ([CLS] [SEP] only) gets no labels and no crash.
    empty = {k: v[:1] + v[-1:] for k, v in feats[0].items()}
    out = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0)([empty, feats[1]])
    assert (out["labels"][0] == -100).all()


def test_collator_views_mask_each_copy_independently():
    feats = _collator_features(5, seed=2, n_hex=12)
    batch = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2)(feats)
    assert batch["input_ids"].shape[0] == 10
    assert batch["view_ids"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    original = pad_trajectory_features([f for f in feats for _ in range(2)], FakeTokenizer.pad_token_id)
    assert torch.equal(batch["hexagon_ids"], original["hexagon_ids"])
    labelled = batch["labels"] != -100
    assert torch.equal(batch["labels"][labelled], original["input_ids"][labelled])  # each view labels the originals
    assert not torch.equal(labelled[0::2], labelled[1::2])  # but masks different hexagons
    assert "view_ids" not in DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0)(feats)
    with pytest.raises(ValueError, match="views"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), views=0)
    packed = [dict(f, sequence_ids=[1] * len(f["input_ids"])) for f in feats]
    with pytest.raises(ValueError, match="do not pack"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2)(packed)


def test_collator_user_positives_label_rows_by_user():
    feats = [dict(f, user_id=user) for f, user in zip(_collator_features(4, seed=3, n_hex=6), ["a", "a", 7, "b"],
                                                       strict=True)]
    batch = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2, positives="user")(feats)
    assert batch["view_ids"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="user_id"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2, positives="user")(
            _collator_features(2, seed=3, n_hex=6))
    with pytest.raises(ValueError, match="needs `views` >= 2"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), positives="user")
    with pytest.raises(ValueError, match="one of views, user"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), views=2, positives="trajectory")


@pytest.mark.parametrize("views", [2, 3])
def test_collator_pieces_split_each_trajectory_into_disjoint_runs(views):
    """Each view keeps one run of the trajectory's hexagons (the runs tile it, in order), renumbered from 1, with the
    first visit's gap reset; nothing is masked here, so every other feature is the original's."""
    feats = _collator_features(6, seed=4, n_hex=9) + [make_trajectory(torch.Generator().manual_seed(1), views - 1)]
    collator = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=views, view_kind="pieces",
                                                  mask_replace_prob=0.0, random_replace_prob=0.0)
    batch = collator(feats)
    assert batch["view_ids"].tolist() == [t for t in range(len(feats)) for _ in range(views)]
    for t, feature in enumerate(feats):
        n_hexagons = max(feature["hexagon_ids"])
        hexagon_tokens = {key: [v for v, h in zip(feature[key], feature["hexagon_ids"], strict=True) if h > 0]
                          for key in ("input_ids", "level_ids", "hour_ids", "hexagon_ids", "gap_ids")}
        joined = {key: [] for key in hexagon_tokens}
        offset, starts = 0, set()
        for row in range(t * views, (t + 1) * views):
            length = int(batch["attention_mask"][row].sum())
            assert (batch["attention_mask"][row, length:] == 0).all()
            assert (batch["input_ids"][row, length:] == PAD).all()
            ids = batch["input_ids"][row, :length].tolist()
            assert ids[0] == CLS and ids[-1] == SEP
            hexagons = batch["hexagon_ids"][row, 1 : length - 1]
            assert hexagons.min() == 1 and hexagons.unique().tolist() == list(range(1, int(hexagons.max()) + 1))
            gaps = batch["gap_ids"][row, 1 : length - 1]
            assert (gaps[hexagons == 1] == 0).all()
            if n_hexagons < views:  # too short to cut: every view is the whole trajectory
                assert ids == feature["input_ids"]
                continue
            for key in joined:
                joined[key] += batch[key][row, 1 : length - 1].tolist()
            joined["hexagon_ids"][-len(hexagons):] = (hexagons + offset).tolist()
            starts.add(offset + 1)
            offset += int(hexagons.max())
        if n_hexagons >= views:
            expected_gaps = [0 if h in starts else g
                             for g, h in zip(hexagon_tokens["gap_ids"], hexagon_tokens["hexagon_ids"], strict=True)]
            assert len(starts) == views and joined.pop("gap_ids") == expected_gaps
            assert joined == {key: hexagon_tokens[key] for key in joined}
    labelled = batch["labels"] != -100
    assert torch.equal(batch["labels"][labelled], batch["input_ids"][labelled])  # labels are the pieces' own tokens
    assert (labelled.sum(dim=1) > 0).all()  # every piece has a masked hexagon


def test_collator_pieces_are_a_function_of_the_batch_and_validated():
    feats = _collator_features(4, seed=5, n_hex=20)
    make = lambda seed: DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=seed, reseed_per_batch=True,  # noqa: E731
                                                           views=2, view_kind="pieces")
    first, again = make(0)(feats), make(0)(feats)
    assert all(torch.equal(first[k], again[k]) for k in first)
    cut_points = {tuple(make(seed)(feats)["attention_mask"].sum(dim=1).tolist()) for seed in range(8)}
    assert len(cut_points) > 1  # the cut moves around the middle
    lengths = first["hexagon_ids"].amax(dim=1).view(-1, 2)
    assert ((lengths >= 5) & (lengths <= 15)).all()  # 20 hexagons cut within a quarter of a piece of the middle
    padded = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0, views=2, view_kind="pieces",
                                                pad_to_multiple_of=8)(feats)
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["input_ids"].shape[1] < first["input_ids"].shape[1] + 8
    with pytest.raises(ValueError, match="one of masked, pieces"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), views=2, view_kind="crops")
    with pytest.raises(ValueError, match="needs `views` >= 2"):
        DataCollatorForWholeHexagonMasking(FakeTokenizer(), view_kind="pieces")


def test_padding_collator_labels():
    feats = _collator_features(3, seed=2, n_hex=4)
    collator = DataCollatorWithTrajectoryPadding(FakeTokenizer())
    batch = collator([dict(f, labels=i) for i, f in enumerate(feats)])
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2]
    batch = collator([dict(f, label=0.5) for f in feats])
    assert batch["labels"].dtype == torch.float
    batch = collator([dict(f, labels=[1.0, 0.0]) for f in feats])
    assert batch["labels"].shape == (3, 2) and batch["labels"].dtype == torch.float


def test_collator_output_trains_mtm_model():
    model = TrajBertForMaskedTrajectoryModeling(tiny_config(**ALL_FEATURES))
    batch = DataCollatorForWholeHexagonMasking(FakeTokenizer(), seed=0)(_collator_features(4, seed=0, n_hex=6))
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_every_parameter_gets_a_gradient_even_with_missing_features():
    """DDP without find_unused_parameters needs every parameter in the graph; a missing feature reads as 0."""
    model = TrajBertForMaskedTrajectoryModeling(tiny_config(**ALL_FEATURES))
    batch = make_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    model(**inputs, labels=torch.where(batch["hexagon_ids"] > 0, batch["input_ids"], -100)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert model.loss_type == "ForMaskedLM"


# -------------------------------------------------------------------------------------------------------- packing


def test_first_fit_decreasing():
    assert first_fit_decreasing([3, 5, 2, 7, 1, 4], 8) == [[3, 4], [1, 0], [5, 2]]
    lengths = torch.randint(1, 40, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    bins = first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(300))
    # The tree search gives exactly the textbook quadratic first-fit-decreasing.
    naive: list[list[int]] = []
    for i in sorted(range(300), key=lambda i: -lengths[i]):
        target = next((b for b in naive if sum(lengths[j] for j in b) + lengths[i] <= 64), None)
        naive.append([i]) if target is None else target.append(i)
    assert bins == naive
    with pytest.raises(ValueError, match="longer than max_length=8"):
        first_fit_decreasing([3, 9], 8)


def test_pack_trajectories_keeps_every_trajectory_whole():
    feats = [dict(f, user_id=f"u{i}") for i, f in enumerate(_collator_features(20, seed=4, n_hex=6))]
    packed = pack_trajectories(datasets.Dataset.from_list(feats), 64)
    assert packed.column_names == [*[k for k in feats[0] if k != "user_id"], "sequence_ids"]
    assert len(packed) < len(feats) / 2
    unpacked_share = padding_share([len(f["input_ids"]) for f in feats], 4)
    assert padding_share([len(r) for r in packed["input_ids"]], 4) < unpacked_share
    pieces = []
    for row in packed.to_list():
        assert len(row["input_ids"]) <= 64
        sequence_ids = row["sequence_ids"]
        assert sequence_ids[0] == 1 and all(0 <= b - a <= 1 for a, b in zip(sequence_ids, sequence_ids[1:]))
        for sid in sorted(set(sequence_ids)):
            pieces.append(
                {
                    k: [v for v, s in zip(values, sequence_ids) if s == sid]
                    for k, values in row.items()
                    if k != "sequence_ids"
                }
            )
    expected = [{k: v for k, v in f.items() if k != "user_id"} for f in feats]
    assert sorted(pieces, key=str) == sorted(expected, key=str)
    assert pack_trajectories(datasets.Dataset.from_list(feats), 64)[:] == packed[:]  # deterministic


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_encode_each_trajectory_as_if_alone(attn):
    model = _encoder(attn)
    gen = torch.Generator().manual_seed(8)
    feats = [make_trajectory(gen, n_hex) for n_hex in (9, 3, 6, 2, 12, 5, 4)]
    rows = pack_trajectories(datasets.Dataset.from_list(feats), 64).to_list()
    assert len(rows) < len(feats)
    batch = DataCollatorWithTrajectoryPadding(FakeTokenizer())(rows)
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: padding too
    with torch.no_grad():
        packed = model(**batch).last_hidden_state
        leaky = model(**{k: v for k, v in batch.items() if k != "sequence_ids"}).last_hidden_state
        n_checked = 0
        for r, row in enumerate(rows):
            sequence_ids = torch.tensor(row["sequence_ids"])
            for sid in sequence_ids.unique().tolist():
                pos = torch.nonzero(sequence_ids == sid).squeeze(1)
                alone = {k: torch.tensor([row[k]])[:, pos] for k in row if k != "sequence_ids"}
                expected = model(**alone).last_hidden_state[0]
                torch.testing.assert_close(packed[r, pos], expected, atol=1e-5, rtol=0)
                n_checked += 1
                if len(set(row["sequence_ids"])) > 1:  # without sequence_ids trajectories of a row see each other
                    assert not torch.allclose(leaky[r, pos], expected, atol=1e-3)
    assert n_checked == len(feats)


def test_nyc_packing_removes_padding(shared_data_dir):
    from tokenization_trajfm import SegmentationConfig, TrajTokenizer, build_trajectories
    from tokenization_trajfm.readers import read_stan_nyc

    table = read_stan_nyc(shared_data_dir / "foursquare_nyc_stan" / "nyc_stan_checkins.csv.gz")
    trajectories, _ = build_trajectories(table, segmentation=SegmentationConfig(max_gap_minutes=72 * 60))
    tokenizer = TrajTokenizer.train(trajectories, vocab_size=300)
    corpus = tokenizer.tokenize_dataset(datasets.Dataset(trajectories), max_length=512)
    packed = pack_trajectories(corpus, 512)
    lengths = [len(ids) for ids in corpus["input_ids"]]
    packed_lengths = [len(ids) for ids in packed["input_ids"]]
    assert sum(packed_lengths) == sum(lengths) and max(packed_lengths) <= 512
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert padding_share([lengths[i] for i in shuffled], 32) > 0.5
    assert padding_share(packed_lengths, 32) < 0.05
