"""faster-coco-eval reports the same COCO / LVIS metrics as pycocotools / lvis-api.

The references are detectron2's own calls of the official APIs (``use_fast_impl=False``:
pycocotools' Python COCOeval; lvis-api's LVISResults + LVISEval), i.e. what
``TRANSFER.EVAL_BACKEND official`` runs. Ground truth and predictions are built here: boxes and
elliptic masks of all three COCO size classes, crowd regions with detections inside them,
images without ground truth but with detections, images with ground truth and no detections,
and for LVIS negative / not-exhaustive category lists, r/c/f categories and detections on
categories an image has no label for (which LVIS ignores).
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.evaluation.lvis_evaluation import _evaluate_predictions_on_lvis
from detectron2.structures import Boxes, Instances
from lvis import LVIS
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from cyborgs.transfer.config import add_transfer_config
from cyborgs.transfer.evaluators import build_evaluator
from cyborgs.transfer.faster_eval import (
    COCO_METRICS,
    LVIS_METRICS,
    FasterCOCOEvaluator,
    FasterLVISEvaluator,
    _faster_coco,
    evaluate_coco_faster,
    evaluate_lvis_faster,
    limit_dets_per_image,
)

COCO_CAT_IDS = [1, 3, 4, 7, 10, 13, 20, 25]  # not contiguous, as COCO's are not
LVIS_FREQ = ["r", "r", "c", "c", "c", "f", "f", "f"]
TOL = 1e-4  # on metrics x 100, as the evaluators report them


def _ellipse(h: int, w: int, box) -> np.ndarray:
    x, y, bw, bh = box
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = x + bw / 2, y + bh / 2
    return (((xx + 0.5 - cx) / (bw / 2)) ** 2 + ((yy + 0.5 - cy) / (bh / 2)) ** 2 <= 1).astype(
        np.uint8
    )


def _polygon(box, n: int = 16) -> list[float]:
    x, y, bw, bh = box
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([x + bw / 2 + bw / 2 * np.cos(t), y + bh / 2 + bh / 2 * np.sin(t)], 1)
    return [float(v) for v in pts.reshape(-1)]


def _rle(mask: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(mask))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def _box(rng, h: int, w: int) -> list[float]:
    # Log-uniform side lengths: areas in all of COCO's small (< 32^2), medium and large
    # (> 96^2) ranges on these image sizes.
    bw = float(np.exp(rng.uniform(np.log(4), np.log(0.9 * w))))
    bh = float(np.exp(rng.uniform(np.log(4), np.log(0.9 * h))))
    return [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh]


def _jitter(rng, box, h: int, w: int, s: float) -> list[float]:
    x, y, bw, bh = box
    x = float(np.clip(x + rng.normal(0, s * bw), 0, w - 2))
    y = float(np.clip(y + rng.normal(0, s * bh), 0, h - 2))
    bw = float(np.clip(bw * math.exp(rng.normal(0, s)), 2, w - x))
    bh = float(np.clip(bh * math.exp(rng.normal(0, s)), 2, h - y))
    return [x, y, bw, bh]


def make_case(seed: int, lvis: bool, n_images: int = 36, ties: bool = False):
    """(ground-truth json dict, results in COCO result format with dataset category ids)."""
    rng = np.random.default_rng(seed)
    cat_ids = list(range(1, 9)) if lvis else COCO_CAT_IDS
    cats = [{"id": c, "name": f"c{c}"} for c in cat_ids]
    if lvis:
        for c, f in zip(cats, LVIS_FREQ, strict=True):
            c["frequency"] = f
    images, anns, results = [], [], []
    for i in range(n_images):
        img_id = 100 + 3 * i
        h, w = int(rng.integers(96, 260)), int(rng.integers(96, 260))
        img = {"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.jpg"}
        no_gt, no_dt = i % 9 == 0, i % 9 == 4
        gts = []
        for _ in range(0 if no_gt else int(rng.integers(1, 7))):
            box = _box(rng, h, w)
            crowd = (not lvis) and rng.random() < 0.15
            cat = int(rng.choice(cat_ids[:5] if crowd else cat_ids))
            mask = _ellipse(h, w, box)
            if crowd:  # COCO's crowd regions: uncompressed RLE
                seg = _uncompressed(mask)
            else:
                seg = [_polygon(box)]
                rles = mask_util.frPyObjects(seg, h, w)
                mask = mask_util.decode(mask_util.merge(rles))
            area = float(mask.sum())
            if area < 1:
                continue
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": box}
            ann.update(segmentation=seg, area=area)
            if not lvis:
                ann["iscrowd"] = int(crowd)
            anns.append(ann)
            gts.append(ann)
        if lvis:
            present = sorted({a["category_id"] for a in gts})
            absent = [c for c in cat_ids if c not in present]
            img["neg_category_ids"] = [
                int(c) for c in rng.choice(absent, int(rng.integers(0, 4)), replace=False)
            ]
            img["not_exhaustive_category_ids"] = [c for c in present if rng.random() < 0.35]
        images.append(img)
        if no_dt:
            continue
        dets = []
        for g in gts:  # detections of objects (also inside crowd regions)
            for _ in range(int(rng.integers(0, 3))):
                cat = g["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
                dets.append((cat, _jitter(rng, g["bbox"], h, w, rng.uniform(0.02, 0.3))))
        for _ in range(int(rng.integers(1, 6))):  # false positives, any category
            dets.append((int(rng.choice(cat_ids)), _box(rng, h, w)))
        for cat, box in dets:
            score = float(rng.random())
            if ties:
                score = round(score, 1)
            results.append(
                {
                    "image_id": img_id,
                    "category_id": cat,
                    "bbox": box,
                    "score": score,
                    "segmentation": _rle(_ellipse(h, w, _jitter(rng, box, h, w, 0.05))),
                }
            )
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, results


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.reshape(-1, order="F")
    counts, run, cur = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            run, cur = 1, v
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _coco_reference(gt_path: str, results, task: str) -> dict[str, float]:
    e = _evaluate_predictions_on_coco(
        COCO(gt_path), copy.deepcopy(results), task, use_fast_impl=False
    )
    return {m: float(e.stats[i] * 100) for i, m in enumerate(COCO_METRICS)}


def _assert_same(got: dict, ref: dict, keys) -> None:
    for k in keys:
        g, r = got[k], ref[k]
        assert (math.isnan(g) and math.isnan(r)) or abs(g - r) <= TOL, (k, g, r, got, ref)


def _dump(tmp_path, gt: dict) -> str:
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt))
    return str(p)


def test_case_covers_what_it_claims():
    gt, results = make_case(0, lvis=False)
    areas = [a["area"] for a in gt["annotations"] if not a["iscrowd"]]
    assert min(areas) < 32**2 and any(32**2 < a < 96**2 for a in areas) and max(areas) > 96**2
    crowds = [a for a in gt["annotations"] if a["iscrowd"]]
    assert crowds
    assert any(r["image_id"] == c["image_id"] for c in crowds for r in results)
    with_gt = {a["image_id"] for a in gt["annotations"]}
    with_dt = {r["image_id"] for r in results}
    ids = {i["id"] for i in gt["images"]}
    assert ids - with_gt & with_dt and with_gt - with_dt  # dt without gt; gt without dt
    lgt, lres = make_case(0, lvis=True)
    imgs = {i["id"]: i for i in lgt["images"]}
    present = {(a["image_id"], a["category_id"]) for a in lgt["annotations"]}
    unlabeled = [
        r
        for r in lres
        if (r["image_id"], r["category_id"]) not in present
        and r["category_id"] not in imgs[r["image_id"]]["neg_category_ids"]
    ]
    assert unlabeled and any(i["neg_category_ids"] for i in lgt["images"])
    assert any(i["not_exhaustive_category_ids"] for i in lgt["images"])


@pytest.mark.parametrize("task", ["bbox", "segm"])
@pytest.mark.parametrize("seed,ties", [(0, False), (1, False), (2, True)])
def test_coco_metrics_equal_pycocotools(task, seed, ties, tmp_path):
    gt, results = make_case(seed, lvis=False, ties=ties)
    ref = _coco_reference(_dump(tmp_path, gt), results, task)
    e = evaluate_coco_faster(_faster_coco(copy.deepcopy(gt)), copy.deepcopy(results), task)
    got = {m: float(e.stats[i] * 100) for i, m in enumerate(COCO_METRICS)}
    _assert_same(got, ref, COCO_METRICS)
    assert 5 < got["AP"] < 95  # neither trivial nor empty: the case discriminates


@pytest.mark.parametrize("task", ["bbox", "segm"])
@pytest.mark.parametrize("seed,max_dets", [(0, 300), (1, 300), (2, 4), (3, 2)])
def test_lvis_metrics_equal_lvis_api(task, seed, max_dets, tmp_path):
    gt, results = make_case(seed, lvis=True)
    path = _dump(tmp_path, gt)
    ref = _evaluate_predictions_on_lvis(LVIS(path), copy.deepcopy(results), task, max_dets)
    got = evaluate_lvis_faster(
        _faster_coco(copy.deepcopy(gt)), copy.deepcopy(results), task, max_dets
    )
    _assert_same(got, ref, LVIS_METRICS)
    assert 1 < got["AP"] < 95  # neither trivial nor empty: the case discriminates


def test_limit_dets_per_image_keeps_top_scores_stably():
    res = [
        {"image_id": 1, "score": 0.5, "k": 0},
        {"image_id": 2, "score": 0.1, "k": 1},
        {"image_id": 1, "score": 0.9, "k": 2},
        {"image_id": 1, "score": 0.5, "k": 3},
        {"image_id": 1, "score": 0.2, "k": 4},
    ]
    kept = limit_dets_per_image(res, 2)
    assert sorted(r["k"] for r in kept) == [0, 1, 2]  # 0.9, then the first of the 0.5 tie


# ---- the evaluators, end to end through build_evaluator ----------------------------------


def _register(name: str, gt: dict, path: str, kind: str) -> None:
    cat_ids = [c["id"] for c in gt["categories"]]
    DatasetCatalog.register(name, lambda: [])
    meta = MetadataCatalog.get(name)
    meta.set(json_file=path, evaluator_type=kind, thing_classes=[f"c{c}" for c in cat_ids])
    if kind == "coco":
        meta.set(thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)})


def _model_outputs(gt: dict, results: list[dict], contiguous: dict):
    by_image = {i["id"]: [] for i in gt["images"]}
    for r in results:
        by_image[r["image_id"]].append(r)
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    for img_id, rs in by_image.items():
        h, w = sizes[img_id]
        inst = Instances((h, w))
        xyxy = [[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in rs)]
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([r["score"] for r in rs], dtype=torch.float32)
        inst.pred_classes = torch.tensor([contiguous[r["category_id"]] for r in rs])
        masks = [mask_util.decode(r["segmentation"]).astype(bool) for r in rs]
        inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool))
        yield {"image_id": img_id, "height": h, "width": w}, {"instances": inst}


def _run(cfg, name, gt, results, contiguous):
    ev = build_evaluator(cfg, name)
    ev.reset()
    for inp, out in _model_outputs(gt, results, contiguous):
        ev.process([inp], [out])
    return ev, ev.evaluate()


@pytest.mark.parametrize("kind", ["coco", "lvis"])
def test_evaluators_report_the_official_results(kind, tmp_path):
    from detectron2.config import get_cfg

    lvis = kind == "lvis"
    gt, results = make_case(5, lvis=lvis, n_images=20)
    name = f"_test_faster_eval_{kind}"
    _register(name, gt, _dump(tmp_path, gt), kind)
    cat_ids = [c["id"] for c in gt["categories"]]
    contiguous = {c: (c - 1 if lvis else i) for i, c in enumerate(cat_ids)}
    try:
        cfg = add_transfer_config(get_cfg())
        cfg.OUTPUT_DIR = str(tmp_path / "out")
        assert cfg.TRANSFER.EVAL_BACKEND == "faster_coco_eval"  # the default
        ev, fast = _run(cfg, name, gt, results, contiguous)
        assert isinstance(ev, FasterLVISEvaluator if lvis else FasterCOCOEvaluator)
        cfg.TRANSFER.EVAL_BACKEND = "official"
        ev, official = _run(cfg, name, gt, results, contiguous)
        assert not isinstance(ev, (FasterLVISEvaluator, FasterCOCOEvaluator))
        # no detection at all: NaN for every metric on both paths
        _, official_none = _run(cfg, name, gt, [], contiguous)
        cfg.TRANSFER.EVAL_BACKEND = "faster_coco_eval"
        _, fast_none = _run(cfg, name, gt, [], contiguous)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert set(fast) == set(official) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        # per-category AP ("AP-c3", ...) too, for COCO
        assert set(fast[task]) == set(official[task])
        _assert_same(fast[task], official[task], official[task])
        assert 5 < fast[task]["AP"] < 95
    # without masks in the outputs only bbox is evaluated
    assert set(fast_none) == set(official_none)
    for task, res in fast_none.items():
        assert set(res) == set(official_none[task])
        assert all(math.isnan(v) for v in res.values())


def test_unknown_backend_is_refused(tmp_path):
    from detectron2.config import get_cfg

    gt, _ = make_case(0, lvis=False, n_images=2)
    name = "_test_faster_eval_bad_backend"
    _register(name, gt, _dump(tmp_path, gt), "coco")
    cfg = add_transfer_config(get_cfg())
    cfg.TRANSFER.EVAL_BACKEND = "pycocotool"
    try:
        with pytest.raises(ValueError, match=r"TRANSFER.EVAL_BACKEND: 'pycocotool' is not one of"):
            build_evaluator(cfg, name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
