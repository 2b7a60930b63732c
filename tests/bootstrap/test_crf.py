"""Dense-CRF refinement: shapes, id subset, and noisy labels snapped to a colour boundary."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cyborgs.bootstrap.crf import crf_refine, crf_refine_to_grid, dense_crf, majority_downsample


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
