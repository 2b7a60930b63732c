"""The "whole" and "grid" mask sources: shapes, dtypes and id layout."""

import numpy as np
import pytest
from detectron2.config import get_cfg

from cyborgs.config import add_cyborgs_config
from cyborgs.masks import build_mask_source
from cyborgs.masks.grid import GridMask
from cyborgs.masks.whole import WholeImageMask


def _cfg(source: str, grid: int = 5):
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.MASKS.SOURCE = source
    cfg.CYBORGS.MASKS.GRID_SIZE = grid
    return cfg


def test_whole_is_zero_at_image_resolution():
    src = build_mask_source(_cfg("whole"), "any")
    assert isinstance(src, WholeImageMask)
    mask = src({"image_id": 1}, np.full((37, 53, 3), 200, np.uint8))
    assert mask.shape == (37, 53) and mask.dtype == np.uint8
    assert not mask.any()


def test_grid_ids_row_major_and_equal_cells():
    src = build_mask_source(_cfg("grid", grid=3), "any")
    assert isinstance(src, GridMask)
    mask = src({}, np.zeros((30, 60, 3), np.uint8))
    assert mask.shape == (30, 60) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[::10, ::20], np.arange(9).reshape(3, 3))
    # each cell is exactly 10 x 20 pixels
    np.testing.assert_array_equal(np.bincount(mask.ravel()), np.full(9, 200))


def test_grid_uneven_sizes_cover_every_id():
    mask = GridMask(5)({}, np.zeros((23, 17, 3), np.uint8))
    assert set(np.unique(mask)) == set(range(25))
    counts = np.bincount(mask.ravel())
    # floor-based boundaries: cell areas differ by at most one row/column
    assert counts.max() - counts.min() <= 4 + 5 + 1
    # ids grow along rows then columns
    assert (np.diff(mask.astype(int), axis=1) >= 0).all()
    assert (np.diff(mask.astype(int), axis=0) >= 0).all()


def test_grid_rejects_too_many_cells():
    with pytest.raises(ValueError, match="GRID_SIZE"):
        GridMask(17)


def test_sources_are_picklable():
    import pickle

    for src in (GridMask(4), WholeImageMask()):
        clone = pickle.loads(pickle.dumps(src))
        img = np.zeros((8, 8, 3), np.uint8)
        np.testing.assert_array_equal(clone({}, img), src({}, img))
