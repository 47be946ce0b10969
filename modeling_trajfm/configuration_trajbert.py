# Copyright 2025 The trajfm authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""TrajBert model configuration.

This file is copied next to saved weights (remote code): it must only import from `transformers`, the standard
library and `huggingface_hub`.
"""

import sys
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

#: How a sequence is summarised for a head: the pooled [CLS] state, or the mean over hexagon tokens.
CLASSIFIER_POOLINGS = ("cls", "mean")
#: How [`TrajBertForSequenceClassification`] reads a trajectory pair (`config.pair_encoding`).
PAIR_ENCODINGS = ("cross", "siamese")


@strict
class TrajBertConfig(PreTrainedConfig):
    r"""
    Configuration of a TrajBert model: a BERT encoder over H3 sub-hash tokens with optional per-token trajectory
    features (which visit a token belongs to, its position inside the visit, visit hour-of-week and time gap).

    With `use_hexagon_embeddings`, `use_level_embeddings` and `use_time_embeddings` all off the model is exactly a plain
    BERT (same parameters, same math), which makes ablations and benchmarks against BERT fair.

    Args:
        vocab_size (`int`, defaults to 30522): number of token ids; must be `>= len(tokenizer)`.
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size / hidden_act: encoder sizes (BERT-base
            defaults).
        hidden_dropout_prob / attention_probs_dropout_prob (`float`): dropout rates, in [0, 1).
        max_position_embeddings (`int`, defaults to 512): longest sequence; also bounds the hexagon-index table
            (`max_position_embeddings + 1` rows, since a sequence has at most that many visits).
        type_vocab_size (`int`, defaults to 2): segments A / B of a trajectory pair.
        initializer_range / layer_norm_eps: as in BERT.
        pad_token_id (`int`, defaults to 0): `[PAD]`; its word-embedding row stays zero.
        classifier_dropout (`float`, *optional*): dropout before classification heads (defaults to
            `hidden_dropout_prob`).
        classifier_pooling (`str`, defaults to `"cls"`): the sequence summary the classification and hexagon heads
            read: `"cls"` (the pooled [CLS] for classification, the [CLS] state for hexagon prediction) or `"mean"`
            (the mean hidden state over hexagon tokens, `hexagon_ids > 0`: special tokens and padding excluded).
        pair_encoding (`str`, defaults to `"cross"`): how [`TrajBertForSequenceClassification`] reads a pair
            `[CLS] A [SEP] B [SEP]`: `"cross"` (one sequence, A and B attend to each other) or `"siamese"` (A and B
            encoded apart by the same function in one forward, see `modeling_trajbert.siamese_inputs`; the head
            reads their mean-pooled states u, v as [u, v, |u - v|, u * v], whatever `classifier_pooling` says): the
            form that compares two trajectories' summaries, what trajectory-level pre-training trains. Not with
            flash attention (it cannot keep attention inside a segment).
        use_hexagon_embeddings (`bool`): add an embedding of `hexagon_ids` (which visit a token belongs to).
        use_level_embeddings (`bool`): add an embedding of `level_ids` (sub-token position inside its hexagon).
        use_time_embeddings (`bool`): add embeddings of `hour_ids` (hour of week) and `gap_ids` (log time gap bucket).
        use_match_embeddings (`bool`): add a learnt embedding to the tokens of every hexagon of a pair's segment that
            the other segment visits too (`modeling_trajbert.pair_match_ids`), so that a cross encoder sees shared
            cells without having to find them; needs `pair_encoding="cross"`. Single sequences are unaffected.
        max_levels (`int`, defaults to 16): rows of the level table (ids above `max_levels - 1` are clamped).
        num_hour_buckets (`int`, defaults to 169): 168 hours of the week + id 0 for "unknown / special".
        num_gap_buckets (`int`, defaults to 24): id 0, 22 log2 gap buckets and the overlap id of a pair's B (23).
        hexagon_candidates (`list[list[int]]`, *optional*): for [`TrajBertForHexagonPrediction`], the candidate cells
            as lists of their sub-token ids (one list per cell, in label order; `id2label` holds the cell strings).
        add_pooling_layer (`bool`, defaults to `False`): whether the encoder has BERT's pooler (tanh dense over
            [CLS]). Written by the model: on for sequence classification, whose training trains it, off for MTM
            pre-training, which never does, so `AutoModel` on an MTM checkpoint builds no random pooler.
        sparse_prediction (`bool`, defaults to `False`): when [`TrajBertForMaskedTrajectoryModeling`] gets `labels`, run
            the MTM head only at labelled positions (~20% of tokens) and return logits of shape
            `(num_labelled_tokens, vocab_size)`; the loss is unchanged. Without `labels` the logits stay full. Off by
            default so older checkpoints behave as before; pre-training turns it on.
        contrastive_weight (`float`, defaults to 0): weight of the trajectory-level contrastive term that
            [`TrajBertForMaskedTrajectoryModeling`] adds to the MTM loss when a batch carries `view_ids` (two masked
            views of each trajectory, see `DataCollatorForWholeHexagonMasking(views=2)`): MTM alone makes co-visited
            cells alike and blurs which trajectory is which; the term keeps mean-pooled trajectory embeddings apart.
        contrastive_temperature (`float`, defaults to 0.1): softmax temperature of that term (cosine / temperature).
        visible_token_weight (`float`, defaults to 0): weight of a term that [`TrajBertForMaskedTrajectoryModeling`]
            adds in training: every visible (unmasked) hexagon token predicts itself through the MTM head. MTM asks
            only masked positions for their cell, so the others' states drift towards their surroundings; the term
            keeps each state, and the token table, specific to its own cell.

    Example:

    ```python
    >>> from modeling_trajfm import TrajBertConfig, TrajBertModel
    >>> config = TrajBertConfig(vocab_size=4000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
    ...                         intermediate_size=1024, use_hexagon_embeddings=True, use_time_embeddings=True)
    >>> model = TrajBertModel(config)
    ```
    """

    model_type = "trajbert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | int | None = None
    classifier_pooling: str = "cls"
    pair_encoding: str = "cross"
    use_hexagon_embeddings: bool = False
    use_level_embeddings: bool = False
    use_time_embeddings: bool = False
    use_match_embeddings: bool = False
    max_levels: int = 16
    num_hour_buckets: int = 169
    num_gap_buckets: int = 24
    hexagon_candidates: list[list[int]] | None = None
    add_pooling_layer: bool = False
    sparse_prediction: bool = False
    contrastive_weight: float | int = 0.0
    contrastive_temperature: float | int = 0.1
    visible_token_weight: float | int = 0.0
    # The MTM decoder shares the input word embeddings (like BERT); read by `PreTrainedModel` tying logic.
    tie_word_embeddings: bool = True
    # Encoder only: these keep masking utilities and the generic BERT code paths on the bidirectional branch.
    is_decoder: bool = False
    add_cross_attention: bool = False

    def __post_init__(self, **kwargs):
        # One label per candidate cell unless the caller said otherwise (then validation reports the mismatch).
        if self.hexagon_candidates is not None and self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = len(self.hexagon_candidates)
        if kwargs.get("custom_pipelines"):
            kwargs["custom_pipelines"] = _not_registered_here(kwargs["custom_pipelines"])
        super().__post_init__(**kwargs)

    def validate_sizes(self) -> None:
        """Catch impossible sizes at construction rather than as shape errors deep inside the model."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "max_levels",
            "num_hour_buckets",
            "num_gap_buckets",
        ):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads}); change one of them (e.g. hidden_size="
                f"{self.num_attention_heads * max(1, round(self.hidden_size / self.num_attention_heads))})."
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"`pad_token_id` ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size}).")
        if self.initializer_range <= 0 or self.layer_norm_eps <= 0:
            raise ValueError("`initializer_range` and `layer_norm_eps` must be positive.")

    def validate_dropout(self) -> None:
        """Dropout of 1 zeroes everything; negative values are typos."""
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")

    def validate_contrastive(self) -> None:
        if self.contrastive_weight < 0:
            raise ValueError(f"`contrastive_weight` must be >= 0 (0: no term), got {self.contrastive_weight}.")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"`contrastive_temperature` must be positive, got {self.contrastive_temperature}.")
        if self.visible_token_weight < 0:
            raise ValueError(f"`visible_token_weight` must be >= 0 (0: no term), got {self.visible_token_weight}.")

    def validate_classifier_pooling(self) -> None:
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"`classifier_pooling` must be 'cls' or 'mean', got {self.classifier_pooling!r}.")

    def validate_pair_encoding(self) -> None:
        if self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"`pair_encoding` must be one of {', '.join(PAIR_ENCODINGS)}, got {self.pair_encoding!r}.")
        if self.use_match_embeddings and self.pair_encoding != "cross":
            raise ValueError("`use_match_embeddings` marks cells shared by the two segments of one sequence: it needs "
                             f"`pair_encoding='cross'`, got {self.pair_encoding!r}.")

    def validate_hexagon_candidates(self) -> None:
        """The candidate matrix is built from this list at model init: check it fits the vocabulary and labels."""
        if self.hexagon_candidates is None:
            return
        if len(self.hexagon_candidates) == 0:
            raise ValueError("`hexagon_candidates` is empty: give at least one candidate cell (a list of token ids).")
        for i, ids in enumerate(self.hexagon_candidates):
            if len(ids) == 0:
                raise ValueError(f"`hexagon_candidates[{i}]` is empty: every candidate cell needs its sub-token ids.")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(
                    f"`hexagon_candidates[{i}]` has token ids outside [0, vocab_size={self.vocab_size}): {bad}."
                )
        if self.id2label is not None and len(self.id2label) != len(self.hexagon_candidates):
            raise ValueError(
                f"`id2label` has {len(self.id2label)} entries but `hexagon_candidates` has "
                f"{len(self.hexagon_candidates)}: they must describe the same candidate cells in the same order."
            )

    def check_tokenizer_compatibility(self, tokenizer: Any) -> None:
        """Raise a `ValueError` saying what to change if `tokenizer` cannot feed this model.

        Checked: vocabulary size, that visit times exist when time embeddings are on, and sequence length. Works with
        any object exposing `__len__`, `model_max_length` and (optionally) `time_features`.
        """
        problems = []
        n_tokens = len(tokenizer)
        if n_tokens > self.vocab_size:
            problems.append(
                f"the tokenizer has {n_tokens} tokens but `vocab_size` is {self.vocab_size}: set "
                f"`vocab_size >= {n_tokens}` (or call `model.resize_token_embeddings(len(tokenizer))`)"
            )
        if self.use_time_embeddings and not getattr(tokenizer, "time_features", False):
            problems.append(
                "`use_time_embeddings=True` but the tokenizer provides no visit times (`time_features` is False): "
                "use a tokenizer built with time features or set `use_time_embeddings=False`"
            )
        max_len = getattr(tokenizer, "model_max_length", None)
        if max_len is not None and max_len > self.max_position_embeddings:
            problems.append(
                f"`tokenizer.model_max_length` ({max_len}) exceeds `max_position_embeddings` "
                f"({self.max_position_embeddings}): lower the tokenizer's `model_max_length` or raise "
                "`max_position_embeddings`"
            )
        if problems:
            raise ValueError("Tokenizer and model config are incompatible: " + "; ".join(problems) + ".")


def _not_registered_here(custom_pipelines: dict[str, Any]) -> dict[str, Any]:
    """The `custom_pipelines` entries whose task this process has not registered.

    `pipeline()` prefers a config's `custom_pipelines` (remote code, which demands `trust_remote_code=True`) over the
    registry; where `import modeling_trajfm` registered the trajectory tasks, the registry must win.
    """
    pipelines = sys.modules.get("transformers.pipelines")
    registered = pipelines.PIPELINE_REGISTRY.get_supported_tasks() if pipelines is not None else []
    return {task: spec for task, spec in custom_pipelines.items() if task not in registered}


__all__ = ["TrajBertConfig"]
