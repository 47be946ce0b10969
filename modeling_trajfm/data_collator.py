"""Collators for TrajBert: whole-hexagon masking for pre-training and plain padding for fine-tuning.

They rely only on `tokenizer.pad_token_id`, `tokenizer.mask_token_id`, `len(tokenizer)` and `tokenizer.all_special_ids`,
so any tokenizer exposing those works.
"""

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tokenization_trajfm.tokenization_trajfm import FEATURE_KEYS

#: What the contrastive term's positives are (`DataCollatorForWholeHexagonMasking.positives`).
CONTRASTIVE_POSITIVES = ("views", "user")
#: What each view of a trajectory shows (`DataCollatorForWholeHexagonMasking.view_kind`).
CONTRASTIVE_VIEWS = ("masked", "pieces")

#: Per-token keys of the TrajTokenizer output (see docs/design.md) plus `sequence_ids` of packed rows
#: (`modeling_trajfm.packing`); all are padded, `input_ids` with the PAD id, the others with 0.
TOKEN_FEATURE_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids", *FEATURE_KEYS, "sequence_ids")


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):  # numpy
        return value.tolist()
    return list(value)


def _padded_width(longest: int, pad_to_multiple_of: int | None) -> int:
    """The padded length of a batch whose longest row has `longest` tokens."""
    return -(-longest // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else longest


def pad_trajectory_features(
    features: Sequence[Mapping[str, Any]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad every known per-token key to the longest sequence (rounded up to `pad_to_multiple_of`).

    `input_ids` is padded with `pad_token_id`, every other feature with 0 (the "special / padding" id of the extra
    embeddings). An `attention_mask` is built from the lengths if the features have none.
    """
    if len(features) == 0:
        raise ValueError("Cannot collate an empty list of features.")
    if "input_ids" not in features[0]:
        raise ValueError(f"Features need an `input_ids` entry; got keys {sorted(features[0].keys())}.")
    rows = {key: [_as_list(f[key]) for f in features] for key in TOKEN_FEATURE_KEYS if key in features[0]}
    lengths = [len(ids) for ids in rows["input_ids"]]
    if "attention_mask" not in rows:
        rows["attention_mask"] = [[1] * n for n in lengths]
    max_len = _padded_width(max(lengths), pad_to_multiple_of)

    batch = {}
    for key, values in rows.items():
        pad_value = pad_token_id if key == "input_ids" else 0
        tensor = torch.full((len(values), max_len), pad_value, dtype=torch.long)
        for i, row in enumerate(values):
            if len(row) != lengths[i]:
                raise ValueError(
                    f"Feature `{key}` of example {i} has {len(row)} entries but `input_ids` has {lengths[i]}: "
                    "every per-token feature needs one entry per token."
                )
            if row:
                tensor[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        batch[key] = tensor
    return batch


@dataclass
class DataCollatorWithTrajectoryPadding:
    """Pads all per-token trajectory features for fine-tuning; stacks `labels` (or `label`) if present.

    Integer labels become `torch.long` (classification, hexagon index), floats `torch.float` (regression, multi-hot).
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_trajectory_features(features, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        label_key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if label_key is not None:
            labels = [f[label_key] for f in features]
            if isinstance(labels[0], torch.Tensor):
                batch["labels"] = torch.stack(labels)
            else:
                flat = labels[0][0] if isinstance(labels[0], (list, tuple)) and labels[0] else labels[0]
                dtype = torch.float if isinstance(flat, (float, np.floating)) else torch.long
                batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


@dataclass
class DataCollatorForWholeHexagonMasking:
    """Pads trajectories and masks whole hexagons (visits) for masked trajectory modeling.

    Per sequence, each hexagon (a distinct `hexagon_ids` value > 0) is chosen with probability `mlm_probability`, and at
    least one is chosen when the sequence has any; in packed rows (with `sequence_ids`) each trajectory counts as a
    sequence, so masking is the same as without packing. All sub-tokens of a chosen hexagon get `labels` = original id
    (-100 elsewhere); per chosen hexagon, `mask_replace_prob` of them become all `[MASK]`, `random_replace_prob` all
    random non-special tokens, the rest stay unchanged. Masking a whole hexagon stops the model from reading a cell off
    its own coarser sub-tokens. The hexagon / level / hour / gap features stay visible: the model knows when, not where.

    Args:
        tokenizer: anything with `pad_token_id`, `mask_token_id`, `all_special_ids` and `__len__`.
        mlm_probability: chance of choosing each hexagon, in (0, 1).
        mask_span: hexagons are chosen in runs of this many consecutive ones (cut at the trajectory's end): each
            hexagon starts a run with chance `mlm_probability / mask_span`, so about `mlm_probability` of them are
            chosen (a little less where runs overlap). With 1, the default, hexagons are chosen one by one. Along a
            GPS track a lone masked cell lies between its two visible neighbours; a masked run asks which way the
            trajectory went.
        mask_replace_prob / random_replace_prob: shares of chosen hexagons replaced by `[MASK]` / random tokens.
        pad_to_multiple_of: round the padded length up to a multiple of this.
        seed: seed of a private `torch.Generator` (reproducible masks); `generator` may be passed instead.
        reseed_per_batch: draw each batch's masks from a generator seeded by (`seed`, `epoch`, the batch's ids), so
            the masks are a function of the batch alone: a resumed run masks exactly as an uninterrupted one, however
            far ahead the data loader prefetched or which RNG draws happened before (set `epoch` each epoch).
        views: rows per trajectory, each masked independently (adjacent rows); with 2 or more the batch also carries
            `view_ids` (which trajectory a row shows), what the MTM model's contrastive term needs
            (`config.contrastive_weight`). Not for packed rows.
        positives: which rows the contrastive term treats as positives of each other, through `view_ids`: `"views"`
            (the views of one trajectory) or `"user"` (every row of the same user in the batch: features need
            `user_id`; batches of same-user pairs, `BucketedLengthSampler(users=...)`, give every trajectory at
            least its other view and its partner's views).
        view_kind: what a view shows: `"masked"` (the whole trajectory; views differ by their masks) or `"pieces"`
            (view j is the j-th of `views` disjoint runs of the trajectory's hexagons, cut near equal shares and
            renumbered as a trajectory of its own, then masked). Two masked copies of a long GPS trajectory share most
            of their cells, so telling them from the batch's other rows is solved by shared tokens; disjoint pieces
            share few, and matching them needs what one trajectory's parts have in common. A trajectory with fewer
            hexagons than `views` shows all of them in every view.
    """

    tokenizer: Any
    mlm_probability: float = 0.2
    mask_span: int = 1
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    pad_to_multiple_of: int | None = None
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False)
    reseed_per_batch: bool = False
    epoch: int = 0
    views: int = 1
    positives: str = "views"
    view_kind: str = "masked"

    def __post_init__(self) -> None:
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"`mlm_probability` must be in (0, 1), got {self.mlm_probability}.")
        if self.mask_span < 1:
            raise ValueError(f"`mask_span` must be at least 1 (hexagons per masked run), got {self.mask_span}.")
        for name in ("mask_replace_prob", "random_replace_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        if self.mask_replace_prob + self.random_replace_prob > 1 + 1e-9:
            raise ValueError(
                f"`mask_replace_prob` + `random_replace_prob` must be <= 1 (the rest stays unchanged), got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}."
            )
        if self.tokenizer.mask_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs a mask token and a pad token for whole-hexagon masking.")
        if self.views < 1:
            raise ValueError(f"`views` must be at least 1, got {self.views}.")
        if self.positives not in CONTRASTIVE_POSITIVES:
            raise ValueError(f"`positives` must be one of {', '.join(CONTRASTIVE_POSITIVES)}, got {self.positives!r}.")
        if self.positives == "user" and self.views < 2:
            raise ValueError("`positives='user'` labels the views of the contrastive term: it needs `views` >= 2.")
        if self.view_kind not in CONTRASTIVE_VIEWS:
            raise ValueError(f"`view_kind` must be one of {', '.join(CONTRASTIVE_VIEWS)}, got {self.view_kind!r}.")
        if self.view_kind == "pieces" and self.views < 2:
            raise ValueError("`view_kind='pieces'` cuts each trajectory into `views` pieces: it needs `views` >= 2.")
        if self.reseed_per_batch and self.seed is None:
            raise ValueError("`reseed_per_batch` needs a `seed`.")
        if self.generator is None and self.seed is not None:
            self.generator = torch.Generator().manual_seed(self.seed)
        special = set(self.tokenizer.all_special_ids)
        self._special_ids = torch.tensor(sorted(special), dtype=torch.long)
        # Random replacements are drawn from ordinary tokens only: a random [CLS]/[SEP] would corrupt the structure.
        self._random_pool = torch.tensor([i for i in range(len(self.tokenizer)) if i not in special], dtype=torch.long)
        if self.random_replace_prob > 0 and len(self._random_pool) == 0:
            raise ValueError("The tokenizer has no non-special tokens to use as random replacements.")

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.views > 1:
            if "sequence_ids" in features[0]:
                raise ValueError("Several views per trajectory need one trajectory per row: do not pack sequences.")
            features = [f for f in features for _ in range(self.views)]
        batch = pad_trajectory_features(features, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        if self.views > 1:
            batch["view_ids"] = self._view_ids(features)
        if "hexagon_ids" not in batch:
            raise ValueError("Whole-hexagon masking needs `hexagon_ids` in every feature (see docs/design.md).")
        if self.reseed_per_batch:
            digest = hashlib.blake2b(batch["input_ids"].numpy().tobytes(), digest_size=8,
                                     key=f"{self.seed}:{self.epoch}".encode()).digest()
            self.generator.manual_seed(int.from_bytes(digest, "little") >> 1)
        if self.view_kind == "pieces":
            batch = self._cut_into_pieces(batch)
        batch["input_ids"], batch["labels"] = self.mask_hexagons(
            batch["input_ids"], batch["hexagon_ids"], batch.get("sequence_ids")
        )
        return batch

    def _view_ids(self, features: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        if self.positives == "views":
            return torch.arange(len(features) // self.views).repeat_interleave(self.views)
        if "user_id" not in features[0]:
            raise ValueError("Same-user positives need a `user_id` in every feature: keep the column (the Trainer "
                             "drops columns the model does not read unless `MTMTrainer` is given this collator).")
        users: dict[str, int] = {}
        return torch.tensor([users.setdefault(str(f["user_id"]), len(users)) for f in features], dtype=torch.long)

    def _cut_into_pieces(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep in row j of each trajectory's `views` adjacent rows only its j-th run of hexagons (and [CLS] / [SEP]).

        Cut j falls at j / views of the trajectory's hexagons, moved by up to a quarter of a piece either way; every
        piece keeps at least one hexagon. Kept tokens move left, hexagons are renumbered from 1, and the first visit
        of a piece gets gap id 0, as the first visit of a trajectory does.
        """
        hexagon_ids = batch["hexagon_ids"]
        k = self.views
        n_hexagons = hexagon_ids.clamp(min=0).amax(dim=1).view(-1, k)[:, 0]  # per trajectory
        shift = self._rand(len(n_hexagons), k - 1) - 0.5
        targets = (n_hexagons[:, None] * (torch.arange(1, k) + shift / 2) / k).round().long()
        cuts = torch.zeros(len(n_hexagons), k + 1, dtype=torch.long)
        cuts[:, k] = n_hexagons
        for j in range(1, k):  # clamp in order so the pieces stay non-empty and in order
            cuts[:, j] = torch.minimum(torch.maximum(targets[:, j - 1], cuts[:, j - 1] + 1), n_hexagons - (k - j))
        piece = torch.arange(k).repeat(len(n_hexagons))[:, None]
        cuts = cuts.repeat_interleave(k, dim=0)
        whole = (n_hexagons < k).repeat_interleave(k)[:, None]  # too short to cut: every view shows all of it
        low = torch.where(whole, 0, cuts.gather(1, piece))
        high = torch.where(whole, cuts[:, k:], cuts.gather(1, piece + 1))
        special = (hexagon_ids <= 0) & batch["attention_mask"].bool()
        keep = ((hexagon_ids > low) & (hexagon_ids <= high)) | special
        order = torch.argsort((~keep).int(), dim=1, stable=True)
        lengths = keep.sum(dim=1)
        width = _padded_width(int(lengths.max()), self.pad_to_multiple_of)  # <= the batch's, padded the same way
        inside = torch.arange(width)[None, :] < lengths[:, None]
        out = {}
        for key, values in batch.items():
            if values.dim() < 2:
                out[key] = values
                continue
            pad = self.tokenizer.pad_token_id if key == "input_ids" else 0
            out[key] = torch.where(inside, values.gather(1, order[:, :width]), pad)
        out["hexagon_ids"] = torch.where(out["hexagon_ids"] > 0, out["hexagon_ids"] - low, 0)
        if "gap_ids" in out:
            out["gap_ids"] = out["gap_ids"].masked_fill(out["hexagon_ids"] == 1, 0)
        return out

    def mask_hexagons(
        self, input_ids: torch.Tensor, hexagon_ids: torch.Tensor, sequence_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(masked_input_ids, labels)` for a padded `(batch, seq)` batch; inputs are not modified.

        `sequence_ids` (packed rows) makes each (trajectory, hexagon) pair its own masking unit.
        """
        input_ids = input_ids.clone()
        batch_size = input_ids.shape[0]
        special = torch.isin(input_ids, self._special_ids)
        hex_ids = torch.where(special, torch.zeros_like(hexagon_ids), hexagon_ids.clamp(min=0))
        n_hex = int(hex_ids.max()) + 1 if hex_ids.numel() else 1
        seq_ids = torch.zeros_like(hex_ids) if sequence_ids is None else sequence_ids.clamp(min=0)
        n_seq = int(seq_ids.max()) + 1 if seq_ids.numel() else 1
        # Slot of a token: its hexagon within its trajectory (slot 0 of every trajectory is "no hexagon").
        slots = seq_ids * n_hex + hex_ids
        n_slots = n_seq * n_hex

        # present[b, s]: slot s occurs (on a non-special token) in row b.
        present = torch.zeros(batch_size, n_slots, dtype=torch.bool)
        present.scatter_(1, slots, True)
        present.view(batch_size, n_seq, n_hex)[..., 0] = False

        chosen = (self._rand(batch_size, n_slots) < self.mlm_probability / self.mask_span) & present
        # Guarantee one masked hexagon (or run) per trajectory that has any: pick a random present one.
        per_trajectory = (batch_size * n_seq, n_hex)
        needs_one = present.view(per_trajectory).any(dim=1) & ~chosen.view(per_trajectory).any(dim=1)
        if needs_one.any():
            scores = self._rand(batch_size, n_slots).masked_fill(~present, -1.0)
            pick = scores.view(per_trajectory).argmax(dim=1)
            chosen.view(per_trajectory)[needs_one, pick[needs_one]] = True
        if self.mask_span > 1:  # each chosen hexagon starts a run: spread it over the next ones of its trajectory
            starts = chosen.view(batch_size, n_seq, n_hex)
            runs = starts.clone()
            for offset in range(1, min(self.mask_span, n_hex)):
                runs[..., offset:] |= starts[..., :-offset]
            chosen = runs.view(batch_size, n_slots) & present

        # One action per hexagon, so all its sub-tokens are treated alike.
        action = self._rand(batch_size, n_slots)
        to_mask = chosen & (action < self.mask_replace_prob)
        keep_from = self.mask_replace_prob + self.random_replace_prob
        to_random = chosen & (action >= self.mask_replace_prob) & (action < keep_from)

        token_chosen = chosen.gather(1, slots) & (hex_ids > 0)
        labels = torch.where(token_chosen, input_ids, torch.full_like(input_ids, -100))

        token_mask = to_mask.gather(1, slots) & token_chosen
        input_ids[token_mask] = self.tokenizer.mask_token_id
        token_random = to_random.gather(1, slots) & token_chosen
        n_random = int(token_random.sum())
        if n_random:
            picks = torch.randint(len(self._random_pool), (n_random,), generator=self.generator)
            input_ids[token_random] = self._random_pool[picks]
        return input_ids, labels


__all__ = [
    "CONTRASTIVE_POSITIVES",
    "CONTRASTIVE_VIEWS",
    "TOKEN_FEATURE_KEYS",
    "pad_trajectory_features",
    "DataCollatorWithTrajectoryPadding",
    "DataCollatorForWholeHexagonMasking",
]
