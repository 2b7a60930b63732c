"""Cell placement of stored label maps (cyborgs.masks.cell_grid), from its definition: every
pixel takes the cell whose centre (j + c) N / n is nearest to the pixel's centre k + 0.5."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cyborgs.masks.cell_grid import (
    cell_centre_from_manifest,
    cell_grid_record,
    cell_index,
    upsample_label_map,
)
from cyborgs.masks.store import MaskStore, upsample_nearest


def _nearest_centre(n: int, N: int, c: float) -> np.ndarray:
    """Brute force: distances from each pixel centre to every cell centre; ties to the higher
    cell (exact in float64 for the dyadic c and N below)."""
    centres = (np.arange(n) + c) * N / n
    d = np.abs((np.arange(N) + 0.5)[:, None] - centres[None, :])
    return n - 1 - np.argmin(d[:, ::-1], axis=1)


def test_hand_computed_stride_8_cells():
    # stride 8, receptive fields centred on pixel index 8 j: c = 0.5 / 8; centres 0.5 and 8.5,
    # pixel 4 (centre 4.5) is midway and goes to the higher cell
    assert cell_index(2, 16, np.arange(16), 1 / 16).tolist() == [0] * 4 + [1] * 12
    # legacy (no recorded centre): cell j covers pixels [8 j, 8 j + 8)
    assert cell_index(2, 16, np.arange(16), None).tolist() == [0] * 8 + [1] * 8
    # the record of that grid
    rec = cell_grid_record(8, (0.0, 0.0))
    assert rec["centre"] == [1 / 16, 1 / 16] and rec["stride"] == 8


@pytest.mark.parametrize("c", [1 / 16, 1 / 32, 0.25, 0.5, 0.75, 0.0])
def test_every_pixel_takes_its_nearest_cell_centre(c):
    for n, N in [(12, 96), (12, 150), (7, 13), (20, 640), (3, 2), (1, 5)]:
        assert cell_index(n, N, np.arange(N), c).tolist() == _nearest_centre(n, N, c).tolist()


def test_centre_half_cell_is_the_old_nearest_rule_for_whole_strides():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    for f in (1, 2, 8, 16):
        out = (6 * f, 9 * f)
        assert np.array_equal(upsample_label_map(m, out, (0.5, 0.5)), upsample_nearest(m, out))
    assert upsample_label_map(m, (13, 11), None) is not m
    assert np.array_equal(upsample_label_map(m, (13, 11), None), upsample_nearest(m, (13, 11)))


def test_manifest_record_is_read_back_and_checked():
    assert cell_centre_from_manifest({"round": 1}) is None  # older rounds, fixed sources
    assert cell_centre_from_manifest({"cell_grid": cell_grid_record(16, (0, 1.5))}) == (
        0.5 / 16,
        2 / 16,
    )
    with pytest.raises(ValueError, match=r"m\.json: 'cell_grid' must hold 'centre'"):
        cell_centre_from_manifest({"cell_grid": {"stride": 8}}, "m.json")
    with pytest.raises(ValueError, match="outside"):
        cell_centre_from_manifest({"cell_grid": {"centre": [0.1, 7]}}, "m.json")


def test_store_places_maps_by_their_rounds_record(tmp_path):
    store = MaskStore(str(tmp_path))
    m = np.array([[0, 1]], dtype=np.uint8)
    for r, extra in ((0, {}), (1, {"cell_grid": cell_grid_record(8, (0.0, 0.0))})):
        store.begin_round(r)
        store.write(r, "a", m)
        store.finish_round(r, extra)
    assert store.cell_centre(0) is None
    assert store.read("a", out_hw=(1, 16), round_id=0).tolist() == [[0] * 8 + [1] * 8]
    assert store.read("a", out_hw=(1, 16), round_id=1).tolist() == [[0] * 4 + [1] * 12]
    lm, centre = store.read_placed("a")  # current: round 1
    assert lm.tolist() == [[0, 1]] and centre == (1 / 16, 1 / 16)
    # a round redone with another record is read afresh (the cache follows the manifest file)
    path = os.path.join(store.round_dir(0), "manifest.json")
    man = store.manifest(0)
    man["cell_grid"] = cell_grid_record(8, (3.5, 3.5))
    with open(path + ".new", "w") as f:
        json.dump(man, f)
    os.replace(path + ".new", path)
    assert store.cell_centre(0) == (0.5, 0.5)
