"""BYOL two-view augmentation with the geometry shared by image and mask (METHOD.md §2).

Per view: RandomResizedCrop(size, scale, ratio) and a horizontal flip, applied identically to
the image (bilinear, antialiased) and the mask (nearest, pixel-centre aligned); then image-only
colour jitter (p=0.8, random op order as torchvision), grayscale (p=0.2), Gaussian blur
(p=1.0 / 0.1 for views 1 / 2, sigma ~ U[0.1, 2.0], kernel 2*floor(0.05*size)+1, i.e. 23 at 224)
and solarize (p=0 / 0.2, threshold 128).

Each view records its crop ``box = (x0, y0, x1, y1)`` in the original image's pixel-edge
coordinates (pixel i covers [i, i+1)), and ``flip`` (applied after cropping), so that
``resize(image[y0:y1, x0:x1])`` then ``flip`` reproduces the view before photometric ops.

All randomness comes from a ``numpy.random.Generator`` passed in, so a seeded generator gives
the same views.

Masks may come at a lower resolution than the image (a mask store's label map, e.g. 60x80 for
a 480x640 image): a label map ``[h, w]`` with cell centre ``c`` stands for its placement on the
image by ``cyborgs.masks.cell_grid.upsample_label_map`` (each full-resolution pixel takes the
cell whose centre is nearest; ``c`` None: nearest upsampling, pixel ``(i, j)`` ->
``map[floor(i h / H), floor(j w / W)]``). :func:`crop_resize_label_map` samples a view's mask
from it directly, composing that rule with the view's nearest grid, and gives exactly what
placing it on the image first and then :func:`crop_resize_mask` gave, at a fraction of the cost.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from cyborgs.masks.cell_grid import CellCentre, cell_index

__all__ = [
    "device_augment_enabled",
    "ViewAugment",
    "TwoViewAugment",
    "sample_crop_box",
    "crop_resize_image",
    "crop_resize_mask",
    "crop_resize_label_map",
    "blur_kernel_size",
]


def device_augment_enabled(cfg) -> bool:
    """Resolve CYBORGS.AUG.DEVICE: "auto" (on iff MODEL.DEVICE is CUDA and CUDA is
    available, so a default config on a CPU-only machine keeps the CPU path), "on", "off".

    YAML booleans (an unquoted on/off) are accepted as "on"/"off" (the CYBORGS.GPU.* rule).
    """
    from cyborgs.config import parse_switch

    mode = parse_switch(cfg.CYBORGS.AUG.DEVICE, "CYBORGS.AUG.DEVICE")
    if mode == "auto":
        return str(cfg.MODEL.DEVICE).strip().lower().startswith("cuda") and (
            torch.cuda.is_available()
        )
    return mode == "on"


def sample_crop_box(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling, as integer ``(x0, y0, x1, y1)``.

    10 tries of area ~ U[scale] * H * W and log-uniform aspect ratio; otherwise the largest
    centred crop whose ratio is clamped to ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return x0, y0, x0 + w, y0 + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    y0 = (height - h) // 2
    x0 = (width - w) // 2
    return x0, y0, x0 + w, y0 + h


def crop_resize_image(
    image: torch.Tensor,
    box: Sequence[int],
    flip: bool,
    size: int,
    uint8_kernels: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop ``box`` from image uint8[3,H,W], resize to uint8[3,size,size] (bilinear with
    antialiasing, torchvision's default for tensors), flip horizontally when ``flip``.

    ``uint8_kernels``: resample the uint8 image directly with torch's uint8 kernel instead of
    through float32: several times faster on the CPU and within 1 grey level of the float path
    (the device-augmentation path uses it). ``out``: a contiguous uint8[3,size,size] to write
    the view into (returned).
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    if uint8_kernels:
        # An HWC-backed [3,H,W] view is channels_last already: the fast uint8 kernel's layout.
        img = image[:, y0:y1, x0:x1].unsqueeze(0)
        img = F.interpolate(
            img, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        # The result is channels_last too; the view is handed out contiguous [3,S,S] (stacking
        # channels_last views in the trainer is many times slower): one copy, flip included.
        img = img.flip(-1) if flip else img
        return out.copy_(img) if out is not None else img.contiguous()
    img = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    img = F.interpolate(
        img, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    img = img.round_().clamp_(0, 255).to(torch.uint8)[0]
    img = img.flip(-1) if flip else img
    return out.copy_(img) if out is not None else img


def crop_resize_mask(mask: torch.Tensor, box: Sequence[int], flip: bool, size: int) -> torch.Tensor:
    """Crop ``box`` from mask int[H,W] (ids < 256), resize to [size,size], flip.

    Nearest with pixel-centre alignment (``nearest-exact``), which matches the image's bilinear
    sampling grid; plain ``nearest`` would shift the mask by up to half a source pixel. A uint8
    mask is resampled as is and stays uint8 (an eighth of the bytes to pass from a loader
    worker; the device path); other dtypes go through float32 (ids < 256 are exact there) and
    come back int64.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    m = mask[y0:y1, x0:x1][None, None]
    if m.dtype == torch.uint8:
        m = F.interpolate(m, size=(size, size), mode="nearest-exact")[0, 0]
    else:
        m = F.interpolate(m.float(), size=(size, size), mode="nearest-exact")[0, 0].long()
    return m.flip(-1) if flip else m


@functools.lru_cache(maxsize=4096)
def nearest_exact_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index of torch's ``nearest-exact`` resize of ``in_size`` to
    ``out_size`` samples: ``min(floor((o + 0.5) * in_size / out_size), in_size - 1)``, the
    centre of output pixel ``o`` mapped back into the input, with torch's float32 arithmetic
    (scale = float32(in) / float32(out), the product rounded to float32 before the floor), so
    the indices equal ``F.interpolate(..., mode="nearest-exact")``'s (a test checks). Read-only.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    pos = (np.arange(out_size, dtype=np.float64) + 0.5) * np.float64(scale)
    idx = np.minimum(np.floor(pos.astype(np.float32)).astype(np.int64), in_size - 1)
    idx.setflags(write=False)
    return idx


def crop_resize_label_map(
    label_map: np.ndarray,
    image_hw: Sequence[int],
    box: Sequence[int],
    flip: bool,
    size: int,
    out: np.ndarray | None = None,
    cell_centre: CellCentre = None,
) -> np.ndarray:
    """A view's ``[size, size]`` mask sampled straight from ``label_map`` [h, w].

    ``label_map`` stands for its placement on the image ``image_hw`` = (H, W) by its
    ``cell_centre`` (module docstring; h = H, w = W and None is a full-resolution mask). View
    pixel ``(r, c)`` takes the full-resolution pixel that ``crop_resize_mask`` would
    (``nearest-exact`` over the crop ``box``: ``y = y0 + nearest_exact_index(y1 - y0, size)[r]``,
    likewise x) and reads it from the label map at that pixel's cell
    (``cell_grid.cell_index``; ``(floor(y h / H), floor(x w / W))`` for None); ``flip`` mirrors
    the columns. Same dtype as ``label_map``; ``out``: a C-contiguous [size, size] array of that
    dtype to fill.
    """
    H, W = (int(v) for v in image_hw)
    h, w = label_map.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    cy, cx = (None, None) if cell_centre is None else cell_centre
    rows = cell_index(h, H, y0 + nearest_exact_index(y1 - y0, size), cy)
    cols = cell_index(w, W, x0 + nearest_exact_index(x1 - x0, size), cx)
    if flip:
        cols = cols[::-1]
    # columns first, on the small map, then whole rows (3x faster than the other order)
    return label_map.take(cols, axis=1).take(rows, axis=0, out=out)


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10% of the view (BYOL: 23 at 224)."""
    return 2 * int(0.05 * size) + 1


@dataclass
class ViewAugment:
    """One view's pipeline (BYOL's T or T')."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0

    def __post_init__(self) -> None:
        if int(self.size) <= 0:
            raise ValueError(f"CYBORGS.AUG.CROP_SIZE must be positive, got {self.size}")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"CYBORGS.AUG.CROP_SCALE must satisfy 0 < lo <= hi <= 1, got {self.scale}"
            )
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"CYBORGS.AUG.CROP_RATIO must satisfy 0 < lo <= hi, got {self.ratio}")
        if len(self.color_jitter) != 4:
            raise ValueError(
                f"CYBORGS.AUG.COLOR_JITTER must be (brightness, contrast, saturation, hue), "
                f"got {self.color_jitter}"
            )
        for key, p in (
            ("FLIP_PROB", self.flip_prob),
            ("COLOR_JITTER_PROB", self.color_jitter_prob),
            ("GRAYSCALE_PROB", self.grayscale_prob),
            ("BLUR_PROB", self.blur_prob),
            ("SOLARIZE_PROB", self.solarize_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"CYBORGS.AUG.{key} must be a probability in [0, 1], got {p}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")

    def geometry(self, height: int, width: int, rng: np.random.Generator) -> tuple[tuple, bool]:
        box = sample_crop_box(height, width, self.scale, self.ratio, rng)
        flip = bool(rng.random() < self.flip_prob)
        return box, flip

    def draw_photometric(self, rng: np.random.Generator) -> dict:
        """Draw this view's photometric parameters (the record of ``device_augment``).

        Consumes the same draws whatever the outcome, in a fixed order, so the CPU path
        (:meth:`photometric`) and the device path see the same parameters from the same
        generator. ``blur_sigma`` is 0.0 when no blur is drawn (sigma itself is always drawn).
        """
        b, c, s, h = self.color_jitter
        do_jitter = rng.random() < self.color_jitter_prob
        order = rng.permutation(4)
        factors = (
            rng.uniform(max(0.0, 1 - b), 1 + b),
            rng.uniform(max(0.0, 1 - c), 1 + c),
            rng.uniform(max(0.0, 1 - s), 1 + s),
            rng.uniform(-h, h),
        )
        do_gray = rng.random() < self.grayscale_prob
        do_blur = rng.random() < self.blur_prob
        sigma = float(rng.uniform(*self.blur_sigma))
        do_solarize = rng.random() < self.solarize_prob
        return {
            "jitter": bool(do_jitter),
            "order": [int(i) for i in order],
            "factors": [float(f) for f in factors],
            "grayscale": bool(do_gray),
            "blur_sigma": sigma if do_blur else 0.0,
            "blur_kernel": blur_kernel_size(int(self.size)),
            "solarize": bool(do_solarize),
        }

    @staticmethod
    def apply_photometric(image: torch.Tensor, params: dict) -> torch.Tensor:
        """torchvision's per-image ops on uint8[3,S,S] with drawn ``params`` (the CPU path)."""
        if params["jitter"]:
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            for i in params["order"]:
                image = ops[i](image, params["factors"][i])
        if params["grayscale"]:
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if params["blur_sigma"] > 0:
            k, sigma = params["blur_kernel"], params["blur_sigma"]
            image = TF.gaussian_blur(image, [k, k], [sigma, sigma])
        if params["solarize"]:
            image = TF.solarize(image, 128)
        return image

    def photometric(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Image-only ops on uint8[3,S,S]; consumes the same draws whatever the outcome."""
        return self.apply_photometric(image, self.draw_photometric(rng))

    def __call__(
        self,
        image: torch.Tensor,
        mask: np.ndarray | torch.Tensor,
        rng: np.random.Generator,
        photometric_on_device: bool = False,
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        cell_centre: CellCentre = None,
    ) -> dict:
        """One view of image uint8[3,H,W] + mask -> the DESIGN.md view dict.

        ``mask``: a label map [h, w] of the image (ids < 256; h = H, w = W at full resolution,
        lower for a stored map placed by ``cell_centre``, see the module docstring). The
        view's mask is uint8 when the
        label map is uint8 and ``photometric_on_device`` (an eighth of the bytes to pass from
        a loader worker), int64 otherwise.

        ``photometric_on_device``: draw the photometric parameters (same draws) but do not
        apply them; the view dict then carries them as ``"photometric"`` and its ``"image"``
        is the geometric view only (``device_augment.apply_photometric`` finishes it).

        ``out``: (image uint8[3,S,S], mask [S,S] of the label map's dtype, box float32[4])
        tensors to write the view into (``TwoViewAugment``'s per-sample block); the view dict
        then holds them.
        """
        H, W = image.shape[-2:]
        size = int(self.size)
        img_out, mask_out, box_out = out if out is not None else (None, None, None)
        box, flip = self.geometry(H, W, rng)
        img = crop_resize_image(image, box, flip, size, photometric_on_device, out=img_out)
        label_map = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if mask_out is not None:
            crop_resize_label_map(
                label_map, (H, W), box, flip, size, out=mask_out.numpy(), cell_centre=cell_centre
            )
            m = mask_out
        else:
            m = crop_resize_label_map(label_map, (H, W), box, flip, size, cell_centre=cell_centre)
            m = torch.from_numpy(m)
        if not (photometric_on_device and m.dtype == torch.uint8):
            m = m.long()
        if box_out is not None:
            box_out.numpy()[:] = box
            box_t = box_out
        else:
            box_t = torch.tensor(box, dtype=torch.float32)
        view = {"box": box_t, "flip": flip}
        if photometric_on_device:
            view["photometric"] = self.draw_photometric(rng)
        else:
            img = self.photometric(img, rng)
        view["image"] = img.contiguous()
        view["mask"] = m.contiguous()
        return view


class TwoViewAugment:
    """BYOL's asymmetric pair (T, T'): blur 1.0 / 0.1 and solarize 0.0 / 0.2 by default.

    ``photometric_on_device``: the views carry their drawn photometric parameters instead of
    having them applied (CYBORGS.AUG.DEVICE; the model applies them batched, see
    ``device_augment``). Both settings draw the same numbers from the same generator.
    """

    def __init__(
        self, view1: ViewAugment, view2: ViewAugment, photometric_on_device: bool = False
    ) -> None:
        if view1.size != view2.size:
            raise ValueError(f"both views must have the same size, got {view1.size} / {view2.size}")
        self.views = (view1, view2)
        self.photometric_on_device = bool(photometric_on_device)

    @classmethod
    def from_config(cls, cfg) -> TwoViewAugment:
        a = cfg.CYBORGS.AUG  # validated: BLUR_PROB / SOLARIZE_PROB hold (view 1, view 2)
        common = dict(
            size=int(a.CROP_SIZE),
            scale=tuple(a.CROP_SCALE),
            ratio=tuple(a.CROP_RATIO),
            flip_prob=float(a.FLIP_PROB),
            color_jitter=tuple(a.COLOR_JITTER),
            color_jitter_prob=float(a.COLOR_JITTER_PROB),
            grayscale_prob=float(a.GRAYSCALE_PROB),
        )
        return cls(
            ViewAugment(**common, blur_prob=a.BLUR_PROB[0], solarize_prob=a.SOLARIZE_PROB[0]),
            ViewAugment(**common, blur_prob=a.BLUR_PROB[1], solarize_prob=a.SOLARIZE_PROB[1]),
            photometric_on_device=device_augment_enabled(cfg),
        )

    def __call__(
        self,
        image: np.ndarray | torch.Tensor,
        mask: np.ndarray | torch.Tensor,
        rng: np.random.Generator,
        *,
        low_res_mask: bool = False,
        cell_centre: CellCentre = None,
    ) -> list[dict]:
        """Two views of ``image`` (uint8 [H,W,3] HWC ndarray or [3,H,W] tensor, RGB) and ``mask``.

        ``mask``: ids < 256, [H, W]; with ``low_res_mask``, a label map [h, w] of any size that
        stands for its placement on (H, W) by ``cell_centre`` (the mask store's rule, module
        docstring; None: nearest upsampling), cropped and resampled per view without building
        the full-resolution map (same view masks).
        """
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
            if not image.flags.c_contiguous:
                image = np.ascontiguousarray(image)
            with warnings.catch_warnings():
                # PIL-backed arrays are read-only; the image is only read (cropped, resampled
                # into new tensors), so it is shared, not copied.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                image = torch.from_numpy(image).permute(2, 0, 1)
        if image.dtype != torch.uint8:
            raise TypeError(f"image must be uint8, got {image.dtype}")
        mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if low_res_mask:
            if mask.ndim != 2 or min(mask.shape) < 1:
                raise ValueError(f"low-resolution mask must be [h, w], got shape {mask.shape}")
        elif tuple(mask.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal the image's (H, W) = "
                f"{tuple(image.shape[-2:])}"
            )
        outs = [None, None]
        if self.photometric_on_device and mask.dtype == np.uint8:
            outs = _view_block(int(self.views[0].size))
        return [
            view(image, mask, rng, self.photometric_on_device, out, cell_centre)
            for view, out in zip(self.views, outs, strict=True)
        ]


def _view_block(size: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per view (image uint8[3,S,S], mask uint8[S,S], box float32[4]): views into one new
    uint8 block of 8 S^2 + 32 bytes (images, masks, then the boxes; 8 S^2 is a multiple of 4,
    so the boxes are float32-aligned). A DataLoader worker hands a sample's tensors over in
    shared memory, one segment per storage: one block instead of six storages cut the worker's
    CPU for that by about 0.8 ms a sample (``benchmarks/dataloader.py``)."""
    n = size * size
    block = torch.empty(8 * n + 32, dtype=torch.uint8)
    images = block[: 6 * n].view(2, 3, size, size)
    masks = block[6 * n : 8 * n].view(2, size, size)
    boxes = block[8 * n :].view(torch.float32).view(2, 4)
    return [(images[v], masks[v], boxes[v]) for v in range(2)]
