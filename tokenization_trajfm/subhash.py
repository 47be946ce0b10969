"""Sub-hash spellings of H3 cells and the WordPiece vocabulary over them.

A cell becomes one "word"; WordPiece splits it into sub-hashes. Two spellings:

- ``hex`` (the paper): the canonical lowercase hex string, cut after the last character that holds a used bit of
  the cell's resolution (the rest is always the same run of unused ``f`` bits). Hex characters straddle the 3-bit
  digits, so pieces are frequent substrings rather than parent cells.
- ``hierarchy``: one symbol for the base cell (0-121), then one digit ``0``-``6`` per resolution. Every prefix of
  the word is a real parent cell, so first pieces are coarse regions and continuations refine them.

Both spellings are lossless at a fixed resolution, and the vocabulary always contains every single character in
both word-initial and ``##`` continuation form, so every cell on Earth is representable without ``[UNK]``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordPiece

from .errors import TrajInputError
from .h3cells import h3

SPELLINGS = ("hex", "hierarchy")
#: The spelling run_mtm.py and corpus preparation default to: chosen by the NYC ablation (README).
PRETRAINING_SPELLING = "hierarchy"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"
HEX_DIGITS = "0123456789abcdef"
NUM_BASE_CELLS = 122
BASE_CELL_OFFSET = 0x100  # base cell b is spelled chr(0x100 + b): one letter each, outside ASCII
_STRING_HEADER_BITS = (
    15  # mode (low 3 bits shown), reserved, resolution, base cell: the 15-char string starts at bit 59
)
_H3_CELL_MODE = 1


def check_spelling(spelling: str, name: str = "sub-hash spelling") -> str:
    """`spelling` if it is one of `SPELLINGS`; the error calls it `name` (a script passes its flag)."""
    if spelling not in SPELLINGS:
        raise TrajInputError(f"Unknown {name} {spelling!r}: choose one of {', '.join(SPELLINGS)}.")
    return spelling


def hex_width(resolution: int) -> int:
    """Number of hex characters that hold used bits at `resolution`."""
    return -(-(_STRING_HEADER_BITS + 3 * resolution) // 4)


def max_cell_tokens(resolution: int, spelling: str) -> int:
    """Most sub-tokens one cell can take (every character its own piece), whatever the vocabulary."""
    return hex_width(resolution) if check_spelling(spelling) == "hex" else resolution + 1


#: [CLS] ... [SEP] around every sequence.
SPECIAL_TOKENS_PER_SEQUENCE = 2


def shortest_sequence(resolution: int, spelling: str) -> int:
    """The smallest sequence length that holds any one hexagon: its longest spelling plus [CLS] and [SEP]."""
    return max_cell_tokens(resolution, spelling) + SPECIAL_TOKENS_PER_SEQUENCE


def alphabet(spelling: str) -> tuple[list[str], list[str]]:
    """(initial characters, continuation characters) a word of this spelling can contain."""
    if check_spelling(spelling) == "hex":
        return list(HEX_DIGITS), list(HEX_DIGITS)
    bases = [chr(BASE_CELL_OFFSET + b) for b in range(NUM_BASE_CELLS)]
    return bases, list("0123456")


def minimum_vocab_size(spelling: str) -> int:
    initial, continuation = alphabet(spelling)
    return len(SPECIAL_TOKENS) + len(initial) + len(continuation)


def _digits(cells: np.ndarray, resolution: int) -> np.ndarray:
    shifts = np.array([3 * (15 - r) for r in range(1, resolution + 1)], dtype=np.uint64)
    return ((cells[:, None] >> shifts[None, :]) & np.uint64(7)).astype(np.uint8)


def cells_to_words(cells: np.ndarray, resolution: int, spelling: str) -> list[str]:
    """Spell each cell (uint64, all at `resolution`) as one word."""
    cells = np.asarray(cells, dtype=np.uint64)
    if check_spelling(spelling) == "hex":
        width = hex_width(resolution)
        return [format(c, "015x")[:width] for c in cells.tolist()]
    bases = ((cells >> np.uint64(45)) & np.uint64(0x7F)).astype(np.int64)
    digit_bytes = (_digits(cells, resolution) + ord("0")).tobytes()
    return [
        chr(BASE_CELL_OFFSET + int(b)) + digit_bytes[i * resolution : (i + 1) * resolution].decode("ascii")
        for i, b in enumerate(bases.tolist())
    ]


def words_to_cells(words: Iterable[str], resolution: int, spelling: str) -> np.ndarray:
    """Inverse of `cells_to_words`; raises TrajInputError on a word that is not a cell of this spelling."""
    words = list(words)
    if check_spelling(spelling) == "hex":
        width = hex_width(resolution)
        out = []
        for w in words:
            if len(w) != width or any(ch not in HEX_DIGITS for ch in w):
                raise TrajInputError(f"{w!r} is not a resolution-{resolution} cell in the hex spelling.")
            out.append(int(w.ljust(15, "f"), 16))
        return _valid_cells(np.array(out, dtype=np.uint64), words, resolution, spelling)
    cells = np.empty(len(words), dtype=np.uint64)
    header = (_H3_CELL_MODE << 59) | (resolution << 52)
    unused = sum(7 << (3 * (15 - r)) for r in range(resolution + 1, 16))
    for i, w in enumerate(words):
        base = ord(w[0]) - BASE_CELL_OFFSET if w else -1
        if len(w) != resolution + 1 or not 0 <= base < NUM_BASE_CELLS or any(ch not in "0123456" for ch in w[1:]):
            raise TrajInputError(f"{w!r} is not a resolution-{resolution} cell in the hierarchy spelling.")
        value = header | (base << 45) | unused
        for r, ch in enumerate(w[1:], start=1):
            value |= int(ch) << (3 * (15 - r))
        cells[i] = value
    return _valid_cells(cells, words, resolution, spelling)


def _valid_cells(cells: np.ndarray, words: list[str], resolution: int, spelling: str) -> np.ndarray:
    """Well-formed words can still name no cell (e.g. a digit a pentagon deletes): reject those too."""
    for cell, word in zip(cells.tolist(), words):
        if not h3.is_valid_cell(cell):
            raise TrajInputError(f"{word!r} is not a resolution-{resolution} cell in the {spelling} spelling.")
    return cells


def build_wordpiece(vocab: dict[str, int]) -> Tokenizer:
    """A WordPiece tokenizer over whitespace-separated cell words (no normalizer: spellings are case-sensitive)."""
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix=CONTINUATION))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def train_vocab(words: Iterable[str], counts: Iterable[int], spelling: str, vocab_size: int) -> dict[str, int]:
    """Train a WordPiece vocabulary on cell words weighted by how often each occurs in the corpus.

    The merge rule of `tokenizers`' WordPiece trainer (repeatedly merge the most frequent adjacent pair; pieces after
    the first carry the ``##`` prefix), run here so that it is deterministic: ties are broken by the pieces'
    spelling. `tokenizers`' trainer breaks them by hash-map order and heap position, so two processes given the same
    counts could disagree (measured: different vocabularies run to run), and corpus preparation in partitions, its
    Spark engine and DDP ranks must all agree. The vocabulary lists the special tokens, every single character in
    both positions, then the learned pieces in the order they were merged.
    """
    minimum = minimum_vocab_size(spelling)
    if vocab_size < minimum:
        raise TrajInputError(
            f"vocab_size={vocab_size} is too small for the {spelling!r} spelling: it needs at least {minimum} "
            "entries (special tokens plus every single character in both word positions)."
            + "".join(f" Or choose the {other!r} spelling, which needs {minimum_vocab_size(other)}."
                      for other in SPELLINGS if minimum_vocab_size(other) <= vocab_size)
        )
    initial, continuation = alphabet(spelling)
    names = initial + [CONTINUATION + ch for ch in continuation]
    first = {ch: i for i, ch in enumerate(initial)}
    later = {ch: len(initial) + i for i, ch in enumerate(continuation)}
    words = list(words)
    width = max((len(w) for w in words), default=1)
    symbols = np.full((len(words), max(width, 2)), -1, dtype=np.int64)
    for row, word in enumerate(words):
        symbols[row, : len(word)] = [first[word[0]], *(later[ch] for ch in word[1:])]
    learned = _merge_pairs(symbols, np.asarray(list(counts), dtype=np.int64), names,
                           vocab_size - len(SPECIAL_TOKENS) - len(names))
    tokens = list(SPECIAL_TOKENS) + names + learned
    return {token: index for index, token in enumerate(tokens)}


def _pair_counts(rows: np.ndarray, row_ids: np.ndarray, weights: np.ndarray, base: int
                 ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Adjacent pairs of token-id rows (padded with -1), coded left * base + right → (distinct codes, weighted
    counts, the row ids where each occurs)."""
    present = rows[:, 1:] >= 0
    codes = rows[:, :-1][present] * base + rows[:, 1:][present]
    owners = np.broadcast_to(row_ids[:, None], present.shape)[present]
    order = np.argsort(codes, kind="stable")
    codes, owners = codes[order], owners[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if codes.size else np.zeros(0, dtype=np.int64)
    totals = np.add.reduceat(weights[owners], starts) if codes.size else np.zeros(0, dtype=np.int64)
    return codes[starts], totals, np.split(owners, starts[1:])


def _merge_pairs(symbols: np.ndarray, weights: np.ndarray, names: list[str], room: int) -> list[str]:
    """Greedy pair merging (BPE) over token-id rows: up to `room` new pieces, in merge order.

    Only the rows a merge touches are recounted: an index from each pair to the rows where it was seen (stale
    rows are checked and skipped) finds them, and a heap keyed by (-count, left, right spelling), stale entries
    skipped, gives the most frequent pair with ties broken by spelling."""
    import heapq

    names = list(names)
    ids = {name: i for i, name in enumerate(names)}
    base = len(names) + room + 1  # above every id a piece can get
    counts: dict[int, int] = {}
    where: dict[int, list[np.ndarray]] = {}
    heap: list[tuple[int, str, str, int]] = []

    def update(row_ids: np.ndarray, sign: int) -> None:
        for code, n, owners in zip(*_pair_counts(symbols[row_ids], row_ids, weights, base)):
            count = counts[code] = counts.get(code, 0) + sign * int(n)
            if sign > 0:
                where.setdefault(code, []).append(owners)
            if count > 0:
                heapq.heappush(heap, (-count, names[code // base], names[code % base], code))

    update(np.arange(symbols.shape[0]), 1)
    learned: list[str] = []
    while len(learned) < room and heap:
        negative, _, _, code = heapq.heappop(heap)
        if counts.get(code, 0) != -negative:
            continue  # stale: the pair's count changed after this entry was pushed
        a, b = divmod(code, base)
        merged = names[a] + names[b][len(CONTINUATION):]
        if merged not in ids:  # the same piece can come from two different pairs: it is learned once
            ids[merged] = len(names)
            names.append(merged)
            learned.append(merged)
        candidates = np.unique(np.concatenate(where.pop(code)))
        hits = (symbols[candidates, :-1] == a) & (symbols[candidates, 1:] == b)
        touched = candidates[hits.any(axis=1)]
        hits = hits[hits.any(axis=1)]
        if a == b:  # "x x x" merges left to right into "xx x": a position right after a merge cannot merge
            for j in range(1, hits.shape[1]):
                hits[:, j] &= ~hits[:, j - 1]
        update(touched, -1)
        rows = symbols[touched]
        rows[:, :-1][hits] = ids[merged]
        gone = np.zeros(rows.shape, dtype=bool)
        gone[:, 1:] = hits
        order = np.argsort(gone, axis=1, kind="stable")  # drop the right halves, keep the order of the rest
        rows = np.take_along_axis(rows, order, axis=1)
        rows[np.take_along_axis(gone, order, axis=1)] = -1
        symbols[touched] = rows
        update(touched, 1)
    return learned


def cell_symbols(cells: np.ndarray, resolution: int, spelling: str) -> np.ndarray:
    """(n, word length) symbol codes of each cell's word, straight from the bits (no strings)."""
    cells = np.asarray(cells, dtype=np.uint64)
    if spelling == "hex":
        shifts = np.array([4 * (14 - j) for j in range(hex_width(resolution))], dtype=np.uint64)
        return ((cells[:, None] >> shifts[None, :]) & np.uint64(0xF)).astype(np.int64)
    bases = ((cells >> np.uint64(45)) & np.uint64(0x7F)).astype(np.int64)
    return np.concatenate([bases[:, None], _digits(cells, resolution).astype(np.int64)], axis=1)


class CellEncoder:
    """Cells → sub-hash token ids in CSR form, tokenizing each distinct cell once.

    WordPiece's greedy longest-match-first, vectorized over cells: a piece is looked up as the integer packing its
    symbols (4 bits per hex character; 7 bits for a base cell, 3 per digit), so no cell is ever turned into a string.
    Gives exactly what `tokenizers`' WordPiece gives on the words (tested).
    """

    def __init__(self, vocab: dict[str, int], resolution: int, spelling: str):
        self.resolution = resolution
        self.spelling = spelling
        self.width = max_cell_tokens(resolution, spelling)
        initial, continuation = alphabet(spelling)
        codes = {ch: i for i, ch in enumerate(initial)}, {ch: i for i, ch in enumerate(continuation)}
        pieces: dict[tuple[bool, int], list[tuple[int, int]]] = {}
        for token, token_id in vocab.items():
            later = token.startswith(CONTINUATION)
            body = token[len(CONTINUATION) :] if later else token
            if not body or token in SPECIAL_TOKENS:
                continue
            try:
                symbols = [codes[1][ch] if (later or k > 0) else codes[0][ch] for k, ch in enumerate(body)]
            except KeyError:
                continue  # not a piece of this spelling: it can never match a cell word
            pieces.setdefault((later, len(symbols)), []).append((self._pack(np.array([symbols]), later)[0], token_id))
        singles_first = {k for k, _ in pieces.get((False, 1), [])}
        singles_later = {k for k, _ in pieces.get((True, 1), [])}
        missing = [c for i, c in enumerate(initial) if i not in singles_first]
        missing += [CONTINUATION + c for i, c in enumerate(continuation) if i not in singles_later]
        if missing:
            raise TrajInputError(
                f"The vocabulary lacks single-character pieces {missing[:8]}: some cells could not be spelled. "
                "Train it with TrajTokenizer.train (or subhash.train_vocab), which always includes them."
            )
        self.tables = {}
        for key, entries in pieces.items():
            entries.sort()
            self.tables[key] = (np.array([k for k, _ in entries], dtype=np.int64), np.array([i for _, i in entries]))

    def _pack(self, symbols: np.ndarray, later: bool) -> np.ndarray:
        """Integer key of each row of symbols; in the hierarchy spelling a word-initial first symbol is a base cell."""
        bits = 4 if self.spelling == "hex" else 3
        key = np.zeros(symbols.shape[0], dtype=np.int64)
        for k in range(symbols.shape[1]):
            width = 7 if (self.spelling == "hierarchy" and k == 0 and not later) else bits
            key = (key << width) | symbols[:, k]
        return key

    def encode_unique(self, unique_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of distinct cells: (flat ids int64, offsets of length n+1)."""
        symbols = cell_symbols(unique_cells, self.resolution, self.spelling)
        n, width = symbols.shape
        position = np.zeros(n, dtype=np.int64)
        rows, ids = [], []
        active = np.arange(n)
        while active.size:
            start = position[active]
            found = np.full(active.size, -1, dtype=np.int64)
            length = np.zeros(active.size, dtype=np.int64)
            for span in range(width - int(start.min()), 0, -1):
                for later in (False, True):
                    table = self.tables.get((later, span))
                    todo = np.flatnonzero((found < 0) & ((start > 0) == later) & (start + span <= width))
                    if table is None or todo.size == 0:
                        continue
                    take = start[todo, None] + np.arange(span)[None, :]
                    keys = self._pack(symbols[active[todo, None], take], later)
                    slot = np.minimum(np.searchsorted(table[0], keys), table[0].size - 1)
                    hit = table[0][slot] == keys
                    found[todo[hit]] = table[1][slot[hit]]
                    length[todo[hit]] = span
            rows.append(active)
            ids.append(found)
            position[active] += length
            active = active[position[active] < width]
        rows, ids = np.concatenate(rows), np.concatenate(ids)
        order = np.argsort(rows, kind="stable")  # steps were appended in order, so a stable sort keeps piece order
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        return ids[order], offsets

    def split_points(self, cells: np.ndarray, budget: int) -> list[int]:
        """Start indices of consecutive runs of whole cells of at most `budget` tokens each."""
        unique, inverse = np.unique(np.asarray(cells, dtype=np.uint64), return_inverse=True)
        _, offsets = self.encode_unique(unique)
        counts = np.diff(offsets)[inverse]
        if counts.size and int(counts.max()) > budget:
            raise TrajInputError(
                f"A cell takes {int(counts.max())} tokens but only {budget} fit in a sequence: raise max_length."
            )
        ends = np.cumsum(counts)
        starts, used = [0], 0
        while True:
            nxt = int(np.searchsorted(ends, used + budget, side="right"))
            if nxt >= ends.size:
                return starts
            starts.append(nxt)
            used = int(ends[nxt - 1])

    def encode(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-token arrays for a sequence of cells: (ids, owner visit index, position inside the cell)."""
        cells = np.asarray(cells, dtype=np.uint64)
        unique, inverse = np.unique(cells, return_inverse=True)
        flat, offsets = self.encode_unique(unique)
        lengths = np.diff(offsets)[inverse]
        owner = np.repeat(np.arange(cells.size), lengths)
        visit_first_token = np.cumsum(lengths) - lengths
        within = np.arange(owner.size) - visit_first_token[owner]
        ids = flat[offsets[:-1][inverse][owner] + within]
        return ids, owner, within
