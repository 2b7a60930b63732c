"""The "grid" mask source: a fixed n x n partition of the image (DetCon's spatial heuristic)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .registry import MASK_SOURCE_REGISTRY, check_source_image

__all__ = ["GridMask"]


class GridMask:
    """``grid_size x grid_size`` cells at the image's resolution, ids row-major from 0.

    Cell boundaries are ``floor(i * H / n)`` so cells differ by at most one pixel in size and
    every id appears for images at least ``n`` pixels on each side.
    """

    def __init__(self, grid_size: int = 5) -> None:
        if not isinstance(grid_size, int) or not 1 <= grid_size <= 16:
            # 16 x 16 = 256 ids is the most a uint8 label map can hold.
            raise ValueError(
                f"CYBORGS.MASKS.GRID_SIZE must be an int in [1, 16] (ids < 256), got {grid_size!r}"
            )
        self.grid_size = grid_size

    @classmethod
    def from_config(cls, cfg, dataset_name: str) -> GridMask:
        return cls(grid_size=int(cfg.CYBORGS.MASKS.GRID_SIZE))

    def __call__(self, dataset_dict: dict, image: np.ndarray) -> np.ndarray:
        check_source_image(image, "grid")
        h, w = image.shape[:2]
        n = self.grid_size
        rows = (np.arange(h) * n) // h
        cols = (np.arange(w) * n) // w
        return (rows[:, None] * n + cols[None, :]).astype(np.uint8)


@MASK_SOURCE_REGISTRY.register()
def grid(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    """``CYBORGS.MASKS.SOURCE: grid``. A ``CYBORGS.MASKS.GRID_SIZE`` square grid
    (:class:`GridMask`).
    """
    return GridMask.from_config(cfg, dataset_name)
