"""Fixed-mask precompute with bad images: skipped, named and counted in the manifest."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from cyborgs.masks.felzenszwalb import _Compute
from cyborgs.masks.precompute import precompute_masks
from cyborgs.masks.store import MaskStore


@pytest.mark.parametrize("workers", [0, 1])
def test_precompute_skips_bad_images(tmp_path, caplog, workers):
    items = []
    for i in range(2):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(p)
        items.append({"file_name": str(p), "image_id": f"ok{i}"})
    (tmp_path / "zero.jpg").write_bytes(b"")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), np.uint8)).save(
        tmp_path / "trunc.jpg"
    )
    data = (tmp_path / "trunc.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((10, 300, 3), 9, np.uint8)).save(tmp_path / "strip.png")
    items += [
        {"file_name": str(tmp_path / "zero.jpg"), "image_id": "zero"},
        {"file_name": str(tmp_path / "trunc.jpg"), "image_id": "trunc"},
        {"file_name": str(tmp_path / "strip.png"), "image_id": "strip"},
    ]
    store = MaskStore(str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        out = precompute_masks(
            _Compute(1000.0, 100, 0.8), items, store, name="felzenszwalb", num_workers=workers
        )
    assert out["images"] == 3 and out["skipped_images"] == 2
    man = store.manifest(0)
    assert man["skipped_images"] == 2
    assert sorted(f.split(":")[0].rsplit("/", 1)[-1] for f in man["skipped_files"]) == [
        "trunc.jpg",
        "zero.jpg",
    ]
    # the strip is computed (no aspect limit in the cache: the mapper applies the limit)
    assert [store.has(i, 0) for i in ("ok0", "ok1", "strip", "zero", "trunc")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    if workers == 0:
        assert "zero.jpg" in caplog.text and "trunc.jpg" in caplog.text
