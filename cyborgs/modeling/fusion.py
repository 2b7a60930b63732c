"""Multi-layer feature fusion for the mask-contrastive loss (METHOD.md §2, paper §3.2).

Each selected map is average-pooled to the grid of the LAST selected map and the results are
concatenated on channels (R50 res3,res4,res5: 512+1024+2048 = 3584 channels at 7x7 for 224 px).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["fuse_features", "fused_channels"]


def fuse_features(features: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Pool ``features[n]`` for ``n`` in ``names`` to the last one's grid and concatenate.

    Args:
        features: name -> Tensor[B, C_n, H_n, W_n].
        names: the maps to fuse, in order; the last one sets the output grid.

    Returns:
        Tensor[B, sum(C_n), H_last, W_last].
    """
    if len(names) == 0:
        raise ValueError("fuse_features needs at least one feature name (CYBORGS.FUSION_FEATURES)")
    missing = [n for n in names if n not in features]
    if missing:
        raise KeyError(f"features {missing} are not available; got {sorted(features)}")
    target_hw = tuple(features[names[-1]].shape[-2:])
    pooled = []
    for n in names:
        f = features[n]
        if tuple(f.shape[-2:]) != target_hw:
            # Adaptive pooling: exact stride-2^k average when sizes divide, still well defined
            # (overlapping windows) when odd input sizes make them not divide.
            f = F.adaptive_avg_pool2d(f, target_hw)
        pooled.append(f)
    return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]


def fused_channels(channels: Mapping[str, int], names: Sequence[str]) -> int:
    """Channel count of ``fuse_features`` output given each map's channels."""
    missing = [n for n in names if n not in channels]
    if missing:
        raise KeyError(f"features {missing} are not available; got {sorted(channels)}")
    return int(sum(channels[n] for n in names))
