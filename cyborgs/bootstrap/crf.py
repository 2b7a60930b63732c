"""Dense-CRF refinement of k-means masks (Fig. 4, Table 2b; Krähenbühl & Koltun 2011).

Unary: softmax over the prototypes present in the image of ``scale`` x cosine similarity of
each feature to each prototype, bilinearly upsampled to the image (the "distances to feature
prototypes in latent space as priors" of §4.3). Pairwise: a Gaussian smoothness kernel and an
appearance (bilateral) kernel, with the defaults of the DeepLab / STEGO CRF (sxy 3 / compat 3;
sxy 80, srgb 13, compat 10), 5 mean-field iterations. Only prototypes already present in the
image compete, so the refined ids are a subset of the input ids.

Cell placement: with a cell centre ``c`` (``cyborgs.masks.cell_grid``; a round's measured
receptive-field centre) the unaries are interpolated between the cells' centres and the
refined labels go back to the grid by a vote of the pixels nearest to each cell's centre; with
None, cell j covers the pixel block [j s, (j + 1) s) (bilinear ``align_corners=False`` and
block majority), the placement of maps that record no centre.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cyborgs.masks.cell_grid import CellCentre, cell_index

__all__ = [
    "dense_crf",
    "crf_refine",
    "crf_refine_to_grid",
    "majority_downsample",
    "upsample_cells",
]


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    iters: int = 5,
    sxy_gaussian: float = 3.0,
    compat_gaussian: float = 3.0,
    sxy_bilateral: float = 80.0,
    srgb: float = 13.0,
    compat_bilateral: float = 10.0,
) -> np.ndarray:
    """MAP labels [H, W] (int64, indices into ``probs``) of a dense CRF on an RGB uint8 image
    [H, W, 3] with class probabilities ``probs`` [C, H, W]."""
    import pydensecrf.densecrf as dcrf

    C, H, W = probs.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(H, W)} differ in size")
    if C == 1:
        return np.zeros((H, W), np.int64)
    unary = -np.log(np.clip(probs.reshape(C, -1), 1e-8, 1.0)).astype(np.float32)
    d = dcrf.DenseCRF2D(W, H, C)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    d.addPairwiseBilateral(
        sxy=sxy_bilateral,
        srgb=srgb,
        rgbim=np.ascontiguousarray(image[..., :3], dtype=np.uint8),
        compat=compat_bilateral,
    )
    q = np.asarray(d.inference(iters)).reshape(C, H, W)
    return q.argmax(0)


def crf_refine(
    image: np.ndarray,
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    *,
    scale: float = 10.0,
    cell_centre: CellCentre = None,
    **crf_kwargs,
) -> np.ndarray:
    """Refined labels [H, W] at image resolution (ids of ``prototypes``).

    Args:
        image: RGB uint8 [H, W, 3].
        features: unit-norm features [D, h, w] of the image.
        prototypes: unit-norm k-means centroids [K, D].
        labels: k-means labels [h, w]; their ids are the candidates.
        scale: inverse temperature of the softmax over cosine similarities (vMF kappa = 10).
        cell_centre: where the cells sit on the image (module docstring).
    """
    present = torch.as_tensor(np.unique(np.asarray(labels))).long()
    P = F.normalize(prototypes.float(), dim=1)[present.to(prototypes.device)]
    logits = torch.einsum("kd,dhw->khw", P, features.float().to(P.device)) * scale
    logits = upsample_cells(logits[None], tuple(image.shape[:2]), cell_centre)
    probs = logits[0].softmax(0).cpu().numpy()
    refined = dense_crf(image, probs, **crf_kwargs)
    return present.numpy()[refined]


def upsample_cells(
    x: torch.Tensor, out_hw: tuple[int, int], cell_centre: CellCentre
) -> torch.Tensor:
    """Bilinear [1, C, h, w] -> [1, C, H, W] with cell j's value at its centre (j + c) H / h
    (``align_corners=False`` for c = 0.5, so also for None); constant beyond the outer cells."""
    if cell_centre is None:
        return F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    axes = []
    for n, N, c in zip(x.shape[-2:], out_hw, cell_centre, strict=True):
        u = (torch.arange(N, dtype=torch.float64) + 0.5) * (n / N) - c  # in cell indices
        axes.append((2 * (u + 0.5) / n - 1).float().to(x.device))  # grid_sample's coordinates
    gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def majority_downsample(
    labels: np.ndarray, out_hw: tuple[int, int], cell_centre: CellCentre = None
) -> np.ndarray:
    """Most frequent id of each output cell: over the pixel blocks of adaptive pooling (None),
    or over the pixels whose nearest cell centre it is (``cell_grid.cell_index``)."""
    ids, inv = np.unique(labels, return_inverse=True)
    if cell_centre is not None:
        (H, W), (h, w) = labels.shape, out_hw
        rows = cell_index(h, H, np.arange(H), cell_centre[0])
        cols = cell_index(w, W, np.arange(W), cell_centre[1])
        cell = (rows[:, None] * w + cols[None, :]).ravel()
        counts = np.zeros((h * w, len(ids)), np.int64)
        np.add.at(counts, (cell, inv.ravel()), 1)
        return ids[counts.argmax(1)].reshape(h, w)
    onehot = F.one_hot(torch.from_numpy(inv.reshape(labels.shape)).long(), len(ids))
    pooled = F.adaptive_avg_pool2d(onehot.permute(2, 0, 1)[None].float(), out_hw)[0]
    return ids[pooled.argmax(0).numpy()]


def crf_refine_to_grid(
    image: np.ndarray,
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    cell_centre: CellCentre = None,
) -> torch.Tensor:
    """CRF at image resolution, brought back to the feature grid by majority vote (the store
    keeps feature-resolution maps). Used by rounds with ``CYBORGS.BOOTSTRAP.CRF``."""
    refined = crf_refine(image, features, prototypes, labels.cpu().numpy(), cell_centre=cell_centre)
    hw = tuple(labels.shape[-2:])
    return torch.from_numpy(majority_downsample(refined, hw, cell_centre))
