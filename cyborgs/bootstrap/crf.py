"""Dense-CRF refinement of k-means masks (Fig. 4, Table 2b; Krähenbühl & Koltun 2011).

Unary: softmax over the prototypes present in the image of ``scale`` x cosine similarity of
each feature to each prototype, bilinearly upsampled to the image (the "distances to feature
prototypes in latent space as priors" of §4.3). Pairwise: a Gaussian smoothness kernel and an
appearance (bilateral) kernel, with the defaults of the DeepLab / STEGO CRF (sxy 3 / compat 3;
sxy 80, srgb 13, compat 10), 5 mean-field iterations. Only prototypes already present in the
image compete, so the refined ids are a subset of the input ids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["dense_crf", "crf_refine", "crf_refine_to_grid", "majority_downsample"]


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
    **crf_kwargs,
) -> np.ndarray:
    """Refined labels [H, W] at image resolution (ids of ``prototypes``).

    Args:
        image: RGB uint8 [H, W, 3].
        features: unit-norm features [D, h, w] of the image.
        prototypes: unit-norm k-means centroids [K, D].
        labels: k-means labels [h, w]; their ids are the candidates.
        scale: inverse temperature of the softmax over cosine similarities (vMF kappa = 10).
    """
    present = torch.as_tensor(np.unique(np.asarray(labels))).long()
    P = F.normalize(prototypes.float(), dim=1)[present.to(prototypes.device)]
    logits = torch.einsum("kd,dhw->khw", P, features.float().to(P.device)) * scale
    logits = F.interpolate(logits[None], size=image.shape[:2], mode="bilinear", align_corners=False)
    probs = logits[0].softmax(0).cpu().numpy()
    refined = dense_crf(image, probs, **crf_kwargs)
    return present.numpy()[refined]


def majority_downsample(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Most frequent id of each output cell (adaptive pooling of the one-hot map)."""
    ids, inv = np.unique(labels, return_inverse=True)
    onehot = F.one_hot(torch.from_numpy(inv.reshape(labels.shape)).long(), len(ids))
    pooled = F.adaptive_avg_pool2d(onehot.permute(2, 0, 1)[None].float(), out_hw)[0]
    return ids[pooled.argmax(0).numpy()]


def crf_refine_to_grid(
    image: np.ndarray, features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """CRF at image resolution, brought back to the feature grid by majority vote (the store
    keeps feature-resolution maps). Used by rounds with ``CYBORGS.BOOTSTRAP.CRF``."""
    refined = crf_refine(image, features, prototypes, labels.cpu().numpy())
    return torch.from_numpy(majority_downsample(refined, tuple(labels.shape[-2:])))
