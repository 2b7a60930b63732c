"""Colours for label maps and image | mask grids (rendered PNGs, TensorBoard, figures).

Mask ids are anonymous (a round renumbers them per image), so colours only tell segments of one
image apart: id ``i`` always gets hue ``i * 0.618...`` (golden-ratio steps keep neighbouring ids
far apart on the colour wheel).
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["colorize", "mask_grid", "palette"]


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours, uint8 [n, 3] (golden-ratio hues)."""
    return np.array(
        [
            [int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.7, 0.95)]
            for i in range(n)
        ],
        np.uint8,
    ).reshape(n, 3)


_LUT = palette(256)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """uint8 ids [H, W] -> RGB uint8 [H, W, 3]."""
    return _LUT[np.asarray(label_map, dtype=np.uint8)]


def mask_grid(
    store: Any,
    dicts: Sequence[dict],
    rounds: Sequence[int],
    read_image: Callable[[dict], np.ndarray],
) -> np.ndarray:
    """RGB uint8 grid, one row per dataset dict: the image, then its stored masks of each round
    (``store.read``, put on the image's pixels as the data loader does). Rows are padded to
    the widest with white and separated by a 2-px white line. ``read_image(dict)`` returns RGB
    uint8 [H, W, 3]."""
    if not dicts:
        raise ValueError("mask_grid needs at least one image")
    rows = []
    for d in dicts:
        image = read_image(d)
        h, w = image.shape[:2]
        cells = [image] + [
            colorize(store.read(d["image_id"], out_hw=(h, w), round_id=r)) for r in rounds
        ]
        rows.append(np.concatenate(cells, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)
