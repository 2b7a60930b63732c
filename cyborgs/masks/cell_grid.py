"""Where the cells of a stored label map sit on the image's pixels.

A bootstrap round (paper §3.3) labels the cells of a backbone feature map; a cell's label
belongs to the pixels the cell looks at, i.e. around the centre of its receptive field. For a
stride-s map that centre is not the middle of the pixel block [s i, s i + s): the ResNet stem
and the stride-2 blocks centre cell i on input pixel about s i (``measure_cell_grid`` measures
it), so reading a map as if cell i covered [s i, s i + s) put every mask boundary (s - 1) / 2
pixels (0.44 cell at stride 8) right of and below where the features put it.

Convention (per axis; pixel k spans [k, k + 1) in continuous coordinates, centre k + 0.5):
a label map of n cells over an image side of N pixels places the centre of cell j at

    (j + c) * N / n          (c: the map's *cell centre*, in cells)

and every pixel takes the label of the cell whose centre is nearest to the pixel's centre:

    j(k) = clip(floor((k + 0.5) * n / N - c + 0.5), 0, n - 1)        (ties: the higher cell)

A round computes its map on the image resized to exactly (s h, s w) pixels (sides rounded to
multiples of the stride, so the map's extent alone says how it lies on the image), where a
cell whose receptive field is centred on pixel index ``o + s j`` has ``c = (o + 0.5) / s``
(1/16 for ``o = 0, s = 8``). Resizing keeps pixel centres aligned (``align_corners=False``), so
the same c holds on the original image. The round records c in its manifest ("cell_grid").

A map with no recorded cell centre (``None``: rounds written before, fixed sources whose maps
are at image resolution or on their own grid) keeps the rule it was written for:
``j(k) = floor(k * n / N)`` (torch's ``nearest``; cell j covers [j N / n, (j + 1) N / n)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CELL_GRID_VERSION",
    "CellCentre",
    "cell_grid_record",
    "cell_centre_from_manifest",
    "cell_index",
    "upsample_label_map",
]

# Bumped whenever the way rounds place their maps changes (the study's fingerprint holds it).
CELL_GRID_VERSION = 1

# (c_y, c_x) in cells, or None for the legacy rule (module docstring).
CellCentre = tuple[float, float] | None


def cell_grid_record(stride: int, offset_px: Sequence[float]) -> dict[str, Any]:
    """The manifest's ``"cell_grid"``: stride s, receptive-field centre offset o (pixels, per
    axis y, x: cell j centred on pixel index o + s j) and the cell centre c = (o + 0.5) / s."""
    s = int(stride)
    oy, ox = (float(v) for v in offset_px)
    return {
        "version": CELL_GRID_VERSION,
        "stride": s,
        "offset_px": [oy, ox],
        "centre": [(oy + 0.5) / s, (ox + 0.5) / s],
    }


def cell_centre_from_manifest(manifest: Mapping | None, where: str = "manifest") -> CellCentre:
    """The cell centre (c_y, c_x) a manifest records, or None (legacy rule) when it records
    none. A ``"cell_grid"`` that is there but malformed is an error naming ``where``."""
    rec = (manifest or {}).get("cell_grid")
    if rec is None:
        return None
    try:
        cy, cx = (float(v) for v in rec["centre"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: 'cell_grid' must hold 'centre': [c_y, c_x] (numbers), got {rec!r:.200}"
        ) from e
    if not all(np.isfinite(v) and -1.0 <= v <= 2.0 for v in (cy, cx)):
        raise ValueError(f"{where}: 'cell_grid' centre {[cy, cx]} is outside [-1, 2] cells")
    return cy, cx


def cell_index(n_cells: int, n_pixels: int, pixels: np.ndarray, centre: float | None) -> np.ndarray:
    """Cell (int64) of each pixel index in ``pixels`` along one axis of ``n_pixels`` pixels
    covered by ``n_cells`` cells whose centre is ``centre`` (module docstring; None: legacy)."""
    k = np.asarray(pixels, dtype=np.int64)
    if centre is None:
        return (k * int(n_cells)) // int(n_pixels)
    pos = (k + 0.5) * (int(n_cells) / int(n_pixels)) - float(centre) + 0.5
    return np.clip(np.floor(pos).astype(np.int64), 0, int(n_cells) - 1)


def upsample_label_map(
    label_map: np.ndarray, out_hw: Sequence[int], cell_centre: CellCentre = None
) -> np.ndarray:
    """``label_map`` [h, w] at the image's resolution ``out_hw`` = (H, W): every pixel takes
    the label of its cell (module docstring). With ``cell_centre`` None and (H, W) = (h, w)
    the map itself is returned."""
    h, w = label_map.shape
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if cell_centre is None and (oh, ow) == (h, w):
        return label_map
    cy, cx = (None, None) if cell_centre is None else cell_centre
    rows = cell_index(h, oh, np.arange(oh), cy)
    cols = cell_index(w, ow, np.arange(ow), cx)
    return label_map[rows[:, None], cols[None, :]]
