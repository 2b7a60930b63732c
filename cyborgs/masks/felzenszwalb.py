"""The "felzenszwalb" mask source: Felzenszwalb-Huttenlocher graph segments (DetCon, Fig. 5a).

DetCon uses scale 1000 and min_size 1000 on COCO-sized images. Both parameters are areas in
effect (the merge threshold is scale / |component|; min_size counts pixels), so they are scaled
by the image area relative to 640x480: a small or downsized image gets the same segmentation
granularity as at COCO size. Segment ids are ranked by size (largest = 0); if an image has more
than 256 segments, the 255 largest keep their own id and all smaller ones share id 255 (the
merged remainder is a few small, possibly disconnected pieces; the contrastive loss samples ids,
so a rare shared id costs less than dropping pixels). Computed once per data set and cached
(``precompute.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .precompute import cached_mask_source
from .registry import MASK_SOURCE_REGISTRY, precomputed

__all__ = ["felzenszwalb_mask", "cap_ids_by_size", "FelzenszwalbMaskSource"]

_COCO_AREA = 640 * 480


def cap_ids_by_size(segments: np.ndarray, max_ids: int = 256) -> np.ndarray:
    """Relabel segments by decreasing size (0 = largest); segments beyond ``max_ids - 1``
    share the last id. Returns uint8."""
    ids, counts = np.unique(segments.ravel(), return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    lut = np.full(int(ids.max()) + 1, max_ids - 1, dtype=np.int64)
    lut[order[: max_ids - 1]] = np.arange(min(len(order), max_ids - 1))
    return lut[segments].astype(np.uint8)


def felzenszwalb_mask(
    image: np.ndarray, scale: float = 1000.0, min_size: int = 1000, sigma: float = 0.8
) -> np.ndarray:
    """uint8 [H, W] segment ids of an RGB image, parameters given at 640x480 and area-scaled."""
    from skimage.segmentation import felzenszwalb

    h, w = image.shape[:2]
    f = h * w / _COCO_AREA
    seg = felzenszwalb(
        image, scale=float(scale) * f, sigma=float(sigma), min_size=max(1, round(min_size * f))
    )
    return cap_ids_by_size(seg)


class _Compute:  # picklable callable for loader workers
    def __init__(self, scale: float, min_size: int, sigma: float):
        self.scale, self.min_size, self.sigma = scale, min_size, sigma

    def __call__(self, item: dict) -> np.ndarray:
        from cyborgs.data.image_io import read_image

        # no aspect limit: the cache serves any CYBORGS.DATA.MAX_ASPECT_RATIO (precompute.py)
        img = read_image(item["file_name"], max_aspect_ratio=0)
        return felzenszwalb_mask(img, self.scale, self.min_size, self.sigma)


class FelzenszwalbMaskSource:
    @classmethod
    def from_config(cls, cfg, dataset_name: str):
        from detectron2.data import DatasetCatalog

        m = cfg.CYBORGS.MASKS
        params = {"scale": m.FH_SCALE, "min_size": m.FH_MIN_SIZE, "sigma": m.FH_SIGMA}
        return cached_mask_source(
            cfg,
            dataset_name,
            "felzenszwalb",
            params,
            _Compute(float(m.FH_SCALE), int(m.FH_MIN_SIZE), float(m.FH_SIGMA)),
            lambda: DatasetCatalog.get(dataset_name),
        )


@MASK_SOURCE_REGISTRY.register()
@precomputed
def felzenszwalb(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    """``CYBORGS.MASKS.SOURCE: felzenszwalb``. Felzenszwalb-Huttenlocher segments
    (``CYBORGS.MASKS.FH_*``), computed once per data set and cached.
    """
    return FelzenszwalbMaskSource.from_config(cfg, dataset_name)
