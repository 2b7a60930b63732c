"""Image folders: symlink loops and duplicates are cut and named; unreadable files stay listed so
the loader skips and counts them."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from detectron2.config import get_cfg
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.data.image_folder import IMAGE_FOLDER_DATASET, load_image_folder
from cyborgs.data.pretrain_loader import build_pretrain_train_loader


def _png(path, h=24, w=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_is_cut_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "sub" / "b.png", seed=1)
    os.symlink(root, root / "sub" / "loop")  # sub/loop -> the root: an endless walk
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    assert [d["image_id"] for d in dicts] == ["a.png", "sub/b.png"]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "symlink loop" in msg and os.path.join("sub", "loop") in msg


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_duplicates_through_symlinks_are_kept_once_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "real" / "b.png", seed=1)
    os.symlink(root / "real", root / "alias")  # a second way into real/
    os.symlink(root / "a.png", root / "z_link.png")  # a second name of a.png
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    ids = [d["image_id"] for d in dicts]
    assert ids == ["a.png", "alias/b.png"] or ids == ["a.png", "real/b.png"]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "z_link.png (= a.png)" in msg
    assert "alias" in msg or "real" in msg


def test_unreadable_files_stay_listed_and_the_loader_counts_them(tmp_path, caplog):
    root = tmp_path / "imgs"
    for i in range(3):
        _png(root / f"ok{i}.png", seed=i)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    by_id = {d["image_id"]: d for d in dicts}
    assert set(by_id) == {"ok0.png", "ok1.png", "ok2.png", "empty.jpg", "text.png"}
    assert (by_id["empty.jpg"]["height"], by_id["empty.jpg"]["width"]) == (0, 0)
    warn = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warn) == 1 and "empty.jpg" in warn[0] and "text.png" in warn[0]

    # the loader meets them, skips them and reports them for data/num_skipped_images
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.DATA.IMAGE_FOLDER = str(root)
    cfg.DATASETS.TRAIN = (IMAGE_FOLDER_DATASET,)
    cfg.CYBORGS.MASKS.SOURCE = "grid"
    cfg.CYBORGS.AUG.CROP_SIZE = 16
    cfg.SOLVER.IMS_PER_BATCH = 5
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 0
    it = iter(build_pretrain_train_loader(cfg))
    skipped = [f for _ in range(4) for item in next(it) for f in item["skipped_files"]]
    assert skipped
    assert {os.path.basename(f) for f in skipped} <= {"empty.jpg", "text.png"}
