"""Hungarian-matched mIoU of cluster maps against ground truth, hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cyborgs.bootstrap.quality import MaskQuality, image_iou, image_miou, match_clusters


def test_perfect_relabelled_prediction_is_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (12, 9)).astype(np.uint8)
    perm = np.array([17, 3, 250, 8, 0], np.uint8)
    pred = perm[gt]
    assert image_miou(pred, gt) == pytest.approx(1.0)
    assert match_clusters(pred, gt) == {17: 0, 3: 1, 250: 2, 8: 3, 0: 4}


def test_known_overlaps():
    gt = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[5, 5, 5, 7]], np.uint8)
    # 5 -> class 0 (2 px), 7 -> class 1 (1 px). IoU0 = 2/(2+1+0); IoU1 = 1/(1+0+1).
    assert image_iou(pred, gt) == {0: (2, 1, 0), 1: (1, 0, 1)}
    assert image_miou(pred, gt) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_fewer_clusters_than_classes_and_unmatched_clusters():
    gt = np.array([[0, 0, 1, 1, 2, 2]], np.uint8)
    one = np.zeros_like(gt)  # K = 1: only one class can be matched
    # best match: any class with 2 px -> IoU 2/6, the other two 0
    assert image_miou(one, gt) == pytest.approx((2 / 6) / 3)
    over = np.array([[0, 1, 2, 3, 4, 5]], np.uint8)  # 6 clusters, 3 classes
    assert image_miou(over, gt) == pytest.approx(0.5)  # each class: 1 TP, 0 FP, 1 FN


def test_ignore_index_is_left_out():
    gt = np.array([[0, 255, 1, 255]], np.uint8)
    pred = np.array([[3, 4, 4, 3]], np.uint8)
    assert image_miou(pred, gt) == pytest.approx(1.0)
    assert np.isnan(image_miou(pred, np.full_like(gt, 255)))
    with pytest.raises(ValueError, match="shape"):
        image_miou(pred, gt[:, :2])


def test_accumulator_dataset_and_per_image_summaries():
    q = MaskQuality()
    gt1 = np.array([[0, 0, 1, 1]], np.uint8)
    q.update(np.array([[5, 5, 5, 7]], np.uint8), gt1)  # per image 7/12
    q.update(gt1.copy(), gt1)  # per image 1
    out = q.compute()
    assert out["images"] == 2
    assert out["miou_per_image"] == pytest.approx((7 / 12 + 1) / 2)
    # class 0: TP 2+2, FP 1, FN 0 -> 4/5; class 1: TP 1+2, FP 0, FN 1 -> 3/4
    assert out["miou"] == pytest.approx((4 / 5 + 3 / 4) / 2)


def test_matching_maximises_total_overlap_not_each_clusters_best_class():
    gt = np.array([[0, 0, 0, 0, 0, 1, 1]], np.uint8)
    pred = np.array([[8, 8, 8, 9, 9, 8, 8]], np.uint8)
    # Overlaps: cluster 8 has 3 px of class 0 and 2 of class 1; cluster 9 has 2 px of class 0.
    # Greedy (8 -> its best class 0) would match 3 px and leave class 1 empty: mIoU
    # (3/7 + 0) / 2. One-to-one maximum: 8 -> 1 and 9 -> 0, 2 + 2 = 4 px.
    # class 0: TP 2 (cluster 9), FP 0, FN 3 -> 2/5; class 1: TP 2, FP 3 (cluster 8's class-0
    # pixels), FN 0 -> 2/5.
    assert match_clusters(pred, gt) == {8: 1, 9: 0}
    assert image_iou(pred, gt) == {0: (2, 0, 3), 1: (2, 3, 0)}
    assert image_miou(pred, gt) == pytest.approx(0.4)
