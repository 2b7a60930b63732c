"""tools/render_mask_rounds.py: one column per complete round, nearest-upsampled masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import render_mask_rounds  # tools/ (tests/conftest.py)
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_renders_each_complete_round_and_skips_partial(tiny_data_root, tmp_path):
    from detectron2.data import DatasetCatalog

    import cyborgs.data.datasets  # noqa: F401  (registers demo_*)
    from cyborgs.masks.store import MaskStore

    name = "demo_coco_2017_train_unlabeled"
    dicts = DatasetCatalog.get(name)[:3]
    store = MaskStore(str(tmp_path / "store"))
    for r in (1, 2):
        store.begin_round(r)
        for d in dicts:
            store.write(r, d["image_id"], np.full((4, 4), r, np.uint8))
        store.finish_round(r, {"round": r})
    store.begin_round(3)  # crashed round: never rendered
    store.write(3, dicts[0]["image_id"], np.zeros((4, 4), np.uint8))

    out = tmp_path / "vis"
    argv = ["--store", str(tmp_path / "store"), "--dataset", name, "--output", str(out)]
    assert render_mask_rounds.main([*argv, "--images", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "all_rounds.png",
        "round_0001.png",
        "round_0002.png",
    ]
    grid = np.asarray(Image.open(out / "all_rounds.png"))
    w0, h0 = dicts[0]["width"], dicts[0]["height"]
    # first row: image | round 1 | round 2, each at the image's own size
    assert grid.shape[1] >= 3 * w0
    first_row = grid[:h0]
    np.testing.assert_array_equal(
        first_row[:, w0 : 2 * w0], render_mask_rounds.colorize(np.full((h0, w0), 1, np.uint8))
    )
    np.testing.assert_array_equal(
        first_row[:, 2 * w0 : 3 * w0], render_mask_rounds.colorize(np.full((h0, w0), 2, np.uint8))
    )


def test_no_complete_round_is_an_error(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    argv = ["--store", str(tmp_path / "store"), "--dataset", "x", "--output", str(tmp_path)]
    assert render_mask_rounds.main(argv) == 1
    assert "no complete mask round" in capsys.readouterr().err
