"""H3 encoding and decoding over numpy arrays.

The corpus path encodes millions of points, so it uses polars-h3 (vectorized Rust) when it is installed and falls
back to h3-py, which is exact but per point. Kept free of other package imports: it travels with pushed checkpoints.
"""

from __future__ import annotations

import numpy as np

from .errors import TrajInputError

try:
    import h3.api.basic_int as h3
except ModuleNotFoundError as error:  # a remote-code user may lack it: say what to install
    raise ModuleNotFoundError(
        "trajfm tokenizers need the `h3` package (Uber H3 bindings, v4): install it with `pip install 'h3>=4.5,<5'`."
    ) from error

try:  # optional fast path
    import polars as pl
    import polars_h3 as plh3
except ImportError:  # pragma: no cover - exercised only where polars-h3 is absent
    pl = None
    plh3 = None

MAX_RESOLUTION = 15


def check_resolution(resolution: int) -> int:
    if not isinstance(resolution, (int, np.integer)) or not 0 <= int(resolution) <= MAX_RESOLUTION:
        raise TrajInputError(f"H3 resolution must be an integer in 0..{MAX_RESOLUTION}, got {resolution!r}.")
    return int(resolution)


def encode_cells(latitude: np.ndarray, longitude: np.ndarray, resolution: int) -> np.ndarray:
    """Map coordinates (degrees, already validated) to H3 cells as uint64."""
    resolution = check_resolution(resolution)
    latitude = np.asarray(latitude, dtype=np.float64)
    longitude = np.asarray(longitude, dtype=np.float64)
    if latitude.size == 0:
        return np.empty(0, dtype=np.uint64)
    if plh3 is not None:
        frame = pl.DataFrame({"lat": latitude, "lon": longitude})
        cells = frame.select(plh3.latlng_to_cell("lat", "lon", resolution, return_dtype=pl.UInt64))
        return cells.to_series().to_numpy()
    return np.fromiter(
        (h3.latlng_to_cell(a, b, resolution) for a, b in zip(latitude.tolist(), longitude.tolist())),
        dtype=np.uint64,
        count=latitude.size,
    )


def cells_from_any(cells, resolution: int) -> np.ndarray:
    """Accept H3 cells as ints or hex strings; check they are valid cells at `resolution`."""
    values = list(cells) if not isinstance(cells, np.ndarray) else cells
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        out = values.astype(np.uint64)
    else:
        out = np.array([h3.str_to_int(v) if isinstance(v, str) else int(v) for v in values], dtype=np.uint64)
    for position, cell in enumerate(out.tolist()):
        if not h3.is_valid_cell(cell):
            raise TrajInputError(f"cells[{position}] = {format(cell, 'x')!r} is not a valid H3 cell.")
        if h3.get_resolution(cell) != resolution:
            raise TrajInputError(
                f"cells[{position}] = {format(cell, 'x')!r} has resolution {h3.get_resolution(cell)}, but this "
                f"tokenizer works at resolution {resolution}: re-encode the points or use a tokenizer of that "
                "resolution."
            )
    return out


def cell_resolution_check(cells: np.ndarray, resolution: int, where: str) -> np.ndarray:
    """Vectorized check that uint64 `cells` are H3 cells (mode 1) at `resolution`; returns them unchanged."""
    cells = np.asarray(cells, dtype=np.uint64)
    mode = (cells >> np.uint64(59)) & np.uint64(0xF)
    found = (cells >> np.uint64(52)) & np.uint64(0xF)
    bad = np.flatnonzero((mode != 1) | (found != resolution))
    if bad.size:
        cell = int(cells[bad[0]])
        raise TrajInputError(
            f"{where}: {bad.size:,} cell(s) are not H3 cells at resolution {resolution}; the first, at position "
            f"{int(bad[0])}, is {cell:x} (resolution {(cell >> 52) & 0xF}). Build the corpus and the tokenizer at "
            "the same resolution."
        )
    return cells


def cell_centers(cells: np.ndarray) -> np.ndarray:
    """(n, 2) array of cell-centre (lat, lon) in degrees."""
    cells = np.asarray(cells, dtype=np.uint64)
    if cells.size == 0:
        return np.empty((0, 2), dtype=np.float64)
    unique, inverse = np.unique(cells, return_inverse=True)
    centers = np.array([h3.cell_to_latlng(int(c)) for c in unique.tolist()], dtype=np.float64)
    return centers[inverse]


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between (n, 2) arrays of (lat, lon) degrees."""
    lat1, lon1, lat2, lon2 = (np.radians(x) for x in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
