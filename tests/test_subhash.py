"""Sub-hash spellings and vocabulary: every cell at every resolution round-trips, seen in training or not."""

from functools import cache

import h3.api.basic_int as h3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenization_trajfm import TrajTokenizer
from tokenization_trajfm.h3cells import encode_cells
from tokenization_trajfm.subhash import (
    SPELLINGS,
    alphabet,
    build_wordpiece,
    cells_to_words,
    hex_width,
    train_vocab,
    words_to_cells,
)

latitudes = st.floats(min_value=-90, max_value=90, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)


@cache
def tokenizer_for(resolution: int, spelling: str) -> TrajTokenizer:
    """A tokenizer trained on one small city, so most property-test cells were never seen in training."""
    rng = np.random.default_rng(resolution)
    cells = encode_cells(rng.normal(40.75, 0.05, 3000), rng.normal(-73.97, 0.05, 3000), resolution)
    return TrajTokenizer.train(cells, vocab_size=400, resolution=resolution, spelling=spelling)


@settings(max_examples=200, deadline=None)
@given(latitudes, longitudes, st.integers(0, 15), st.sampled_from(SPELLINGS))
def test_words_round_trip_every_resolution(lat, lon, resolution, spelling):
    cell = h3.latlng_to_cell(lat, lon, resolution)
    cells = np.array([cell], dtype=np.uint64)
    assert int(words_to_cells(cells_to_words(cells, resolution, spelling), resolution, spelling)[0]) == cell


@settings(max_examples=150, deadline=None)
@given(latitudes, longitudes, st.integers(0, 15), st.sampled_from(SPELLINGS))
def test_tokens_decode_to_exact_cell_even_unseen(lat, lon, resolution, spelling):
    tokenizer = tokenizer_for(resolution, spelling)
    cell = h3.latlng_to_cell(lat, lon, resolution)
    encoded = tokenizer(cells=[cell])
    assert tokenizer.unk_token_id not in encoded["input_ids"]
    assert tokenizer.decode_cells(encoded["input_ids"], as_int=True) == [cell]


def test_hex_spelling_is_the_paper_string_without_unused_digits():
    cell = h3.latlng_to_cell(40.75, -73.98, 8)
    (word,) = cells_to_words(np.array([cell], dtype=np.uint64), 8, "hex")
    assert format(cell, "x").startswith(word) and len(word) == hex_width(8) == 10
    assert set(format(cell, "x")[len(word) :]) == {"f"}


def test_hierarchy_spelling_prefixes_are_parent_cells():
    cell = h3.latlng_to_cell(35.68, 139.76, 8)
    (word,) = cells_to_words(np.array([cell], dtype=np.uint64), 8, "hierarchy")
    assert len(word) == 9
    for resolution in range(0, 8):
        parent = h3.cell_to_parent(cell, resolution)
        (parent_word,) = cells_to_words(np.array([parent], dtype=np.uint64), resolution, "hierarchy")
        assert word.startswith(parent_word)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_vocabulary_holds_every_character_in_both_positions(spelling):
    rng = np.random.default_rng(0)
    cells = np.unique(encode_cells(rng.normal(40.7, 0.02, 500), rng.normal(-74.0, 0.02, 500), 8))
    vocab = train_vocab(cells_to_words(cells, 8, spelling), np.ones(cells.size), spelling, 300)
    initial, continuation = alphabet(spelling)
    assert set(initial) <= set(vocab) and {"##" + c for c in continuation} <= set(vocab)
    assert len(vocab) <= 300 and sorted(vocab.values()) == list(range(len(vocab)))
    assert [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][:5] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_training_is_deterministic(spelling):
    """Every cell visited once: merges tie everywhere, and ties used to be broken in hash-map order (so the two
    engines of `tokenization_trajfm.prepare`, or two runs, gave different vocabularies)."""
    rng = np.random.default_rng(0)
    cells = np.unique(encode_cells(rng.normal(40.7, 0.02, 500), rng.normal(-74.0, 0.02, 500), 8))
    words = cells_to_words(cells, 8, spelling)
    vocabs = [train_vocab(words, np.ones(cells.size), spelling, 300) for _ in range(8)]
    assert all(vocab == vocabs[0] for vocab in vocabs)


def test_frequent_cells_get_their_own_token():
    rng = np.random.default_rng(1)
    cells = encode_cells(rng.normal(40.7, 0.05, 2000), rng.normal(-74.0, 0.05, 2000), 8)
    hot = cells[0]
    tokenizer = TrajTokenizer.train(np.concatenate([cells, np.full(5000, hot)]), vocab_size=300)
    assert len(tokenizer.cell_token_ids([int(hot)])[0]) == 1


def test_too_small_vocabulary_is_a_clear_error():
    with pytest.raises(ValueError, match="too small for the 'hierarchy' spelling"):
        TrajTokenizer.train(
            np.array([h3.latlng_to_cell(1, 1, 8)], dtype=np.uint64), vocab_size=50, spelling="hierarchy"
        )


def test_unknown_spelling_and_resolution_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown sub-hash spelling"):
        TrajTokenizer(spelling="base32")
    with pytest.raises(ValueError, match="resolution must be an integer in 0..15"):
        TrajTokenizer(resolution=16)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 15), st.sampled_from(SPELLINGS), st.integers(0, 10_000))
def test_vectorized_encoder_matches_tokenizers_wordpiece(resolution, spelling, seed):
    tokenizer = tokenizer_for(resolution, spelling)
    rng = np.random.default_rng(seed)
    near = encode_cells(rng.normal(40.75, 0.05, 200), rng.normal(-73.97, 0.05, 200), resolution)
    anywhere = encode_cells(rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200), resolution)
    cells = np.unique(np.concatenate([near, anywhere]))
    flat, offsets = tokenizer._cell_encoder.encode_unique(cells)
    reference = build_wordpiece(tokenizer.vocab).encode_batch(
        cells_to_words(cells, resolution, spelling), add_special_tokens=False
    )
    assert [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(cells.size)] == [e.ids for e in reference]


def test_well_formed_words_that_name_no_cell_are_rejected():
    with pytest.raises(ValueError, match="not a resolution-8 cell in the hex spelling"):
        words_to_cells(["a" * hex_width(8)], 8, "hex")
    pentagon = h3.get_pentagons(8)[0]
    (word,) = cells_to_words(np.array([pentagon], dtype=np.uint64), 8, "hierarchy")
    deleted = word[0] + "1" + word[2:]  # digit 1 under a pentagon base cell is the deleted subsequence
    with pytest.raises(ValueError, match="hierarchy spelling"):
        words_to_cells([deleted], 8, "hierarchy")


def _reference_merges(words: list[str], counts: list[int], room: int) -> list[str]:
    """The WordPiece trainer's merge rule written the slow, obvious way: recount every pair each round, merge the
    most frequent (ties: smaller spelling of left, then right) left to right in every word."""
    pieces = [[w[0]] + ["##" + ch for ch in w[1:]] for w in words]
    learned: list[str] = []
    while len(learned) < room:
        totals: dict[tuple[str, str], int] = {}
        for word, count in zip(pieces, counts):
            for pair in zip(word, word[1:]):
                totals[pair] = totals.get(pair, 0) + count
        if not totals:
            break
        left, right = min(totals, key=lambda pair: (-totals[pair], pair))
        merged = left + right[2:]
        if merged not in learned:
            learned.append(merged)
        for k, word in enumerate(pieces):
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == (left, right):
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            pieces[k] = out
    return learned


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text("01ab", min_size=4, max_size=4), st.integers(1, 5)), min_size=1, max_size=25,
                unique_by=lambda item: item[0]),
       st.integers(1, 30), st.randoms(use_true_random=False))
def test_vocabulary_training_is_the_merge_rule_and_deterministic(items, room, rng):
    """Exactly the reference merges (runs of one character included), whatever the order of the words."""
    words, counts = [w for w, _ in items], [n for _, n in items]
    size = 5 + 16 + 16 + room
    vocab = train_vocab(words, counts, "hex", size)
    learned = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][5 + 32:]
    assert learned == _reference_merges(words, counts, room)
    order = list(range(len(words)))
    rng.shuffle(order)
    assert train_vocab([words[i] for i in order], [counts[i] for i in order], "hex", size) == vocab
