"""Masks land where the features put them: a colour edge at known pixels, through a real
bootstrap round (a fast stand-in with the ResNet geometry; random-init R18 / R50 with
``--run-slow``), the mask store and the two-view mapper, comes back at that edge
(``cyborgs.masks.cell_grid``; paper §3.3: a mask is the k-means label of the cells).

Each image has one sharp colour edge, vertical (x axis) or horizontal (y axis). The encoders'
features are a deterministic function of the local colours, so 2-means over groups of 16 such
images splits the cells where their receptive fields' centres cross the edge (one image alone
may rather split off the cells that straddle its edge); the store and the mapper must then
put the label change at the edge. The change of a mask can only fall between two cells, so
one edge is off by up to half a cell; the cuts of one side step through every position of the
edge within a cell (in eighths of a cell) and the mean offset over them is the placement's
bias (within 1/16 cell of it). Read as if cell i covered pixels [s i, s i + s) (maps that
record no cell centre), the same masks sit (s - 1) / 2 px = 0.44 cell right of and below
their edges.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from PIL import Image

from cyborgs.bootstrap.receptive_field import measure_cell_grid
from cyborgs.bootstrap.round import run_bootstrap_round
from cyborgs.config import add_cyborgs_config
from cyborgs.masks.bootstrap import BootstrapMaskSource
from cyborgs.masks.store import MaskStore
from cyborgs.pretrain_data.augment import TwoViewAugment, ViewAugment, nearest_exact_index
from cyborgs.pretrain_data.two_view_mapper import TwoViewDatasetMapper

STRIDE = 8
INPUT_SIZE = 96
# (H, W): as stored (96x160) and resized by the round to 128x96 and 96x128
SIZES = [(96, 160), (160, 120), (150, 200)]
VIEW = 208  # view side >= every image side: each image pixel is sampled by the view
COLOURS = (np.array([220, 40, 40], np.uint8), np.array([40, 60, 220], np.uint8))
TOLERANCE = 0.15  # cells
# Mirrored frame (BOOTSTRAP.BORDER_PAD): with zero padding a random-init net's strongest split
# is the image border against the rest, not the two colours.
BORDER = 16


def _resnet(depth: int, tap: str) -> torch.nn.Module:
    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "CYBORGS"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = depth
    if depth < 50:
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    cfg.CYBORGS.PROJECTOR_HIDDEN_DIM = 64
    cfg.CYBORGS.PROJECTOR_OUT_DIM = 32
    cfg.CYBORGS.BOOTSTRAP.FEATURES = [tap]
    torch.manual_seed(0)
    model = build_model(cfg)
    # Mirror-symmetric kernels: every cell then weighs its receptive field symmetrically about
    # its centre (the kernels, paddings and strides are symmetric), so what a cell "sees" is
    # centred where the support's centre is; random kernels weigh one side more, a bias of
    # the weights (~1 px here) that the store cannot know.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                w = m.weight
                w.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-2, -1)) / 4)
    return model


class _SymmetricConvNet(torch.nn.Module):
    """Fast stand-in with a ResNet's geometry: three 3x3 stride-2 box filters padded by 1
    (cells centred on pixel 8 i, like the ResNet taps), per colour channel, plus a constant
    channel, so each cell's feature is a symmetric local mean colour."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3, bias=False) for _ in range(3)
        )
        for c in self.convs:
            torch.nn.init.constant_(c.weight, 1.0 / 9)

    def extract_features(self, images, names):
        x = images.float() / 255.0
        for c in self.convs:
            x = c(x)
        return {n: torch.cat([x, torch.full_like(x[:, :1], 0.5)], dim=1) for n in names}


def _model(kind: str) -> tuple[torch.nn.Module, str]:
    if kind == "conv":
        return _SymmetricConvNet(), "res3"
    depth, tap = {"R18": (18, "res3.1"), "R50": (50, "res3.2")}[kind]
    return _resnet(depth, tap), tap


def _cuts(n_pixels: int, n_resized: int) -> dict[str, list[int]]:
    """Edge positions (image pixels) per side: 8 per side, stepping the edge through a cell in
    eighths (resized pixels 8 m + q, q = 0..7), spread over 20-46 % / 54-80 % of the side
    (nearer the border, the one or two cells left of the edge see mostly the other colour)."""
    scale = n_resized / n_pixels
    out = {}
    for side, lo in (("low", 0.20), ("high", 0.54)):
        cuts = []
        for q in range(STRIDE):
            m = round((lo + 0.26 * q / STRIDE) * n_resized / STRIDE)
            cuts.append(round((STRIDE * m + q) / scale))
        out[side] = cuts
    return out


def _resized(hw: tuple[int, int]) -> tuple[int, int]:
    s = INPUT_SIZE / min(hw)
    return tuple(round(v * s / STRIDE) * STRIDE for v in hw)


def _write_edges(root) -> tuple[list[dict], list[tuple]]:
    """Two images (either colour first) per (size, axis, side, cut); returns the dicts and
    (axis, side, cut, hw) of each."""
    dicts, meta = [], []
    for H, W in SIZES:
        rh, rw = _resized((H, W))
        for axis, n, nr in (("x", W, rw), ("y", H, rh)):
            for side, cuts in _cuts(n, nr).items():
                for cut in cuts:
                    for first in (0, 1):
                        img = np.empty((H, W, 3), np.uint8)
                        img[:] = COLOURS[first]
                        if axis == "x":
                            img[:, cut:] = COLOURS[1 - first]
                        else:
                            img[cut:, :] = COLOURS[1 - first]
                        i = len(dicts)
                        path = os.path.join(root, f"edge{i}.png")
                        Image.fromarray(img).save(path)
                        dicts.append({"file_name": path, "image_id": i, "height": H, "width": W})
                        meta.append((axis, side, cut, (H, W)))
    return dicts, meta


def _mapper(store_root: str, on_device: bool) -> TwoViewDatasetMapper:
    """The training mapper with whole-image views (scale 1) larger than the images, so every
    pixel of the image's mask is sampled; view 2 flipped."""
    common = dict(size=VIEW, scale=(1.0, 1.0), ratio=(0.25, 4.0), color_jitter_prob=0.0,
                  grayscale_prob=0.0, blur_prob=0.0)  # fmt: skip
    augment = TwoViewAugment(
        ViewAugment(**common, flip_prob=0.0),
        ViewAugment(**common, flip_prob=1.0),
        photometric_on_device=on_device,
    )
    return TwoViewDatasetMapper(
        augment=augment, mask_source=BootstrapMaskSource(store_root), seed=0
    )


def _edge_in_view(view: dict, axis: str) -> float:
    """Where the view's mask changes label along ``axis``, in image pixels (continuous: the
    left/top edge of the first image pixel with the second label), from its middle line."""
    mask = view["mask"].numpy()
    x0, y0, x1, y1 = (int(v) for v in view["box"].tolist())
    if axis == "x":
        line, pix = mask[VIEW // 2], x0 + nearest_exact_index(x1 - x0, VIEW)
        if view["flip"]:
            line = line[::-1]
    else:
        line, pix = mask[:, VIEW // 2], y0 + nearest_exact_index(y1 - y0, VIEW)
    first, last = line[0], line[-1]
    assert first != last, "the two colours got one label"
    labels = {}  # image pixel -> label (a pixel sampled twice has one label)
    for p, v in zip(pix.tolist(), line.tolist(), strict=True):
        assert labels.setdefault(p, v) == v
    assert sorted(labels) == list(range(pix[0], pix[-1] + 1))  # every pixel sampled
    assert set(labels.values()) == {first, last}, "more than one label change"
    return pix[0] + sum(v == first for v in labels.values())


def _offsets(store: MaskStore, dicts, meta, on_device: bool) -> dict[tuple, list[float]]:
    """Offsets (cells) of the mask edge from the colour edge, per (size, axis, side)."""
    mapper = _mapper(store.root, on_device)
    out: dict[tuple, list[float]] = {}
    for d, (axis, side, cut, hw) in zip(dicts, meta, strict=True):
        h, w = store.read(d["image_id"]).shape
        cell = hw[1] / w if axis == "x" else hw[0] / h  # image pixels per cell
        item = mapper(d, rng=np.random.default_rng(0))
        for view in item["views"]:
            out.setdefault((hw, axis, side), []).append((_edge_in_view(view, axis) - cut) / cell)
    return out


def _check(offsets: dict[tuple, list[float]], lo: float, hi: float) -> list[str]:
    return [
        f"{key}: mean {np.mean(v):+.3f} cells (each: {np.round(v[::2], 2).tolist()})"
        for key, v in offsets.items()
        if not lo <= np.mean(v) <= hi
    ]


@pytest.mark.parametrize(
    "kind",
    # the stand-in covers the path fast; the ResNets take ~30 / 60 s of CPU
    [
        "conv",
        pytest.param("R18", marks=pytest.mark.slow),
        pytest.param("R50", marks=pytest.mark.slow),
    ],
)
def test_mask_edges_land_on_the_colour_edges(tmp_path, round_settings, kind):
    model, tap = _model(kind)
    assert measure_cell_grid(model, [tap]) == (STRIDE, (0.0, 0.0))
    dicts, meta = _write_edges(str(tmp_path))
    store = MaskStore(str(tmp_path / "store"))
    settings = round_settings(features=(tap,), group_size=16, k_min=2, k_max=2, backend="torch",
                              input_size=INPUT_SIZE, batch_size=16, border_pad=BORDER)  # fmt: skip
    run_bootstrap_round(model, settings, dicts, store, 0)
    grid = store.manifest(0)["cell_grid"]
    assert grid["stride"] == STRIDE and grid["centre"] == [0.5 / STRIDE] * 2

    for on_device in (False, True):  # uint8 masks for on-device photometric ops
        offsets = _offsets(store, dicts, meta, on_device)
        assert len(offsets) == 2 * 2 * len(SIZES)
        assert not _check(offsets, -TOLERANCE, TOLERANCE), _check(offsets, -TOLERANCE, TOLERANCE)

    # The same maps read by the old rule (a manifest without "cell_grid", as rounds written
    # before it): every side of every size is ~0.44 cell right/below, outside the tolerance.
    path = os.path.join(store.round_dir(0), "manifest.json")
    man = store.manifest(0)
    del man["cell_grid"]
    with open(path, "w") as f:
        json.dump(man, f)
    old = _offsets(MaskStore(store.root), dicts, meta, False)
    assert not _check(old, 0.3, 0.6), _check(old, 0.3, 0.6)
