"""The "ground_truth" mask source (the oracle of Fig. 5a) and ground-truth rasterisation.

The pretraining set is unlabeled (``*_unlabeled``); its annotations come from the LABELED TWIN:
``MetadataCatalog.get(name).labeled_twin`` when set, else the name without ``_unlabeled``
(``demo_coco_2017_train_unlabeled`` -> ``demo_coco_2017_train``). Images are matched by
``image_id``, falling back to the file's base name.

Rasterisation: instances are painted from the largest to the smallest, so where COCO polygons
overlap the smaller (usually nearer) object stays visible. ``instance_map``: background 0, each
visible instance its own id (crowd regions included: they are objects), the 255 largest
instances at most (smaller ones beyond that vanish into what lies below them; COCO's maximum is
about 90). ``semantic_map``: background 0, ``contiguous category + 1``, crowd regions 255
(ignored by the quality metric). The instance maps are computed once per data set and cached
(``precompute.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .precompute import cached_mask_source
from .registry import MASK_SOURCE_REGISTRY, precomputed
from .store import upsample_nearest

__all__ = [
    "labeled_twin",
    "match_labeled",
    "annotation_masks",
    "instance_map",
    "semantic_map",
    "GroundTruthMaskSource",
]

IGNORE = 255


def labeled_twin(dataset_name: str) -> str | None:
    """Name of the labeled data set with the same images, or None when there is none."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    twin = MetadataCatalog.get(dataset_name).get("labeled_twin", None)
    if twin is None and dataset_name.endswith("_unlabeled"):
        twin = dataset_name[: -len("_unlabeled")]
    if twin is None:
        # A labeled set is its own twin.
        twin = dataset_name
    return twin if twin in DatasetCatalog.list() else None


def match_labeled(unlabeled: list[dict], labeled: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs (unlabeled dict, labeled dict) of the same image (by image_id, else base name)."""
    by_id = {d["image_id"]: d for d in labeled}
    by_name = {os.path.basename(d["file_name"]): d for d in labeled}
    out = []
    for u in unlabeled:
        lab = by_id.get(u["image_id"]) or by_name.get(os.path.basename(u["file_name"]))
        if lab is not None:
            out.append((u, lab))
    return out


def annotation_masks(labeled: dict) -> list[tuple[np.ndarray, dict]]:
    """(bool [H, W] mask, annotation) of every annotation with a segmentation, at the
    labeled dict's height x width, largest first."""
    from pycocotools import mask as mask_util

    h, w = int(labeled["height"]), int(labeled["width"])
    out = []
    for ann in labeled.get("annotations", []):
        seg = ann.get("segmentation")
        if not seg:
            continue
        if isinstance(seg, list):  # polygons
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                continue
            rle = mask_util.merge(mask_util.frPyObjects(polys, h, w))
        elif isinstance(seg, dict):  # RLE, compressed or not
            rle = mask_util.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        else:
            raise ValueError(
                f"{labeled.get('file_name')}: unsupported segmentation type {type(seg).__name__}"
            )
        m = mask_util.decode(rle).astype(bool)
        if m.ndim == 3:
            m = m.any(-1)
        out.append((m, ann))
    out.sort(key=lambda t: -int(t[0].sum()))
    return out


def _fit(label_map: np.ndarray, out_hw: tuple[int, int] | None) -> np.ndarray:
    return label_map if out_hw is None else upsample_nearest(label_map, out_hw)


def instance_map(labeled: dict, out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """uint8: background 0, visible instance i (largest first) id i+1, at most 255 ids."""
    lm = np.zeros((int(labeled["height"]), int(labeled["width"])), np.uint8)
    for i, (m, _) in enumerate(annotation_masks(labeled)[:255]):
        lm[m] = i + 1
    return _fit(lm, out_hw)


def semantic_map(labeled: dict, out_hw: tuple[int, int] | None = None) -> np.ndarray:
    """uint8: background 0, contiguous category id + 1 of the visible instance, crowd 255."""
    lm = np.zeros((int(labeled["height"]), int(labeled["width"])), np.uint8)
    masks = annotation_masks(labeled)
    for m, ann in masks:  # crowd first, so real instances on top of a crowd region win
        if ann.get("iscrowd", 0):
            lm[m] = IGNORE
    for m, ann in masks:
        if not ann.get("iscrowd", 0):
            cat = int(ann["category_id"]) + 1
            if cat >= IGNORE:
                raise ValueError(f"category_id {cat - 1} does not fit a uint8 semantic map")
            lm[m] = cat
    return _fit(lm, out_hw)


class _Compute:  # picklable callable for loader workers
    def __call__(self, item: dict) -> np.ndarray:
        return instance_map(item["labeled"])


def _gt_items(dataset_name: str) -> list[dict[str, Any]]:
    from detectron2.data import DatasetCatalog

    twin = labeled_twin(dataset_name)
    if twin is None:
        raise KeyError(
            f"mask source 'ground_truth': data set {dataset_name!r} has no labeled twin (set "
            "MetadataCatalog.get(name).labeled_twin, or name it '<labeled>_unlabeled')"
        )
    pairs = match_labeled(DatasetCatalog.get(dataset_name), DatasetCatalog.get(twin))
    if not pairs:
        raise ValueError(f"no image of {dataset_name!r} was found in its labeled twin {twin!r}")
    return [{"image_id": u["image_id"], "labeled": lab} for u, lab in pairs]


class GroundTruthMaskSource:
    @classmethod
    def from_config(cls, cfg, dataset_name: str):
        twin = labeled_twin(dataset_name)
        return cached_mask_source(
            cfg,
            dataset_name,
            "ground_truth",
            {"twin": twin},
            _Compute(),
            lambda: _gt_items(dataset_name),
        )


@MASK_SOURCE_REGISTRY.register()
@precomputed
def ground_truth(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    """``CYBORGS.MASKS.SOURCE: ground_truth``. Instance masks of the data set's labeled twin (an
    upper bound), cached.
    """
    return GroundTruthMaskSource.from_config(cfg, dataset_name)
