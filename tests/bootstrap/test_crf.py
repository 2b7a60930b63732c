"""Dense-CRF refinement: shapes, id subset, and noisy labels snapped to a colour boundary."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cyborgs.bootstrap.crf import (
    crf_refine,
    crf_refine_to_grid,
    dense_crf,
    majority_downsample,
    upsample_cells,
)
from cyborgs.masks.cell_grid import cell_index


def _two_colour_image(h=48, w=64, edge=27):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :edge] = (220, 40, 40)
    img[:, edge:] = (40, 40, 220)
    truth = np.zeros((h, w), np.int64)
    truth[:, edge:] = 1
    return img, truth


def test_dense_crf_cleans_noisy_labels_along_colour_boundary():
    img, truth = _two_colour_image()
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.25  # 25% salt-and-pepper label noise
    noisy[flip] = 1 - noisy[flip]
    probs = np.stack([(noisy == 0) * 0.7 + 0.15, (noisy == 1) * 0.7 + 0.15]).astype(np.float32)
    out = dense_crf(img, probs)
    assert out.shape == truth.shape
    assert set(np.unique(out)) <= {0, 1}
    acc_in, acc_out = (noisy == truth).mean(), (out == truth).mean()
    assert acc_in < 0.8 and acc_out > 0.98 and acc_out > acc_in


def test_crf_refine_from_coarse_features_follows_the_edge():
    # Features on an 8x8-stride grid whose cells straddle the colour edge (x = 27): the k-means
    # labels upsampled are off by up to 5 px; the CRF puts the boundary on the colour edge.
    img, truth = _two_colour_image()
    h, w = 6, 8
    protos = F.normalize(torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2], [0.5, 0.5, 1.0]]), dim=1)
    blue_share = F.adaptive_avg_pool2d(torch.from_numpy(truth).float()[None, None], (h, w))[0, 0]
    feats = F.normalize(
        torch.stack([1 - blue_share, blue_share, torch.full_like(blue_share, 0.2)]), dim=0
    )
    labels = (torch.einsum("kd,dhw->khw", protos, feats)).argmax(0)
    assert set(labels.unique().tolist()) == {0, 1}  # prototype 2 is not in this image
    coarse = F.interpolate(labels[None, None].float(), size=truth.shape, mode="nearest")[0, 0]
    refined = crf_refine(img, feats, protos, labels)
    assert refined.shape == truth.shape and set(np.unique(refined)) <= {0, 1}
    assert (refined == truth).mean() > (coarse.numpy() == truth).mean()
    assert (refined == truth).mean() > 0.99
    grid = crf_refine_to_grid(img, feats, protos, labels)
    assert tuple(grid.shape) == (h, w) and set(grid.unique().tolist()) <= {0, 1}


def test_majority_downsample():
    lab = np.array([[5, 5, 9, 9], [5, 7, 9, 7]])
    np.testing.assert_array_equal(majority_downsample(lab, (1, 2)), [[5, 9]])


def test_cell_placement_of_the_crf_unaries_and_vote():
    """With a cell centre c, cell j's value sits at (j + c) H / h and each cell's vote is over
    the pixels nearest to its centre; c = 0.5 is the old bilinear / block-majority placement."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, 5, 7)).astype(np.float32))
    old = F.interpolate(x, size=(40, 56), mode="bilinear", align_corners=False)
    assert torch.allclose(upsample_cells(x, (40, 56), (0.5, 0.5)), old, atol=1e-5)
    assert torch.allclose(upsample_cells(x, (40, 56), None), old)
    # c = 1/16 at stride 8: pixel 0's centre (0.5) is cell 0's centre, pixel 8's is cell 1's
    up = upsample_cells(x, (40, 56), (1 / 16, 1 / 16))
    assert torch.allclose(up[..., ::8, ::8], x, atol=1e-5)

    labels = rng.integers(0, 3, (40, 56))
    centre = (1 / 16, 0.3)
    got = majority_downsample(labels, (5, 7), centre)
    rows = cell_index(5, 40, np.arange(40), centre[0])
    cols = cell_index(7, 56, np.arange(56), centre[1])
    for i in range(5):
        for j in range(7):
            votes = labels[np.ix_(rows == i, cols == j)].ravel()
            assert got[i, j] == np.bincount(votes, minlength=3).argmax()
    blocks = labels.reshape(5, 8, 7, 8).transpose(0, 2, 1, 3).reshape(5, 7, 64)
    want = np.array([[np.bincount(b, minlength=3).argmax() for b in row] for row in blocks])
    assert np.array_equal(majority_downsample(labels, (5, 7), (0.5, 0.5)), want)
    assert np.array_equal(majority_downsample(labels, (5, 7)), want)
