"""Tokenizer throughput on GeoLife 15 s (4.3M GPS points), measured side by side in one run.

(a) bare H3 encoding of the same points with polars-h3 (the fastest vectorized encoder we know),
(b) the full tokenizer: clean + encode + cluster + segment + sub-hash ids (reading excluded; the vocabulary is trained
    beforehand, also excluded),
(c) a straightforward per-point Python implementation of the same steps, on a sample,
and the process's peak resident memory. Ends with machine-readable lines `ratio full_vs_h3`, `ratio full_vs_python`,
`peak_rss_mb`.

    python bench/bench_tokenizer.py [--data PATH] [--python-sample 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import h3
import numpy as np
import polars as pl
import polars_h3 as plh3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenization_trajfm import SegmentationConfig, TrajTokenizer, build_trajectories  # noqa: E402
from tokenization_trajfm.readers import read_geolife  # noqa: E402
from tokenization_trajfm.subhash import build_wordpiece, cells_to_words  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "geolife" / "geolife_15s.csv.gz"


def bare_h3(lat: np.ndarray, lon: np.ndarray, resolution: int) -> np.ndarray:
    frame = pl.DataFrame({"lat": lat, "lon": lon})
    return frame.select(plh3.latlng_to_cell("lat", "lon", resolution, return_dtype=pl.UInt64)).to_series().to_numpy()


def full_tokenizer(table, tokenizer: TrajTokenizer, segmentation: SegmentationConfig):
    trajectories, report = build_trajectories(
        table, tokenizer.resolution, tokenizer.window_minutes, segmentation, invalid="drop"
    )
    cells = np.asarray(trajectories["cells"].combine_chunks().flatten(), dtype=np.uint64)
    ids, owner, _ = tokenizer._cell_encoder.encode(cells)
    return report, ids


def python_per_point(table, tokenizer: TrajTokenizer, segmentation: SegmentationConfig):
    """The same steps written the obvious way: iterate over rows, one Python step per point, visit and cell."""
    window = tokenizer.window_minutes * 60
    rows = [
        (r["user_id"], r["timestamp"].timestamp(), r["latitude"], r["longitude"])
        for r in table.select(["user_id", "latitude", "longitude", "timestamp"]).to_pylist()
    ]
    rows.sort()
    visits = []  # [user, cell, t_start, t_end, n_points]
    previous = None
    for user, t, a, b in rows:
        if not (-90 <= a <= 90 and -180 <= b <= 180) or (user, t, a, b) == previous:
            continue
        previous = (user, t, a, b)
        cell = h3.latlng_to_cell(a, b, tokenizer.resolution)
        last = visits[-1] if visits else None
        if last and last[0] == user and last[1] == cell and t - last[3] <= window:
            last[3] = t
            last[4] += 1
        else:
            visits.append([user, cell, t, t, 1])
    trajectories, current = [], []
    for visit in visits:
        if current and (visit[0] != current[-1][0] or visit[2] - current[-1][3] > segmentation.max_gap_minutes * 60):
            trajectories.append(current)
            current = []
        current.append(visit)
    if current:
        trajectories.append(current)
    kept = [
        t
        for t in trajectories
        if len({v[1] for v in t}) >= segmentation.min_cells and sum(v[4] for v in t) >= segmentation.min_points
    ]
    wordpiece = build_wordpiece(tokenizer.vocab)
    ids = []
    for trajectory in kept:
        for visit in trajectory:
            cell = np.array([h3.str_to_int(visit[1])], dtype=np.uint64)
            word = cells_to_words(cell, tokenizer.resolution, tokenizer.spelling)[0]
            ids.extend(wordpiece.encode(word, add_special_tokens=False).ids)
    return ids


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--python-sample", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=30_000)
    parser.add_argument("--spelling", default="hex", choices=["hex", "hierarchy"])
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"GeoLife file not found at {args.data}: pass --data PATH (see ../shared/data/README.md).")

    start = time.perf_counter()
    table = read_geolife(args.data)
    print(f"read {table.num_rows:,} points in {time.perf_counter() - start:.1f} s (not counted below)")
    segmentation = SegmentationConfig()
    trajectories, _ = build_trajectories(table, 8, 10.0, segmentation, invalid="drop")
    tokenizer = TrajTokenizer.train(trajectories, vocab_size=args.vocab_size, spelling=args.spelling)
    print(f"vocabulary: {len(tokenizer):,} tokens ({args.spelling} spelling), trained beforehand")

    lat = table["latitude"].to_numpy()
    lon = table["longitude"].to_numpy()
    n = table.num_rows
    t_h3, _ = timed(lambda: bare_h3(lat, lon, 8), args.repeats)
    t_full, (report, ids) = timed(lambda: full_tokenizer(table, tokenizer, segmentation), args.repeats)

    sample = table.slice(0, min(args.python_sample, n))
    t_py, py_ids = timed(lambda: python_per_point(sample, tokenizer, segmentation), 1)
    _, (_, sample_ids) = timed(lambda: full_tokenizer(sample, tokenizer, segmentation), 1)
    if list(sample_ids) != py_ids:
        sys.exit("The per-point Python version disagrees with the vectorized tokenizer: fix before benchmarking.")

    rate_h3 = n / t_h3
    rate_full = n / t_full
    rate_py = sample.num_rows / t_py
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(report)
    print(f"sub-hash tokens: {ids.size:,}")
    print(f"(a) bare H3 (polars-h3):     {rate_h3:>12,.0f} points/s  ({t_h3:.2f} s)")
    print(f"(b) full tokenizer:          {rate_full:>12,.0f} points/s  ({t_full:.2f} s)")
    print(f"(c) per-point Python:        {rate_py:>12,.0f} points/s  ({sample.num_rows:,}-point sample, same ids)")
    print(f"ratio full_vs_h3: {rate_full / rate_h3:.2f}")
    print(f"ratio full_vs_python: {rate_full / rate_py:.2f}")
    print(f"peak_rss_mb: {peak_mb:.0f}")


if __name__ == "__main__":
    main()
