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
"""PyTorch TrajBert: a BERT encoder over H3 sub-hash tokens with optional trajectory feature embeddings.

This file is copied next to saved weights (remote code): it only imports `transformers`, `torch` and, relatively,
`configuration_trajbert` and `pipelines` (imported so that the pipelines travel with every checkpoint too).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.masking_utils import create_bidirectional_mask, packed_sequence_mask_function
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_trajbert import TrajBertConfig
from .pipelines import custom_pipelines_for

logger = logging.get_logger(__name__)

#: Written into every saved config: transformers records only the class being saved, and `trust_remote_code` users
#: must be able to load every head and the tokenizer from any checkpoint.
AUTO_MAP = {
    "AutoConfig": "configuration_trajbert.TrajBertConfig",
    "AutoModel": "modeling_trajbert.TrajBertModel",
    "AutoModelForMaskedLM": "modeling_trajbert.TrajBertForMaskedTrajectoryModeling",
    "AutoModelForSequenceClassification": "modeling_trajbert.TrajBertForSequenceClassification",
    "AutoTokenizer": ["tokenization_trajfm.TrajTokenizer", None],
}


def packed_position_ids(sequence_ids: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 wherever `sequence_ids` changes: each packed trajectory is numbered as if alone."""
    index = torch.arange(sequence_ids.shape[-1], device=sequence_ids.device).expand_as(sequence_ids)
    starts = torch.ones_like(sequence_ids, dtype=torch.bool)
    starts[:, 1:] = sequence_ids[:, 1:] != sequence_ids[:, :-1]
    return index - torch.where(starts, index, 0).cummax(dim=-1).values


#: `pair_match_ids` compares every token with every hexagon, so it works on as many rows at a time as keep each
#: (rows, seq, seq + 1) tensor under this many elements (32 MB as int64): memory stays flat in the batch size.
PAIR_MATCH_CHUNK_ELEMENTS = 1 << 22


def pair_match_ids(input_ids: torch.Tensor, hexagon_ids: torch.Tensor, token_type_ids: torch.Tensor,
                   chunk_rows: int | None = None) -> torch.Tensor:
    """1 on the tokens of each hexagon whose cell (its exact sub-token spelling) the other segment of the row also
    visits, else 0: the exact-match feature of reading-comprehension models. A cross encoder would otherwise have to
    find shared cells by attending across sub-tokens, which the pair classifiers did not learn from ~1,200 NYC pairs.
    Hexagons are numbered across the row as TrajTokenizer numbers a pair (B's continue from A's); rows without a
    second segment (`token_type_ids` all 0) get no match. Rows are matched `chunk_rows` at a time (None: as many as
    `PAIR_MATCH_CHUNK_ELEMENTS` allows). Shapes depend only on the input's, with no host sync, so the model compiles
    as one graph (`torch.compile(fullgraph=True)`)."""
    seq_length = input_ids.shape[1]
    if chunk_rows is None:
        chunk_rows = max(1, PAIR_MATCH_CHUNK_ELEMENTS // max(1, seq_length * (seq_length + 1)))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}.")
    chunks = zip(input_ids.split(chunk_rows), hexagon_ids.split(chunk_rows), token_type_ids.split(chunk_rows))
    return torch.cat([_pair_match_rows(*chunk) for chunk in chunks])


def _pair_match_rows(input_ids: torch.Tensor, hexagon_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
    """`pair_match_ids` of a few rows: memory O(rows * seq^2)."""
    batch_size, seq_length = input_ids.shape
    device = input_ids.device
    is_hexagon = hexagon_ids > 0
    hexagon_ids = hexagon_ids.long()
    n_hexagons = seq_length + 1  # numbered from 1, at most one per token; slot 0 collects the special tokens
    positions = torch.arange(seq_length, device=device).expand(batch_size, seq_length)
    first = torch.full((batch_size, n_hexagons), seq_length, device=device, dtype=torch.long)
    first = first.scatter_reduce(1, hexagon_ids, positions, "amin")
    length = torch.zeros((batch_size, n_hexagons), device=device, dtype=torch.int32)
    length = length.scatter_add(1, hexagon_ids, is_hexagon.int())  # 0 for slot 0 and unused numbers
    within = positions - first.gather(1, hexagon_ids)  # a token's place inside its hexagon
    # agrees[b, t, g]: token t equals the token at t's place inside hexagon g (clamped; lengths settle overruns).
    place = (first[:, None, :] + within[:, :, None]).clamp(max=seq_length - 1)
    at_place = input_ids.gather(1, place.view(batch_size, seq_length * n_hexagons)).view(place.shape)
    agrees = at_place == input_ids[:, :, None]
    # Two hexagons are spelt alike when they are as long and each token of one agrees with the other. Special tokens
    # count into slot 0, whose length is 0, so it is never alike with a real hexagon.
    agreeing = torch.zeros((batch_size, n_hexagons, n_hexagons), device=device, dtype=torch.int32)
    agreeing = agreeing.scatter_add(1, hexagon_ids[:, :, None].expand_as(agrees), agrees.int())
    same = (agreeing == length[:, :, None]) & (length[:, :, None] == length[:, None, :])
    segment = torch.zeros((batch_size, n_hexagons), device=device, dtype=torch.long)
    segment = segment.scatter(1, hexagon_ids, token_type_ids.long())
    across = (segment[:, :, None] != segment[:, None]) & (length > 0)[:, None, :]
    matched = (same & across).any(-1).long()
    return matched.gather(1, hexagon_ids) * is_hexagon


class TrajBertEmbeddings(nn.Module):
    """Word + position + segment embeddings (exactly BERT's), plus optional trajectory feature embeddings.

    Every feature table uses `padding_idx=0`, so id 0 (special tokens, padding, unknown time) adds a zero vector and
    the feature only acts where the tokenizer provided it.
    """

    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # A sequence of max_position_embeddings tokens has at most that many hexagons, numbered from 1.
        self.hexagon_embeddings = (
            nn.Embedding(config.max_position_embeddings + 1, config.hidden_size, padding_idx=0)
            if config.use_hexagon_embeddings
            else None
        )
        self.level_embeddings = (
            nn.Embedding(config.max_levels, config.hidden_size, padding_idx=0) if config.use_level_embeddings else None
        )
        if config.use_time_embeddings:
            self.hour_embeddings = nn.Embedding(config.num_hour_buckets, config.hidden_size, padding_idx=0)
            self.gap_embeddings = nn.Embedding(config.num_gap_buckets, config.hidden_size, padding_idx=0)
        else:
            self.hour_embeddings = None
            self.gap_embeddings = None
        # Row 1: "the other segment of the pair visits this hexagon too" (row 0, every other token, adds nothing).
        self.match_embeddings = (
            nn.Embedding(2, config.hidden_size, padding_idx=0) if config.use_match_embeddings else None
        )

        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)
        self.token_type_ids = nn.Buffer(torch.zeros(self.position_ids.size(), dtype=torch.long), persistent=False)

    @staticmethod
    def _lookup(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        # Clamp instead of crashing: a longer-than-expected trajectory or a deeper H3 level maps to the last row.
        return table(ids.clamp(0, table.num_embeddings - 1))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        hexagon_ids: torch.LongTensor | None = None,
        level_ids: torch.LongTensor | None = None,
        hour_ids: torch.LongTensor | None = None,
        gap_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        input_shape = input_ids.size() if input_ids is not None else inputs_embeds.size()[:-1]
        batch_size, seq_length = input_shape

        if position_ids is None:
            position_ids = self.position_ids[:, :seq_length]
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq_length].expand(batch_size, seq_length)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)

        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        # Features are ignored when their table is off, so one collator output feeds every model variant. A missing
        # feature whose table is on reads as all-0 ("unknown", a zero row): the table still takes part in the graph,
        # which DDP without `find_unused_parameters` needs (otherwise gradients are silently not all-reduced).
        for table, ids in (
            (self.hexagon_embeddings, hexagon_ids),
            (self.level_embeddings, level_ids),
            (self.hour_embeddings, hour_ids),
            (self.gap_embeddings, gap_ids),
        ):
            if table is not None:
                if ids is None:
                    ids = self.token_type_ids[:, :seq_length].expand(batch_size, seq_length)  # zeros buffer
                embeddings = embeddings + self._lookup(table, ids)
        if self.match_embeddings is not None:
            matches = torch.zeros_like(token_type_ids)
            if input_ids is not None and hexagon_ids is not None:
                matches = pair_match_ids(input_ids, hexagon_ids, token_type_ids)
            elif bool((token_type_ids == 1).any()):
                raise ValueError("`use_match_embeddings` finds a pair's shared cells from `input_ids` and "
                                 "`hexagon_ids`: pass both (TrajTokenizer returns them), not `inputs_embeds`.")
            embeddings = embeddings + self.match_embeddings(matches)

        embeddings = self.LayerNorm(embeddings)
        embeddings = self.dropout(embeddings)
        return embeddings


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; the only implementation that returns attention probabilities."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class TrajBertSelfAttention(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.scaling = self.attention_head_size**-0.5

        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        # SDPA defaults to causal when this attribute is missing: an encoder must say it is not.
        self.is_causal = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)

        query_layer = self.query(hidden_states).view(hidden_shape).transpose(1, 2)
        key_layer = self.key(hidden_states).view(hidden_shape).transpose(1, 2)
        value_layer = self.value(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_layer,
            key_layer,
            value_layer,
            attention_mask,
            dropout=0.0 if not self.training else self.dropout.p,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return attn_output, attn_weights


class TrajBertSelfOutput(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.LayerNorm(hidden_states + input_tensor)


class TrajBertAttention(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.self = TrajBertSelfAttention(config)
        self.output = TrajBertSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, attn_weights = self.self(hidden_states, attention_mask=attention_mask, **kwargs)
        attention_output = self.output(attention_output, hidden_states)
        return attention_output, attn_weights


class TrajBertIntermediate(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class TrajBertOutput(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.LayerNorm(hidden_states + input_tensor)


class TrajBertLayer(GradientCheckpointingLayer):
    """One post-LN transformer block; a `GradientCheckpointingLayer` so activation checkpointing can wrap it."""

    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.attention = TrajBertAttention(config)
        self.intermediate = TrajBertIntermediate(config)
        self.output = TrajBertOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attention_output), attention_output)


class TrajBertEncoder(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([TrajBertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class TrajBertPooler(nn.Module):
    """BERT pooler: tanh(dense([CLS] hidden state)), the sequence summary used by classification."""

    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


def hexagon_mean_pool(hidden_states: torch.Tensor, hexagon_ids: torch.Tensor | None) -> torch.Tensor:
    """Mean hidden state over the tokens of hexagons (`hexagon_ids > 0`), so that special tokens and padding, whose
    share varies with the length of the trajectory, do not dilute the summary."""
    if hexagon_ids is None:
        raise ValueError("`classifier_pooling='mean'` needs `hexagon_ids` (TrajTokenizer returns them).")
    mask = (hexagon_ids > 0).to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
                                ) -> torch.Tensor:
    """Supervised InfoNCE (SupCon, Khosla et al. 2020): for each row with at least one positive (same label), the mean
    over its positives of -log softmax of cosine / `temperature` against every other row. Rows without a positive
    give no signal (0 when none has one)."""
    z = nn.functional.normalize(embeddings.float(), dim=1)
    self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = (z @ z.T / temperature).masked_fill(self_pairs, -torch.inf).log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_pairs
    anchors = positives.any(dim=1)
    if not anchors.any():
        return embeddings.sum() * 0.0
    per_anchor = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[anchors] / positives.sum(dim=1)[anchors]
    return -per_anchor.mean()


def siamese_inputs(token_type_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                   hexagon_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(sequence_ids, position_ids, token_type_ids, hexagon_ids)` that make one forward over `[CLS] A [SEP] B [SEP]`
    encode `A [SEP]` and `B [SEP]` by the same function: each segment its own packed sequence (attention stays inside
    it; [CLS] alone in a third, so A does not see a token B lacks), both numbered from position 1 as after a [CLS],
    every token of segment type 0, and B's visits numbered from 1 (the tokenizer numbers them on from A's)."""
    if token_type_ids is None or hexagon_ids is None:
        raise ValueError("`pair_encoding='siamese'` needs `token_type_ids` and `hexagon_ids` of pairs (TrajTokenizer "
                         "called with `pair_cells` returns them).")
    segment_b = token_type_ids == 1
    if not torch.compiler.is_compiling() and not bool(((segment_b & (hexagon_ids > 0)).any(dim=1)).all()):
        raise ValueError("`pair_encoding='siamese'` reads trajectory pairs: every row needs hexagons in segment B "
                         "(`token_type_ids` 1); encode single trajectories with `pair_encoding='cross'`.")
    present = torch.ones_like(token_type_ids) if attention_mask is None else (attention_mask > 0).long()
    segments = (token_type_ids + 1) * present
    positions = packed_position_ids(segments) + token_type_ids
    cls = (positions == 0) & (segments == 1)
    sequence_ids = torch.where(cls, 3, segments)
    last_of_a = torch.where(segment_b, 0, hexagon_ids).amax(dim=1, keepdim=True)
    hexagons = torch.where(segment_b & (hexagon_ids > 0), hexagon_ids - last_of_a, hexagon_ids)
    return sequence_ids, positions, torch.zeros_like(token_type_ids), hexagons


class TrajBertPredictionHeadTransform(nn.Module):
    """dense + activation + LayerNorm, mapping hidden states into the space of the (tied) word embeddings."""

    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class TrajBertLMPredictionHead(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.transform = TrajBertPredictionHeadTransform(config)
        # The decoder weight is tied to the input word embeddings; the bias is output-only.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class TrajBertOnlyMTMHead(nn.Module):
    def __init__(self, config: TrajBertConfig):
        super().__init__()
        self.predictions = TrajBertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class TrajBertHexagonHead(nn.Module):
    """Scores a fixed set of candidate cells against the [CLS] state, through the shared word embeddings.

    Holds the padded candidate sub-token matrix as non-persistent buffers rebuilt from `config.hexagon_candidates`,
    so a saved model reloads exactly and the candidate set lives in the config (next to `id2label`).
    """

    def __init__(self, config: TrajBertConfig):
        super().__init__()
        if not config.hexagon_candidates:
            raise ValueError(
                "TrajBertForHexagonPrediction needs `config.hexagon_candidates`: one list of sub-token ids per "
                "candidate cell (and `id2label` with the cell strings in the same order)."
            )
        self.transform = TrajBertPredictionHeadTransform(config)
        candidate_ids, candidate_mask = self.build_candidates(config.hexagon_candidates)
        self.bias = nn.Parameter(torch.zeros(candidate_ids.shape[0]))
        self.candidate_ids = nn.Buffer(candidate_ids, persistent=False)
        self.candidate_mask = nn.Buffer(candidate_mask, persistent=False)

    @staticmethod
    def build_candidates(candidates: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad the candidates' sub-token id lists into a `(num_candidates, max_len)` id matrix and 0/1 mask."""
        max_len = max(len(ids) for ids in candidates)
        candidate_ids = torch.zeros(len(candidates), max_len, dtype=torch.long)
        candidate_mask = torch.zeros(len(candidates), max_len)
        for i, ids in enumerate(candidates):
            candidate_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            candidate_mask[i, : len(ids)] = 1.0
        return candidate_ids, candidate_mask

    def candidate_embeddings(self, word_embeddings: nn.Embedding) -> torch.Tensor:
        """Mean of the word embeddings of each candidate's sub-tokens: `(num_candidates, hidden_size)`."""
        embeds = word_embeddings(self.candidate_ids)
        mask = self.candidate_mask.to(embeds.dtype).unsqueeze(-1)
        return (embeds * mask).sum(dim=1) / mask.sum(dim=1)

    def forward(self, cls_hidden_state: torch.Tensor, word_embeddings: nn.Embedding) -> torch.Tensor:
        query = self.transform(cls_hidden_state)
        return query @ self.candidate_embeddings(word_embeddings).T + self.bias


class TrajBertPreTrainedModel(PreTrainedModel):
    """Weight init, attention-backend support and output capture shared by every TrajBert model."""

    config_class = TrajBertConfig
    config: TrajBertConfig
    base_model_prefix = "trajbert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["TrajBertEmbeddings", "TrajBertLayer"]
    _can_record_outputs = {
        "hidden_states": TrajBertLayer,
        "attentions": TrajBertSelfAttention,
    }

    def post_init(self) -> None:
        super().post_init()
        self._complete_config()

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained` (also what Trainer and `push_to_hub` call) with a complete `auto_map` and
        this head's trajectory pipelines in `config.json`, so remote-code users can load every head and pipeline."""
        self._complete_config()
        super().save_pretrained(save_directory, *args, **kwargs)

    def _complete_config(self) -> None:
        # Entries already there win: a checkpoint loaded from the Hub keeps its "repo--module.Class" references.
        self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        self.config.custom_pipelines = custom_pipelines_for(type(self).__name__)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (TrajBertLMPredictionHead, TrajBertHexagonHead)):
            init.zeros_(module.bias)
        if isinstance(module, TrajBertEmbeddings):
            # Non-persistent buffers are not in the checkpoint: rebuild them (models are created on the meta device).
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        elif isinstance(module, TrajBertHexagonHead):
            candidate_ids, candidate_mask = module.build_candidates(self.config.hexagon_candidates)
            init.copy_(module.candidate_ids, candidate_ids)
            init.copy_(module.candidate_mask, candidate_mask)


class TrajBertModel(TrajBertPreTrainedModel):
    """The bare TrajBert encoder; returns hidden states and, where it was trained, the BERT-style pooled [CLS] output.

    Unlike BERT (whose pooler is trained by next-sentence prediction), MTM pre-training never trains a pooler, so
    `add_pooling_layer` defaults to `config.add_pooling_layer`: off for an MTM checkpoint (`pooler_output` is None
    rather than random; average the hexagon tokens, as the trajectory-feature-extraction pipeline does), on for a
    fine-tuned classifier, whose pooler is trained. The choice is written back into the config.
    """

    def __init__(self, config: TrajBertConfig, add_pooling_layer: bool | None = None):
        super().__init__(config)
        self.config = config
        if add_pooling_layer is not None:
            config.add_pooling_layer = add_pooling_layer
        self.embeddings = TrajBertEmbeddings(config)
        self.encoder = TrajBertEncoder(config)
        self.pooler = TrajBertPooler(config) if config.add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        hexagon_ids: torch.Tensor | None = None,
        level_ids: torch.Tensor | None = None,
        hour_ids: torch.Tensor | None = None,
        gap_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor] | BaseModelOutputWithPooling:
        r"""
        hexagon_ids / level_ids / hour_ids / gap_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Per-token trajectory features from `TrajTokenizer` (0 on special tokens and padding). Each is used only
            when its embedding is enabled in the config, and ignored otherwise.
        sequence_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            For rows packing several trajectories (`modeling_trajfm.packing.pack_trajectories`): which trajectory of
            the row each token belongs to (1, 2, ..., 0 on padding). Attention stays inside each trajectory and
            positions restart at 0 for each one (unless `position_ids` is given), so every trajectory is encoded as
            if it were alone.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        packed_mask = None
        if sequence_ids is not None:
            if self.config._attn_implementation.startswith("flash"):
                # Flash attention masks only padding: the trajectories of a row would attend to each other.
                raise ValueError("Packed rows (`sequence_ids`) need sdpa, eager or flex attention, not flash.")
            packed_mask = packed_sequence_mask_function(sequence_ids)
            if position_ids is None:
                position_ids = packed_position_ids(sequence_ids)

        embedding_output = self.embeddings(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            hexagon_ids=hexagon_ids,
            level_ids=level_ids,
            hour_ids=hour_ids,
            gap_ids=gap_ids,
        )
        attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=embedding_output,
            attention_mask=attention_mask,
            and_mask_function=packed_mask,
        )
        encoder_outputs = self.encoder(embedding_output, attention_mask=attention_mask, **kwargs)
        sequence_output = encoder_outputs.last_hidden_state
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


@dataclass
class TrajBertMaskedTrajectoryModelingOutput(MaskedLMOutput):
    """`MaskedLMOutput` plus the contrastive and visible-token terms before weighting (`None` when off, or when the
    batch has no views or the model is not training), so that training can log them beside the loss they are part
    of."""

    contrastive_loss: torch.FloatTensor | None = None
    visible_token_loss: torch.FloatTensor | None = None


class TrajBertForMaskedTrajectoryModeling(TrajBertPreTrainedModel):
    """TrajBert with BERT's masked-LM head, for masked trajectory modeling (whole-hexagon masking) pre-training.

    The loss honours Trainer's `num_items_in_batch`, so under DDP it is the per-token mean over the global batch and
    is not scaled by the number of processes.

    With `config.sparse_prediction` and `labels`, the head (transform + vocabulary decoder, the largest matmul of a
    step at a 30k vocabulary) runs only at the labelled positions: `logits` are then `(num_labelled_tokens,
    vocab_size)`, rows in the order of `labels != -100` (row-major), and `preprocess_logits_for_mtm_metrics` scatters
    them back for evaluation metrics. Calls without `labels` (fill-mask, embeddings) always get full logits.
    """

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "trajbert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }

    def __init__(self, config: TrajBertConfig):
        super().__init__(config)
        # Not derivable from the class name; without it `loss_function` would fall back to the shifted causal loss.
        self.loss_type = "ForMaskedLM"
        self.trajbert = TrajBertModel(config, add_pooling_layer=False)
        self.cls = TrajBertOnlyMTMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        hexagon_ids: torch.Tensor | None = None,
        level_ids: torch.Tensor | None = None,
        hour_ids: torch.Tensor | None = None,
        gap_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        view_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor] | TrajBertMaskedTrajectoryModelingOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Original token ids at masked positions, -100 elsewhere (what `DataCollatorForWholeHexagonMasking` returns).
        sequence_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Trajectory index of each token in packed rows (see [`TrajBertModel`]).
        view_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Which trajectory each row is a view of, for the contrastive term (`DataCollatorForWholeHexagonMasking`
            with `views=2` returns them); ignored when `config.contrastive_weight` is 0.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.trajbert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            hexagon_ids=hexagon_ids,
            level_ids=level_ids,
            hour_ids=hour_ids,
            gap_ids=gap_ids,
            inputs_embeds=inputs_embeds,
            sequence_ids=sequence_ids,
            return_dict=True,
            **kwargs,
        )
        sequence_output = outputs.last_hidden_state
        contrastive = None
        if labels is not None and view_ids is not None and self.config.contrastive_weight > 0:
            if sequence_ids is not None:
                raise ValueError("The contrastive term needs one trajectory per row: do not pack sequences with it.")
            pooled = hexagon_mean_pool(sequence_output, hexagon_ids)
            contrastive = supervised_contrastive_loss(pooled, view_ids.to(pooled.device),
                                                      self.config.contrastive_temperature)
        visible_token = None
        if labels is not None and self.training and self.config.visible_token_weight > 0:
            visible_token = self._visible_token_loss(sequence_output, input_ids, labels, hexagon_ids)
        if self.config.sparse_prediction and labels is not None:
            labels = labels.to(sequence_output.device)
            labelled = labels != -100
            sequence_output, labels = sequence_output[labelled], labels[labelled]
        prediction_scores = self.cls(sequence_output)

        loss = None
        if labels is not None:
            # Explicit masked-LM loss: `self.loss_function` would pick the (shifted) causal loss for this class name.
            loss = ForMaskedLMLoss(
                prediction_scores, labels, self.config.vocab_size, num_items_in_batch=num_items_in_batch
            )
            # Under DDP the MTM loss is a share of the global batch's mean; the per-batch terms are scaled alike.
            share = 1.0 if num_items_in_batch is None else (labels != -100).sum() / num_items_in_batch
            if contrastive is not None:
                loss = loss + self.config.contrastive_weight * contrastive * share
            if visible_token is not None:
                loss = loss + self.config.visible_token_weight * visible_token * share

        return TrajBertMaskedTrajectoryModelingOutput(
            loss=loss,
            logits=prediction_scores,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            contrastive_loss=None if contrastive is None else contrastive.detach(),
            visible_token_loss=None if visible_token is None else visible_token.detach(),
        )

    def _visible_token_loss(self, sequence_output: torch.Tensor, input_ids: torch.Tensor | None, labels: torch.Tensor,
                            hexagon_ids: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy of the MTM head predicting each visible hexagon token (not masked, not special, not
        padding: `labels == -100` and `hexagon_ids > 0`) as itself."""
        if input_ids is None or hexagon_ids is None:
            raise ValueError("The visible-token term needs `input_ids` and `hexagon_ids` (what "
                             "DataCollatorForWholeHexagonMasking returns).")
        visible = (labels.to(sequence_output.device) == -100) & (hexagon_ids.to(sequence_output.device) > 0)
        if not visible.any():  # every hexagon masked: nothing to predict
            return sequence_output.new_zeros(())
        scores = self.cls(sequence_output[visible])
        return nn.functional.cross_entropy(scores.float(), input_ids.to(sequence_output.device)[visible])


class TrajBertForSequenceClassification(TrajBertPreTrainedModel):
    """Pooled [CLS] (or, with `config.classifier_pooling="mean"`, the mean over hexagon tokens) → dropout → linear,
    with BERT's regression / single-label / multi-label losses.

    Trajectory pairs are encoded as `[CLS] A [SEP] B [SEP]` with `token_type_ids`; with `config.pair_encoding=
    "siamese"` A and B are encoded apart (see `siamese_inputs`) and the head reads [u, v, |u - v|, u * v] of their
    mean-pooled states.
    """

    # The loss is a plain mean: Trainer must not rescale it by num_items_in_batch / world size.
    accepts_loss_kwargs = False

    def __init__(self, config: TrajBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.siamese = config.pair_encoding == "siamese"
        # Mean pooling reads the hidden states directly: no pooler, so no parameter without a gradient (DDP).
        self.trajbert = TrajBertModel(config, add_pooling_layer=config.classifier_pooling == "cls" and not self.siamese)
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size * (4 if self.siamese else 1), config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        hexagon_ids: torch.Tensor | None = None,
        level_ids: torch.Tensor | None = None,
        hour_ids: torch.Tensor | None = None,
        gap_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor] | SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor` of shape `(batch_size,)` or `(batch_size, num_labels)`, *optional*):
            Class ids (single label), floats (regression) or multi-hot floats (multi-label); see `config.problem_type`.
        """
        kwargs.pop("num_items_in_batch", None)
        segments, encoder_hexagon_ids = token_type_ids, hexagon_ids
        if self.siamese:
            if position_ids is not None:
                raise ValueError("`pair_encoding='siamese'` numbers each segment's positions itself: do not pass "
                                 "`position_ids`.")
            if self.config._attn_implementation.startswith("flash"):
                raise ValueError("`pair_encoding='siamese'` keeps attention inside each segment, which flash "
                                 "attention cannot mask: load the model with attn_implementation='sdpa' or 'eager'.")
            kwargs["sequence_ids"], position_ids, token_type_ids, encoder_hexagon_ids = siamese_inputs(
                token_type_ids, attention_mask, hexagon_ids)
            if gap_ids is not None:  # encoded apart, B's first visit has no visit before it (the tokenizer gave A's)
                gap_ids = gap_ids.masked_fill((segments == 1) & (encoder_hexagon_ids == 1), 0)
        outputs = self.trajbert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            hexagon_ids=encoder_hexagon_ids,
            level_ids=level_ids,
            hour_ids=hour_ids,
            gap_ids=gap_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        if self.siamese:
            hidden = outputs.last_hidden_state
            u = hexagon_mean_pool(hidden, torch.where(segments == 0, hexagon_ids, 0))
            v = hexagon_mean_pool(hidden, torch.where(segments == 1, hexagon_ids, 0))
            pooled = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        elif self.config.classifier_pooling == "mean":
            pooled = hexagon_mean_pool(outputs.last_hidden_state, hexagon_ids)
        else:
            pooled = outputs.pooler_output
        logits = self.classifier(self.dropout(pooled))

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif self.num_labels > 1 and (labels.dtype == torch.long or labels.dtype == torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"

            if self.config.problem_type == "regression":
                loss_fct = MSELoss()
                if self.num_labels == 1:
                    loss = loss_fct(logits.squeeze(), labels.squeeze())
                else:
                    loss = loss_fct(logits, labels)
            elif self.config.problem_type == "single_label_classification":
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            elif self.config.problem_type == "multi_label_classification":
                loss = BCEWithLogitsLoss()(logits, labels)

        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class TrajBertForHexagonPrediction(TrajBertPreTrainedModel):
    """Predicts one H3 cell (destination, next location) from a fixed candidate set kept in the config.

    `config.hexagon_candidates[i]` lists the sub-token ids of candidate cell `i` (`config.id2label[i]` is its cell
    string). A candidate's embedding is the mean of the input word embeddings of its sub-tokens (shared with the
    encoder, so pre-trained sub-hash embeddings are used directly and cells sharing sub-hashes share statistical
    strength); the query is the MTM-style transform (dense + activation + LayerNorm) of the [CLS] hidden state (or,
    with `config.classifier_pooling="mean"`, of the mean over hexagon tokens, after `config.classifier_dropout`);
    logits are `query @ candidates.T + bias` and the loss is cross entropy over candidates.

    It is a sequence classifier over candidate cells (`SequenceClassifierOutput`, `id2label`), so
    `AutoModelForSequenceClassification` loads it from a checkpoint whose `architectures` name it (remote code: the
    checkpoint's `auto_map` points that Auto class here), and TrajBertForSequenceClassification from any other.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: TrajBertConfig):
        super().__init__(config)
        self.num_labels = len(config.hexagon_candidates) if config.hexagon_candidates else 0
        self.trajbert = TrajBertModel(config, add_pooling_layer=False)
        self.hexagon_head = TrajBertHexagonHead(config)
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        hexagon_ids: torch.Tensor | None = None,
        level_ids: torch.Tensor | None = None,
        hour_ids: torch.Tensor | None = None,
        gap_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor] | SequenceClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Index of the true cell in `config.hexagon_candidates` (-100 to ignore an example).
        """
        kwargs.pop("num_items_in_batch", None)
        outputs = self.trajbert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            hexagon_ids=hexagon_ids,
            level_ids=level_ids,
            hour_ids=hour_ids,
            gap_ids=gap_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        if self.config.classifier_pooling == "mean":
            summary = hexagon_mean_pool(outputs.last_hidden_state, hexagon_ids)
        else:
            summary = outputs.last_hidden_state[:, 0]
        logits = self.hexagon_head(self.dropout(summary), self.trajbert.get_input_embeddings())

        loss = None
        if labels is not None:
            loss = CrossEntropyLoss()(logits.float(), labels.to(logits.device).view(-1))

        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "TrajBertPreTrainedModel",
    "TrajBertModel",
    "TrajBertForMaskedTrajectoryModeling",
    "TrajBertForSequenceClassification",
    "TrajBertForHexagonPrediction",
]
