"""Where a cell of the bootstrap feature map looks: its stride and receptive-field centre.

``measure_cell_grid(net, features)`` differentiates one interior cell of the (fused,
unit-norm) bootstrap map with respect to the input and takes the centre of the box of input
pixels with a non-zero gradient: the receptive field's support, which depends on the
architecture (kernels, strides, paddings, pooling) and not on the weights. Dead ReLUs or a
max-pool could hide a pixel from one input, so the support is the union over a few random
inputs; the canvas grows until the support box stays clear of its border (the box is then the
whole receptive field, not a clipped part of it). The result is cached per architecture in
the process; ``cyborgs.masks.cell_grid`` turns it into the map's cell centre.

Measured (detectron2 ResNet, random init; the support does not depend on the weights): cell i
is centred on input pixel index ``s i`` (offset 0 on both axes) for R18 at res3.1, res3, res4,
res5 and R50 at res3.2, res3, res4, res5, with ``STRIDE_IN_1X1`` True and False, and for the
fused ``res3.x + res4``: every kernel, padding and pooling window is symmetric, so each
stride-2 step centres output i on input 2i.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cyborgs.modeling.fusion import fuse_features

__all__ = ["CellGrid", "measure_cell_grid"]

CellGrid = tuple[int, tuple[float, float]]  # (stride s, (o_y, o_x)): cell i centred on o + s i

_CACHE: dict[tuple, CellGrid] = {}
_PROBES = 3  # random inputs whose gradient supports are joined
_MAX_CANVAS = 2048


def _architecture_key(net: torch.nn.Module, features: Sequence[str]) -> tuple:
    """What fixes the receptive field: the module classes with their geometry, in order."""
    parts = []
    for m in net.modules():
        geo = tuple(
            tuple(v) if isinstance(v, list | tuple) else v
            for v in (getattr(m, a, None) for a in ("kernel_size", "stride", "padding", "dilation"))
        )
        parts.append((type(m).__name__, geo))
    return (type(net).__name__, tuple(features), tuple(parts))


def _features(net: torch.nn.Module, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """The bootstrap map (as ``features.extract_bootstrap_features``) with gradients: the
    model's ``extract_features`` is decorated with ``torch.no_grad`` (rounds need no graph), so
    the function under the decorator (``functools.wraps``' ``__wrapped__``) is called."""
    extract = inspect.unwrap(type(net).extract_features)
    feats = extract(net, x, list(names))
    return F.normalize(fuse_features({n: feats[n].float() for n in names}, list(names)), dim=1)


def _support_box(grad: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows lo..hi, cols lo..hi) of the non-zero entries of ``grad`` [H, W]."""
    nz = grad != 0
    rows = torch.nonzero(nz.any(dim=1)).flatten()
    cols = torch.nonzero(nz.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise RuntimeError("the bootstrap features do not depend on the input (zero gradient)")
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


def measure_cell_grid(
    net: torch.nn.Module, features: Sequence[str], device: torch.device | None = None
) -> CellGrid:
    """(stride, (o_y, o_x)) of the bootstrap map ``features`` of ``net`` (a model with
    ``extract_features``): cell i is centred on input pixel index ``o + s i`` (module
    docstring). Runs in eval mode (BN statistics untouched, parameter gradients not kept)."""
    key = _architecture_key(net, features)
    if key in _CACHE:
        return _CACHE[key]
    if device is None:
        p = next(net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    was_training = net.training
    net.eval()
    try:
        size = 64
        while True:
            x = (torch.rand(_PROBES, 3, size, size, generator=gen) * 255).to(device)
            x.requires_grad_(True)
            with torch.enable_grad():
                f = _features(net, x, features)
                fh, fw = f.shape[-2:]
                if fh != fw or size % fh:
                    raise RuntimeError(
                        f"bootstrap features {list(features)} of a {size}x{size} image are "
                        f"{fh}x{fw}: expected a square grid whose stride divides {size}"
                    )
                stride, i = size // fh, fh // 2
                w = torch.randn(f.shape[1], generator=gen).to(f.device)
                (grad,) = torch.autograd.grad((f[:, :, i, i] * w).sum(), x)
            (ylo, yhi), (xlo, xhi) = _support_box(grad.abs().sum(dim=(0, 1)))
            if min(ylo, xlo) > 0 and max(yhi, xhi) < size - 1:
                break
            if size >= _MAX_CANVAS:
                raise RuntimeError(
                    f"the receptive field of {list(features)} reaches past a {size}-px canvas"
                )
            size *= 2
    finally:
        net.train(was_training)
    offset = ((ylo + yhi) / 2 - stride * i, (xlo + xhi) / 2 - stride * i)
    if not all(math.isfinite(v) for v in offset):
        raise RuntimeError(f"receptive-field centre of {list(features)} is {offset}")
    _CACHE[key] = (int(stride), offset)
    return _CACHE[key]
