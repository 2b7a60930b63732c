"""Bootstrap features: the online backbone's map(s), fused and L2-normalised per location."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cyborgs.modeling.fusion import fuse_features

__all__ = ["extract_bootstrap_features"]


@torch.no_grad()
def extract_bootstrap_features(
    model: torch.nn.Module, images: torch.Tensor, names: Sequence[str]
) -> torch.Tensor:
    """Unit-norm features [B, D, h, w] of ``images`` (RGB [B, 3, H, W]) at the layer(s)
    ``names`` (e.g. ``["res3.2"]``) from ``model.extract_features`` (online backbone, eval
    mode). Several names are fused like the contrastive fusion (pool to the last map's grid,
    concatenate; Table 2d). Float32, so k-means sees exact unit vectors."""
    if len(names) == 0:
        raise ValueError("CYBORGS.BOOTSTRAP.FEATURES must name at least one feature map")
    feats = model.extract_features(images, list(names))
    fused = fuse_features({n: feats[n].float() for n in names if n in feats}, list(names))
    return F.normalize(fused, dim=1)
