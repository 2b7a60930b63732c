"""Masks onto the feature grid, mask-id sampling and masked mean pooling (METHOD.md §2.3, eq. 1).

Three steps feed the mask-contrastive loss:

1. ``masks_to_grid``: a pixel-resolution mask becomes a ``h x w`` grid where each cell holds
   the majority id of its pixels (the one-hot / average-pool / argmax vote of DetCon, computed
   exactly but without the ``B x num_ids x H x W`` one-hot when the grid divides the image).
2. ``sample_mask_ids``: per image, ids drawn uniformly with replacement among those present.
3. ``pool_by_mask``: the mean feature over the cells of each sampled id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masks_to_grid", "sample_mask_ids", "pool_by_mask"]

# Bound on the one-hot elements materialised at once by the non-divisible fallback (~256 MB
# of float32): the full one-hot at 257 ids x 224^2 x 64 images would be 3.3 GB.
_ONE_HOT_CHUNK_ELEMENTS = 1 << 26


def _check_ids(masks: torch.Tensor, num_ids: int) -> None:
    if masks.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(masks)).tolist()  # one pass, one sync
    if lo < 0 or hi >= num_ids:
        # Never drop ids silently (the authors' one-hot of width 81 lost every id >= 81).
        raise ValueError(
            f"mask ids must lie in [0, {num_ids}) but found values in [{lo}, {hi}]; "
            "raise num_ids (derived from CYBORGS.BOOTSTRAP.K_MAX) to cover every id a mask "
            "source can write"
        )


def masks_to_grid(masks: torch.Tensor, grid_hw: tuple[int, int], num_ids: int) -> torch.Tensor:
    """Majority-vote a pixel mask onto a coarse grid.

    Args:
        masks: LongTensor[B, H, W] of ids in ``[0, num_ids)``.
        grid_hw: (h, w) of the feature grid.
        num_ids: number of possible ids (the width of the conceptual one-hot).

    Returns:
        LongTensor[B, h, w]: per cell, the id with most pixels in the cell's pooling window
        (``adaptive_avg_pool2d`` windows); ties go to the smallest id, as ``argmax`` does.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [B, H, W], got shape {tuple(masks.shape)}")
    if masks.dtype.is_floating_point or masks.dtype == torch.bool:
        raise TypeError(f"masks must hold integer ids, got dtype {masks.dtype}")
    h, w = (int(v) for v in grid_hw)
    if h <= 0 or w <= 0:
        raise ValueError(f"grid_hw must be positive, got {grid_hw}")
    _check_ids(masks, num_ids)
    masks = masks.long()
    B, H, W = masks.shape
    if H % h == 0 and W % w == 0:
        return _grid_by_counts(masks, h, w, num_ids)
    return _grid_by_chunked_one_hot(masks, h, w, num_ids)


def _grid_by_counts(masks: torch.Tensor, h: int, w: int, num_ids: int) -> torch.Tensor:
    """Exact vote when the grid tiles the image: count ids per cell with one scatter_add."""
    B, H, W = masks.shape
    sy, sx = H // h, W // w
    ys = torch.arange(H, device=masks.device) // sy
    xs = torch.arange(W, device=masks.device) // sx
    cell = (ys[:, None] * w + xs[None, :]).expand(B, H, W)
    # Flat index of (image, cell, id) in a [B, h*w, num_ids] count table: B*h*w*num_ids
    # integers (64 x 49 x 257 ~ 0.8M) instead of a B*num_ids*H*W one-hot.
    image = torch.arange(B, device=masks.device)[:, None, None]
    flat = (image * (h * w) + cell) * num_ids + masks
    counts = torch.zeros(B * h * w * num_ids, dtype=torch.int32, device=masks.device)
    counts.scatter_add_(0, flat.reshape(-1), torch.ones_like(flat, dtype=torch.int32).reshape(-1))
    return counts.view(B, h, w, num_ids).argmax(dim=-1)


def _grid_by_chunked_one_hot(masks: torch.Tensor, h: int, w: int, num_ids: int) -> torch.Tensor:
    """Fallback for grids that do not tile the image (overlapping adaptive windows).

    Pools the one-hot a chunk of ids at a time and keeps a running argmax; a strict ``>``
    keeps the first (smallest) id on ties, matching ``argmax`` over the full one-hot.
    """
    B, H, W = masks.shape
    chunk = max(1, _ONE_HOT_CHUNK_ELEMENTS // max(1, B * H * W))
    best_val = torch.full((B, h, w), -1.0, device=masks.device)
    best_id = torch.zeros((B, h, w), dtype=torch.long, device=masks.device)
    for start in range(0, num_ids, chunk):
        ids = torch.arange(start, min(num_ids, start + chunk), device=masks.device)
        one_hot = (masks[:, None] == ids[None, :, None, None]).float()
        pooled = F.adaptive_avg_pool2d(one_hot, (h, w))  # [B, chunk, h, w]
        val, idx = pooled.max(dim=1)
        better = val > best_val
        best_val = torch.where(better, val, best_val)
        best_id = torch.where(better, idx + start, best_id)
    return best_id


def sample_mask_ids(
    grid_masks: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample ids per image, uniformly with replacement among the ids present (DetCon).

    Args:
        grid_masks: LongTensor[B, h, w] of non-negative ids.
        num_samples: S, ids drawn per image.
        generator: optional torch.Generator on ``grid_masks``' device, for reproducibility.

    Returns:
        LongTensor[B, S].
    """
    if grid_masks.dim() != 3:
        raise ValueError(f"grid_masks must be [B, h, w], got shape {tuple(grid_masks.shape)}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    B = grid_masks.shape[0]
    if grid_masks.numel() == 0:
        raise ValueError("grid_masks is empty: no ids to sample from")
    lo, hi = torch.stack(torch.aminmax(grid_masks)).tolist()  # one pass, one sync
    if lo < 0:
        raise ValueError("grid_masks must hold non-negative ids")
    width = hi + 1
    present = torch.zeros(B, width, device=grid_masks.device)
    present.scatter_(1, grid_masks.reshape(B, -1).long(), 1.0)
    # multinomial over a 0/1 presence row is uniform over the ids present.
    return torch.multinomial(present, num_samples, replacement=True, generator=generator)


def pool_by_mask(
    features: torch.Tensor, grid_masks: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Mean feature over the cells of each requested id (paper eq. 1).

    Args:
        features: Tensor[B, C, h, w].
        grid_masks: LongTensor[B, h, w].
        ids: LongTensor[B, S], the ids to pool per image.

    Returns:
        Tensor[B, S, C]; an id absent from the image's grid pools to the zero vector.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, h, w], got shape {tuple(features.shape)}")
    B, C, h, w = features.shape
    if tuple(grid_masks.shape) != (B, h, w):
        raise ValueError(
            f"grid_masks shape {tuple(grid_masks.shape)} does not match features' "
            f"[B, h, w] = {(B, h, w)}"
        )
    if ids.dim() != 2 or ids.shape[0] != B:
        raise ValueError(f"ids must be [B={B}, S], got shape {tuple(ids.shape)}")
    indicator = (grid_masks.reshape(B, 1, h * w) == ids[:, :, None]).to(features.dtype)
    counts = indicator.sum(dim=-1, keepdim=True).clamp(min=1.0)  # [B, S, 1]
    summed = torch.bmm(indicator, features.reshape(B, C, h * w).transpose(1, 2))  # [B, S, C]
    return summed / counts
