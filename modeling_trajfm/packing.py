"""Sequence packing for pre-training: several short trajectories per row, each still encoded as if alone.

Check-in trajectories are short (NYC: median 27 tokens, a few of 512), so padded batches are mostly padding.
`pack_trajectories` concatenates tokenized trajectories into rows of at most `max_length` tokens and adds
`sequence_ids` (1, 2, ... per trajectory of the row), from which TrajBert builds a block-diagonal attention mask and
restarts positions; `DataCollatorForWholeHexagonMasking` masks each packed trajectory as its own sequence.

Pack the training split only: the MTM hexagon metrics group masked tokens by (row, `hexagon_ids`), which would merge
hexagons of different trajectories in a packed evaluation row.
"""

from collections.abc import Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .data_collator import TOKEN_FEATURE_KEYS


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to at most `capacity`: items longest first (ties in index order), each into
    the first bin with room. Deterministic; O(n log n) through a max-segment-tree over the bins' free space."""
    lengths = [int(n) for n in lengths]
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sequences are longer than max_length={capacity} (first: index {too_long[0]}, "
            f"{lengths[too_long[0]]} tokens): tokenize with `max_length` <= the packing length."
        )
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    # free[node]: most free space of any bin below node; leaves size..2*size-1 are bins 0..size-1 (unopened = empty).
    free = [capacity] * (2 * size)
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        node = 1
        while node < size:
            node = 2 * node if free[2 * node] >= lengths[i] else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[node] -= lengths[i]
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def pack_trajectories(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    """Pack a tokenized dataset (one trajectory per row, unpadded) into rows of at most `max_length` tokens.

    Keeps the per-token columns of `TOKEN_FEATURE_KEYS` (other columns such as `user_id` are dropped: a row now holds
    several trajectories) and adds `sequence_ids`. Every trajectory keeps its own `[CLS] ... [SEP]`, `hexagon_ids`
    (from 1), `token_type_ids` and time features. Rows are filled by first-fit-decreasing, so the result depends only
    on the input; shuffle it (Trainer does) for training.
    """
    keys = [key for key in TOKEN_FEATURE_KEYS if key in dataset.column_names and key != "sequence_ids"]
    if "input_ids" not in keys:
        raise ValueError(f"pack_trajectories needs a tokenized dataset with `input_ids`; got {dataset.column_names}.")
    table = dataset.select_columns(keys).with_format("arrow")[:]
    lengths = pc.list_value_length(table["input_ids"]).to_numpy()
    bins = first_fit_decreasing(lengths, max_length)
    order = np.fromiter((i for members in bins for i in members), dtype=np.int64, count=len(lengths))
    row_lengths = np.array([lengths[members].sum() for members in bins], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(row_lengths)]), pa.int32())

    packed = table.take(pa.array(order))
    columns = {key: pa.ListArray.from_arrays(offsets, pc.list_flatten(packed[key]).combine_chunks()) for key in keys}
    member = np.concatenate([np.arange(1, len(members) + 1) for members in bins]) if bins else np.array([], np.int64)
    sequence_ids = np.repeat(member, lengths[order])
    columns["sequence_ids"] = pa.ListArray.from_arrays(offsets, pa.array(sequence_ids, pa.int64()))
    return datasets.Dataset(pa.table(columns))


def padding_share(lengths: Sequence[int], batch_size: int) -> float:
    """Share of padding tokens when consecutive rows of these lengths are batched and padded to each batch's longest."""
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return 0.0
    padded = sum(
        int(lengths[i : i + batch_size].max()) * len(lengths[i : i + batch_size])
        for i in range(0, lengths.size, batch_size)
    )
    return 1.0 - int(lengths.sum()) / padded


__all__ = ["first_fit_decreasing", "pack_trajectories", "padding_share"]
