"""Seeded synthetic check-ins that exercise every tokenizer step, for tests, demos and smoke training.

Model (all vectorized with numpy; one loop over days only):

* **City**: a few *hotspots* (Gaussian clusters, Zipf-like weights) inside ``bbox``; the first two are the
  commercial centres. A shared *venue pool* is 80 % clustered around hotspots, 20 % scattered, with log-normal
  popularity.
* **Users**: a *home* anchor (near a hotspot or anywhere), a *work* anchor near a commercial centre for a
  ``work_fraction`` of users (the others have none), and 3–6 *favourite* venues near home or work.
  Activity is log-normal (a few very active users), and ``sparse_fraction`` of users have only one or two points.
* **Daily rhythm** (local time, ``utc_offset_minutes``): hour-of-day profiles that differ between weekdays and
  weekends (few check-ins at night, peaks at commute, lunch and evening); the place type is drawn per hour:
  home at night, work on weekdays 9–17, leisure ("other") evenings and weekends.
* **Leisure = EPR** (Song et al. 2010): explore a new venue with probability ``rho * S**-gamma`` (``S`` = distinct
  venues seen so far; the nearest of a few popularity-drawn candidates to the current anchor, so nearby venues win),
  otherwise return to a past venue with probability proportional to its visit count (favourites start with pseudo
  counts). The state is updated once per simulated day: check-ins within one day see the start-of-day state.
* **Noise**: each check-in gets Gaussian GPS noise of 10–30 m (per-user sigma); a ``burst_prob`` share of check-ins
  is followed by 1–3 repeats at the same venue a few minutes apart, which the 10-minute clustering must merge.

The result follows :mod:`tokenization_trajfm.schema` plus ``venue_id`` ("v00012" pool venue, "h0007" home of user
u0007, "w0007" work), sorted by user then time, all points inside ``bbox``.

Corpora larger than memory (benchmarks of out-of-core preparation) come from :func:`write_checkins_parquet`, which
streams chunks of users to one Parquet file; ``python -m tokenization_trajfm.synthetic --output PATH --points N``
runs it from the shell.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import CHECKIN_SCHEMA, CHECKIN_TYPES, LATITUDE, LONGITUDE, TIMESTAMP, USER_ID, VENUE_ID

BBox = tuple[float, float, float, float]  # (min_lat, min_lon, max_lat, max_lon)

CITY_BBOXES: dict[str, BBox] = {
    "manhattan": (40.70, -74.02, 40.80, -73.93),
    "nyc": (40.56, -74.27, 40.99, -73.69),  # extent of the Foursquare NYC check-ins
    "tokyo": (35.51, 139.47, 35.87, 139.91),  # extent of the Foursquare TKY check-ins
    "beijing": (39.75, 116.15, 40.10, 116.60),  # inside the 5th ring road, where most GeoLife points lie
    "london": (51.38, -0.35, 51.62, 0.15),
}

_M_PER_DEG = 111_320.0
_HOME, _WORK, _OTHER = 0, 1, 2

# Relative check-in rate per local hour.
_HOURLY_WEEKDAY = np.array(
    [
        0.2,
        0.1,
        0.05,
        0.05,
        0.05,
        0.1,
        0.4,
        1.0,
        1.6,
        1.2,
        1.0,
        1.1,
        1.6,
        1.3,
        1.0,
        1.0,
        1.1,
        1.4,
        1.8,
        1.9,
        1.7,
        1.3,
        0.8,
        0.4,
    ]
)
_HOURLY_WEEKEND = np.array(
    [
        0.5,
        0.35,
        0.2,
        0.1,
        0.05,
        0.05,
        0.1,
        0.2,
        0.5,
        0.9,
        1.2,
        1.4,
        1.6,
        1.6,
        1.5,
        1.5,
        1.5,
        1.6,
        1.8,
        1.9,
        1.8,
        1.5,
        1.1,
        0.8,
    ]
)


def _place_probs(weekend: bool) -> np.ndarray:
    """(24, 3) probabilities of [home, work, other] per local hour."""
    p = np.empty((24, 3))
    if weekend:
        p[:] = (0.35, 0.03, 0.62)
        p[:9] = (0.85, 0.0, 0.15)
        p[22:] = (0.7, 0.0, 0.3)
        return p
    p[:] = (0.45, 0.05, 0.5)  # evening 18-21
    p[:7] = (0.9, 0.0, 0.1)
    p[7:9] = (0.5, 0.25, 0.25)
    p[9:17] = (0.1, 0.6, 0.3)
    p[12:14] = (0.05, 0.35, 0.6)  # lunch
    p[17] = (0.25, 0.3, 0.45)
    p[22:] = (0.8, 0.0, 0.2)
    return p


_PLACE = np.stack([_place_probs(False), _place_probs(True)])  # [weekend, hour, place]
_HOURLY_CDF = np.stack([np.cumsum(h) / h.sum() for h in (_HOURLY_WEEKDAY, _HOURLY_WEEKEND)])


def _resolve_bbox(bbox: BBox | str) -> BBox:
    if isinstance(bbox, str):
        if bbox not in CITY_BBOXES:
            raise ValueError(f"unknown city {bbox!r}; known: {sorted(CITY_BBOXES)}")
        return CITY_BBOXES[bbox]
    min_lat, min_lon, max_lat, max_lon = (float(v) for v in bbox)
    if not (-90 <= min_lat < max_lat <= 90 and -180 <= min_lon < max_lon <= 180):
        raise ValueError(f"bbox must be (min_lat, min_lon, max_lat, max_lon) with min < max, got {bbox}")
    return min_lat, min_lon, max_lat, max_lon


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width))


def generate_checkins(
    n_users: int = 200,
    days: int = 28,
    bbox: BBox | str = CITY_BBOXES["manhattan"],
    seed: int = 0,
    start: str | _dt.date = "2024-01-01",
    *,
    n_venues: int | None = None,
    n_hotspots: int = 6,
    mean_daily_checkins: float = 3.0,
    work_fraction: float = 0.75,
    sparse_fraction: float = 0.05,
    burst_prob: float = 0.08,
    rho: float = 0.6,
    gamma: float = 0.21,
    utc_offset_minutes: int = 0,
) -> pa.Table:
    """Synthetic check-ins of ``n_users`` over ``days`` days from ``start`` (local midnight), see module docstring.

    ``bbox`` is (min_lat, min_lon, max_lat, max_lon) or a key of ``CITY_BBOXES``. Local times are converted to UTC
    with ``utc_offset_minutes`` (local = UTC + offset). Same arguments and seed give an identical table.
    """
    if n_users < 1 or days < 1:
        raise ValueError(f"n_users and days must be >= 1, got {n_users}, {days}")
    min_lat, min_lon, max_lat, max_lon = _resolve_bbox(bbox)
    rng = np.random.default_rng(seed)
    n_venues = max(500, 5 * n_users) if n_venues is None else n_venues
    mid_lat = 0.5 * (min_lat + max_lat)
    m_per_deg_lon = _M_PER_DEG * max(np.cos(np.radians(mid_lat)), 1e-6)
    span_lat, span_lon = max_lat - min_lat, max_lon - min_lon
    # Keep anchors a few noise-sigmas away from the border so that noise rarely needs clipping.
    inset_lat, inset_lon = min(150 / _M_PER_DEG, 0.05 * span_lat), min(150 / m_per_deg_lon, 0.05 * span_lon)

    def clip(lat: np.ndarray, lon: np.ndarray, inset: bool = True) -> tuple[np.ndarray, np.ndarray]:
        dl, dn = (inset_lat, inset_lon) if inset else (0.0, 0.0)
        return np.clip(lat, min_lat + dl, max_lat - dl), np.clip(lon, min_lon + dn, max_lon - dn)

    def around(centre_lat: np.ndarray, centre_lon: np.ndarray, sigma_frac: np.ndarray | float):
        s = np.broadcast_to(sigma_frac, np.shape(centre_lat))
        return clip(
            centre_lat + rng.normal(size=s.shape) * s * span_lat, centre_lon + rng.normal(size=s.shape) * s * span_lon
        )

    # --- city: hotspots and the venue pool
    hs_lat = min_lat + span_lat * rng.uniform(0.15, 0.85, n_hotspots)
    hs_lon = min_lon + span_lon * rng.uniform(0.15, 0.85, n_hotspots)
    hs_sigma = rng.uniform(0.04, 0.10, n_hotspots)
    hs_weight = 1.0 / np.arange(1, n_hotspots + 1)
    hs_weight /= hs_weight.sum()
    n_commercial = min(2, n_hotspots)
    v_hs = rng.choice(n_hotspots, n_venues, p=hs_weight)
    v_lat, v_lon = around(hs_lat[v_hs], hs_lon[v_hs], hs_sigma[v_hs])
    scattered = rng.random(n_venues) < 0.2
    v_lat[scattered] = min_lat + inset_lat + (span_lat - 2 * inset_lat) * rng.random(scattered.sum())
    v_lon[scattered] = min_lon + inset_lon + (span_lon - 2 * inset_lon) * rng.random(scattered.sum())
    popularity = rng.lognormal(0.0, 1.0, n_venues)
    pop_cdf = np.cumsum(popularity) / popularity.sum()

    # --- users: anchors, noise level, activity
    u_hs = rng.choice(n_hotspots, n_users, p=hs_weight)
    home_lat, home_lon = around(hs_lat[u_hs], hs_lon[u_hs], 2.5 * hs_sigma[u_hs])
    anywhere = rng.random(n_users) < 0.4
    home_lat[anywhere], home_lon[anywhere] = clip(
        min_lat + span_lat * rng.random(anywhere.sum()), min_lon + span_lon * rng.random(anywhere.sum())
    )
    has_work = rng.random(n_users) < work_fraction
    w_hs = rng.integers(0, n_commercial, n_users)
    work_lat, work_lon = around(hs_lat[w_hs], hs_lon[w_hs], 0.6 * hs_sigma[w_hs])
    noise_m = rng.uniform(10.0, 30.0, n_users)
    rate = np.minimum(rng.lognormal(np.log(mean_daily_checkins) - 0.4, 0.9, n_users), 40.0)
    sparse = rng.random(n_users) < sparse_fraction

    # All places in one table: pool venues, then homes, then works.
    place_lat = np.concatenate([v_lat, home_lat, work_lat])
    place_lon = np.concatenate([v_lon, home_lon, work_lon])
    n_places = place_lat.size

    def nearest_candidate(ref_lat: np.ndarray, ref_lon: np.ndarray, k: int = 4) -> np.ndarray:
        """Popularity-drawn candidates, keep the nearest to the reference point (distance decay)."""
        cand = np.minimum(np.searchsorted(pop_cdf, rng.random((ref_lat.size, k))), n_venues - 1)
        d2 = ((v_lat[cand] - ref_lat[:, None]) * _M_PER_DEG) ** 2 + (
            (v_lon[cand] - ref_lon[:, None]) * m_per_deg_lon
        ) ** 2
        return cand[np.arange(ref_lat.size), d2.argmin(axis=1)]

    # Favourites seed the EPR history with pseudo counts (2 each), near home or work.
    n_fav = rng.integers(3, 7, n_users)
    fav_user = np.repeat(np.arange(n_users), n_fav)
    near_work = has_work[fav_user] & (rng.random(fav_user.size) < 0.4)
    ref_lat = np.where(near_work, work_lat[fav_user], home_lat[fav_user])
    ref_lon = np.where(near_work, work_lon[fav_user], home_lon[fav_user])
    fav = nearest_candidate(ref_lat, ref_lon)
    history = np.sort(np.repeat(fav_user.astype(np.int64) * n_places + fav, 2))

    # --- events: count per (user, day), then local hour and minute
    day_index = np.arange(days)
    start_day = np.datetime64(start, "D")
    weekend_day = ((start_day + day_index).astype("datetime64[D]").view("int64") - 4) % 7 >= 5  # 1970-01-01 = Thu
    day_factor = np.where(weekend_day, 1.15, 1.0)
    counts = rng.poisson(rate[:, None] * day_factor[None, :])
    counts[sparse] = 0
    sparse_users = np.flatnonzero(sparse)
    if sparse_users.size:
        k = rng.integers(1, 3, sparse_users.size)
        np.add.at(counts, (np.repeat(sparse_users, k), rng.integers(0, days, k.sum())), 1)
    ev_user = np.repeat(np.repeat(np.arange(n_users), days), counts.ravel())
    ev_day = np.repeat(np.tile(day_index, n_users), counts.ravel())
    ev_weekend = weekend_day[ev_day].astype(np.int64)
    n_ev = ev_user.size
    # Inverse CDF by searchsorted: the same hours as comparing against an (n_ev, 24) CDF matrix, without it.
    u = rng.random(n_ev)
    ev_hour = np.minimum(
        np.where(ev_weekend == 1, np.searchsorted(_HOURLY_CDF[1], u), np.searchsorted(_HOURLY_CDF[0], u)), 23
    )
    ev_second = ev_hour * 3600 + rng.integers(0, 3600, n_ev)

    # Place type per event from the hour profile; users without work never pick work.
    probs = _PLACE[ev_weekend, ev_hour].copy()
    probs[~has_work[ev_user], _WORK] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    ev_type = (rng.random(n_ev)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    ev_type = np.minimum(ev_type, _OTHER)
    ev_place = np.where(ev_type == _HOME, n_venues + ev_user, n_venues + n_users + ev_user)

    # --- leisure venues by EPR, one state update per day
    other = np.flatnonzero(ev_type == _OTHER)
    other = other[np.argsort(ev_day[other], kind="stable")]
    day_bounds = np.searchsorted(ev_day[other], np.arange(days + 1))
    for d in range(days):
        idx = other[day_bounds[d] : day_bounds[d + 1]]
        if idx.size == 0:
            continue
        users = ev_user[idx]
        hist_user = history // n_places
        n_visits = np.bincount(hist_user, minlength=n_users)
        first = np.cumsum(n_visits) - n_visits
        distinct = np.r_[True, history[1:] != history[:-1]]
        n_distinct = np.bincount(hist_user[distinct], minlength=n_users)
        explore = (rng.random(idx.size) < rho * np.maximum(n_distinct[users], 1) ** -gamma) | (n_visits[users] == 0)
        returned = history[first[users] + (rng.random(idx.size) * n_visits[users]).astype(np.int64)] % n_places
        at_work = has_work[users] & (ev_weekend[idx] == 0) & (ev_hour[idx] >= 9) & (ev_hour[idx] < 17)
        ref_lat = np.where(at_work, work_lat[users], home_lat[users])
        ref_lon = np.where(at_work, work_lon[users], home_lon[users])
        chosen = np.where(explore, nearest_candidate(ref_lat, ref_lon), returned)
        ev_place[idx] = chosen
        history = np.sort(np.concatenate([history, users.astype(np.int64) * n_places + chosen]), kind="stable")

    # --- bursts: 1-3 repeats at the same place a few minutes later
    burst = rng.random(n_ev) < burst_prob
    n_rep = np.where(burst, rng.integers(1, 4, n_ev), 0)
    src = np.repeat(np.arange(n_ev), n_rep)
    rep_rank = np.arange(src.size) - np.repeat(np.cumsum(n_rep) - n_rep, n_rep)  # 0, 1, 2 within a burst
    gaps = rng.integers(30, 300, src.size)  # 0.5-5 min after the previous repeat (approximately)
    rep_second = ev_second[src] + gaps * (rep_rank + 1)
    all_src = np.concatenate([np.arange(n_ev), src])
    seconds = np.concatenate([ev_second, rep_second])
    user = ev_user[all_src]
    place = ev_place[all_src]

    # --- GPS noise, clip to bbox, UTC times, sort by user then time
    sigma = noise_m[user]
    lat = place_lat[place] + rng.normal(size=place.size) * sigma / _M_PER_DEG
    lon = place_lon[place] + rng.normal(size=place.size) * sigma / m_per_deg_lon
    lat, lon = clip(lat, lon, inset=False)
    start_us = start_day.astype("datetime64[us]").view("int64") - int(utc_offset_minutes) * 60_000_000
    t_us = start_us + ev_day[all_src].astype(np.int64) * 86_400_000_000 + seconds.astype(np.int64) * 1_000_000
    order = np.lexsort((t_us, user))

    width = max(4, len(str(n_users - 1)))
    user_names = pa.array(_ids("u", n_users, width))
    place_names = pa.array(
        np.concatenate(
            [_ids("v", n_venues, max(5, len(str(n_venues - 1)))), _ids("h", n_users, width), _ids("w", n_users, width)]
        )
    )
    return pa.table(
        {
            USER_ID: user_names.take(pa.array(user[order])),
            LATITUDE: pa.array(lat[order]),
            LONGITUDE: pa.array(lon[order]),
            TIMESTAMP: pa.array(t_us[order]).cast(CHECKIN_TYPES[TIMESTAMP]),
            VENUE_ID: place_names.take(pa.array(place[order])),
        }
    )


# --- streaming writer: corpora larger than memory, one chunk of users at a time

_GPS_JITTER_M = 3.0  # per-axis sigma of the extra GPS samples around their check-in
_CORPUS_SCHEMA = CHECKIN_SCHEMA.append(pa.field(VENUE_ID, pa.string()))


@dataclass(frozen=True)
class WrittenCorpus:
    """What :func:`write_checkins_parquet` wrote, for benchmark logs."""

    path: Path
    rows: int
    users: int
    chunks: int
    seconds: float


def _chunk_seeds(seed: int, chunk: int) -> tuple[int, int]:
    """Generator and jitter seeds of one chunk: independent streams, a pure function of (seed, chunk)."""
    gen_seed, jitter_seed = np.random.SeedSequence((seed, chunk)).generate_state(2, np.uint64)
    return int(gen_seed), int(jitter_seed)


def _timestamps_us(table: pa.Table) -> np.ndarray:
    return table[TIMESTAMP].to_numpy().view(np.int64)


def _gps_expand(part: pa.Table, gap_us: np.ndarray, samples: int, rng: np.random.Generator, bbox: BBox) -> pa.Table:
    """Each check-in, then ``samples - 1`` points ``gap_us`` apart, jittered by a few metres (vectorized)."""
    min_lat, min_lon, max_lat, max_lon = bbox
    m_per_deg_lon = _M_PER_DEG * max(np.cos(np.radians(0.5 * (min_lat + max_lat))), 1e-6)
    src = np.repeat(np.arange(part.num_rows), samples)
    rank = np.tile(np.arange(samples), part.num_rows)  # 0 = the check-in itself, kept exactly
    jitter = rng.normal(0.0, _GPS_JITTER_M, (2, src.size))
    jitter[:, ::samples] = 0.0
    lat = np.clip(part[LATITUDE].to_numpy()[src] + jitter[0] / _M_PER_DEG, min_lat, max_lat)
    lon = np.clip(part[LONGITUDE].to_numpy()[src] + jitter[1] / m_per_deg_lon, min_lon, max_lon)
    t_us = _timestamps_us(part)[src] + rank * gap_us[src]
    ids = part.select([USER_ID, VENUE_ID]).take(pa.array(src))
    return pa.table(
        [ids[USER_ID], pa.array(lat), pa.array(lon), pa.array(t_us).cast(CHECKIN_TYPES[TIMESTAMP]), ids[VENUE_ID]],
        schema=_CORPUS_SCHEMA,
    )


def _write_chunk(
    writer: pq.ParquetWriter,
    chunk: int,
    max_rows: int,
    *,
    users_per_chunk: int,
    days: int,
    bbox: BBox,
    seed: int,
    gps_samples: int,
    sample_seconds: int,
    row_group_rows: int,
) -> tuple[int, int]:
    """Generate, trim and write one chunk; returns (rows, users) written. Its table dies on return, before the next
    chunk is generated, which is what bounds the writer's memory."""
    gen_seed, jitter_seed = _chunk_seeds(seed, chunk)
    table = generate_checkins(users_per_chunk, days, bbox, gen_seed)
    codes = table[USER_ID].combine_chunks().dictionary_encode().indices.to_numpy()  # 0, 0, 1, ...: rows are by user
    needed = -(-max_rows // gps_samples)  # check-ins still needed, rounded up
    if table.num_rows > needed:  # stop at the end of the user who reaches the target
        end = int(np.searchsorted(codes, codes[needed - 1], side="right"))
        table, codes = table.slice(0, end), codes[:end]
    prefix = f"c{chunk:04d}-"  # each chunk is its own city draw, so its venue ids name other places too
    table = table.set_column(0, USER_ID, pc.binary_join_element_wise(prefix, table[USER_ID], ""))
    table = table.set_column(
        _CORPUS_SCHEMA.get_field_index(VENUE_ID), VENUE_ID, pc.binary_join_element_wise(prefix, table[VENUE_ID], "")
    )

    # Extra samples of a check-in stay before the user's next one: the spacing shrinks when it comes sooner.
    sample_us = sample_seconds * 1_000_000
    gap_us = np.full(table.num_rows, sample_us, dtype=np.int64)
    same_user = codes[1:] == codes[:-1]
    gap_us[:-1][same_user] = np.minimum(sample_us, np.diff(_timestamps_us(table))[same_user] // gps_samples)
    rng = np.random.default_rng(jitter_seed)
    step = row_group_rows // gps_samples  # check-ins per write, so each write is at most one row group
    for start in range(0, table.num_rows, step):
        part = table.slice(start, step)
        if gps_samples > 1:
            part = _gps_expand(part, gap_us[start : start + step], gps_samples, rng, bbox)
        writer.write_table(part, row_group_size=row_group_rows)
    return table.num_rows * gps_samples, int(codes[-1]) + 1 if codes.size else 0


def write_checkins_parquet(
    path: str | Path,
    n_points: int,
    *,
    users_per_chunk: int = 5_000,
    days: int = 60,
    bbox: BBox | str = CITY_BBOXES["manhattan"],
    seed: int = 0,
    gps_samples: int = 1,
    sample_seconds: int = 15,
    row_group_rows: int = 1_000_000,
) -> WrittenCorpus:
    """Stream at least ``n_points`` synthetic rows to one Parquet file without holding the corpus in memory.

    Chunk ``i`` is ``generate_checkins(users_per_chunk, days, bbox, s_i)`` with ``s_i`` derived from (``seed``, i),
    and its user and venue ids prefixed ``"c0003-"`` (distinct across chunks); only one chunk is in memory at a time
    (peak RSS grows with ``users_per_chunk``, not ``n_points``: about 0.55 GB at 5,000 users x 60 days). The last
    chunk is generated whole and cut at the end of the user who reaches ``n_points``, so ``rows`` exceeds
    ``n_points`` by less than one user's points. Same arguments give the same rows.

    ``gps_samples > 1`` makes the data GPS-like cheaply: each check-in is followed by ``gps_samples - 1`` points
    ``sample_seconds`` apart (less when the user's next check-in comes sooner, so rows stay sorted by user then time)
    and a few metres around it, as real GPS logs sample densely while their user stays at a place; H3 clustering must
    merge them into one visit. Row groups hold at most ``row_group_rows`` rows and never span chunks.
    """
    if n_points < 1 or users_per_chunk < 1 or gps_samples < 1 or sample_seconds < 1:
        raise ValueError(
            f"n_points, users_per_chunk, gps_samples and sample_seconds must be >= 1, got {n_points}, "
            f"{users_per_chunk}, {gps_samples}, {sample_seconds}"
        )
    if row_group_rows < gps_samples:
        raise ValueError(f"row_group_rows ({row_group_rows}) must hold one check-in's {gps_samples} samples")
    bbox = _resolve_bbox(bbox)
    t0 = time.perf_counter()
    path = Path(path)
    rows = users = chunk = 0
    with pq.ParquetWriter(path, _CORPUS_SCHEMA) as writer:
        while rows < n_points:
            chunk_rows, chunk_users = _write_chunk(
                writer,
                chunk,
                n_points - rows,
                users_per_chunk=users_per_chunk,
                days=days,
                bbox=bbox,
                seed=seed,
                gps_samples=gps_samples,
                sample_seconds=sample_seconds,
                row_group_rows=row_group_rows,
            )
            rows, users, chunk = rows + chunk_rows, users + chunk_users, chunk + 1
    return WrittenCorpus(path, rows, users, chunk, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    """Shell entry point, for benchmark corpora: ``python -m tokenization_trajfm.synthetic --output P --points N``."""
    parser = argparse.ArgumentParser(description="Write a synthetic check-in corpus to Parquet, chunk by chunk.")
    parser.add_argument("--output", required=True, help="Parquet file to write")
    parser.add_argument("--points", type=int, required=True, help="minimum number of rows")
    parser.add_argument("--gps_samples", type=int, default=1, help="points per check-in (GPS-like when > 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users_per_chunk", type=int, default=5_000, help="bounds memory (about 0.55 GB at 5,000)")
    args = parser.parse_args(argv)
    written = write_checkins_parquet(
        args.output, args.points, users_per_chunk=args.users_per_chunk, gps_samples=args.gps_samples, seed=args.seed
    )
    print(
        f"{written.path}: {written.rows:,} rows, {written.users:,} users, {written.chunks} chunks, "
        f"{written.seconds:.1f} s"
    )


__all__ = ["CITY_BBOXES", "WrittenCorpus", "generate_checkins", "write_checkins_parquet"]

if __name__ == "__main__":
    main()
