"""Fixed mask sources (felzenszwalb, selective_search, ground_truth), their cache, and the
"bootstrap" source switching rounds."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cyborgs.masks.bootstrap import BootstrapMaskSource, MissingRoundError
from cyborgs.masks.felzenszwalb import cap_ids_by_size, felzenszwalb_mask
from cyborgs.masks.ground_truth import instance_map, semantic_map
from cyborgs.masks.precompute import StoredMaskSource, precompute_masks
from cyborgs.masks.selective_search import boxes_to_mask, selective_search_boxes
from cyborgs.masks.store import MaskStore


def _blocks(h=60, w=80):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    img[h // 2 :, w // 2 :] = (30, 30, 200)
    img[: h // 2, w // 2 :] = (30, 200, 30)
    return img


def test_felzenszwalb_segments_follow_colour_blocks():
    img = _blocks()
    m = felzenszwalb_mask(img)
    assert m.shape == img.shape[:2] and m.dtype == np.uint8
    # Three flat blocks (smoothing leaves thin strips at the edges): each block interior is
    # one segment, distinct from the others; ids are ranked by size (the half block is 0).
    left, top, bottom = m[5:-5, 5:35], m[5:25, 45:-5], m[35:-5, 45:-5]
    assert [len(np.unique(x)) for x in (left, top, bottom)] == [1, 1, 1]
    assert len({left[0, 0], top[0, 0], bottom[0, 0]}) == 3 and left[0, 0] == 0
    assert np.isin(m, [0, 1, 2]).mean() > 0.8


def test_cap_ids_keeps_255_largest():
    seg = np.repeat(np.arange(300), np.arange(300) + 1)[None]  # segment i has i+1 pixels
    capped = cap_ids_by_size(seg)
    assert capped.dtype == np.uint8 and capped.max() == 255
    assert (capped[seg == 299] == 0).all() and (capped[seg == 45] == 254).all()
    assert (capped[seg < 45] == 255).all()


def test_selective_search_boxes_and_mask():
    rng = np.random.default_rng(0)
    img = _blocks(64, 96)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    boxes = selective_search_boxes(img, seed=1, use_opencv=False)
    assert 1 <= len(boxes) <= 32
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (64 * 96)
    assert ((area >= 0.01) & (area <= 0.9)).all()
    # the left colour block (a full half, 50% of the image) is among the proposals
    assert any(np.allclose(b, [0, 0, 48, 64], atol=2) for b in boxes)
    np.testing.assert_array_equal(boxes, selective_search_boxes(img, seed=1, use_opencv=False))
    m = boxes_to_mask(np.array([[0, 0, 10, 10], [2, 2, 4, 4]], float), (12, 12))
    assert m[0, 0] == 1 and m[3, 3] == 2 and m[11, 11] == 0


def test_ground_truth_maps_from_polygons():
    labeled = {
        "file_name": "x.jpg", "image_id": 1, "height": 20, "width": 20,
        "annotations": [
            {"segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]], "category_id": 3, "iscrowd": 0},
            {"segmentation": [[4, 2, 8, 2, 8, 6, 4, 6]], "category_id": 5, "iscrowd": 0},
            {"segmentation": [[0, 14, 6, 14, 6, 20, 0, 20]], "category_id": 1, "iscrowd": 1},
        ],
    }  # fmt: skip
    inst = instance_map(labeled)
    assert inst.shape == (20, 20) and inst[15, 15] == 0
    assert inst[0, 15] == 1 and inst[4, 6] == 3  # small box painted over the big one (id 3)
    assert inst[17, 2] == 2  # crowd region is an object for the oracle masks
    sem = semantic_map(labeled, out_hw=(40, 40))
    assert sem[0, 30] == 4 and sem[8, 12] == 6 and sem[34, 4] == 255 and sem[39, 39] == 0


def test_precompute_cache_and_stored_source(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(_blocks(30 + 10 * i, 40)).save(p)
        paths.append({"file_name": str(p), "image_id": f"im{i}"})

    def fn(item):
        return felzenszwalb_mask(np.asarray(Image.open(item["file_name"])))

    store = MaskStore(str(tmp_path / "cache"))
    out = precompute_masks(fn, paths, store, name="felzenszwalb", params={"scale": 1000})
    assert out["images"] == 3 and store.current_round() == 0
    assert store.manifest(0)["source"] == "felzenszwalb"
    src = StoredMaskSource(store.root, "felzenszwalb")
    img = np.asarray(Image.open(paths[1]["file_name"]))
    m = src({"image_id": "im1"}, img)
    np.testing.assert_array_equal(m, felzenszwalb_mask(img))


def test_bootstrap_source_switches_rounds(tmp_path):
    src = BootstrapMaskSource(str(tmp_path / "bs"))
    img = np.zeros((16, 24, 3), np.uint8)
    d = {"image_id": 7}
    # No round yet: whole-image masks for the vMF warm-up.
    m = src(d, img)
    assert m.shape == (16, 24) and m.dtype == np.uint8 and not m.any()
    store = MaskStore(str(tmp_path / "bs"))
    for r, v in ((0, 1), (1, 2)):
        store.begin_round(r)
        store.write(r, 7, np.full((2, 3), v, np.uint8))
        if r == 1:
            assert (src(d, img) == 1).all()  # round 1 is partial: still round 0
        store.finish_round(r)
        out = src(d, img)
        assert out.shape == (16, 24) and (out == v).all() and src.current_round() == r
    store.set_current(0)
    assert (src(d, img) == 1).all()
    # The hook points 'current' at no round while it redoes one: whole-image masks meanwhile.
    store.set_current(None)
    assert not src(d, img).any()
    store.set_current(1)
    assert (src(d, img) == 2).all()
    # A deleted pointer after rounds were completed is not the warm-up: no silent zero masks,
    # neither in this source (it read round 1) nor in a fresh one (a restarted loader worker).
    os.remove(store.pointer_path)
    for s in (src, BootstrapMaskSource(str(tmp_path / "bs"))):
        with pytest.raises(MissingRoundError, match="current.json is missing"):
            s(d, img)
        with pytest.raises(MissingRoundError, match=r"round\(s\) \[(1|0, 1)\]"):
            s.label_map(d, (16, 24))


def test_build_mask_source_rejects_unknown_name():
    from detectron2.config import get_cfg

    from cyborgs.config import add_cyborgs_config
    from cyborgs.masks import build_mask_source

    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.MASKS.SOURCE = "nope"
    with pytest.raises(KeyError, match=r"CYBORGS.MASKS.SOURCE='nope'.*'bootstrap', 'felzenszwalb'"):
        build_mask_source(cfg, "x")


@pytest.mark.parametrize("damage", ["none", "garbage_pointer", "deleted_map"])
def test_cached_source_recomputes_a_damaged_cache(tmp_path, damage):
    from detectron2.config import get_cfg

    from cyborgs.config import add_cyborgs_config
    from cyborgs.masks.precompute import cached_mask_source

    cfg = add_cyborgs_config(get_cfg())
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATALOADER.NUM_WORKERS = 0  # fn records its calls in this process
    items = [{"image_id": f"im{i}"} for i in range(3)]
    calls = []

    def fn(item):
        calls.append(item["image_id"])
        return np.full((4, 5), int(item["image_id"][2:]), np.uint8)

    src = cached_mask_source(cfg, "d", "const", {"v": 1}, fn, lambda: items)
    assert len(calls) == 3
    if damage == "garbage_pointer":
        with open(src.store.pointer_path, "wb") as f:
            f.write(b"\x00{")
    elif damage == "deleted_map":
        os.remove(os.path.join(src.store.round_dir(0), "part-000.bin"))  # the maps' file
    src = cached_mask_source(cfg, "d", "const", {"v": 1}, fn, lambda: items)
    assert len(calls) == (3 if damage == "none" else 6)  # an intact cache is reused
    assert src.store.verify_round(0) == []
    assert int(src({"image_id": "im2"}, np.zeros((8, 10, 3), np.uint8)).max()) == 2
