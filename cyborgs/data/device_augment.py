"""BYOL's photometric augmentation as batched tensor ops on the model's device (METHOD.md §2).

With ``CYBORGS.AUG.DEVICE`` on, loader workers only decode, crop and resize (geometry) and
*draw* every photometric parameter (:meth:`cyborgs.pretrain_data.augment.ViewAugment.draw_photometric`,
the same draws from the same per-sample generator as the CPU path); the model applies the ops
here, on the whole batch of a view, before normalising (``CYBORGS._unpack``).

Images are float32 ``[B, 3, H, W]`` holding integer values in [0, 255] (RGB). Every op
reproduces what torchvision's functional op does on a uint8 image, including its rounding
(the result is truncated or rounded back to integers after each op, as the uint8 kernels do),
so a chain of ops sees the same intermediate values as the per-image CPU chain; tests compare
each op with ``torchvision.transforms.v2.functional`` within 1/255.

Per-image parameters are tensors of shape ``[B]`` on the images' device. The single ops accept
identity parameters too (factor 1, hue shift 0, sigma 0 leave integer-valued pixels unchanged);
:func:`apply_photometric` runs each op only on the images that draw it.

Parameter record of one view (plain Python, cheap to pass between loader processes), as made
by ``draw_photometric``::

    {"jitter": bool, "order": [int] * 4 (a permutation of 0..3 = brightness, contrast,
     saturation, hue), "factors": [float] * 4 (brightness, contrast, saturation, hue shift),
     "grayscale": bool, "blur_sigma": float (0.0 = no blur), "blur_kernel": int (odd),
     "solarize": bool}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "PHOTOMETRIC_KEYS",
    "SOLARIZE_THRESHOLD",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_photometric",
    "gaussian_blur",
    "gaussian_kernel1d",
    "rgb_to_grayscale",
    "solarize",
    "stack_photometric",
]

PHOTOMETRIC_KEYS = (
    "jitter",
    "order",
    "factors",
    "grayscale",
    "blur_sigma",
    "blur_kernel",
    "solarize",
)
SOLARIZE_THRESHOLD = 128.0
# ITU-R 601-2 luma, the weights torchvision and PIL use for "L".
_LUMA = (0.2989, 0.587, 0.114)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, 1] on x's device/dtype, to broadcast over C, H, W."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _to_uint8_values(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 255] and truncate, as ``float_tensor.to(torch.uint8)`` does."""
    return x.clamp_(0.0, 255.0).trunc_()


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W]: 0.2989 R + 0.587 G + 0.114 B (not rounded)."""
    r, g, b = x.unbind(dim=1)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``trunc(clamp(f * x, 0, 255))`` per image (factor [B] >= 0; 1 = identity)."""
    return _to_uint8_values(x * _per_image(factor, x))


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor, x)
    return _to_uint8_values(x * f + other * (1.0 - f))


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level: ``f * x + (1 - f) * mean(floor(luma(x)))``.

    The mean is over all pixels of each image (one scalar per image), as torchvision does.
    """
    mean = torch.floor(_luma(x)).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the pixel's own grey level: ``f * x + (1 - f) * floor(luma(x))``."""
    return _blend(x, torch.floor(_luma(x)), factor)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB in [0, 1] -> hue in [0, 1) (fraction of a turn), saturation, value (hexcone model).

    v = max, s = (max - min) / max, and the hue sector is chosen by which channel is the
    maximum (ties: R before G before B): h = ((g - b) / d) / 6, (2 + (b - r) / d) / 6 or
    (4 + (r - g) / d) / 6, with d = max - min; grey pixels (d = 0) get h = s = 0.
    """
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    d = maxc - minc
    grey = d == 0
    safe_d = torch.where(grey, torch.ones_like(d), d)
    s = torch.where(
        grey, torch.zeros_like(d), d / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    )
    h_r = (g - b) / safe_d
    h_g = 2.0 + (b - r) / safe_d
    h_b = 4.0 + (r - g) / safe_d
    h = torch.where(maxc == r, h_r, torch.where(maxc == g, h_g, h_b))
    h = torch.where(grey, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`: [B, H, W] x 3 -> RGB [B, 3, H, W] in [0, 1].

    Sector i = floor(6h) with fraction f; p = v(1 - s), q = v(1 - s f), t = v(1 - s(1 - f));
    (R, G, B) = (v,t,p), (q,v,p), (p,v,t), (p,q,v), (t,p,v), (v,p,q) for i = 0..5.
    """
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = torch.remainder(i, 6.0)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sectors = (
        (v, t, p),
        (q, v, p),
        (p, v, t),
        (p, q, v),
        (t, p, v),
        (v, p, q),
    )
    out = []
    for c in range(3):
        chan = sectors[5][c]
        for k in range(4, -1, -1):
            chan = torch.where(i == k, sectors[k][c], chan)
        out.append(chan)
    return torch.stack(out, dim=1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (shift [B] in [-0.5, 0.5]; 0 = identity).

    As torchvision on uint8: RGB / 255 -> HSV, h <- (h + shift) mod 1 -> RGB, then back to
    integers with ``trunc(rgb * (256 - 1e-3))`` (its float -> uint8 conversion).
    """
    h, s, v = _rgb_to_hsv(x / 255.0)
    sh = shift.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
    rgb = _hsv_to_rgb(torch.remainder(h + sh, 1.0), s, v)
    return _to_uint8_values(rgb * (256.0 - 1e-3))


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """``trunc(luma(x))`` repeated on the 3 channels."""
    return torch.trunc(_luma(x)).expand_as(x).contiguous()


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """[B] sigmas -> [B, k] normalised weights ``exp(-i^2 / (2 sigma^2))``, i = -(k-1)/2..(k-1)/2.

    sigma <= 0 gives the identity kernel (a 1 at the centre).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel size must be a positive odd integer, got {kernel_size}")
    half = (kernel_size - 1) / 2
    i = torch.linspace(-half, half, kernel_size, dtype=torch.float32, device=sigma.device)
    sig = sigma.to(torch.float32).view(-1, 1)
    on = sig > 0
    w = torch.exp(-(i.view(1, -1) ** 2) / (2.0 * torch.where(on, sig, torch.ones_like(sig)) ** 2))
    w = w / w.sum(dim=1, keepdim=True)
    delta = (i.abs() < 0.5).to(torch.float32).view(1, -1).expand_as(w)
    return torch.where(on, w, delta)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-image Gaussian blur, ``kernel_size`` x ``kernel_size``, reflect padding, rounded.

    Separable: one grouped 1-D convolution along W then one along H, a kernel per image
    (groups = B * 3). sigma [B]; sigma <= 0 leaves the image unchanged.
    """
    B, C, H, W = x.shape
    k = int(kernel_size)
    pad = k // 2
    if pad >= min(H, W):
        raise ValueError(f"blur kernel {k} too large for {H}x{W} images (reflect padding)")
    w1 = gaussian_kernel1d(sigma.to(x.device), k).to(x.dtype)  # [B, k]
    w1 = w1.repeat_interleave(C, dim=0)  # [B*C, k]
    y = x.reshape(1, B * C, H, W)
    y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, w1.view(B * C, 1, 1, k), groups=B * C)
    y = F.conv2d(y, w1.view(B * C, 1, k, 1), groups=B * C)
    return y.view(B, C, H, W).round_().clamp_(0.0, 255.0)


def solarize(x: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    """``255 - x`` where ``x >= threshold``, else ``x``."""
    return torch.where(x >= threshold, 255.0 - x, x)


def stack_photometric(params: Sequence[dict], device: torch.device | str) -> dict:
    """Per-view parameter records (module docstring) -> batched tensors on ``device``.

    Returns ``jitter`` bool[B], ``order`` int64[B, 4], ``factors`` float32[B, 4],
    ``grayscale`` bool[B], ``blur_sigma`` float32[B] (0 where no blur), ``blur_kernel`` int
    (one size per batch: all views of a batch have the same size), ``solarize`` bool[B], and
    ``group_sizes`` (Python ints: per jitter step k, how many images apply op 0..3 / none
    there, at ``5 k + op``; last, how many are blurred).
    """
    if not params:
        raise ValueError("no photometric parameters to stack (empty batch)")
    for i, p in enumerate(params):
        missing = [k for k in PHOTOMETRIC_KEYS if k not in p]
        if missing:
            raise KeyError(
                f"photometric parameters of image {i} lack {missing}; expected the keys "
                f"{list(PHOTOMETRIC_KEYS)} (ViewAugment.draw_photometric)"
            )
    kernels = {int(p["blur_kernel"]) for p in params}
    if len(kernels) != 1:
        raise ValueError(f"views of one batch have different blur kernel sizes: {sorted(kernels)}")
    # Built on the host and copied once per field (small: a few numbers per image).
    out = {
        "jitter": torch.tensor([bool(p["jitter"]) for p in params]),
        "order": torch.tensor([list(p["order"]) for p in params], dtype=torch.int64),
        "factors": torch.tensor([list(p["factors"]) for p in params], dtype=torch.float32),
        "grayscale": torch.tensor([bool(p["grayscale"]) for p in params]),
        "blur_sigma": torch.tensor([float(p["blur_sigma"]) for p in params], dtype=torch.float32),
        "solarize": torch.tensor([bool(p["solarize"]) for p in params]),
    }
    if out["order"].shape[1:] != (4,) or out["factors"].shape[1:] != (4,):
        raise ValueError("photometric 'order' and 'factors' must hold 4 values per image")
    # Group sizes, counted here on the host so apply_photometric never waits for the device.
    key = _op_keys(out["jitter"], out["order"])
    counts = [int(c) for k in range(4) for c in torch.bincount(key[:, k], minlength=5)]
    counts.append(int((out["blur_sigma"] > 0).sum()))
    out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    out["blur_kernel"] = kernels.pop()
    out["group_sizes"] = counts
    return out


def _op_keys(jitter: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """key[b, k]: the jitter op image b applies at step k (0..3), 4 = none (no jitter)."""
    return torch.where(jitter.view(-1, 1), order, 4)


def _apply_to(x: torch.Tensor, idx: torch.Tensor, fn, *args) -> torch.Tensor:
    """``x`` with images ``idx`` replaced by ``fn(x[idx], *args)``."""
    return x.index_copy(0, idx, fn(x.index_select(0, idx), *args))


def apply_photometric(images: torch.Tensor, params: dict) -> torch.Tensor:
    """BYOL's photometric chain on a batch: uint8 or float [B, 3, H, W] -> float32 in [0, 255].

    Per image, in this order: colour jitter when ``jitter`` (brightness, contrast, saturation,
    hue applied in the image's drawn ``order``, torchvision's ColorJitter), grayscale, Gaussian
    blur (``blur_sigma`` > 0), solarize (threshold 128). ``params``: :func:`stack_photometric`.

    Each op runs once per image that draws it: at jitter step k the images are grouped by the
    op they apply there (a stable sort per step) and each group is gathered, transformed and
    scattered back; blur likewise runs only on the images that draw it. So a view batch costs
    about one pass of each op whatever the order mix, instead of four; the group sizes come
    from the host (``group_sizes``), so nothing waits for the device.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    B = images.shape[0]
    if params["factors"].shape[0] != B:
        raise ValueError(
            f"{params['factors'].shape[0]} photometric parameter sets for a batch of {B} images"
        )
    x = images.to(torch.float32)
    factors = params["factors"]
    key = _op_keys(params["jitter"], params["order"])
    groups = torch.argsort(key, dim=0, stable=True)  # per step: images sorted by op
    no_blur = (params["blur_sigma"] <= 0).to(torch.int64)
    blurred = torch.argsort(no_blur, stable=True)  # blurred images first
    counts = params["group_sizes"]
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for k in range(4):
        start = 0
        for j, op in enumerate(ops):
            n = counts[5 * k + j]
            if n:
                idx = groups[start : start + n, k]
                x = _apply_to(x, idx, op, factors.index_select(0, idx)[:, j])
            start += n
    x = torch.where(params["grayscale"].view(-1, 1, 1, 1), rgb_to_grayscale(x), x)
    n_blur = counts[-1]
    if n_blur:
        idx = blurred[:n_blur]
        sigma = params["blur_sigma"].index_select(0, idx)
        x = _apply_to(x, idx, gaussian_blur, sigma, params["blur_kernel"])
    x = torch.where(params["solarize"].view(-1, 1, 1, 1), solarize(x), x)
    return x
