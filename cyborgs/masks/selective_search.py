"""The "selective_search" mask source: object-proposal boxes painted as masks (Fig. 5a).

Proposals come from OpenCV's selective search (``cv2.ximgproc``, "fast" mode) when present.
``opencv-python-headless`` (our requirement) lacks the contrib module ``ximgproc``; installing
``opencv-contrib-python-headless`` instead enables it. Without it a built-in selective search
is used (Uijlings et al. 2013, single strategy): Felzenszwalb regions (scale 100 at 640x480,
area-scaled), hierarchical grouping of adjacent regions by colour-histogram + size + fill
similarity (the texture term is left out), every region of the hierarchy a box, ranked by
hierarchy position times a random factor (seeded by the image id, so results are reproducible).

Boxes are filtered (area 1%..90% of the image, aspect ratio <= 4, near-duplicates with IoU > 0.7
removed), the ``MAX_BOXES`` best kept and painted from the largest to the smallest: mask id
i + 1 for box i, 0 where no box lies. Computed once per data set and cached (``precompute.py``).
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .precompute import cached_mask_source
from .registry import MASK_SOURCE_REGISTRY, precomputed

__all__ = ["selective_search_boxes", "boxes_to_mask", "selective_search_mask", "HAS_XIMGPROC"]

MAX_BOXES = 32
_COCO_AREA = 640 * 480


def _has_ximgproc() -> bool:
    try:
        import cv2

        return hasattr(cv2, "ximgproc")
    except ImportError:
        return False


HAS_XIMGPROC = _has_ximgproc()


def _colour_hist(pixels: np.ndarray) -> np.ndarray:
    # 25 bins per RGB channel, L1-normalised (Uijlings' colour similarity).
    h = np.concatenate([np.bincount(pixels[:, c] * 25 // 256, minlength=25) for c in range(3)])
    return h / max(h.sum(), 1)


def _builtin_boxes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    H, W = image.shape[:2]
    f = H * W / _COCO_AREA
    seg = felzenszwalb(image, scale=100.0 * f, sigma=0.8, min_size=max(1, round(50 * f)))
    n = int(seg.max()) + 1
    ys, xs = np.mgrid[:H, :W]
    flat = seg.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    box = np.stack(
        [np.full(n, W), np.full(n, H), np.zeros(n), np.zeros(n)],  # fmt: skip
        1,
    ).astype(np.float64)
    np.minimum.at(box[:, 0], flat, xs.ravel())
    np.minimum.at(box[:, 1], flat, ys.ravel())
    np.maximum.at(box[:, 2], flat, xs.ravel() + 1)
    np.maximum.at(box[:, 3], flat, ys.ravel() + 1)
    pix = image.reshape(-1, 3).astype(np.int64)
    order = np.argsort(flat, kind="stable")
    bounds = np.r_[0, np.cumsum(size).astype(np.int64)]
    hist = {i: _colour_hist(pix[order[bounds[i] : bounds[i + 1]]]) for i in range(n) if size[i] > 0}
    regions: dict[int, dict[str, Any]] = {
        i: {"size": size[i], "box": box[i], "hist": hist[i], "level": 0} for i in hist
    }
    # Adjacent pairs from horizontal and vertical neighbours.
    pairs = set()
    for a, b in ((seg[:, :-1], seg[:, 1:]), (seg[:-1, :], seg[1:, :])):
        d = a != b
        lo, hi = np.minimum(a[d], b[d]), np.maximum(a[d], b[d])
        pairs.update(zip(lo.tolist(), hi.tolist(), strict=True))
    im_size = float(H * W)

    def sim(i: int, j: int) -> float:
        ri, rj = regions[i], regions[j]
        bb = np.r_[
            np.minimum(ri["box"][:2], rj["box"][:2]), np.maximum(ri["box"][2:], rj["box"][2:])
        ]
        bb_area = (bb[2] - bb[0]) * (bb[3] - bb[1])
        s_col = np.minimum(ri["hist"], rj["hist"]).sum()
        s_size = 1.0 - (ri["size"] + rj["size"]) / im_size
        s_fill = 1.0 - (bb_area - ri["size"] - rj["size"]) / im_size
        return float(s_col + s_size + s_fill)

    # Greedy grouping with a max-heap of pair similarities; pairs touching a merged region
    # are dropped lazily when popped (O(E log E) instead of rescanning all pairs per merge).
    nbrs: dict[int, set[int]] = {i: set() for i in regions}
    for i, j in pairs:
        nbrs[i].add(j)
        nbrs[j].add(i)
    heap = [(-sim(i, j), i, j) for i, j in pairs]
    heapq.heapify(heap)
    alive = set(regions)
    nxt = n
    while heap:
        _, i, j = heapq.heappop(heap)
        if i not in alive or j not in alive:
            continue
        ri, rj = regions[i], regions[j]
        s = ri["size"] + rj["size"]
        regions[nxt] = {
            "size": s,
            "box": np.r_[
                np.minimum(ri["box"][:2], rj["box"][:2]), np.maximum(ri["box"][2:], rj["box"][2:])
            ],
            "hist": (ri["hist"] * ri["size"] + rj["hist"] * rj["size"]) / s,
            "level": max(ri["level"], rj["level"]) + 1,
        }
        alive -= {i, j}
        new_nbrs = (nbrs.pop(i) | nbrs.pop(j)) - {i, j}
        nbrs[nxt] = new_nbrs
        for m in new_nbrs:
            nbrs[m] -= {i, j}
            nbrs[m].add(nxt)
            heapq.heappush(heap, (-sim(m, nxt), m, nxt))
        alive.add(nxt)
        nxt += 1
    # Rank: newer (higher in the hierarchy) regions first, jittered (Uijlings: position x rnd).
    ids = np.array(sorted(regions))
    pos = (ids.max() - ids + 1).astype(np.float64)
    order = ids[np.argsort(pos * rng.random(len(ids)), kind="stable")]
    return np.array([regions[i]["box"] for i in order], dtype=np.float64).reshape(-1, 4)


def _opencv_boxes(image: np.ndarray) -> np.ndarray:
    import cv2

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV wants BGR
    ss.switchToSelectiveSearchFast()
    rects = ss.process().astype(np.float64)  # x, y, w, h, ranked
    return np.c_[rects[:, :2], rects[:, :2] + rects[:, 2:]]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:2], b[:, :2])
    rb = np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def selective_search_boxes(
    image: np.ndarray, seed: int = 0, max_boxes: int = MAX_BOXES, use_opencv: bool | None = None
) -> np.ndarray:
    """Filtered proposals [n <= max_boxes, 4] (x0, y0, x1, y1), best first."""
    use_opencv = HAS_XIMGPROC if use_opencv is None else use_opencv
    raw = _opencv_boxes(image) if use_opencv else _builtin_boxes(image, np.random.default_rng(seed))
    H, W = image.shape[:2]
    wh = raw[:, 2:] - raw[:, :2]
    area = wh.prod(1) / (H * W)
    aspect = np.maximum(wh[:, 0], wh[:, 1]) / np.maximum(np.minimum(wh[:, 0], wh[:, 1]), 1e-6)
    cand = raw[(area >= 0.01) & (area <= 0.9) & (aspect <= 4.0)]
    keep: list[np.ndarray] = []
    for b in cand:
        if len(keep) == max_boxes:
            break
        if not keep or _iou(b, np.stack(keep)).max() <= 0.7:
            keep.append(b)
    return np.stack(keep) if keep else np.zeros((0, 4))


def boxes_to_mask(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Paint boxes largest first: id i + 1 for the i-th largest box, 0 elsewhere (uint8)."""
    if len(boxes) > 255:
        raise ValueError(f"at most 255 boxes fit a uint8 mask, got {len(boxes)}")
    lm = np.zeros(hw, np.uint8)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i, k in enumerate(np.argsort(-areas, kind="stable")):
        x0, y0, x1, y1 = np.round(boxes[k]).astype(int)
        lm[max(y0, 0) : y1, max(x0, 0) : x1] = i + 1
    return lm


def selective_search_mask(image: np.ndarray, seed: int = 0) -> np.ndarray:
    return boxes_to_mask(selective_search_boxes(image, seed), image.shape[:2])


class _Compute:  # picklable callable for loader workers
    def __call__(self, item: dict) -> np.ndarray:
        from cyborgs.data.image_io import read_image

        # no aspect limit: the cache serves any CYBORGS.DATA.MAX_ASPECT_RATIO (precompute.py)
        img = read_image(item["file_name"], max_aspect_ratio=0)
        seed = int(hashlib.md5(os.fsencode(str(item["image_id"]))).hexdigest()[:8], 16)
        return selective_search_mask(img, seed)


class SelectiveSearchMaskSource:
    @classmethod
    def from_config(cls, cfg, dataset_name: str):
        from detectron2.data import DatasetCatalog

        params = {"impl": "opencv" if HAS_XIMGPROC else "builtin", "max_boxes": MAX_BOXES}
        return cached_mask_source(
            cfg,
            dataset_name,
            "selective_search",
            params,
            _Compute(),
            lambda: DatasetCatalog.get(dataset_name),
        )


@MASK_SOURCE_REGISTRY.register()
@precomputed
def selective_search(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    """``CYBORGS.MASKS.SOURCE: selective_search``. Selective-search boxes painted into a label map,
    computed once per data set and cached (OpenCV's ximgproc when present, else a built-in
    search).
    """
    return SelectiveSearchMaskSource.from_config(cfg, dataset_name)
