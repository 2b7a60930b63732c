"""TwoViewDatasetMapper: output structure, masks from the source, corrupt files skipped."""

import logging
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.masks.grid import GridMask
from cyborgs.pretrain_data.augment import TwoViewAugment, ViewAugment
from cyborgs.pretrain_data.two_view_mapper import TwoViewDatasetMapper


def _cfg(source="grid"):
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.AUG.CROP_SIZE = 32
    cfg.CYBORGS.MASKS.SOURCE = source
    cfg.CYBORGS.MASKS.GRID_SIZE = 2
    cfg.DATASETS.TRAIN = ("some_unlabeled_set",)
    cfg.SEED = 3
    return cfg


def _png(path, h=40, w=60, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def test_output_structure_and_rgb(tmp_path):
    arr = _png(tmp_path / "a.png")
    mapper = TwoViewDatasetMapper(_cfg())
    out = mapper({"file_name": str(tmp_path / "a.png"), "image_id": "a", "height": 40, "width": 60})
    assert out["image_id"] == "a" and (out["height"], out["width"]) == (40, 60)
    assert len(out["views"]) == 2
    for v in out["views"]:
        assert v["image"].shape == (3, 32, 32) and v["image"].dtype == torch.uint8
        assert v["mask"].shape == (32, 32) and v["mask"].dtype == torch.int64
        assert set(v["mask"].unique().tolist()) <= {0, 1, 2, 3}
        assert v["box"].shape == (4,) and v["box"].dtype == torch.float32
        assert isinstance(v["flip"], bool)
    # RGB order: with geometry only, a full-image crop reproduces the file's channels
    full = TwoViewDatasetMapper(
        augment=TwoViewAugment(
            *(
                ViewAugment(
                    size=40,
                    scale=(1.0, 1.0),
                    ratio=(1.5, 1.5),
                    flip_prob=0.0,
                    color_jitter_prob=0.0,
                    grayscale_prob=0.0,
                    blur_prob=0.0,
                    solarize_prob=0.0,
                ),
            )
            * 2
        ),
        mask_source=GridMask(2),
    )
    v = full({"file_name": str(tmp_path / "a.png")})["views"][0]
    assert v["box"].tolist() == [0.0, 0.0, 60.0, 40.0]
    mean_rgb = v["image"].float().mean(dim=(1, 2))
    assert torch.allclose(mean_rgb, torch.from_numpy(arr).float().mean(dim=(0, 1)), atol=1.5)


def test_seeded_mapper_is_reproducible(tmp_path):
    _png(tmp_path / "a.png")
    d = {"file_name": str(tmp_path / "a.png"), "image_id": 1}
    a = TwoViewDatasetMapper(_cfg())(d)
    b = TwoViewDatasetMapper(_cfg())(d)
    for va, vb in zip(a["views"], b["views"], strict=True):
        assert torch.equal(va["image"], vb["image"]) and torch.equal(va["box"], vb["box"])
    m = TwoViewDatasetMapper(_cfg())
    c, e = m(d), m(d)  # the stream advances between calls
    assert not torch.equal(c["views"][0]["box"], e["views"][0]["box"])


def test_corrupt_and_missing_files_are_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    _png(tmp_path / "trunc.png", h=200, w=200)
    data = (tmp_path / "trunc.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    mapper = TwoViewDatasetMapper(_cfg())
    with caplog.at_level(logging.WARNING):
        for name in ("bad.jpg", "trunc.png", "missing.png"):
            assert mapper({"file_name": str(tmp_path / name), "image_id": name}) is None
    for name in ("bad.jpg", "trunc.png", "missing.png"):
        assert any(name in r.getMessage() for r in caplog.records)


def test_mask_source_contract_is_checked(tmp_path):
    _png(tmp_path / "a.png")
    mapper = TwoViewDatasetMapper(
        augment=TwoViewAugment.from_config(_cfg()),
        mask_source=lambda d, img: np.zeros((3, 3), np.uint8),
    )
    with pytest.raises(ValueError, match="a.png"):
        mapper({"file_name": str(tmp_path / "a.png")})
    with pytest.raises(KeyError, match="file_name"):
        mapper({"image_id": 3})


def test_from_config_needs_one_train_set():
    cfg = _cfg()
    cfg.DATASETS.TRAIN = ("a", "b")
    with pytest.raises(ValueError, match="DATASETS.TRAIN"):
        TwoViewDatasetMapper(cfg)
    with pytest.raises(ValueError, match="is_train"):
        TwoViewDatasetMapper(_cfg(), is_train=False)


def test_missing_or_corrupt_bootstrap_mask_skips_the_image_and_counts_it(tmp_path):
    """A mask PNG deleted or damaged mid-run does not crash the loader: the image is skipped
    (named in a warning) and counted in the item's "skipped_files"."""
    from cyborgs.masks.store import MaskStore, store_root
    from cyborgs.pretrain_data.pretrain_loader import SkippingMapDataset

    cfg = _cfg(source="bootstrap")
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    dicts = []
    for n in "abc":
        _png(tmp_path / f"{n}.png")
        dicts.append({"file_name": str(tmp_path / f"{n}.png"), "image_id": n})
    store = MaskStore(store_root(cfg, "bootstrap", "some_unlabeled_set"))
    store.begin_round(1)
    for d in dicts:
        if d["image_id"] != "a":  # a's map is missing from the round
            store.write(1, d["image_id"], np.ones((5, 8), np.uint8))
    store.finish_round(1)
    from cyborgs.masks.packed import scan_part

    part = os.path.join(store.round_dir(1), "part-000.bin")
    (rec,) = [r for r in scan_part(part) if r.key == "b"]
    with open(part, "r+b") as f:  # b's map damaged in place (same file size)
        f.seek(rec.off)
        f.write(b"\x00" * rec.length)

    mapper = TwoViewDatasetMapper(cfg)
    assert mapper(dicts[0]) is None and mapper(dicts[1]) is None
    assert int(mapper(dicts[2])["views"][0]["mask"].max()) == 1
    ds = SkippingMapDataset(dicts, mapper, seed=0)
    items = [ds.map_at(i, i) for i in range(3)]
    assert all(int(it["views"][0]["mask"].max()) == 1 for it in items)  # only c's mask
    skipped = [f for it in items for f in it["skipped_files"]]
    assert str(tmp_path / "a.png") in skipped and str(tmp_path / "b.png") in skipped
