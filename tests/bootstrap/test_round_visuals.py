"""TensorBoard view of a round: the same images' masks every round, and K per group."""

from __future__ import annotations

import numpy as np
from detectron2.utils.events import EventStorage
from PIL import Image

from cyborgs.bootstrap.visuals import VIS_SIZE, put_round_visuals, visual_dicts
from cyborgs.masks.store import MaskStore
from cyborgs.utils.mask_vis import colorize


def test_visual_dicts_are_fixed_and_spread() -> None:
    dicts = [{"image_id": i} for i in range(10)]
    assert [d["image_id"] for d in visual_dicts(dicts, 4)] == [0, 2, 5, 7]
    assert [d["image_id"] for d in visual_dicts(dicts[:2], 4)] == [0, 1]
    assert visual_dicts([], 4) == []


def test_grid_shows_each_image_and_its_round_mask(tmp_path) -> None:
    dicts = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((32, 48, 3), 40 * (i + 1), np.uint8)).save(path)
        dicts.append({"image_id": i, "file_name": str(path)})
    dicts.append({"image_id": 9, "file_name": str(tmp_path / "missing.png")})  # skipped
    store = MaskStore(str(tmp_path / "store"))
    store.begin_round(3)
    for d in dicts:
        left_right = np.zeros((4, 6), np.uint8)
        left_right[:, 3:] = 1
        store.write(3, d["image_id"], left_right)
    man = store.finish_round(3, {"k_per_group": [2, 5, 5]})
    with EventStorage(7) as storage:
        put_round_visuals(storage, "demo", store, 3, dicts, man)
        ((tag, img, step),) = storage._vis_data
        hist = storage._histograms
    assert tag == "bootstrap/masks/demo" and step == 7
    grid = img.permute(1, 2, 0).numpy()
    h, w = VIS_SIZE, VIS_SIZE * 48 // 32  # shorter side VIS_SIZE, aspect kept
    assert grid.shape == (2 * (h + 2), 2 * w, 3)  # 2 readable images, image | mask
    assert (grid[:h, :w] == 40).all() and (grid[h + 2 : 2 * h + 2, :w] == 80).all()
    # mask panel: id 0 on the left half, id 1 on the right, nearest-upsampled
    assert (grid[:h, w : w + w // 2] == colorize(np.zeros((1, 1), np.uint8))[0, 0]).all()
    assert (grid[:h, w + w // 2 :] == colorize(np.ones((1, 1), np.uint8))[0, 0]).all()
    assert hist[0]["tag"] == "bootstrap/k/demo" and hist[0]["num"] == 3
