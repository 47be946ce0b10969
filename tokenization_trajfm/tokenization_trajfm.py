"""TrajTokenizer: trajectories (points or H3 cells) → sub-hash token ids plus the per-token features TrajBert uses.

This file and the modules it imports with ``from .x import y`` are copied next to pushed checkpoints, so they only
depend on numpy, h3, tokenizers and transformers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from math import inf
from numbers import Integral, Real
from typing import Any

import numpy as np
from transformers import BatchEncoding, PreTrainedTokenizer
from transformers.utils import PaddingStrategy

from .cluster import visit_starts
from .epochs import epoch_problem, implausible_epochs
from .errors import TokenizerFileError, TrajInputError
from .h3cells import cell_centers, cells_from_any, check_resolution, encode_cells
from .h3cells import cell_resolution_check as check_cell_resolution
from .subhash import (
    CONTINUATION,
    SPECIAL_TOKENS,
    CellEncoder,
    alphabet,
    cells_to_words,
    check_spelling,
    train_vocab,
    words_to_cells,
)

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}
FEATURE_KEYS = ("hexagon_ids", "level_ids", "hour_ids", "gap_ids")
_LAT_KEYS = ("latitude", "lat")
_LON_KEYS = ("longitude", "lon", "lng")
_TIME_KEYS = ("timestamp", "timestamps", "time", "times", "t")
_HOURS_PER_WEEK = 168
_MAX_GAP_BUCKET = 21
# gap id of a pair's B whose first visit does not come after A's last: it starts earlier, or it is that very visit
OVERLAP_GAP_ID = _MAX_GAP_BUCKET + 2
# settings that change the ids: with the vocabulary, they make up the saved fingerprint (time and clustering settings
# change features only and may be overridden at load, e.g. another utc_offset_minutes for data from another zone)
FINGERPRINT_SETTINGS = ("resolution", "spelling", "max_levels")


def _first_key(mapping: Mapping, keys: Sequence[str]) -> str | None:
    return next((k for k in keys if k in mapping), None)


def to_epoch_seconds(values: Any, where: str) -> np.ndarray | None:
    """Timestamps (numbers = epoch seconds, datetimes, numpy datetime64, ISO strings) → int64 epoch seconds.

    Returns None when every value is missing; a partly missing column is an error naming the first bad point, and so
    is a number that cannot be epoch seconds (e.g. milliseconds), even beside strings.
    """
    if values is None:
        return None
    array = np.asarray(values)
    if array.ndim != 1:
        raise TrajInputError(f"{where}: timestamps must be a flat sequence, one per point; got shape {array.shape}.")
    if array.dtype.kind in "US":  # numpy turns a list mixing numbers and strings into strings: keep each as given
        array = np.array(list(values), dtype=object)
    if array.dtype.kind == "M":
        if np.isnat(array).any():
            raise TrajInputError(f"{where}: timestamp of point {int(np.flatnonzero(np.isnat(array))[0])} is missing.")
        return array.astype("datetime64[s]").astype(np.int64)
    if array.dtype.kind in "iuf":
        return _epoch_seconds(array, np.arange(array.size), where)
    seconds = np.zeros(array.size, dtype=np.int64)
    missing, numbers = [], []
    for position, value in enumerate(array.tolist()):
        if value is None or (isinstance(value, float) and value != value):
            missing.append(position)
        elif isinstance(value, _dt.datetime):
            value = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
            seconds[position] = int(value.timestamp())
        elif isinstance(value, (int, float, np.integer, np.floating)):
            numbers.append(position)
        elif isinstance(value, np.datetime64):
            seconds[position] = int(value.astype("datetime64[s]").astype(np.int64))
        else:
            try:
                parsed = _dt.datetime.fromisoformat(str(value))
            except ValueError:
                raise TrajInputError(
                    f"{where}: cannot parse timestamp {value!r} of point {position}; use epoch seconds, datetime "
                    "objects or ISO-8601 strings."
                ) from None
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)
            seconds[position] = int(parsed.timestamp())
    if len(missing) == array.size:
        return None
    if missing:
        raise TrajInputError(f"{where}: timestamp of point {missing[0]} is missing while others are given.")
    if numbers:
        positions = np.array(numbers)
        seconds[positions] = _epoch_seconds(np.array([array[i] for i in numbers]), positions, where)
    return seconds


def _epoch_seconds(numbers: np.ndarray, positions: np.ndarray, where: str) -> np.ndarray:
    """Epoch-second numbers (at `positions` of the trajectory) → int64, refusing non-finite or implausible ones."""
    as_float = numbers.astype(np.float64)
    finite = np.isfinite(as_float)
    if not finite.all():
        raise TrajInputError(f"{where}: timestamp of point {int(positions[np.argmin(finite)])} is not finite.")
    bad, looks_like = implausible_epochs(as_float, "s")
    if bad.any():
        first = int(bad.argmax())
        raise TrajInputError(
            f"{where}: timestamp {numbers[first : first + 1].tolist()[0]!r} of point {int(positions[first])}: "
            f"{epoch_problem(as_float[first], 's', looks_like)}. Numbers are read as epoch seconds: convert them "
            "(or pass datetimes or ISO-8601 strings)."
        )
    return np.floor(numbers).astype(np.int64)


class TrajTokenizer(PreTrainedTokenizer):
    """Sub-hash WordPiece tokenizer over H3 cells (see `subhash` for the two spellings).

    Call it on one trajectory or a batch. A trajectory is a list of `(lat, lon[, timestamp])` points, a mapping of
    columns (`latitude`/`longitude`/`timestamp`), an `(n, 2|3)` array, or already-encoded visits with `cells=`.
    Raw points are H3-encoded and clustered (same cell, within `window_minutes`) first; `cells=` are taken as given.
    Outputs `input_ids`, `attention_mask`, `token_type_ids` and, per token, `hexagon_ids`, `level_ids`, `hour_ids`,
    `gap_ids` (see docs/design.md). Truncation and padding never split a hexagon. `gap_break_minutes` puts a gap
    bucket edge on the corpus's trajectory break (`run_mtm.py` and `run_prepare.py` set it to `max_gap_minutes` when
    they cut the trajectories themselves); folders saved without it keep the plain log2 grid their time embeddings
    were trained on.

    `save_pretrained` records a fingerprint of the vocabulary and the settings in `tokenizer_config.json`; loading
    checks it, so files that were edited or mixed from two tokenizers are refused (`TokenizerFileError`) instead of
    silently changing ids. Folders saved before fingerprints existed load with the structural checks only.
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "token_type_ids", "attention_mask", *FEATURE_KEYS]

    def __init__(
        self,
        vocab_file: str | None = None,
        resolution: int = 8,
        spelling: str = "hex",
        window_minutes: float = 10.0,
        utc_offset_minutes: int = 0,
        time_features: bool = True,
        max_levels: int = 16,
        gap_break_minutes: float | None = None,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        vocab: dict[str, int] | None = None,
        fingerprint: dict[str, str] | None = None,
        **kwargs,
    ):
        self.resolution = check_resolution(resolution)
        self.spelling = check_spelling(spelling)
        self.window_minutes, self.utc_offset_minutes, self.time_features, self.max_levels = _check_settings(
            window_minutes, utc_offset_minutes, time_features, max_levels
        )
        self.gap_break_minutes = _check_gap_break(gap_break_minutes)
        folder = kwargs.get("name_or_path") or None  # set by from_pretrained: the folder or repo loaded from
        source = vocab_file or "the vocab argument"
        if vocab is None and vocab_file is not None:
            vocab = _read_vocab(vocab_file)
        elif vocab is None and folder is not None:
            raise TokenizerFileError(
                f"{folder}: {VOCAB_FILES_NAMES['vocab_file']} is missing, so this tokenizer's ids are unknown. Copy it "
                "back from where the tokenizer was saved (save_pretrained writes it next to tokenizer_config.json)."
            )
        if vocab is None:
            initial, continuation = alphabet(self.spelling)
            tokens = list(SPECIAL_TOKENS) + initial + [CONTINUATION + c for c in continuation]
            vocab = {token: index for index, token in enumerate(tokens)}
        self.vocab = _check_vocab(vocab, source)
        self.ids_to_tokens = {index: token for token, index in self.vocab.items()}
        try:
            self._cell_encoder = CellEncoder(self.vocab, self.resolution, self.spelling)
        except TrajInputError as error:
            raise TokenizerFileError(f"{source}: {error}") from None
        if fingerprint is not None:
            self._check_fingerprint(fingerprint, source, folder)
        kwargs.setdefault("model_max_length", 512)
        super().__init__(
            resolution=self.resolution,
            spelling=self.spelling,
            window_minutes=self.window_minutes,
            utc_offset_minutes=self.utc_offset_minutes,
            time_features=self.time_features,
            max_levels=self.max_levels,
            gap_break_minutes=self.gap_break_minutes,
            fingerprint=self.fingerprint,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
            **kwargs,
        )

    @property
    def fingerprint(self) -> dict[str, str]:
        """SHA-256 of the vocabulary (tokens in id order) and of the settings that change ids or features."""
        tokens = sorted(self.vocab, key=self.vocab.__getitem__)
        settings = {name: getattr(self, name) for name in FINGERPRINT_SETTINGS}
        return {"vocab": _sha256(tokens), "settings": _sha256(settings)}

    def _check_fingerprint(self, saved: Any, source: str, folder: str | None) -> None:
        """Refuse files that disagree with the fingerprint saved beside them, naming the file that changed."""
        config = f"{folder}/tokenizer_config.json" if folder else "tokenizer_config.json"
        if not isinstance(saved, dict) or set(saved) != {"vocab", "settings"}:
            raise TokenizerFileError(f"{config}: 'fingerprint' is malformed ({saved!r}); re-save the tokenizer.")
        current = self.fingerprint
        if saved["vocab"] != current["vocab"]:
            raise TokenizerFileError(
                f"{source} is not the vocabulary this tokenizer was saved with (its fingerprint in {config} differs): "
                "it was edited or copied from another tokenizer, and ids would change. Restore the saved "
                "vocab.json, or retrain the tokenizer."
            )
        if saved["settings"] != current["settings"]:
            settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in FINGERPRINT_SETTINGS)
            raise TokenizerFileError(
                f"{config}: the settings ({settings}) are not those the vocabulary was saved with (fingerprint "
                "differs): a setting was edited, or overridden at load. Restore the saved tokenizer_config.json; to "
                "change a setting on purpose, pass it together with fingerprint=None and re-save."
            )

    # ----------------------------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        cells: Any,
        vocab_size: int,
        resolution: int = 8,
        spelling: str = "hex",
        **kwargs,
    ) -> TrajTokenizer:
        """Train the sub-hash vocabulary on a corpus of visits.

        `cells` is a trajectory table (its `cells` column), a datasets.Dataset with a `cells` column, or a flat
        array of H3 cells; each occurrence counts, so frequent places get their own tokens first.
        """
        unique, counts = np.unique(_flatten_cells(cells), return_counts=True)
        return cls.train_from_counts(unique, counts, vocab_size, resolution, spelling, **kwargs)

    @classmethod
    def train_from_counts(
        cls,
        cells: np.ndarray,
        counts: np.ndarray,
        vocab_size: int,
        resolution: int = 8,
        spelling: str = "hex",
        **kwargs,
    ) -> TrajTokenizer:
        """Train on distinct H3 `cells` and how often each was visited: the same vocabulary as `train` on the visits
        themselves, from counts that a corpus prepared in partitions aggregates (`tokenization_trajfm.prepare`)."""
        cells = np.asarray(cells, dtype=np.uint64)
        if cells.size == 0:
            raise TrajInputError("Cannot train a tokenizer on an empty corpus: no cells were given.")
        resolution = check_resolution(resolution)
        check_cell_resolution(cells, resolution, "the training corpus")
        words = cells_to_words(cells, resolution, check_spelling(spelling))  # any order: training does not see it
        vocab = train_vocab(words, counts, spelling, vocab_size)
        return cls(vocab=vocab, resolution=resolution, spelling=spelling, **kwargs)

    # ------------------------------------------------------------------------------- vocabulary (base API)
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict[str, int]:
        return {**self.vocab, **self.added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        """Text of H3 cell strings (space separated) → sub-hash pieces."""
        cells = cells_from_any(text.split(), self.resolution)
        ids, _, _ = self._cell_encoder.encode(cells)
        return [self.ids_to_tokens[i] for i in ids.tolist()]

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab[str(self.unk_token)])

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, str(self.unk_token))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Sub-hash pieces → space-separated H3 cell strings; special tokens stay as written, as in text tokenizers
        (`decode(ids, skip_special_tokens=True)` drops them)."""
        specials = set(self.all_special_tokens)
        words: list[str] = []
        run: list[str] = []
        for token in [*tokens, None]:
            if token is None or token in specials:
                words += [format(int(c), "x") for c in self._pieces_to_cells(run, strict=True)]
                run = []
                if token is not None:
                    words.append(token)
            else:
                run.append(token)
        return " ".join(words)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        path = os.path.join(save_directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.vocab, handle, ensure_ascii=False, indent=0)
        return (path,)

    # ----------------------------------------------------------------------------------------------- encoding
    def __call__(
        self,
        trajectories: Any = None,
        pair: Any = None,
        *,
        cells: Any = None,
        timestamps: Any = None,
        pair_cells: Any = None,
        pair_timestamps: Any = None,
        padding: bool | str | PaddingStrategy = False,
        truncation: bool = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenize one trajectory or a batch (optionally paired with a second one, e.g. A → does B follow?)."""
        if kwargs:
            raise TypeError(f"TrajTokenizer got unexpected arguments {sorted(kwargs)}.")
        first, batched = self._normalize(trajectories, cells, timestamps, "trajectories")
        second = None
        if pair is not None or pair_cells is not None:
            second, pair_batched = self._normalize(pair, pair_cells, pair_timestamps, "pair")
            if len(second) != len(first) or pair_batched != batched:
                raise TrajInputError(f"Got {len(first)} trajectories but {len(second)} pair trajectories.")
        max_length = max_length if max_length is not None else self.model_max_length
        encoded = self.encode_visits(first, second, max_length=max_length if truncation else None)
        if not batched and return_tensors is None:  # as text tokenizers: tensors of one trajectory are a batch of one
            encoded = {key: value[0] for key, value in encoded.items()}
        return self.pad(
            encoded,
            padding=padding,
            max_length=max_length if padding in ("max_length", PaddingStrategy.MAX_LENGTH) else None,
            pad_to_multiple_of=pad_to_multiple_of,
            return_tensors=return_tensors,
            return_attention_mask=return_attention_mask,
        )

    def is_batch(self, trajectories: Any = None, cells: Any = None) -> bool:
        """Whether `__call__` reads this input as a batch of trajectories rather than as one trajectory."""
        return _is_batch_of_cells(cells) if cells is not None else _is_batch_of_points(trajectories)

    def to_visits(
        self, trajectory: Any = None, *, cells: Any = None, timestamps: Any = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One trajectory (any form `__call__` takes) → its visits: (H3 cells as uint64, start times or None)."""
        visits, batched = self._normalize(trajectory, cells, timestamps, "trajectory")
        if batched:
            raise TrajInputError(f"Expected one trajectory, got a batch of {len(visits)}.")
        return visits[0]

    def _normalize(self, trajectories: Any, cells: Any, timestamps: Any, name: str):
        """→ (list of (visit cells uint64, visit start epoch seconds or None), whether the input was a batch)."""
        if cells is not None:
            if trajectories is not None:
                raise TrajInputError(f"Pass either {name} or cells=, not both.")
            batched = _is_batch_of_cells(cells)
            cell_lists = list(cells) if batched else [cells]
            if not batched:
                time_lists = [timestamps]
            elif timestamps is None:
                time_lists = [None] * len(cell_lists)
            elif len(timestamps) != len(cell_lists):
                raise TrajInputError(f"Got {len(cell_lists)} cell sequences but {len(timestamps)} timestamp sequences.")
            else:
                time_lists = list(timestamps)
            out = []
            for i, (c, t) in enumerate(zip(cell_lists, time_lists)):
                where = f"{name}[{i}]"
                visit_cells = cells_from_any(c, self.resolution)
                visit_times = to_epoch_seconds(t, where)
                _check_nonempty(visit_cells, where)
                if visit_times is not None and visit_times.size != visit_cells.size:
                    raise TrajInputError(f"{where}: {visit_cells.size} cells but {visit_times.size} timestamps.")
                out.append(_sorted_by_time(visit_cells, visit_times))
            return out, batched
        if trajectories is None:
            raise TrajInputError("Nothing to tokenize: pass trajectories (points) or cells=.")
        batched = _is_batch_of_points(trajectories)
        items = trajectories if batched else [trajectories]
        return [self._points_to_visits(item, f"{name}[{i}]") for i, item in enumerate(items)], batched

    def _points_to_visits(self, trajectory: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
        lat, lon, times = _columns(trajectory, where)
        _check_nonempty(lat, where)
        for column, values, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
            bad = ~(np.abs(values) <= limit)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise TrajInputError(
                    f"{where}: {column} {float(values[j])!r} of point {j} is not a number in [-{limit}, {limit}]."
                )
        seconds = to_epoch_seconds(times, where)
        if seconds is not None and seconds.size != lat.size:
            raise TrajInputError(f"{where}: {lat.size} points but {seconds.size} timestamps; give one per point.")
        if seconds is not None:
            order = np.argsort(seconds, kind="stable")
            lat, lon, seconds = lat[order], lon[order], seconds[order]
        point_cells = encode_cells(lat, lon, self.resolution)
        starts = visit_starts(point_cells, seconds, self.window_minutes * 60)
        return point_cells[starts], (seconds[starts] if seconds is not None else None)

    def encode_visits(
        self,
        first: list[tuple[np.ndarray, np.ndarray | None]],
        second: list[tuple[np.ndarray, np.ndarray | None]] | None = None,
        max_length: int | None = None,
    ) -> dict[str, list[list[int]]]:
        """Visits → unpadded token ids and features, truncating whole hexagons to fit `max_length`."""
        segments = [first] if second is None else [first, second]
        specials = len(segments) + 1
        budget = None if max_length is None else max_length - specials
        all_cells = np.concatenate([c for seg in segments for c, _ in seg]) if first else np.empty(0, np.uint64)
        ids, owner, within = self._cell_encoder.encode(all_cells)
        visit_token_counts = np.bincount(owner, minlength=all_cells.size)
        visit_offsets = np.concatenate(([0], np.cumsum([c.size for seg in segments for c, _ in seg])))
        token_offsets = np.concatenate(([0], np.cumsum(visit_token_counts)))
        levels = np.minimum(within + 1, self.max_levels - 1)
        out: dict[str, list[list[int]]] = {k: [] for k in ("input_ids", "token_type_ids", *FEATURE_KEYS)}
        n = len(first)
        for row in range(n):
            parts = [(s, seg[row]) for s, seg in enumerate(segments)]
            slots = [s * n + row for s in range(len(segments))]
            counts = [visit_token_counts[visit_offsets[k] : visit_offsets[k + 1]] for k in slots]
            spans = _fit_hexagons(counts, budget, keep_last_of_first=self.truncation_side == "left")
            row_out = {k: [0] for k in out}
            row_out["input_ids"] = [self.cls_token_id]
            hexagon, previous = 0, None  # previous: (cell, start time) of the last visit placed so far (A → B gap)
            for (segment, (cells, times)), k, (start, stop) in zip(parts, slots, spans):
                n_visits = stop - start
                lo = token_offsets[visit_offsets[k] + start]
                hi = token_offsets[visit_offsets[k] + stop]
                visit_of_token = owner[lo:hi] - visit_offsets[k] - start
                times = None if times is None else times[start:stop]
                row_out["input_ids"] += ids[lo:hi].tolist() + [self.sep_token_id]
                row_out["token_type_ids"] += [segment] * (hi - lo + 1)
                row_out["hexagon_ids"] += (visit_of_token + hexagon + 1).tolist() + [0]
                row_out["level_ids"] += levels[lo:hi].tolist() + [0]
                hours, gaps = self._time_ids(times, n_visits, previous, cells[start] if n_visits else None)
                row_out["hour_ids"] += hours[visit_of_token].tolist() + [0]
                row_out["gap_ids"] += gaps[visit_of_token].tolist() + [0]
                hexagon += n_visits
                previous = (cells[stop - 1], times[n_visits - 1]) if times is not None and n_visits else None
            for key in out:
                out[key].append(row_out[key])
        return out

    def set_utc_offset(self, utc_offset_minutes: int) -> None:
        """Read hour-of-week ids in another time zone (data from another city than the tokenizer was trained on),
        checked as at construction."""
        self.utc_offset_minutes = _check_settings(self.window_minutes, utc_offset_minutes, self.time_features,
                                                  self.max_levels)[1]

    def _time_ids(self, times: np.ndarray | None, n_visits: int, previous: tuple[int, int] | None = None,
                  first_cell: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if times is None or not self.time_features:
            zeros = np.zeros(n_visits, dtype=np.int64)
            return zeros, zeros
        if previous is None:
            return time_feature_ids(times[:n_visits], self.utc_offset_minutes, gap_break_minutes=self.gap_break_minutes)
        previous_cell, previous_start = previous
        repeats = first_cell == previous_cell and times[0] == previous_start
        return time_feature_ids(times[:n_visits], self.utc_offset_minutes, previous_start, repeats,
                                self.gap_break_minutes)

    def _pad(
        self,
        encoded_inputs: dict | BatchEncoding,
        max_length: int | None = None,
        padding_strategy: PaddingStrategy = PaddingStrategy.DO_NOT_PAD,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
    ) -> dict:
        """Pad the per-token features with 0 alongside what the base class pads."""
        before = len(encoded_inputs["input_ids"])
        encoded_inputs = super()._pad(
            encoded_inputs, max_length, padding_strategy, pad_to_multiple_of, padding_side, return_attention_mask
        )
        difference = len(encoded_inputs["input_ids"]) - before
        if difference:
            side = padding_side if padding_side is not None else self.padding_side
            for key in FEATURE_KEYS:
                if key in encoded_inputs:
                    values = list(encoded_inputs[key])
                    encoded_inputs[key] = values + [0] * difference if side == "right" else [0] * difference + values
        return encoded_inputs

    # ----------------------------------------------------------------------------------------- corpus path
    def tokenize_dataset(
        self,
        dataset: Any,
        max_length: int | None = None,
        overflow: str = "split",
        num_proc: int | None = None,
        batch_size: int = 1000,
        desc: str = "Tokenizing trajectories",
    ) -> Any:
        """Tokenize a `datasets.Dataset` of trajectories (`cells`, `timestamps` columns) in batches.

        `overflow="split"` cuts a trajectory longer than `max_length` into consecutive sequences of whole
        hexagons (nothing is lost); `"truncate"` keeps the first part. Other columns (e.g. `user_id`) are kept,
        repeated for every piece.
        """
        if overflow not in ("split", "truncate"):
            raise TrajInputError(f"overflow={overflow!r}: choose 'split' or 'truncate'.")
        max_length = max_length or self.model_max_length
        longest = self._cell_encoder.width
        if max_length - 2 < longest:
            raise TrajInputError(
                f"max_length={max_length} cannot hold one hexagon: the longest cell takes {longest} tokens plus 2 "
                f"special tokens. Use max_length >= {longest + 2}."
            )
        return dataset.map(
            self.encode_trajectory_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc,
            fn_kwargs={"max_length": max_length, "split": overflow == "split"},
            remove_columns=dataset.column_names,
            desc=desc,
        )

    def encode_trajectory_batch(self, batch: dict[str, list], max_length: int, split: bool = True) -> dict[str, list]:
        """One `datasets` batch of trajectories (`cells`, `timestamps`, other columns) → unpadded sequences.

        What `tokenize_dataset` maps; also usable with `IterableDataset.map(batched=True)` for streaming corpora.
        """
        times = batch.get("timestamps") or [None] * len(batch["cells"])
        visits = []
        source = []
        budget = max_length - 2
        for row, (cells, stamps) in enumerate(zip(batch["cells"], times)):
            cells = check_cell_resolution(np.asarray(cells, dtype=np.uint64), self.resolution, f"trajectory {row}")
            stamps = None if stamps is None else np.asarray(stamps, dtype=np.int64)
            pieces = self._cell_encoder.split_points(cells, budget) if split else [0]
            for k, start in enumerate(pieces):
                end = pieces[k + 1] if k + 1 < len(pieces) else cells.size
                visits.append((cells[start:end], None if stamps is None else stamps[start:end]))
                source.append(row)
        encoded = self.encode_visits(visits, max_length=max_length)
        encoded["attention_mask"] = [[1] * len(ids) for ids in encoded["input_ids"]]
        for key, values in batch.items():
            if key not in ("cells", "timestamps", "n_points"):
                encoded[key] = [values[row] for row in source]
        return encoded

    # ----------------------------------------------------------------------------------------------- decoding
    def decode_cells(self, token_ids: Any, as_int: bool = False, strict: bool = True) -> list:
        """Token ids → one H3 cell per hexagon (hex strings, or ints with `as_int`). Special tokens are skipped.

        A hexagon starts at every token without the `##` prefix. With `strict=False` a run of pieces that is not a
        valid cell (possible in model predictions) gives None instead of raising.
        """
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        tokens = [self._convert_id_to_token(int(i)) for i in token_ids if int(i) not in self.all_special_ids]
        cells = self._pieces_to_cells(tokens, strict)
        return [c if c is None or as_int else format(int(c), "x") for c in cells]

    def decode_coordinates(self, token_ids: Any) -> np.ndarray:
        """Token ids → (n_hexagons, 2) cell-centre (lat, lon) in degrees."""
        return self.cell_coordinates(self.decode_cells(token_ids, as_int=True))

    def cell_coordinates(self, cells: Any) -> np.ndarray:
        """H3 cells (hex strings or ints) → (n, 2) cell-centre (lat, lon) in degrees."""
        return cell_centers(cells_from_any(cells, self.resolution))

    @property
    def max_cell_tokens(self) -> int:
        """Most sub-tokens one cell takes in this vocabulary."""
        return self._cell_encoder.width

    def _pieces_to_cells(self, tokens: list[str], strict: bool) -> list:
        words: list[str] = []
        for token in tokens:
            if token.startswith(CONTINUATION) and words:
                words[-1] += token[len(CONTINUATION) :]
            elif token.startswith(CONTINUATION):
                if strict:
                    raise TrajInputError(f"Token {token!r} continues a hexagon but no hexagon started before it.")
                words.append("")
            else:
                words.append(token)
        out = []
        for word in words:
            try:
                out.append(int(words_to_cells([word], self.resolution, self.spelling)[0]))
            except (ValueError, IndexError):
                if strict:
                    raise
                out.append(None)
        return out

    def cell_token_ids(self, cells: Any) -> list[list[int]]:
        """Sub-hash token ids of each given cell (used to build hexagon-prediction label sets)."""
        cells = cells_from_any(cells, self.resolution)
        flat, offsets = self._cell_encoder.encode_unique(cells)
        return [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(cells.size)]


def time_feature_ids(times: np.ndarray, utc_offset_minutes: int = 0, previous: int | None = None,
                     repeats_previous: bool = False, gap_break_minutes: float | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Visit start times (epoch s) → (1 + hour of week from Monday 00h local, 1 + log2 bucket of the gap).

    The first visit's gap is 0 (no gap) without `previous`, the start of the visit before it in the input (a pair's
    B counts from the last visit of A kept after truncation: whether B continues A is mostly a matter of time). A
    first visit that does not come after that one gets `OVERLAP_GAP_ID`: it starts earlier, or it is that very visit
    (`repeats_previous`: same cell and start, e.g. a window of a trajectory paired with the window before it); a
    log2 bucket cannot tell those from a visit a minute later. `gap_break_minutes`: see `gap_buckets`.
    """
    local_hours = (times + utc_offset_minutes * 60) // 3600
    hours = 1 + (local_hours + 72) % _HOURS_PER_WEEK  # 1970-01-01 was a Thursday: 72 h after Monday 00h
    gaps = np.zeros(times.size, dtype=np.int64)
    if times.size > 1:
        gaps[1:] = gap_buckets(np.maximum(np.diff(times), 0), gap_break_minutes)
    if times.size and previous is not None:
        overlaps = times[0] < previous or repeats_previous
        gaps[0] = OVERLAP_GAP_ID if overlaps else gap_buckets(np.array([times[0] - previous]), gap_break_minutes)[0]
    return hours.astype(np.int64), gaps


def gap_buckets(seconds: np.ndarray, break_minutes: float | None = None) -> np.ndarray:
    """Non-negative gaps (s) → gap ids 1..1 + _MAX_GAP_BUCKET, one per octave of 1 + minutes.

    Without `break_minutes` the bucket is 1 + floor(log2(1 + minutes)): edges at 2^k - 1 minutes. With it, the grid is
    shifted so that an edge falls on the break: gaps up to `break_minutes` and gaps beyond it never share a bucket.
    A corpus cut into trajectories at gaps above `max_gap_minutes` is the reason: with that break, "B continues A"
    and "B is in A's user's next trajectory" differ by a gap id, where the plain grid puts both sides of NYC's
    4,320-minute break in the bucket of 4,095-8,190 minutes.
    """
    octaves = np.log2(1.0 + np.asarray(seconds) / 60.0)
    if break_minutes is None:
        buckets = np.floor(octaves)
    else:
        anchor = np.log2(1.0 + break_minutes)
        buckets = np.ceil(octaves - anchor) + np.floor(anchor)  # the break itself is the top of bucket floor(anchor)
    return 1 + np.clip(buckets, 0, _MAX_GAP_BUCKET).astype(np.int64)


def _check_settings(
    window_minutes: float, utc_offset_minutes: int, time_features: bool, max_levels: int
) -> tuple[float, int, bool, int]:
    """Validated (window_minutes, utc_offset_minutes, time_features, max_levels), each named when wrong."""
    if isinstance(window_minutes, bool) or not isinstance(window_minutes, Real) or not 0 <= window_minutes < inf:
        raise TrajInputError(f"window_minutes must be a finite number >= 0, got {window_minutes!r}.")
    if not isinstance(utc_offset_minutes, Integral) or isinstance(utc_offset_minutes, bool):
        raise TrajInputError(f"utc_offset_minutes must be an integer, got {utc_offset_minutes!r}.")
    if not -14 * 60 <= utc_offset_minutes <= 14 * 60:
        raise TrajInputError(f"utc_offset_minutes must be within ±840 (UTC-14..UTC+14), got {utc_offset_minutes}.")
    if not isinstance(time_features, bool):
        raise TrajInputError(f"time_features must be True or False, got {time_features!r}.")
    if not isinstance(max_levels, Integral) or isinstance(max_levels, bool) or max_levels < 2:
        raise TrajInputError(
            f"max_levels must be an integer >= 2 (level ids run 1..max_levels-1; 0 marks special tokens), got "
            f"{max_levels!r}."
        )
    return float(window_minutes), int(utc_offset_minutes), time_features, int(max_levels)


def _check_gap_break(minutes: Any) -> float | None:
    """The gap break as a float (or None), refusing what cannot be a gap in minutes."""
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, Real) or not 0 < minutes < inf:
        raise TrajInputError(f"gap_break_minutes must be a finite number > 0 or None, got {minutes!r}.")
    return float(minutes)


def _read_vocab(path: str) -> dict[str, int]:
    """vocab.json as a dict, or an error naming the file when it is empty or not JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TokenizerFileError(
            f"{path} is not a readable vocabulary ({error}); it is empty or corrupt. Restore it from where the "
            "tokenizer was saved."
        ) from None


def _check_vocab(vocab: Any, source: str) -> dict[str, int]:
    """The vocabulary as given, if it maps tokens to the ids 0..n-1 once each with the special tokens first."""
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerFileError(f"{source}: a vocabulary must be a non-empty JSON object of token → id.")
    owner: dict[Any, str] = {}
    for token, index in vocab.items():  # once per load, not per point
        valid = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(vocab)
        if not valid or index in owner:
            problem = f"also the id of {owner[index]!r}" if valid else f"not an integer in 0..{len(vocab) - 1}"
            raise TokenizerFileError(
                f"{source}: token {token!r} has id {index!r}, {problem}. Ids must be 0..n-1, each once: the file was "
                "edited; restore it from where the tokenizer was saved."
            )
        owner[index] = token
    specials = {token: vocab.get(token) for token in SPECIAL_TOKENS}
    if list(specials.values()) != list(range(len(SPECIAL_TOKENS))):
        raise TokenizerFileError(f"{source}: special tokens must have ids 0..4 in this order, got {specials}.")
    return dict(vocab)


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _fit_hexagons(counts: list[np.ndarray], budget: int | None, keep_last_of_first: bool) -> list[tuple[int, int]]:
    """The (start, stop) visits of each segment that fit in `budget` tokens; the longest segment loses visits first.

    Segments lose visits at their end, except the first one with `keep_last_of_first` (truncation_side="left"): it
    keeps its most recent visits, those next to the second segment or to the present.
    """
    spans = [[0, c.size] for c in counts]
    if budget is None:
        return [tuple(s) for s in spans]
    totals = [int(c.sum()) for c in counts]
    while sum(totals) > budget:
        longest = max(range(len(spans)), key=lambda s: totals[s])
        start, stop = spans[longest]
        if start == stop:
            break
        if longest == 0 and keep_last_of_first:
            totals[longest] -= int(counts[longest][start])
            spans[longest][0] += 1
        else:
            totals[longest] -= int(counts[longest][stop - 1])
            spans[longest][1] -= 1
    if sum(totals) > budget or any(a == b for (a, b), c in zip(spans, counts) if c.size):
        need = max(int(c[0]) for c in counts if c.size) * len(counts)
        raise TrajInputError(
            f"max_length leaves {budget} tokens after special tokens, too few to hold a whole hexagon of every "
            f"segment (need {need}); raise max_length."
        )
    return [tuple(s) for s in spans]


def _flatten_cells(cells: Any) -> np.ndarray:
    if hasattr(cells, "column_names") and "cells" in cells.column_names:  # Arrow table or datasets.Dataset
        if hasattr(cells, "with_format"):  # a Dataset: go through its indices, so .filter/.select are honoured
            cells = cells.select_columns(["cells"]).with_format("arrow")[:]
        return np.asarray(cells.column("cells").combine_chunks().flatten(), dtype=np.uint64)
    return np.asarray(cells, dtype=np.uint64).ravel()


def _check_nonempty(values: np.ndarray, where: str) -> None:
    if values.size == 0:
        raise TrajInputError(f"{where} is empty: a trajectory needs at least one point.")


def _sorted_by_time(cells: np.ndarray, times: np.ndarray | None):
    if times is None:
        return cells, None
    order = np.argsort(times, kind="stable")
    return cells[order], times[order]


def _is_scalar(value: Any) -> bool:
    """A value of one point; None too (a missing coordinate is the point's problem, not a sign of a batch)."""
    return value is None or isinstance(value, (int, float, str, np.integer, np.floating, np.str_))


def _is_batch_of_cells(cells: Any) -> bool:
    if isinstance(cells, np.ndarray):
        return cells.dtype == object or cells.ndim > 1
    items = list(cells) if not isinstance(cells, (str, bytes)) else [cells]
    return bool(items) and not _is_scalar(items[0])


def _is_batch_of_points(trajectories: Any) -> bool:
    if isinstance(trajectories, Mapping) or hasattr(trajectories, "column_names"):
        return False
    if isinstance(trajectories, np.ndarray):
        return trajectories.dtype == object or trajectories.ndim == 3
    if not isinstance(trajectories, Sequence) or not trajectories:
        return False
    head = trajectories[0]
    if isinstance(head, Mapping) or hasattr(head, "column_names"):
        return True
    if isinstance(head, np.ndarray):
        return head.ndim == 2
    return isinstance(head, Sequence) and bool(head) and not _is_scalar(head[0])


def _columns(trajectory: Any, where: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """(lat, lon, raw times or None) of one trajectory given as a mapping, table, array or list of points."""
    if hasattr(trajectory, "column_names") and not isinstance(trajectory, Mapping):
        trajectory = {name: trajectory[name] for name in trajectory.column_names}
    if isinstance(trajectory, Mapping):
        lat_key, lon_key, time_key = (_first_key(trajectory, keys) for keys in (_LAT_KEYS, _LON_KEYS, _TIME_KEYS))
        if lat_key is None or lon_key is None:
            raise TrajInputError(f"{where}: a mapping needs latitude/longitude columns, got keys {list(trajectory)}.")
        columns = [trajectory[lat_key], trajectory[lon_key], trajectory[time_key] if time_key else None]
        columns = [c.to_numpy() if hasattr(c, "to_numpy") and not isinstance(c, np.ndarray) else c for c in columns]
        lat, lon = (_coordinates(c, name, where) for c, name in zip(columns, ("latitude", "longitude")))
        if lat.shape != lon.shape:
            raise TrajInputError(f"{where}: {lat.size} latitudes but {lon.size} longitudes.")
        return lat, lon, columns[2]
    if isinstance(trajectory, np.ndarray) and trajectory.dtype != object:
        if trajectory.ndim != 2 or trajectory.shape[1] not in (2, 3):
            raise TrajInputError(
                f"{where}: an array trajectory must have shape (n, 2) or (n, 3), got {trajectory.shape}."
            )
        times = trajectory[:, 2] if trajectory.shape[1] == 3 else None
        return trajectory[:, 0].astype(np.float64), trajectory[:, 1].astype(np.float64), times
    points = list(trajectory)
    widths = [len(p) if isinstance(p, (Sequence, np.ndarray)) and not isinstance(p, str) else -1 for p in points]
    if set(widths) - {2, 3} or len(set(widths)) > 1:
        position = next(i for i, w in enumerate(widths) if w != widths[0] or w not in (2, 3))
        raise TrajInputError(
            f"{where}: point {position} is {points[position]!r}; every point must be (lat, lon) or "
            "(lat, lon, timestamp), all the same."
        )
    lat = _coordinates([p[0] for p in points], "latitude", where)
    lon = _coordinates([p[1] for p in points], "longitude", where)
    times = [p[2] for p in points] if 3 in widths else None
    return lat, lon, times


def _coordinates(values: Any, name: str, where: str) -> np.ndarray:
    """A flat float64 column of coordinates (None becomes NaN, refused later with its position), or an error
    naming the first point that is not a number."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        for position, value in enumerate(values):  # error path only: find the culprit
            try:
                float(value if value is not None else "nan")
            except (TypeError, ValueError):
                raise TrajInputError(f"{where}: {name} of point {position} is {value!r}, not a number.") from None
        raise TrajInputError(f"{where}: {name} must be a flat sequence of numbers.") from None
    if array.ndim != 1:
        raise TrajInputError(f"{where}: {name} must be a flat sequence, one per point; got shape {array.shape}.")
    return array
