"""The pair exact-match feature: `pair_match_ids` against a reference over cells, and the match embedding's effect."""

import h3.api.basic_int as h3
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_modeling import CONFIG_ERRORS, FakeTokenizer, _pair, make_batch, tiny_config

from modeling_trajfm import DataCollatorWithTrajectoryPadding, TrajBertForSequenceClassification
from modeling_trajfm.modeling_trajbert import pair_match_ids
from tokenization_trajfm import TrajTokenizer, build_trajectories
from tokenization_trajfm.synthetic import generate_checkins

# Neighbouring cells share long sub-token prefixes, so a prefix must never count as a match; an unseen far-away cell
# is spelt from the fallback pieces.
CELLS = [*h3.grid_disk(h3.latlng_to_cell(40.75, -73.99, 8), 2), h3.latlng_to_cell(-33.9, 151.2, 8)]


@pytest.fixture(scope="module")
def tokenizer():
    table, _ = build_trajectories(generate_checkins(n_users=40, days=10, seed=5))
    return TrajTokenizer.train(table, vocab_size=300, model_max_length=256)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(CELLS), min_size=1, max_size=8),
                          st.lists(st.sampled_from(CELLS), min_size=1, max_size=8)), min_size=1, max_size=4))
def test_match_ids_mark_exactly_the_cells_the_other_segment_visits(tokenizer, pairs):
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer(cells=[a for a, _ in pairs], pair_cells=[b for _, b in pairs], padding=True,
                          return_tensors="pt")
        matches = pair_match_ids(batch["input_ids"], batch["hexagon_ids"], batch["token_type_ids"])
        one_row_at_a_time = pair_match_ids(batch["input_ids"], batch["hexagon_ids"], batch["token_type_ids"], 1)
        assert torch.equal(matches, one_row_at_a_time)
        for row, (a, b) in enumerate(pairs):
            visits = [*a, *b]
            for token, hexagon in enumerate(batch["hexagon_ids"][row].tolist()):
                if hexagon == 0:  # [CLS], [SEP], padding
                    assert matches[row, token] == 0
                    continue
                other = b if hexagon <= len(a) else a
                assert matches[row, token] == int(visits[hexagon - 1] in other)
    tokenizer.padding_side = "right"
    single = tokenizer(cells=[a for a, _ in pairs], padding=True, return_tensors="pt")
    assert not pair_match_ids(single["input_ids"], single["hexagon_ids"], single["token_type_ids"]).any()
    for shape in ((0, 5), (2, 0)):  # an empty batch, empty rows
        empty = torch.zeros(shape, dtype=torch.long)
        assert pair_match_ids(empty, empty, empty).shape == shape
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        pair_match_ids(single["input_ids"], single["hexagon_ids"], single["token_type_ids"], 0)


def test_match_embedding_acts_only_on_shared_hexagons_of_pairs(tmp_path):
    """With the match table on, single sequences and pairs without shared cells encode exactly as without it (its
    row 0 is zero); a pair whose B repeats A's first hexagon changes; save → load keeps the outputs."""
    gen = torch.Generator().manual_seed(7)
    _, _, apart = _pair(gen, 3, 4)
    a, b, _ = _pair(gen, 5, 2)
    first = [i for i, h in enumerate(a["hexagon_ids"]) if h == 1]  # B's extra hexagon: a copy of A's first
    shared = {key: a[key] + [a[key][i] for i in first] + b[key][1:] for key in a}
    shared["hexagon_ids"] = a["hexagon_ids"] + [6] * len(first) + [h + 6 if h else 0 for h in b["hexagon_ids"][1:]]
    shared["token_type_ids"] = [0] * len(a["input_ids"]) + [1] * (len(first) + len(b["input_ids"]) - 1)
    pairs = DataCollatorWithTrajectoryPadding(FakeTokenizer())([apart, shared])
    assert pair_match_ids(pairs["input_ids"], pairs["hexagon_ids"], pairs["token_type_ids"])[1].sum() == 2 * len(first)
    features = dict(num_labels=2, use_hexagon_embeddings=True, use_level_embeddings=True, use_time_embeddings=True)
    torch.manual_seed(0)
    with_match = TrajBertForSequenceClassification(tiny_config(**features, use_match_embeddings=True)).eval()
    without = TrajBertForSequenceClassification(tiny_config(**features)).eval()
    loaded_keys = without.load_state_dict(with_match.state_dict(), strict=False)
    assert loaded_keys.unexpected_keys == ["trajbert.embeddings.match_embeddings.weight"]
    assert not loaded_keys.missing_keys
    assert with_match.trajbert.embeddings.match_embeddings.weight[0].abs().sum() == 0
    single = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(with_match(**single).logits, without(**single).logits)
        logits = with_match(**pairs).logits
        plain = without(**pairs).logits
        torch.testing.assert_close(logits[0], plain[0])  # no shared cell
        assert not torch.allclose(logits[1], plain[1])
        with_match.save_pretrained(tmp_path)
        loaded = TrajBertForSequenceClassification.from_pretrained(tmp_path).eval()
        assert loaded.config.use_match_embeddings
        torch.testing.assert_close(loaded(**pairs).logits, logits)
        # Static shapes, no host sync: the model with the table still compiles as one graph.
        torch._dynamo.reset()
        compiled = torch.compile(with_match, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(**pairs).logits, logits)
        embeds = with_match.trajbert.embeddings.word_embeddings(pairs["input_ids"])
        with pytest.raises(ValueError, match="pass both"):
            with_match(inputs_embeds=embeds, token_type_ids=pairs["token_type_ids"],
                       attention_mask=pairs["attention_mask"])
    with pytest.raises(CONFIG_ERRORS, match="use_match_embeddings"):
        tiny_config(use_match_embeddings=True, pair_encoding="siamese")
