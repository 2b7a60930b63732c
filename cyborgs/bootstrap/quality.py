"""Mask quality against ground truth: mIoU after Hungarian matching of clusters to classes.

Protocol. Unsupervised segmentation papers (PiCIE, STEGO) match cluster ids to classes once
for the whole data set, which presumes ids mean the same thing in every image. Bootstrapped ids
do not: each group of 16 images has its own k-means, with its own K. So the matching is done
PER IMAGE: the confusion matrix of (cluster, class) pixel counts is matched one-to-one with
``scipy.optimize.linear_sum_assignment`` maximising matched pixels; a class left without a
cluster (K below the number of classes) has IoU 0, and the pixels of unmatched clusters count
against the classes they cover (false negatives). Over-segmentation (K up to 256) is thereby
penalised, which is intended: the number reports how well the masks align with semantics.

Two summaries: ``miou`` accumulates per-class TP/FP/FN over all images (after each image's
matching) and averages the classes' IoU (the usual data-set mIoU); ``miou_per_image`` is the
mean of every image's mean over the classes present in its ground truth. Pixels labelled
``ignore_index`` in the ground truth are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from cyborgs.masks.store import MaskStore

__all__ = ["match_clusters", "image_iou", "image_miou", "MaskQuality", "ground_truth_quality"]

# Images scored per round by ground_truth_quality: enough for a stable number, cheap next to
# the round itself. (A config key BOOTSTRAP.QUALITY_IMAGES would make it tunable.)
QUALITY_MAX_IMAGES = 500

# quality_fn(store, round_id) -> {"miou": float, ...} or None
QualityFn = Callable[["MaskStore", int], "dict | None"]


def _confusion(pred: np.ndarray, gt: np.ndarray, ignore_index: int | None):
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    p, g = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    g_ids, g_inv = np.unique(g, return_inverse=True)
    conf = np.zeros((len(p_ids), len(g_ids)), np.int64)
    np.add.at(conf, (p_inv, g_inv), 1)
    return conf, p_ids, g_ids


def match_clusters(pred: np.ndarray, gt: np.ndarray, ignore_index: int | None = 255):
    """One-to-one cluster -> class matching maximising overlapping pixels: {cluster: class}."""
    conf, p_ids, g_ids = _confusion(pred, gt, ignore_index)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    return {int(p_ids[r]): int(g_ids[c]) for r, c in zip(rows, cols, strict=True)}


def image_iou(
    pred: np.ndarray, gt: np.ndarray, ignore_index: int | None = 255
) -> dict[int, tuple[int, int, int]]:
    """Per ground-truth class present: (TP, FP, FN) after this image's Hungarian matching."""
    conf, _, g_ids = _confusion(pred, gt, ignore_index)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    pred_area = conf.sum(1)
    gt_area = conf.sum(0)
    out = {int(c): (0, 0, int(gt_area[j])) for j, c in enumerate(g_ids)}
    for r, j in zip(rows, cols, strict=True):
        tp = int(conf[r, j])
        out[int(g_ids[j])] = (tp, int(pred_area[r]) - tp, int(gt_area[j]) - tp)
    return out


def image_miou(pred: np.ndarray, gt: np.ndarray, ignore_index: int | None = 255) -> float:
    """Mean IoU over the classes present in ``gt`` (NaN when every pixel is ignored)."""
    stats = image_iou(pred, gt, ignore_index)
    return _mean_iou(stats) if stats else float("nan")


def _mean_iou(stats: dict) -> float:
    return float(np.mean([tp / (tp + fp + fn) for tp, fp, fn in stats.values()]))


class MaskQuality:
    """Accumulates ``image_iou`` over images; ``compute`` gives both summaries."""

    def __init__(self, ignore_index: int | None = 255):
        self.ignore_index = ignore_index
        self._totals: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(3, np.int64))
        self._per_image: list[float] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        stats = image_iou(pred, gt, self.ignore_index)
        if not stats:
            return
        for c, v in stats.items():
            self._totals[c] += np.asarray(v)
        self._per_image.append(_mean_iou(stats))

    def compute(self) -> dict[str, float]:
        if not self._per_image:
            return {"miou": float("nan"), "miou_per_image": float("nan"), "images": 0}
        ious = [t[0] / t.sum() for t in self._totals.values() if t.sum() > 0]
        return {
            "miou": float(np.mean(ious)),
            "miou_per_image": float(np.mean(self._per_image)),
            "images": len(self._per_image),
        }


def ground_truth_quality(dataset_name: str, dicts: Sequence[dict]) -> QualityFn | None:
    """``quality(store, round_id) -> MaskQuality.compute()`` of a bootstrapped round against the
    semantic maps of ``dataset_name``'s labeled twin (at most ``QUALITY_MAX_IMAGES`` images,
    evenly spaced; images the round skipped are left out), or None without a twin or without
    annotated images."""
    from cyborgs.masks.ground_truth import labeled_twin, match_labeled, semantic_map

    twin = labeled_twin(dataset_name)
    if twin is None:
        return None
    from detectron2.data import DatasetCatalog

    pairs = match_labeled(list(dicts), DatasetCatalog.get(twin))
    pairs = [(u, lab) for u, lab in pairs if lab.get("annotations")]
    if not pairs:
        return None
    step = max(1, len(pairs) // QUALITY_MAX_IMAGES)
    pairs = pairs[::step][:QUALITY_MAX_IMAGES]

    def quality(store: MaskStore, round_id: int) -> dict:
        q = MaskQuality()
        for u, lab in pairs:
            if not store.has(u["image_id"], round_id):
                continue  # a bad image the round skipped (named in its manifest)
            gt = semantic_map(lab)
            q.update(store.read(u["image_id"], out_hw=gt.shape, round_id=round_id), gt)
        return q.compute()

    return quality
