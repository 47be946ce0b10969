"""The Trainer pieces: a seeded, resumable length-grouped sampler, the per-rank order of streamed sequences and
`MTMTrainer` (pre-training), and `FinetuneTrainer` (fine-tuning with its own learning rate for the task head)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterator

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from accelerate.data_loader import prepare_data_loader
from datasets.distributed import split_dataset_by_node
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tokenization_trajfm import TrajTokenizer

from .data_collator import DataCollatorForWholeHexagonMasking
from .metrics import perplexity
from .run_guard import mark_complete


def sequence_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Tokens per sequence (`input_ids` lengths), read from Arrow through the dataset's indices."""
    column = dataset.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_numpy()


class BucketedLengthSampler(torch.utils.data.Sampler):
    """Length-grouped order that depends only on (seed, epoch): shuffle, sort by length within buckets of
    `batch_size * bucket_batches` sequences, cut into batches, shuffle the batches.

    Trajectory lengths are heavy-tailed (a few sequences of `max_seq_length`, most of a few dozen tokens); random
    batches would almost all be padded to the longest. Unlike transformers' `LengthGroupedSampler` the order does not
    come from the global RNG, so a resumed run replays exactly the batches of an uninterrupted one (accelerate forwards
    `set_epoch` to the sampler), and buckets are large enough that the few long sequences share batches.

    With `users` (one id per sequence) the order is made of pairs of one user's sequences, adjacent and in the same
    batch, what the contrastive term's same-user positives need (`--contrastive_positives user`): each epoch every
    user's sequences are shuffled and paired; an odd one out is paired with another of the user's sequences, a user's
    only sequence with itself. `group_lengths=False` keeps the pairs' shuffled order (no length sorting).

    With `places` (one H3 cell per sequence, e.g. `trajectory_places`) batches are made of units whose cells are
    neighbours in H3 index order, which follows the cell hierarchy, instead of lengths: the contrastive term's
    negatives then come from one district and cannot be told apart by where they are. Ties are broken at random
    and batch boundaries move each epoch, so batches change between epochs.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, bucket_batches: int = 50,
                 users: list | None = None, group_lengths: bool = True, places: list[int] | None = None):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = batch_size * bucket_batches
        self.epoch = 0
        self.group_lengths = group_lengths
        self.user_codes = None
        if users is not None:
            if batch_size % 2:
                raise ValueError(f"Same-user pairs need an even batch size (per device x accumulation), got "
                                 f"{batch_size}: a pair would straddle two batches.")
            if len(users) != len(self.lengths):
                raise ValueError(f"`users` needs one id per sequence: {len(users)} ids for {len(self.lengths)}.")
            self.user_codes = np.unique(np.asarray(users, dtype=str), return_inverse=True)[1]
        self.places = None
        if places is not None:
            if len(places) != len(self.lengths):
                raise ValueError(f"`places` needs one cell per sequence: {len(places)} cells for {len(self.lengths)}.")
            self.places = np.asarray(places, dtype=np.uint64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.user_codes is None:
            return len(self.lengths)
        return 2 * int(np.sum((np.bincount(self.user_codes) + 1) // 2))

    def _units(self, rng: np.random.Generator) -> np.ndarray:
        """(units, size) sequence indices, in random order: single sequences, or with `users` same-user pairs."""
        order = rng.permutation(len(self.lengths))
        if self.user_codes is None:
            return order[:, None]
        order = order[np.argsort(self.user_codes[order], kind="stable")]
        codes = self.user_codes[order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        pairs = []
        for members in np.split(order, starts[1:]):
            if members.size % 2:
                partner = members[0] if members.size == 1 else rng.choice(members[:-1])
                members = np.append(members, partner)
            pairs.append(members.reshape(-1, 2))
        units = np.concatenate(pairs)
        return units[rng.permutation(len(units))]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        units = self._units(rng)
        size = units.shape[1]
        per_batch = max(1, self.batch_size // size)
        if self.places is not None:
            yield from self._nearby_order(units, per_batch, rng)
            return
        if not self.group_lengths:
            yield from units.ravel().tolist()
            return
        per_bucket = max(1, self.bucket // size)
        unit_lengths = self.lengths[units].max(axis=1)
        batches = []
        for start in range(0, len(units), per_bucket):
            bucket = units[start : start + per_bucket]
            bucket = bucket[np.argsort(-unit_lengths[start : start + per_bucket], kind="stable")]
            batches += [bucket[i : i + per_batch] for i in range(0, len(bucket), per_batch)]
        for index in rng.permutation(len(batches)):
            yield from batches[index].ravel().tolist()

    def _nearby_order(self, units: np.ndarray, per_batch: int, rng: np.random.Generator) -> list[int]:
        """Units sorted by their first sequence's place (random among equal places), cut into batches of
        `per_batch` units from a random offset, the full batches shuffled; the units left over at both ends come
        last, so that every batch the DataLoader cuts before them is a run of neighbours."""
        units = units[np.lexsort((rng.random(len(units)), self.places[units[:, 0]]))]
        offset = int(rng.integers(per_batch))
        full = (len(units) - offset) // per_batch
        batches = units[offset : offset + full * per_batch].reshape(full, per_batch, -1)[rng.permutation(full)]
        leftover = np.concatenate([units[:offset], units[offset + full * per_batch :]])
        return np.concatenate([batches.reshape(-1, units.shape[1]), leftover]).ravel().tolist()


def trajectory_places(tokenizer: TrajTokenizer, dataset: datasets.Dataset) -> np.ndarray:
    """The most visited H3 cell of each sequence (by hexagons; the smallest index among equals), decoded from its
    `input_ids`: where the sequence mostly is, for `BucketedLengthSampler(places=...)`."""
    ids = dataset.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"].to_pylist()
    places = np.zeros(len(ids), dtype=np.uint64)
    for row, sequence in enumerate(ids):
        cells, counts = np.unique(np.asarray(tokenizer.decode_cells(sequence, as_int=True), dtype=np.uint64),
                                  return_counts=True)
        if cells.size:
            places[row] = cells[np.argmax(counts)]
    return places


class TrainingStream(torch.utils.data.IterableDataset):
    """This process's order of streamed training sequences: shuffled through a seeded buffer, under DDP this rank's
    part (`split_dataset_by_node`), pass after pass without end (`--max_steps` ends training), each pass reshuffled.

    Endless because under DDP a rank whose part ran out would leave the others waiting in a collective, and so that a
    resumed run skips exactly the batches already trained (Trainer counts them from the start of its only epoch of an
    iterable dataset), however many passes they made. Within a pass the parts are disjoint: whole shards when their
    number is a multiple of the world size (partitions hash users, so they are about equal), else every
    world_size-th sequence of the same seeded order. `MTMTrainer` loads it on each rank as it is.

    `pair_users=True` (the contrastive term's same-user positives) yields pairs of one user's sequences, adjacent, so
    that every batch of an even size holds whole pairs (see `same_user_pairs`); pairs are made within this rank's part.
    """

    def __init__(self, stream: datasets.IterableDataset, seed: int, buffer_size: int, rank: int = 0,
                 world_size: int = 1, pair_users: bool = False):
        stream = stream.shuffle(seed=seed, buffer_size=buffer_size)
        self.part = split_dataset_by_node(stream, rank=rank, world_size=world_size) if world_size > 1 else stream
        self.pair_users = pair_users
        self.max_waiting = max(1, buffer_size)  # users whose sequences wait for a partner: as many as are shuffled

    def __iter__(self) -> Iterator[dict]:
        for number in itertools.count():
            self.part.set_epoch(number)
            examples = iter(self.part)
            first = next(examples, None)
            if first is None:  # nothing to repeat
                return
            examples = itertools.chain([first], examples)
            yield from same_user_pairs(examples, self.max_waiting) if self.pair_users else examples


def same_user_pairs(examples: Iterator[dict], max_waiting: int) -> Iterator[dict]:
    """Streamed sequences (with `user_id`) → pairs of one user's sequences, each pair's two adjacent: a sequence
    waits until the next sequence of its user arrives. At most `max_waiting` users wait at a time (memory stays
    bounded); past that the longest-waiting sequence, like one still waiting at the end, is paired with itself, as
    `BucketedLengthSampler` pairs a user's only sequence. Nothing is dropped: every sequence comes out once, or twice
    when paired with itself."""
    if max_waiting < 1:
        raise ValueError(f"`max_waiting` must be at least 1, got {max_waiting}.")
    waiting: dict[str, dict] = {}  # in arrival order: the first waited longest
    for example in examples:
        if "user_id" not in example:
            raise ValueError("Same-user pairs need a `user_id` in every streamed sequence: stream sequences with "
                             "their users, or use --contrastive_positives views.")
        user = str(example["user_id"])
        partner = waiting.pop(user, None)
        if partner is not None:
            yield partner
            yield example
            continue
        waiting[user] = example
        if len(waiting) > max_waiting:
            alone = waiting.pop(next(iter(waiting)))
            yield alone
            yield alone
    for alone in waiting.values():
        yield alone
        yield alone


class _MaskingEpoch(TrainerCallback):
    """Tells a per-batch-seeded masking collator which epoch it is masking (masks differ between epochs)."""

    def __init__(self, collator: DataCollatorForWholeHexagonMasking):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch + 1e-9)


#: Training-log keys of the terms beside MTM, as the model's output names them (see `MTMTrainer`).
TERM_LOG_KEYS = ("contrastive_loss", "visible_token_loss")


class MTMTrainer(Trainer):
    """Trainer for masked trajectory modeling.

    - adds `*_perplexity = exp(*_loss)` to every logged evaluation and uses fixed evaluation masks;
    - groups sequences of similar length into batches with a seeded, resumable order (`train_sampling_strategy
      group_by_length`, see `BucketedLengthSampler`);
    - exact resumes: with a `reseed_per_batch` masking collator, masks depend on the batch alone, and the global RNG
      (dropout) is restored from the checkpoint, so a resumed run ends bit-identical to an uninterrupted one on CPU;
    - a checkpoint gets `run_guard.COMPLETE_MARKER` once everything in it is written, so a run killed while saving
      never resumes from a half-written checkpoint;
    - a `TrainingStream` is loaded as it is, already this rank's part: accelerate would read an iterable dataset on
      rank 0 and send each rank its batches (`dispatch_batches`, its default for iterable data) or, told not to,
      shard it once more;
    - with a collator of same-user positives (`positives="user"`), training batches are same-user pairs
      (`BucketedLengthSampler(users=...)`) and the `user_id` column reaches the collator;
    - `nearby_batches=True` fills each training batch with sequences from one district
      (`BucketedLengthSampler(places=trajectory_places(...))`), so the contrastive term's negatives are hard ones;
    - with the model's contrastive or visible-token term on, each training log also holds `contrastive_loss` /
      `visible_token_loss`: the term before weighting, averaged over this process's batches since the previous log.
    """

    def __init__(self, *args, eval_data_collator: DataCollatorForWholeHexagonMasking | None = None,
                 eval_mask_seed: int = 0, nearby_batches: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.nearby_batches = nearby_batches
        self.eval_data_collator = eval_data_collator
        self.eval_mask_seed = eval_mask_seed
        self._terms: dict[str, list[torch.Tensor]] = {key: [] for key in TERM_LOG_KEYS}
        if getattr(self.data_collator, "reseed_per_batch", False):
            self.add_callback(_MaskingEpoch(self.data_collator))
        self.user_positives = getattr(self.data_collator, "positives", None) == "user"

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            mark_complete(f"{self._get_output_dir(trial=trial)}/{folder}")

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.user_positives and "user_id" not in self._signature_columns:  # the collator reads it
            self._signature_columns.append("user_id")

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        grouped = self.args.train_sampling_strategy == "group_by_length"
        if not isinstance(train_dataset, datasets.Dataset) or not (grouped or self.user_positives
                                                                   or self.nearby_batches):
            return super()._get_train_sampler(train_dataset)
        users = None
        if self.user_positives:
            if "user_id" not in train_dataset.column_names:
                raise ValueError("Same-user positives need the training sequences' `user_id` column.")
            users = train_dataset.select_columns(["user_id"]).with_format("arrow")[:]["user_id"].to_pylist()
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        places = trajectory_places(self.processing_class, train_dataset) if self.nearby_batches else None
        return BucketedLengthSampler(sequence_lengths(train_dataset).tolist(), batch,
                                     seed=self.args.data_seed or self.args.seed, users=users, group_lengths=grouped,
                                     places=places)

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        if not isinstance(self.train_dataset, TrainingStream):
            return super().get_train_dataloader()
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self._train_batch_size,
            collate_fn=self._get_collator_with_removed_columns(self.data_collator, description="Training"),
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        return prepare_data_loader(loader, self.accelerator.device, num_processes=1, process_index=0,
                                   put_on_device=True, dispatch_batches=False,
                                   non_blocking=self.accelerator.non_blocking)

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        # Same masks at every evaluation, and no draw from the global RNG that training (and resuming) relies on.
        self.eval_data_collator.generator = torch.Generator().manual_seed(self.eval_mask_seed)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if isinstance(outputs, dict) and model.training:
            for key, terms in self._terms.items():
                if outputs.get(key) is not None:
                    terms.append(outputs[key])
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for key in [k for k in logs if k.endswith("_loss") and k != "train_loss" and k not in TERM_LOG_KEYS]:
            logs[key[: -len("loss")] + "perplexity"] = perplexity(logs[key])
        if "loss" in logs:
            for key, terms in self._terms.items():
                if terms:
                    logs[key] = round(torch.stack(terms).mean().item(), 4)
                    terms.clear()
        super().log(logs, *args, **kwargs)


def is_head_parameter(name: str, base_model_prefix: str, fresh: Collection[str] = ()) -> bool:
    """Parameters outside the encoder, plus the pooler (pre-training saves none) and the encoder parameters named in
    `fresh` (e.g. time embeddings added at fine-tuning): what fine-tuning starts fresh."""
    return (not name.startswith(f"{base_model_prefix}.") or name.startswith(f"{base_model_prefix}.pooler.")
            or name in fresh)


class FinetuneTrainer(Trainer):
    """Trainer whose optimizer gives the task head (see `is_head_parameter`) `head_learning_rate` and the pre-trained
    encoder `args.learning_rate`: a fresh head needs larger steps than an encoder that should not forget."""

    def __init__(self, *args, head_learning_rate: float | None = None, fresh_parameters: Collection[str] = (),
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate
        self.fresh_parameters = frozenset(fresh_parameters)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None or self.head_learning_rate is None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        head = {id(p) for n, p in opt_model.named_parameters()
                if is_head_parameter(n, opt_model.base_model_prefix, self.fresh_parameters)}
        groups = []
        for group in optimizer.param_groups:  # split Trainer's (decay, no decay) groups; nothing has stepped yet
            for is_head in (False, True):
                params = [p for p in group["params"] if (id(p) in head) == is_head]
                if params:
                    lr = self.head_learning_rate if is_head else group["lr"]
                    groups.append({**group, "params": params, "lr": lr})
        optimizer.param_groups = groups
        return optimizer
