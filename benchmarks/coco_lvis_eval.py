#!/usr/bin/env python
"""COCO and LVIS AP: faster-coco-eval (the transfer evaluators' default) vs pycocotools /
lvis-api (``TRANSFER.EVAL_BACKEND official``), timed on the same synthetic predictions.

    nice .venv/bin/python benchmarks/coco_lvis_eval.py --out benchmarks/results/X.json
    .venv/bin/python benchmarks/coco_lvis_eval.py --coco-images 500 --lvis-images 200  # quick

Data (generated, seeded): COCO-like ``--coco-images`` images of 640x480 with ~7 objects each
over 80 categories (1 % crowd regions), ``--coco-dets`` detections per image (about three
jittered, mostly correctly classed, per object, the rest random boxes and classes), masks as
12-vertex ellipse polygons (ground truth) and RLEs (detections); LVIS-like ``--lvis-images``
images with ~12 objects over 1,203 categories (r/c/f split as LVIS v1: 337 / 461 / 405),
per-image negative and not-exhaustive category lists, ``--lvis-dets`` detections per image.
``--segm-images`` limits the mask evaluation to the first images (pycocotools' mask path is
the slowest); ``--lvis-segm`` adds LVIS mask AP.

Each backend is timed doing what the evaluator does after inference: load the results,
evaluate, accumulate, summarise (wall and this process's CPU time: faster-coco-eval may use
threads for mask IoUs; the CPU time is what a loaded machine charges). The ground truth's
index is built once per backend beforehand (the evaluators do it at construction) and timed
apart. ``max_abs_diff`` compares every reported metric (x 100) of the two backends.
JSON to stdout (and ``--out``), with the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import platform
import sys
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_util

from cyborgs.transfer.faster_eval import (
    COCO_METRICS,
    LVIS_METRICS,
    _faster_coco,
    evaluate_coco_faster,
    evaluate_lvis_faster,
)

H, W = 480, 640
LVIS_FREQ = ["r"] * 337 + ["c"] * 461 + ["f"] * 405


def _ellipse_poly(box, n: int = 12) -> list[float]:
    x, y, w, h = box
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)], 1)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _boxes(rng, n: int) -> np.ndarray:
    w = np.exp(rng.uniform(np.log(6), np.log(0.8 * W), n))
    h = np.exp(rng.uniform(np.log(6), np.log(0.8 * H), n))
    return np.stack([rng.uniform(0, W - w), rng.uniform(0, H - h), w, h], 1)


def _jitter(rng, boxes: np.ndarray, s: float = 0.12) -> np.ndarray:
    x, y, w, h = boxes.T
    w2 = np.clip(w * np.exp(rng.normal(0, s, len(w))), 2, W)
    h2 = np.clip(h * np.exp(rng.normal(0, s, len(h))), 2, H)
    x2 = np.clip(x + rng.normal(0, s, len(x)) * w, 0, W - w2)
    y2 = np.clip(y + rng.normal(0, s, len(y)) * h, 0, H - h2)
    return np.stack([x2, y2, w2, h2], 1)


def make_data(seed: int, n_images: int, n_dets: int, lvis: bool, segm_images: int):
    """(ground-truth dict, results): COCO result format, dataset category ids."""
    rng = np.random.default_rng(seed)
    n_cats = 1203 if lvis else 80
    cat_ids = np.arange(1, n_cats + 1)
    cats = [{"id": int(c), "name": f"c{c}"} for c in cat_ids]
    if lvis:
        freq = rng.permutation(LVIS_FREQ)
        for c, f in zip(cats, freq, strict=True):
            c["frequency"] = str(f)
    images, anns, results = [], [], []
    for i in range(n_images):
        img_id = i + 1
        img = {"id": img_id, "height": H, "width": W, "file_name": f"{img_id}.jpg"}
        n_gt = int(rng.poisson(12 if lvis else 7))
        gt_boxes = _boxes(rng, n_gt)
        gt_cats = rng.choice(cat_ids, n_gt)
        for b, c in zip(gt_boxes, gt_cats, strict=True):
            crowd = (not lvis) and rng.random() < 0.01
            ann = {
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": int(c),
                "bbox": [round(float(v), 2) for v in b],
                "area": float(math.pi / 4 * b[2] * b[3]),
                "segmentation": [_ellipse_poly(b)],
            }
            if not lvis:
                ann["iscrowd"] = int(crowd)
            anns.append(ann)
        if lvis:
            present = set(gt_cats.tolist())
            img["neg_category_ids"] = [
                int(c) for c in rng.choice(cat_ids, int(rng.integers(0, 12))) if c not in present
            ]
            img["not_exhaustive_category_ids"] = [int(c) for c in present if rng.random() < 0.1]
        images.append(img)
        # detections: ~3 per object (80 % right class), the rest random
        k = min(n_dets, 3 * n_gt)
        src = rng.integers(0, max(n_gt, 1), k)
        boxes = _jitter(rng, gt_boxes[src]) if n_gt else np.zeros((0, 4))
        classes = np.where(rng.random(k) < 0.8, gt_cats[src] if n_gt else 0, 0)
        wrong = classes == 0
        if lvis:  # a confused class is another label of the image or a negative one
            labelled = np.array(sorted(set(gt_cats.tolist()) | set(img["neg_category_ids"])))
            classes[wrong] = rng.choice(labelled, int(wrong.sum())) if len(labelled) else 1
        else:
            classes[wrong] = rng.choice(cat_ids, int(wrong.sum()))
        boxes = np.concatenate([boxes, _boxes(rng, n_dets - k)])
        classes = np.concatenate([classes, rng.choice(cat_ids, n_dets - k)])
        scores = rng.random(n_dets)
        with_masks = i < segm_images
        polys = [[_ellipse_poly(b)] for b in _jitter(rng, boxes, 0.03)] if with_masks else []
        for j in range(n_dets):
            r = {
                "image_id": img_id,
                "category_id": int(classes[j]),
                "bbox": [round(float(v), 2) for v in boxes[j]],
                "score": round(float(scores[j]), 5),
            }
            if with_masks:
                rle = mask_util.merge(mask_util.frPyObjects(polys[j], H, W))
                r["segmentation"] = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            results.append(r)
    return {"images": images, "annotations": anns, "categories": cats}, results


def _timed(fn, *args):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}


def _subset(gt: dict, results: list, n_images: int):
    keep = {im["id"] for im in gt["images"][:n_images]}
    sub = dict(gt)
    sub["images"] = [im for im in gt["images"] if im["id"] in keep]
    sub["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    return sub, [r for r in results if r["image_id"] in keep and "segmentation" in r]


def _compare(task: str, slow: dict, fast: dict) -> dict:
    diffs = [
        abs(fast[m] - slow[m]) for m in slow if not (math.isnan(slow[m]) and math.isnan(fast[m]))
    ]
    return {
        "task": task,
        "official": slow,
        "faster_coco_eval": fast,
        "max_abs_diff": max(diffs) if diffs else 0.0,
    }


def _official_coco(coco_gt, results: list, task: str):
    from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco

    return _evaluate_predictions_on_coco(coco_gt, results, task, use_fast_impl=False)


def bench_coco(args, tmp: str) -> dict:
    from pycocotools.coco import COCO

    gt, results = make_data(args.seed, args.coco_images, args.coco_dets, False, args.segm_images)
    out = {"images": args.coco_images, "detections": len(results), "gt": len(gt["annotations"])}
    tasks = [("bbox", gt, results)]
    if args.segm_images:
        tasks.append(("segm", *_subset(gt, results, args.segm_images)))
    out["tasks"] = []
    for task, g, res in tasks:
        path = os.path.join(tmp, f"coco_{task}.json")
        with open(path, "w") as f:
            json.dump(g, f)
        blob = pickle.dumps(res)
        slow_gt, t_slow_gt = _timed(COCO, path)
        g_copy = pickle.loads(pickle.dumps(g))  # faster-coco-eval annotates the dicts
        fast_gt, t_fast_gt = _timed(_faster_coco, g_copy)
        r_slow = pickle.loads(blob)
        e_slow, t_slow = _timed(_official_coco, slow_gt, r_slow, task)
        r_fast = pickle.loads(blob)
        e_fast, t_fast = _timed(evaluate_coco_faster, fast_gt, r_fast, task)
        row = _compare(
            task,
            {m: float(e_slow.stats[i] * 100) for i, m in enumerate(COCO_METRICS)},
            {m: float(e_fast.stats[i] * 100) for i, m in enumerate(COCO_METRICS)},
        )
        _add_timings(row, g, res, (t_slow, t_fast), (t_slow_gt, t_fast_gt))
        out["tasks"].append(row)
        print(f"coco {task}: {row['speedup_wall']:.1f}x", file=sys.stderr, flush=True)
    return out


def _add_timings(row: dict, gt: dict, res: list, times: tuple, gt_times: tuple) -> None:
    """Sizes, both backends' times (evaluation and ground-truth index) and the speed-ups."""
    t_slow, t_fast = times
    row.update(
        images=len(gt["images"]),
        detections=len(res),
        official_s=t_slow,
        faster_coco_eval_s=t_fast,
        gt_index_s={"official": gt_times[0], "faster_coco_eval": gt_times[1]},
        speedup_wall=t_slow["wall_s"] / t_fast["wall_s"],
        speedup_cpu=t_slow["cpu_s"] / t_fast["cpu_s"],
    )


def bench_lvis(args, tmp: str) -> dict:
    from detectron2.evaluation.lvis_evaluation import _evaluate_predictions_on_lvis
    from lvis import LVIS

    seg = args.segm_images if args.lvis_segm else 0
    gt, results = make_data(args.seed + 1, args.lvis_images, args.lvis_dets, True, seg)
    out = {"images": args.lvis_images, "detections": len(results), "gt": len(gt["annotations"])}
    tasks = [("bbox", gt, results)]
    if seg:
        tasks.append(("segm", *_subset(gt, results, seg)))
    out["tasks"] = []
    for task, g, res in tasks:
        path = os.path.join(tmp, f"lvis_{task}.json")
        with open(path, "w") as f:
            json.dump(g, f)
        blob = pickle.dumps(res)
        slow_gt, t_slow_gt = _timed(LVIS, path)
        g_copy = pickle.loads(pickle.dumps(g))  # faster-coco-eval annotates the dicts
        fast_gt, t_fast_gt = _timed(_faster_coco, g_copy)
        r_slow = pickle.loads(blob)
        slow, t_slow = _timed(_evaluate_predictions_on_lvis, slow_gt, r_slow, task, 300)
        r_fast = pickle.loads(blob)
        fast, t_fast = _timed(evaluate_lvis_faster, fast_gt, r_fast, task, 300)
        row = _compare(task, {m: slow[m] for m in LVIS_METRICS}, fast)
        _add_timings(row, g, res, (t_slow, t_fast), (t_slow_gt, t_fast_gt))
        out["tasks"].append(row)
        print(f"lvis {task}: {row['speedup_wall']:.1f}x", file=sys.stderr, flush=True)
    return out


def run(args) -> dict:
    import faster_coco_eval
    import pycocotools

    load_before = os.getloadavg()
    result = {
        "benchmark": "coco_lvis_eval",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "faster_coco_eval": faster_coco_eval.__version__,
            "pycocotools": getattr(pycocotools, "__version__", "2.0.11"),
        },
        "seed": args.seed,
    }
    # pycocotools and lvis-api print their progress: keep stdout for the JSON
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        if args.coco_images:
            result["coco"] = bench_coco(args, tmp)
        if args.lvis_images:
            result["lvis"] = bench_lvis(args, tmp)
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco-images", type=int, default=5000, help="0 skips COCO")
    p.add_argument("--coco-dets", type=int, default=100, help="detections per COCO image")
    p.add_argument("--segm-images", type=int, default=500, help="images with masks (0: bbox only)")
    p.add_argument("--lvis-images", type=int, default=2000, help="0 skips LVIS")
    p.add_argument("--lvis-dets", type=int, default=300, help="detections per LVIS image")
    p.add_argument("--lvis-segm", action="store_true", help="also LVIS mask AP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    if min(args.coco_images, args.lvis_images, args.segm_images) < 0:
        p.error("image counts must be >= 0")
    if min(args.coco_dets, args.lvis_dets) < 1:
        p.error("--coco-dets and --lvis-dets must be >= 1")
    args.segm_images = min(args.segm_images, max(args.coco_images, args.lvis_images))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from report import emit  # benchmarks/ is the script's directory

    emit(run(args), "benchmarks/coco_lvis_eval.py", argv, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
