"""Bootstrap rounds with bad images: skipped, named, counted in the manifest; bounded canvas."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from cyborgs.bootstrap.round import _canvas_chunks, run_bootstrap_round
from cyborgs.masks.store import MaskStore


class _ShapeNet(torch.nn.Module):
    """Stride-8 stand-in encoder that records the shape of every forward's canvas."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.shapes: list[tuple[int, ...]] = []

    def extract_features(self, images, names):
        self.shapes.append(tuple(images.shape))
        f = torch.nn.functional.avg_pool2d(images.float() / 255.0, 8)
        f = torch.cat([f, torch.full_like(f[:, :1], 0.5)], dim=1)
        return {n: f for n in names}


def _png(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _set(root) -> list[dict]:
    """Four good images and the bad kinds: zero-byte, truncated, 16-bit (good after scaling),
    not an image, a 400x20 strip (aspect 20 > the default limit 10)."""
    for i in range(4):
        _png(root / f"good{i}.png", 32, 48, seed=i)
    (root / "zero.jpg").write_bytes(b"")
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (96, 96, 3), np.uint8)).save(
        root / "trunc.jpg", quality=95
    )
    data = (root / "trunc.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.full((40, 40), 257 * 90, np.uint16)).save(root / "deep.png")
    (root / "text.png").write_text("not an image")
    _png(root / "strip.png", 20, 400)
    names = [f"good{i}.png" for i in range(4)]
    names += ["zero.jpg", "trunc.jpg", "deep.png", "text.png", "strip.png"]
    return [{"file_name": str(root / n), "image_id": n} for n in names]


def test_round_skips_names_and_counts_bad_images(tmp_path, caplog, round_settings):
    dicts = _set(tmp_path)
    store = MaskStore(str(tmp_path / "store"))
    with caplog.at_level(logging.WARNING):
        settings = round_settings(group_size=3, k_min=2, k_max=2, backend="torch",
                                  input_size=32, batch_size=4)  # fmt: skip
        s = run_bootstrap_round(_ShapeNet(), settings, dicts, store, 1)
    bad = {"zero.jpg", "trunc.jpg", "text.png", "strip.png"}
    assert s["images"] == 5 and s["skipped_images"] == 4
    assert {f.split(": ")[0].rsplit("/", 1)[-1] for f in s["skipped_files"]} == bad
    man = store.manifest(1)
    assert man["skipped_images"] == 4 and len(man["skipped_files"]) == 4
    assert any("MAX_ASPECT_RATIO" in f for f in man["skipped_files"])
    for d in dicts:
        assert store.has(d["image_id"], 1) == (d["image_id"] not in bad)
    assert store.has("deep.png", 1)  # 16-bit: read (scaled to 8 bit), not skipped
    assert store.current_round() == 1
    logged = caplog.text
    for name in bad:
        assert name in logged


def test_canvas_chunks_isolate_an_outlier_and_keep_order():
    normal = [(32, 48)] * 3
    assert _canvas_chunks(normal) == [[0, 1, 2]]
    # a portrait among landscapes: padding at most doubles the pixels, so it still fits
    assert _canvas_chunks([(32, 48), (48, 32), (32, 48)]) == [[0, 1, 2]]
    shapes = [(32, 48), (32, 48), (32, 12800), (32, 48), (32, 48)]
    chunks = _canvas_chunks(shapes)
    assert [i for c in chunks for i in c] == [0, 1, 2, 3, 4]  # order kept
    # the strip shares its forward with at most one normal image
    assert max(len(c) for c in chunks if 2 in c) <= 2
    for c in chunks:
        H = max(-(-shapes[i][0] // 32) * 32 for i in c)
        W = max(-(-shapes[i][1] // 32) * 32 for i in c)
        own = sum(-(-shapes[i][0] // 32) * 32 * -(-shapes[i][1] // 32) * 32 for i in c)
        assert len(c) * H * W <= 2 * own


def test_one_strip_does_not_blow_up_the_batch(tmp_path, round_settings):
    """With the aspect limit off, a 4000x20 image is bootstrapped alone, never padding the
    other images of its batch to 128 x 25600 (the failure of issue 10)."""
    dicts = []
    for i in range(5):
        _png(tmp_path / f"g{i}.png", 40, 40, seed=i)
        dicts.append({"file_name": str(tmp_path / f"g{i}.png"), "image_id": f"g{i}"})
    _png(tmp_path / "strip.png", 20, 4000)
    dicts.insert(2, {"file_name": str(tmp_path / "strip.png"), "image_id": "strip"})
    net = _ShapeNet()
    store = MaskStore(str(tmp_path / "store"))
    settings = round_settings(group_size=6, k_min=2, k_max=2, backend="torch", input_size=32,
                              batch_size=6, max_aspect_ratio=0)  # fmt: skip
    s = run_bootstrap_round(net, settings, dicts, store, 0)
    assert s["images"] == 6 and s["skipped_images"] == 0
    wide = [sh for sh in net.shapes if sh[-1] > 64]
    # the strip (32 x 6400 after resizing) runs with at most one neighbour, not all five
    assert len(wide) == 1 and wide[0][0] <= 2 and wide[0][2:] == (32, 6400)
    assert sum(sh[0] for sh in net.shapes[1:]) == 6  # [0]: the round's grid-stride probe
    assert store.read("strip", round_id=0).shape == (4, 800)
