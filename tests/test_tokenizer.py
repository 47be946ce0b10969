"""TrajTokenizer: input forms, clustering, whole-hexagon truncation/padding, features, save/load, bad input."""

import datetime as dt
import json
import subprocess
import sys

import datasets
import h3.api.basic_int as h3
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
from transformers import AutoTokenizer

import modeling_trajfm  # noqa: F401  (registers TrajTokenizer with AutoTokenizer)
from modeling_trajfm import TrajBertConfig
from tokenization_trajfm import TrajTokenizer, build_trajectories
from tokenization_trajfm.errors import TokenizerFileError, TrajInputError
from tokenization_trajfm.synthetic import generate_checkins
from tokenization_trajfm.tokenization_trajfm import OVERLAP_GAP_ID, gap_buckets, time_feature_ids

MONDAY = int(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp())  # 2024-01-01 was a Monday


@pytest.fixture(scope="module")
def corpus():
    table, _ = build_trajectories(generate_checkins(n_users=60, days=14, seed=3))
    return table


@pytest.fixture(scope="module", params=["hex", "hierarchy"])
def tokenizer(request, corpus):
    return TrajTokenizer.train(corpus, vocab_size=300, spelling=request.param, model_max_length=64)


def walk(n=6, start=MONDAY, step=1800):
    """n points 1.5 km apart, `step` seconds apart: n distinct hexagons."""
    return [(40.70 + 0.015 * i, -74.0, start + step * i) for i in range(n)]


def test_input_forms_agree(tokenizer):
    points = walk()
    as_list = tokenizer(points)
    lat, lon, t = (list(c) for c in zip(*points))
    assert tokenizer({"latitude": lat, "longitude": lon, "timestamp": t}) == as_list
    assert tokenizer({"lat": np.array(lat), "lng": np.array(lon), "time": np.array(t)}) == as_list
    assert tokenizer(np.array(points, dtype=np.float64)) == as_list
    assert tokenizer(pa.table({"latitude": lat, "longitude": lon, "timestamp": t})) == as_list
    iso = [(a, b, dt.datetime.fromtimestamp(c, dt.timezone.utc).isoformat()) for a, b, c in points]
    assert tokenizer(iso) == as_list
    mixed = [points[0][:2] + (iso[0][2],), points[1][:2] + (np.datetime64(points[1][2], "s"),), *points[2:]]
    assert tokenizer(mixed) == as_list
    cells = [h3.latlng_to_cell(a, b, 8) for a, b, _ in points]
    assert tokenizer(cells=cells, timestamps=t) == as_list
    batch = tokenizer([points, points[:3]])
    assert batch["input_ids"][0] == as_list["input_ids"]
    assert len(batch["input_ids"]) == 2


def test_structure_and_features(tokenizer):
    encoded = tokenizer(walk(4))
    ids, hexagons, levels = encoded["input_ids"], encoded["hexagon_ids"], encoded["level_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert hexagons[0] == hexagons[-1] == 0 and levels[0] == 0
    assert sorted(set(hexagons) - {0}) == [1, 2, 3, 4]
    for hexagon in (1, 2, 3, 4):
        positions = [i for i, h in enumerate(hexagons) if h == hexagon]
        assert positions == list(range(positions[0], positions[-1] + 1)), "a hexagon's tokens are contiguous"
        assert [levels[i] for i in positions] == list(range(1, len(positions) + 1))
    assert encoded["hour_ids"][1] == 1  # Monday 00:00 UTC → first hour of the week
    assert encoded["gap_ids"][1] == 0  # first visit has no gap
    assert len(tokenizer.decode_cells(ids)) == 4


def test_time_feature_ids():
    times = np.array([MONDAY, MONDAY + 3600, MONDAY + 3600 + 60, MONDAY + 7 * 86400 - 3600])
    hours, gaps = time_feature_ids(times)
    assert hours.tolist() == [1, 2, 2, 168]
    assert gaps.tolist()[:3] == [0, 1 + 5, 1 + 1]  # log2(61) → 5, log2(2) → 1
    local_hours, _ = time_feature_ids(times[:1], utc_offset_minutes=-300)  # New York in winter: Sunday 19h
    assert local_hours.tolist() == [1 + 6 * 24 + 19]


def test_time_feature_ids_measure_the_first_gap_from_the_previous_visit():
    times = np.array([MONDAY + 3600, MONDAY + 7200])
    _, alone = time_feature_ids(times)
    _, after = time_feature_ids(times, previous=MONDAY + 3600 - 61 * 60)  # 61 min before: log2(62) → 5
    _, before = time_feature_ids(times, previous=MONDAY + 3601)  # the "previous" visit starts later: an overlap
    _, same_start = time_feature_ids(times, previous=MONDAY + 3600)  # another visit at the same minute
    _, repeat = time_feature_ids(times, previous=MONDAY + 3600, repeats_previous=True)  # that very visit again
    assert alone.tolist()[0] == 0 and after.tolist()[0] == 1 + 5 and same_start.tolist()[0] == 1
    assert before.tolist()[0] == repeat.tolist()[0] == OVERLAP_GAP_ID
    assert alone.tolist()[1] == after.tolist()[1] == before.tolist()[1] == repeat.tolist()[1] == 1 + 5  # log2(61)


def test_gap_ids_fit_the_model_table():
    """Gaps of any length stay below the overlap id, which stays inside the config's gap table."""
    times = np.array([0, 60 * (2**21 - 2), 60 * 2**40])  # 1 + minutes just under 2^21, then ~2 million years
    _, gaps = time_feature_ids(times)
    assert gaps.tolist() == [0, 1 + 20, 1 + 21] and 1 + 21 < OVERLAP_GAP_ID < TrajBertConfig().num_gap_buckets


def test_gap_grid_anchored_at_the_trajectory_break():
    """With a break, gaps up to it and gaps beyond it get different ids; the plain grid mixes NYC's 3-day break."""
    minutes = np.array([0, 2159, 2160, 4320, 4320 + 1 / 60, 4321, 8641, 2**22])
    plain, anchored = gap_buckets(minutes * 60), gap_buckets(minutes * 60, break_minutes=4320)
    assert plain.tolist() == [1, 12, 12, 13, 13, 13, 14, 22]  # 4,095-8,190 minutes share id 13
    assert anchored.tolist() == [1, 12, 13, 13, 14, 14, 14, 22]  # 4,320 tops its bucket, a second more does not
    ladder = np.arange(0, 2**14 * 60, 7)  # every 7 s up to 11 days: ids rise by one per octave of 1 + minutes
    for break_minutes in (None, 1440, 4320, 7.5):
        ids = gap_buckets(ladder, break_minutes)
        assert (np.diff(ids) >= 0).all() and np.diff(ids).max() == 1
        for bucket in np.unique(ids)[1:-1]:  # the edge buckets are clipped
            inside = 1 + ladder[ids == bucket] / 60
            step = 7 / 60  # an octave wide, up to the ladder's step at either end
            assert inside.max() / inside.min() < 2 <= (inside.max() + step) / (inside.min() - step)


def test_gap_break_setting_reaches_the_features_and_the_saved_config(tmp_path):
    times = np.array([MONDAY, MONDAY + 4320 * 60, MONDAY + 2 * 4320 * 60 + 60])
    _, plain = time_feature_ids(times)
    _, anchored = time_feature_ids(times, gap_break_minutes=4320)
    assert plain.tolist() == [0, 13, 13] and anchored.tolist() == [0, 13, 14]
    tokenizer = TrajTokenizer(gap_break_minutes=4320)
    visits = [(37.0 + 0.05 * i, -122.0, int(t)) for i, t in enumerate(times)]
    assert tokenizer(visits)["gap_ids"] != TrajTokenizer()(visits)["gap_ids"]
    tokenizer.save_pretrained(tmp_path)
    assert TrajTokenizer.from_pretrained(tmp_path).gap_break_minutes == 4320.0
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["gap_break_minutes"]  # a folder saved before the setting existed keeps the grid it was trained on
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert TrajTokenizer.from_pretrained(tmp_path).gap_break_minutes is None


def test_pair_b_first_visit_gap_counts_from_a_last_visit(tokenizer):
    a = walk(3)  # visits at 0, 30, 60 min
    later = walk(2, start=MONDAY + 3600 + 61 * 60)  # B starts 61 min after A's last visit
    earlier = walk(2, start=MONDAY - 86400)  # B starts a day before A
    untimed = [(lat, lon) for lat, lon, _ in later]

    def first_b_gap(pair):
        row = tokenizer(a, pair=pair)
        return [g for g, t in zip(row["gap_ids"], row["token_type_ids"]) if t == 1][0]

    assert first_b_gap(later) == 1 + 5
    assert first_b_gap(earlier) == OVERLAP_GAP_ID and first_b_gap(untimed) == 0
    assert first_b_gap(a[-1:] + later) == OVERLAP_GAP_ID  # B starts with A's last visit: it overlaps A
    moved = (a[-1][0] + 0.05, a[-1][1], a[-1][2])  # another cell at the same minute: B may well follow A
    assert first_b_gap([moved] + later) == 1
    alone = tokenizer(later)
    pair = tokenizer(a, pair=later)
    b_later = [g for g, h, t in zip(pair["gap_ids"], pair["hexagon_ids"], pair["token_type_ids"]) if t and h > 4]
    assert b_later == [g for g, h in zip(alone["gap_ids"], alone["hexagon_ids"]) if h > 1]  # B's own gaps after that


def test_clustering_merges_within_window_only(tokenizer):
    base = (40.75, -73.98)
    close = [(*base, MONDAY), (*base, MONDAY + 300), (*base, MONDAY + 540)]  # chained: each within 10 min
    assert max(tokenizer(close)["hexagon_ids"]) == 1
    apart = [(*base, MONDAY), (*base, MONDAY + 601)]
    assert max(tokenizer(apart)["hexagon_ids"]) == 2
    unsorted = [(40.70, -74.0, MONDAY + 60), (40.80, -74.0, MONDAY)]
    decoded = tokenizer.decode_cells(tokenizer(unsorted)["input_ids"], as_int=True)
    assert decoded == [h3.latlng_to_cell(40.80, -74.0, 8), h3.latlng_to_cell(40.70, -74.0, 8)]


def test_truncation_and_padding_keep_whole_hexagons(tokenizer):
    points = walk(40)
    full = tokenizer(points, max_length=1000)
    for max_length in (9, 12, 17, 30):
        cut = tokenizer(points, max_length=max_length, padding="max_length")
        n_real = sum(cut["attention_mask"])
        assert len(cut["input_ids"]) == max_length and n_real <= max_length
        kept = max(cut["hexagon_ids"])
        # the kept hexagons are exactly the first `kept` hexagons of the untruncated sequence, token for token
        prefix = [i for i, h in zip(full["input_ids"], full["hexagon_ids"]) if 0 < h <= kept]
        assert cut["input_ids"][1 : n_real - 1] == prefix
        padded = range(n_real, max_length)
        for key in ("hexagon_ids", "level_ids", "hour_ids", "gap_ids", "token_type_ids", "input_ids"):
            assert all(cut[key][i] == 0 for i in padded)
    with pytest.raises(ValueError, match="raise max_length"):
        tokenizer(points, max_length=3)


def test_pairs_and_tensors(tokenizer):
    a, b = walk(3), walk(2, start=MONDAY + 86400)
    encoded = tokenizer([a, b], pair=[b, a], padding=True, return_tensors="pt")
    assert encoded["input_ids"].shape == encoded["hexagon_ids"].shape == encoded["token_type_ids"].shape
    row = encoded["token_type_ids"][0].tolist()
    n_a = len(tokenizer(a)["input_ids"])
    assert row[:n_a] == [0] * n_a and set(row[n_a:]) <= {0, 1} and 1 in row
    assert int(encoded["hexagon_ids"][0].max()) == 5
    assert (encoded["input_ids"] == tokenizer.sep_token_id).sum(dim=1).tolist() == [2, 2]


def test_save_load_round_trips_every_setting(tmp_path):
    corpus_res9, _ = build_trajectories(generate_checkins(n_users=40, days=7, seed=4), resolution=9)
    tokenizer = TrajTokenizer.train(
        corpus_res9,
        vocab_size=280,
        spelling="hierarchy",
        resolution=9,
        window_minutes=5,
        utc_offset_minutes=-300,
        model_max_length=48,
    )
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is TrajTokenizer
    for name in ("resolution", "spelling", "window_minutes", "utc_offset_minutes", "model_max_length", "vocab"):
        assert getattr(loaded, name) == getattr(tokenizer, name), name
    points = walk(30)
    assert loaded(points) == tokenizer(points)
    assert loaded([points, points[:2]], padding=True) == tokenizer([points, points[:2]], padding=True)


def test_corpus_at_another_resolution_is_refused(tokenizer, corpus):
    with pytest.raises(ValueError, match="not H3 cells at resolution 9.*same resolution"):
        TrajTokenizer.train(corpus, vocab_size=300, resolution=9)
    with pytest.raises(ValueError, match="trajectory 0.*resolution 8"):
        tokenizer.encode_trajectory_batch({"cells": [[h3.latlng_to_cell(40.0, -74.0, 9)]]}, max_length=32)


def test_training_honours_dataset_filters(corpus):
    dataset = datasets.Dataset(corpus)
    first_user = corpus["user_id"][0].as_py()
    only_first = dataset.filter(lambda row: row["user_id"] == first_user)
    direct = TrajTokenizer.train(corpus.filter(pa.compute.equal(corpus["user_id"], first_user)), vocab_size=300)
    assert TrajTokenizer.train(only_first, vocab_size=300).vocab == direct.vocab


def test_tokenize_dataset_matches_call_and_loses_nothing(tokenizer, corpus):
    dataset = datasets.Dataset(corpus.slice(0, 40))
    single = tokenizer.tokenize_dataset(dataset, max_length=32, overflow="split")
    parallel = tokenizer.tokenize_dataset(dataset, max_length=32, overflow="split", num_proc=2)
    assert single["input_ids"] == parallel["input_ids"]
    assert set(single.column_names) >= {"input_ids", "hexagon_ids", "hour_ids", "user_id", "traj_id"}
    assert max(len(ids) for ids in single["input_ids"]) <= 32
    visits_in = sum(len(c) for c in dataset["cells"])
    visits_out = sum(max(h) for h in single["hexagon_ids"])
    assert visits_out == visits_in, "splitting must keep every visit"
    first = dataset[0]
    direct = tokenizer(cells=first["cells"], timestamps=first["timestamps"], max_length=10_000)
    pieces = [row for row in single if row["traj_id"] == first["traj_id"]]
    stitched = [i for row in pieces for i in row["input_ids"][1:-1]]
    assert stitched == direct["input_ids"][1:-1]
    truncated = tokenizer.tokenize_dataset(dataset, max_length=32, overflow="truncate")
    assert len(truncated) == len(dataset)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([(float("nan"), -74.0, MONDAY)], r"latitude nan of point 0"),
        ([(40.0, -74.0, MONDAY), (40.0, 181.0, MONDAY)], r"longitude 181.0 of point 1"),
        ([(40.0, -74.0, "yesterday")], r"cannot parse timestamp 'yesterday' of point 0"),
        ([(40.0, -74.0, MONDAY), (40.0, -74.0, None)], r"timestamp of point 1 is missing"),
        ([], r"Nothing to tokenize|is empty"),
        ([(40.0,)], r"every point must be"),
    ],
)
def test_bad_points_name_the_problem(tokenizer, bad, message):
    with pytest.raises(ValueError, match=message):
        tokenizer([bad, walk(2)]) if bad else tokenizer(bad)


def test_bad_cells_name_the_problem(tokenizer):
    with pytest.raises(ValueError, match=r"cells\[0\].*resolution 9.*resolution 8"):
        tokenizer(cells=[h3.latlng_to_cell(40.0, -74.0, 9)])
    with pytest.raises(ValueError, match="not a valid H3 cell"):
        tokenizer(cells=[12345])
    with pytest.raises(ValueError, match="2 cells but 1 timestamps"):
        tokenizer(cells=[h3.latlng_to_cell(40.0, -74.0, 8)] * 2, timestamps=[MONDAY])


def test_single_point_and_no_times(tokenizer):
    one = tokenizer([(40.0, -74.0, MONDAY)])
    assert max(one["hexagon_ids"]) == 1
    untimed = tokenizer([(40.0, -74.0), (40.1, -74.0)])
    assert set(untimed["hour_ids"]) == {0} and set(untimed["gap_ids"]) == {0}


def test_decode_round_trip_and_coordinates(tokenizer):
    points = walk(5)
    ids = tokenizer(points)["input_ids"]
    cells = tokenizer.decode_cells(ids)
    assert cells == [format(h3.latlng_to_cell(a, b, 8), "x") for a, b, _ in points]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(cells)
    assert tokenizer.decode(ids) == " ".join(["[CLS]", *cells, "[SEP]"])  # special tokens as text tokenizers show them
    coords = tokenizer.decode_coordinates(ids)
    assert coords.shape == (5, 2) and np.allclose(coords[:, 0], [p[0] for p in points], atol=0.01)
    assert tokenizer.decode_cells([tokenizer.vocab["##1"]], strict=False) == [None]


def test_one_trajectory_with_tensors_is_a_batch_of_one(tokenizer):
    points = walk(4)
    flat = tokenizer(points)
    tensors = tokenizer(points, return_tensors="pt")
    for key, values in flat.items():
        assert tensors[key].shape == (1, len(values)) and tensors[key][0].tolist() == values, key
    assert tokenizer(cells=tokenizer.decode_cells(flat["input_ids"]), return_tensors="np")["input_ids"].shape[0] == 1
    assert tokenizer.is_batch([points]) and not tokenizer.is_batch(points)


def test_left_truncation_keeps_the_most_recent_visits(tokenizer):
    points = walk(40)
    everything = tokenizer.decode_cells(tokenizer(points, max_length=1000)["input_ids"])
    tokenizer.truncation_side = "left"
    try:
        kept = tokenizer.decode_cells(tokenizer(points, max_length=20)["input_ids"])
        assert 0 < len(kept) < len(everything) and kept == everything[-len(kept) :]
        a, b = walk(30), walk(30, start=MONDAY + 86400)
        pair = tokenizer(a, pair=b, max_length=24)
        types, ids = pair["token_type_ids"], pair["input_ids"]
        cells_a = tokenizer.decode_cells([i for i, t in zip(ids, types) if t == 0])
        cells_b = tokenizer.decode_cells([i for i, t in zip(ids, types) if t == 1])
        all_a = tokenizer.decode_cells(tokenizer(a, max_length=1000)["input_ids"])
        all_b = tokenizer.decode_cells(tokenizer(b, max_length=1000)["input_ids"])
        assert cells_a == all_a[-len(cells_a) :] and cells_b == all_b[: len(cells_b)]
    finally:
        tokenizer.truncation_side = "right"


# ------------------------------------------------------------------------------------------------ issue 10, item 6


@pytest.fixture
def saved(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _swap_two_ids(vocab):
    a, b = list(vocab)[40:42]
    vocab[a], vocab[b] = vocab[b], vocab[a]


def _duplicate_an_id(vocab):
    a, b = list(vocab)[40:42]
    vocab[a] = vocab[b]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "vocab.json").unlink(), r"vocab.json is missing"),
        (lambda d: (d / "vocab.json").write_text(""), r"vocab.json is not a readable vocabulary"),
        (lambda d: _edit_json(d / "vocab.json", _swap_two_ids), r"vocab.json is not the vocabulary this tokenizer"),
        (lambda d: _edit_json(d / "vocab.json", _duplicate_an_id), r"vocab.json: token .* also the id of"),
        (lambda d: _edit_json(d / "tokenizer_config.json", lambda c: c.update(resolution=9)),
         r"tokenizer_config.json: the settings \(resolution=9"),
        (lambda d: _edit_json(d / "tokenizer_config.json", lambda c: c.update(max_levels=8)),
         r"tokenizer_config.json: the settings .*max_levels=8"),
    ],
    ids=["missing-vocab", "empty-vocab", "swapped-ids", "duplicate-id", "resolution-edited", "max-levels-edited"],
)
def test_tokenizer_files_that_disagree_are_refused(saved, damage, message):
    assert "fingerprint" in json.loads((saved / "tokenizer_config.json").read_text())
    AutoTokenizer.from_pretrained(saved)  # intact: loads
    damage(saved)
    with pytest.raises(TokenizerFileError, match=message):
        AutoTokenizer.from_pretrained(saved)


def test_folder_without_fingerprint_still_loads(saved, tokenizer):
    _edit_json(saved / "tokenizer_config.json", lambda c: c.pop("fingerprint"))
    loaded = AutoTokenizer.from_pretrained(saved)
    assert loaded(walk()) == tokenizer(walk())
    assert loaded.fingerprint == tokenizer.fingerprint  # and re-saving records it


def test_a_setting_changed_on_purpose_needs_fingerprint_none(saved):
    with pytest.raises(TokenizerFileError, match="fingerprint=None"):
        AutoTokenizer.from_pretrained(saved, resolution=9)
    assert AutoTokenizer.from_pretrained(saved, resolution=9, fingerprint=None).resolution == 9
    # Settings that change features, not ids, may be overridden at load (data from another time zone).
    assert AutoTokenizer.from_pretrained(saved, utc_offset_minutes=60).utc_offset_minutes == 60


# ------------------------------------------------------------------------------------------------ issue 10, item 7


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda tok: tok({"lat": [40.7, 40.71, 40.72], "lon": [-73.9] * 3, "timestamp": [MONDAY]}),
         r"trajectories\[0\]: 3 points but 1 timestamps"),
        (lambda tok: tok([(40.75, -73.98, 1333476000000), (40.76, -73.97, "2012-04-03T19:00:00Z")]),
         r"timestamp 1333476000000 of point 0: .*year 44,226; it looks like epoch milliseconds"),
        (lambda tok: tok([(40.75, -73.98, MONDAY), (40.76, -73.97, MONDAY * 1000)]),
         r"point 1: .*looks like epoch milliseconds"),
        (lambda tok: tok([(None, -73.98)]), r"trajectories\[0\]: latitude nan of point 0"),
        (lambda tok: tok([(40.0, -73.98), (40.1, None)]), r"longitude nan of point 1"),
        (lambda tok: tok([(40.0, -73.98), None]), r"point 1 is None"),
        (lambda tok: tok([[(40.0, -73.98)], [(40.0, "east")]]), r"trajectories\[1\]: longitude of point 0 is 'east'"),
        (lambda tok: tok([(40.0, -73.98, MONDAY), (40.0, -73.98, float("nan"))]), r"time\w* of point 1 is not finite"),
    ],
    ids=["column-lengths", "ms-beside-string", "ms-beside-seconds", "none-lat", "none-lon", "none-point",
         "text-coordinate", "nan-time"],
)
def test_bad_tokenizer_inputs_name_the_position(tokenizer, call, message):
    with pytest.raises(TrajInputError, match=message):
        call(tokenizer)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_levels": 0}, r"max_levels must be an integer >= 2"),
        ({"max_levels": 1}, r"max_levels must be an integer >= 2"),
        ({"window_minutes": -1}, r"window_minutes must be a finite number >= 0"),
        ({"utc_offset_minutes": 1.5}, r"utc_offset_minutes must be an integer"),
        ({"utc_offset_minutes": 24 * 60}, r"utc_offset_minutes must be within"),
        ({"time_features": "yes"}, r"time_features must be True or False"),
        ({"gap_break_minutes": 0}, r"gap_break_minutes must be a finite number > 0 or None"),
        ({"gap_break_minutes": "3 days"}, r"gap_break_minutes must be a finite number > 0 or None"),
        ({"resolution": 16}, r"resolution must be an integer in 0..15"),
        ({"spelling": "base32"}, r"Unknown sub-hash spelling"),
    ],
)
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(TrajInputError, match=message):
        TrajTokenizer(**settings)


def test_missing_h3_says_what_to_install():
    code = "import sys; sys.modules['h3'] = None; import tokenization_trajfm"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "pip install 'h3" in proc.stderr
