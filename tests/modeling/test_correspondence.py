"""Tests for corresponding_grids on a synthetic 'feature image' (channel 0 = x, channel 1 = y)."""

from __future__ import annotations

import itertools

import pytest
import torch

from cyborgs.modeling.correspondence import corresponding_grids


def view_features(box, hw, flip):
    """The feature map of a crop: each cell holds the image coordinates of its centre."""
    x0, y0, x1, y1 = box
    h, w = hw
    xs = x0 + (torch.arange(w, dtype=torch.float64) + 0.5) * (x1 - x0) / w
    ys = y0 + (torch.arange(h, dtype=torch.float64) + 0.5) * (y1 - y0) / h
    if flip:
        xs = xs.flip(0)
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)]).float()


def expected_grid(box1, box2, g):
    ix0, iy0 = max(box1[0], box2[0]), max(box1[1], box2[1])
    ix1, iy1 = min(box1[2], box2[2]), min(box1[3], box2[3])
    xs = ix0 + (torch.arange(g, dtype=torch.float64) + 0.5) * (ix1 - ix0) / g
    ys = iy0 + (torch.arange(g, dtype=torch.float64) + 0.5) * (iy1 - iy0) / g
    return torch.stack([xs[None, :].expand(g, g), ys[:, None].expand(g, g)]).float()


def _run(box1, hw1, box2, hw2, flips, g):
    f1 = view_features(box1, hw1, flips[0])[None]
    f2 = view_features(box2, hw2, flips[1])[None]
    boxes = torch.tensor([[box1, box2]], dtype=torch.float32)
    return corresponding_grids(f1, f2, boxes, torch.tensor([flips]), g)


@pytest.mark.parametrize("flips", list(itertools.product([False, True], repeat=2)))
def test_exact_when_bins_cover_whole_cells(flips):
    # Intersection (32, 16, 64, 64): view 1 at 0.5 cell/px -> 16 x 24 cells; view 2 is a tall
    # crop squeezed into 32x32 (1/3 cell/px vertically). g = 4 gives whole-cell bins, where
    # RoIAlign of a linear function is exact (no edge clamping).
    box1, box2 = (0.0, 0.0, 64.0, 64.0), (32.0, 16.0, 96.0, 112.0)
    o1, o2, valid = _run(box1, (32, 32), box2, (32, 32), flips, 4)
    assert valid.tolist() == [True]
    exp = expected_grid(box1, box2, 4)
    torch.testing.assert_close(o1[0], exp, atol=1e-4, rtol=0)
    torch.testing.assert_close(o2[0], exp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_random_boxes_agree_up_to_edge_clamping(seed):
    g = torch.Generator().manual_seed(seed)
    flips = tuple(bool(v) for v in torch.rand(2, generator=g) < 0.5)
    x0, y0 = (torch.rand(2, generator=g) * 40).tolist()
    box1 = (x0, y0, x0 + 60 + 40 * torch.rand(1, generator=g).item(), y0 + 70)
    box2 = (x0 + 20, y0 + 15, x0 + 110, y0 + 100)
    hw1, hw2 = (28, 28), (14, 20)
    o1, o2, valid = _run(box1, hw1, box2, hw2, flips, 7)
    assert valid.item()
    exp = expected_grid(box1, box2, 7)
    # RoIAlign clamps samples in a map's outer half cell to the edge value: error < half a cell.
    cell = max((box1[2] - box1[0]) / 28, (box1[3] - box1[1]) / 28, 90 / 20, 85 / 14)
    assert (o1[0] - exp).abs().max() <= cell / 2 + 1e-4
    assert (o2[0] - exp).abs().max() <= cell / 2 + 1e-4
    # Cells away from the intersection border are exact in both views.
    torch.testing.assert_close(o1[0, :, 2:-2, 2:-2], exp[:, 2:-2, 2:-2], atol=1e-3, rtol=0)
    torch.testing.assert_close(o2[0, :, 2:-2, 2:-2], exp[:, 2:-2, 2:-2], atol=1e-3, rtol=0)


def test_no_overlap_is_invalid_and_zero_and_batch_is_independent():
    f = torch.randn(2, 3, 8, 8)
    boxes = torch.tensor(
        [
            [[0, 0, 10, 10], [10, 0, 20, 10]],  # touching edges: zero area -> invalid
            [[0, 0, 10, 10], [5, 5, 15, 15]],
        ],
        dtype=torch.float32,
    )
    o1, o2, valid = corresponding_grids(f, f.clone(), boxes, torch.zeros(2, 2, dtype=torch.bool), 3)
    assert valid.tolist() == [False, True]
    assert torch.all(o1[0] == 0) and torch.all(o2[0] == 0)
    assert o1[1].abs().sum() > 0


def test_gradient_reaches_only_overlap_cells():
    f1 = torch.randn(1, 2, 8, 8, requires_grad=True)
    f2 = torch.randn(1, 2, 8, 8, requires_grad=True)
    boxes = torch.tensor([[[0, 0, 80, 80], [40, 0, 120, 80]]], dtype=torch.float32)
    o1, o2, _ = corresponding_grids(f1, f2, boxes, torch.tensor([[False, True]]), 4)
    (o1.sum() + o2.sum()).backward()
    # View 1 overlaps on its right half, view 2 (flipped) on its left half of the unflipped
    # crop, i.e. the right half of its flipped map.
    assert f1.grad[..., :4].abs().sum() == 0 and f1.grad[..., 4:].abs().sum() > 0
    assert f2.grad[..., :4].abs().sum() == 0 and f2.grad[..., 4:].abs().sum() > 0


@pytest.mark.parametrize("g", [1, 4, 7])
def test_separable_sampling_equals_torchvision_roi_align(g):
    # Independent reference: torchvision's RoIAlign (aligned=True, adaptive sampling) in float64,
    # on boxes inside, partly outside, far outside and smaller than one cell; values and grads.
    from torchvision.ops import roi_align

    from cyborgs.modeling.correspondence import _sample

    gen = torch.Generator().manual_seed(g)
    feat = torch.randn(7, 3, 9, 11, dtype=torch.float64, generator=gen, requires_grad=True)
    fboxes = torch.tensor(
        [[0, 0, 11, 9], [2.3, 1.7, 7.9, 8.2], [-1.5, -0.8, 4.2, 3.3], [8.5, 6.1, 12.7, 10.4],
         [3.1, 3.1, 3.4, 3.3], [5, 2, 5.6, 8.9], [-6, -5, -2.5, -1.5]],
        dtype=torch.float64,
    )  # fmt: skip
    ours = _sample(feat, fboxes, torch.zeros(7, dtype=torch.bool), g)
    rois = torch.cat([torch.arange(7, dtype=torch.float64)[:, None], fboxes], dim=1)
    ref = roi_align(feat, rois, output_size=g, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    (g_ours,) = torch.autograd.grad((ours * upstream).sum(), feat)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), feat)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
