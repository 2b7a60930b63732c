"""Sample two views' feature maps at the same image locations (METHOD.md §4, inter-view vMF terms).

View a of image b is the crop ``boxes[b, a] = (x0, y0, x1, y1)`` (original image pixels),
resized to the network input and horizontally flipped when ``flips[b, a]``; its feature map
covers that crop. Both maps are RoIAligned over the intersection of the two crops on a common
``g x g`` grid, so that cell (i, j) of both outputs is the same region of the original image.

The RoIAlign is computed in separable form: torchvision's ``roi_align`` (``aligned=True``,
adaptive sampling) averages bilinear samples on a per-bin grid that is a Cartesian product of
row and column positions, and bilinear weights and its out-of-bounds rule factor into a row
part and a column part. So ``out[b, c] = Wy[b] @ feat[b, c] @ Wx[b].T`` with small [g, h] and
[g, w] weight matrices, two batched matmuls whose backward is two more; torchvision's CPU
``roi_align`` backward scatters sample by sample and was 40 % of the vMF loss's time. Tests
check it against ``torchvision.ops.roi_align``, values and gradients.
"""

from __future__ import annotations

import torch

__all__ = ["corresponding_grids", "crop_intersection"]


def crop_intersection(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection of the two crops of every image.

    Args:
        boxes: Tensor[B, 2, 4], (x0, y0, x1, y1) per view.

    Returns:
        (Tensor[B, 4] intersection box, BoolTensor[B] True where it has positive area).
    """
    lo = torch.maximum(boxes[:, 0, :2], boxes[:, 1, :2])
    hi = torch.minimum(boxes[:, 0, 2:], boxes[:, 1, 2:])
    valid = (hi > lo).all(dim=1)
    return torch.cat([lo, hi], dim=1), valid


def _to_feature_coords(
    region: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Image-pixel boxes [B, 4] -> boxes in a view's feature-map coordinates [B, 4].

    Continuous coordinates: feature cell k spans [k, k+1] (RoIAlign's aligned=True convention).
    A flipped view stores column u of the unflipped map at w - u, so x-ranges are mirrored.
    """
    sx = w / (crop[:, 2] - crop[:, 0]).clamp(min=1e-6)
    sy = h / (crop[:, 3] - crop[:, 1]).clamp(min=1e-6)
    fx0 = (region[:, 0] - crop[:, 0]) * sx
    fx1 = (region[:, 2] - crop[:, 0]) * sx
    fy0 = (region[:, 1] - crop[:, 1]) * sy
    fy1 = (region[:, 3] - crop[:, 1]) * sy
    fx0, fx1 = torch.where(flip, w - fx1, fx0), torch.where(flip, w - fx0, fx1)
    return torch.stack([fx0, fy0, fx1, fy1], dim=1)


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size: int, g: int) -> torch.Tensor:
    """RoIAlign's weights along one axis: Tensor[B, g, size], row i the average over bin i's
    sample positions of their bilinear weights on the ``size`` cells (torchvision's rules:
    ``aligned=True`` half-cell offset, ceil(extent / g) samples per bin, samples beyond one
    cell outside the map contribute zero but still count, clamping at the last cell)."""
    start = start - 0.5  # aligned=True: cell k's centre is at k + 0.5
    extent = end - 0.5 - start
    bin_size = extent / g  # [B]
    # Samples per bin, per ROI (0: empty ROI). A static bound instead of n.max().item(), which
    # would sync the GPU on every call: ROIs of corresponding_grids lie inside the map (extent
    # <= size, +1 for rounding); longer ROIs get at most n_max samples per bin.
    n_max = -(-size // g) + 1
    n = torch.ceil(extent / g).clamp(min=0, max=n_max)
    n1 = n.clamp(min=1)[:, None, None]
    i = torch.arange(g, device=start.device, dtype=start.dtype)[None, :, None]
    k = torch.arange(n_max, device=start.device, dtype=start.dtype)[None, None, :]
    b = bin_size[:, None, None]
    pos = start[:, None, None] + i * b + (k + 0.5) * b / n1  # [B, g, n_max]
    used = (k < n[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().clamp(max=size - 1)
    at_end = low >= size - 1
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low)
    high = torch.where(at_end, low, low + 1)
    cells = torch.arange(size, device=start.device, dtype=start.dtype)
    w = (1 - frac)[..., None] * (cells == low[..., None]) + frac[..., None] * (
        cells == high[..., None]
    )  # [B, g, n_max, size]
    w = w * used[..., None]
    return w.sum(dim=2) / n1


def _sample(feat: torch.Tensor, fboxes: torch.Tensor, flip: torch.Tensor, g: int) -> torch.Tensor:
    h, w = feat.shape[-2:]
    # at least fp32 whatever the features' dtype (bf16 backbones on CUDA)
    ct = torch.float64 if feat.dtype == torch.float64 else torch.float32
    fboxes = fboxes.to(ct)
    wy = _axis_weights(fboxes[:, 1], fboxes[:, 3], h, g)  # [B, g, h]
    wx = _axis_weights(fboxes[:, 0], fboxes[:, 2], w, g)  # [B, g, w]
    out = torch.einsum("bih,bchw,bjw->bcij", wy, feat.to(ct), wx).to(feat.dtype)
    # The flipped view was sampled left-to-right in its own (mirrored) frame: mirror the grid
    # back so column j means the same image x in both views.
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def corresponding_grids(
    feat1: torch.Tensor,
    feat2: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    out_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoIAlign both views on a common grid over their crop intersection.

    Args:
        feat1: Tensor[B, C, h1, w1], view 1's feature map (covers boxes[:, 0]).
        feat2: Tensor[B, C, h2, w2], view 2's feature map (covers boxes[:, 1]).
        boxes: Tensor[B, 2, 4], crop boxes (x0, y0, x1, y1) in original image pixels.
        flips: BoolTensor[B, 2], horizontal flip applied after cropping, per view.
        out_size: g, side of the common grid.

    Returns:
        (Tensor[B, C, g, g], Tensor[B, C, g, g], BoolTensor[B]): the two samplings, cell (i, j)
        of both at the same image location (row i top to bottom, column j left to right in the
        original image), and ``valid`` (False where the crops do not overlap; outputs zero).
        Differentiable with respect to the feature maps.
    """
    if feat1.dim() != 4 or feat2.dim() != 4:
        raise ValueError("feat1 and feat2 must be [B, C, h, w]")
    B = feat1.shape[0]
    if feat2.shape[:2] != feat1.shape[:2]:
        raise ValueError(
            f"feat1 {tuple(feat1.shape)} and feat2 {tuple(feat2.shape)} differ in B or C"
        )
    if tuple(boxes.shape) != (B, 2, 4):
        raise ValueError(f"boxes must be [B={B}, 2, 4], got {tuple(boxes.shape)}")
    if tuple(flips.shape) != (B, 2):
        raise ValueError(f"flips must be [B={B}, 2], got {tuple(flips.shape)}")
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1, got {out_size}")
    boxes = boxes.to(device=feat1.device, dtype=torch.float32)
    flips = flips.to(device=feat1.device, dtype=torch.bool)
    region, valid = crop_intersection(boxes)
    # Images without overlap get a harmless dummy region; their outputs are zeroed below.
    region = torch.where(valid[:, None], region, boxes[:, 0])

    outs = []
    for a, feat in enumerate((feat1, feat2)):
        h, w = feat.shape[-2:]
        fboxes = _to_feature_coords(region, boxes[:, a], flips[:, a], h, w)
        sampled = _sample(feat, fboxes, flips[:, a], out_size)
        outs.append(sampled * valid[:, None, None, None].to(sampled.dtype))
    return outs[0], outs[1], valid
