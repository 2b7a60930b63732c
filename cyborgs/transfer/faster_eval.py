"""COCO and LVIS box / mask AP through faster-coco-eval (C++), as drop-in evaluators.

detectron2's ``COCOEvaluator`` (with ``use_fast_impl=False``, since our detectron2 has no
compiled ops) and ``LVISEvaluator`` run pycocotools' and lvis-api's per-image Python loops,
which take minutes to hours on COCO / LVIS val. The two subclasses here keep everything of
detectron2's evaluators (gathering, category-id unmapping, the files they write, proposal
recall, the result dicts and their keys) and swap only the AP computation for
faster-coco-eval's ``COCOeval_faster`` (``lvis_style=True`` for LVIS's federated protocol:
negative / not-exhaustive category lists and the r/c/f frequency groups).
``tests/transfer/test_faster_eval.py`` checks every reported metric against pycocotools /
lvis-api on the same predictions.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import defaultdict
from typing import Any

import numpy as np
from detectron2.evaluation import COCOEvaluator, LVISEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

__all__ = [
    "EVAL_BACKENDS",
    "COCO_METRICS",
    "LVIS_METRICS",
    "FasterCOCOEvaluator",
    "FasterLVISEvaluator",
    "evaluate_coco_faster",
    "evaluate_lvis_faster",
    "limit_dets_per_image",
]

logger = logging.getLogger(__name__)

# TRANSFER.EVAL_BACKEND values: the default, and the reference implementations to cross-check.
EVAL_BACKENDS = ("faster_coco_eval", "official")

# The metrics detectron2's evaluators report, in the order of COCOeval's ``stats``.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# faster-coco-eval's ``stats_as_dict`` names of the LVIS metrics.
_LVIS_STATS = ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "APr", "APc", "APf")


def _faster_coco(dataset: dict[str, Any]):
    """A faster-coco-eval ``COCO`` indexing ``dataset`` (shallow: annotation dicts are shared)."""
    from faster_coco_eval import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(dataset)


def _for_segm(results: list[dict]) -> list[dict]:
    # As detectron2 does: without the box, the API takes a mask result's area from the mask
    # (small / medium / large are then mask areas, as in the ground truth). The API adds keys
    # to each result (area, id, bbox, rle), so each result and its mask dict is copied; a deep
    # copy cost as much as the evaluation itself.
    out = []
    for r in results:
        r = {k: v for k, v in r.items() if k != "bbox"}
        if isinstance(r.get("segmentation"), dict):
            r["segmentation"] = dict(r["segmentation"])
        out.append(r)
    return out


def _cocoeval_class():
    """faster-coco-eval's ``COCOeval_faster`` with ``evaluate`` computing IoUs only for the
    image x category pairs that have both ground truth and detections (which it does too), but
    without its dict keyed by every pair: on LVIS val that is 19.8k x 1,203 = 24M tuples and
    empty lists (GBs, minutes); here a shared empty list fills the nested list the C++ reads.
    Written against faster-coco-eval 1.8.0 (the pinned version)."""
    import faster_coco_eval.faster_eval_api_cpp as _C
    from faster_coco_eval import COCOeval_faster

    class _COCOevalSparse(COCOeval_faster):
        def evaluate(self):
            p = self.params
            if p.iouType not in ("bbox", "segm"):
                raise ValueError(f"iouType must be bbox or segm, got {p.iouType!r}")
            p.imgIds = list(np.unique(p.imgIds))
            if p.useCats:
                p.catIds = list(np.unique(p.catIds))
            p.maxDets = sorted(p.maxDets)
            self._prepare()
            cat_ids = p.catIds if p.useCats else [-1]
            img_index = {img: i for i, img in enumerate(p.imgIds)}
            cat_index = {cat: i for i, cat in enumerate(cat_ids)}
            pairs = sorted(
                (img_index[img], cat_index[cat])
                for img, cat in self._nonempty_iou_pairs
                if img in img_index and cat in cat_index
            )
            empty: list = []
            ious = [[empty] * len(cat_ids) for _ in p.imgIds]
            for i, k in pairs:
                ious[i][k] = self.computeIoU(p.imgIds[i], cat_ids[k])
            self._paramsEval = copy.deepcopy(p)
            self.eval = _C.COCOevalEvaluateAccumulate(
                self._paramsEval,
                ious,
                self.gt_dataset,
                self.dt_dataset,
                p.imgIds,
                p.catIds,
                bool(p.useCats),
            )

    return _COCOevalSparse


def evaluate_coco_faster(
    coco_gt,
    coco_results: list[dict],
    iou_type: str,
    img_ids: list | None = None,
    max_dets_per_image: list[int] | None = None,
):
    """``COCOeval`` of ``coco_results`` (COCO result format, dataset category ids) against
    ``coco_gt`` (a faster-coco-eval ``COCO``) for ``iou_type`` "bbox" or "segm", evaluated,
    accumulated and summarised. ``stats[:6]`` and ``eval["precision"]`` [T, R, K, A, M] mean
    what they mean in pycocotools; AP is taken at ``max_dets_per_image[-1]`` detections per
    image and category (COCO: [1, 10, 100])."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"faster-coco-eval path: iou_type must be bbox or segm, got {iou_type!r}")
    if not coco_results:
        raise ValueError("no detections to evaluate (COCO's API needs at least one)")
    if iou_type == "segm":
        coco_results = _for_segm(coco_results)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(coco_results)
    coco_eval = _cocoeval_class()(coco_gt, coco_dt, iou_type, print_function=logger.debug)
    coco_eval.params.maxDets = list(max_dets_per_image or [1, 10, 100])
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def limit_dets_per_image(results: list[dict], max_dets: int) -> list[dict]:
    """The ``max_dets`` highest-scoring results of each image (all categories together), as
    lvis-api's ``LVISResults`` keeps them: a stable sort, so ties keep their input order."""
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    out = []
    for anns in by_image.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def _labelled_only(lvis_gt, results: list[dict]) -> list[dict]:
    labelled: dict[Any, set] = defaultdict(set)
    for img in lvis_gt.dataset["images"]:
        labelled[img["id"]].update(img.get("neg_category_ids", []))
    for ann in lvis_gt.dataset["annotations"]:
        labelled[ann["image_id"]].add(ann["category_id"])
    return [r for r in results if r["category_id"] in labelled[r["image_id"]]]


def evaluate_lvis_faster(
    lvis_gt, lvis_results: list[dict], iou_type: str, max_dets_per_image: int | None = None
) -> dict[str, float]:
    """LVIS's federated AP (LVIS paper §5; lvis-api ``LVISEval``) of ``lvis_results`` against
    ``lvis_gt`` (a faster-coco-eval ``COCO`` of an LVIS json), as detectron2's
    ``_evaluate_predictions_on_lvis`` reports it: ``LVIS_METRICS`` x 100, -100 where a metric
    has no category to average (lvis-api's -1), NaN for all when there is no detection.
    At most ``max_dets_per_image`` (default 300) results per image, all categories together."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"LVIS: iou_type must be bbox or segm, got {iou_type!r}")
    if not lvis_results:
        logger.warning("No predictions from the model!")
        return {m: float("nan") for m in LVIS_METRICS}
    if max_dets_per_image is None:
        max_dets_per_image = 300
    if iou_type == "segm":
        lvis_results = _for_segm(lvis_results)
    # lvis-api caps detections per image, not per image and category as COCOeval's maxDets
    # does; after this cap the per-category cap of the same size never binds.
    lvis_results = limit_dets_per_image(lvis_results, max_dets_per_image)
    # Then, as LVISEval does, only detections of a category the image is labelled for (present
    # or in its negative list) count. faster-coco-eval drops the others itself, but its mask
    # path then fails on an image that keeps none (1.8.0: "unordered_map::at").
    lvis_results = _labelled_only(lvis_gt, lvis_results)
    with contextlib.redirect_stdout(io.StringIO()):
        lvis_dt = lvis_gt.loadRes(lvis_results)
    lvis_eval = _cocoeval_class()(
        lvis_gt, lvis_dt, iou_type, lvis_style=True, print_function=logger.debug
    )
    lvis_eval.params.maxDets = [max_dets_per_image]
    lvis_eval.evaluate()
    lvis_eval.accumulate()
    lvis_eval.summarize()
    stats = lvis_eval.stats_as_dict
    results = {m: float(stats[k] * 100) for m, k in zip(LVIS_METRICS, _LVIS_STATS, strict=True)}
    logger.info(f"Evaluation results for {iou_type}: \n" + create_small_table(results))
    return results


class FasterCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` with bbox / segm AP from faster-coco-eval. Keypoints and
    proposal recall stay on detectron2's (pycocotools) code. Takes ``COCOEvaluator``'s
    arguments; ``use_fast_impl`` is ignored (detectron2's fast path needs its compiled ops)."""

    def __init__(self, dataset_name: str, *args, **kwargs):
        kwargs["use_fast_impl"] = False
        super().__init__(dataset_name, *args, **kwargs)
        self._faster_gt = None

    def _faster_api(self):
        if self._faster_gt is None:
            self._faster_gt = _faster_coco(self._coco_api.dataset)
        return self._faster_gt

    def _eval_predictions(self, predictions, img_ids=None):
        # detectron2's COCOEvaluator._eval_predictions, with the bbox / segm evaluation call
        # pointed at faster-coco-eval.
        self._logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)

        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            dataset_id_to_contiguous_id = self._metadata.thing_dataset_id_to_contiguous_id
            num_classes = len(dataset_id_to_contiguous_id)
            reverse_id_mapping = {v: k for k, v in dataset_id_to_contiguous_id.items()}
            for result in coco_results:
                category_id = result["category_id"]
                if category_id not in reverse_id_mapping:
                    raise ValueError(
                        f"a prediction has class {category_id}, but data set "
                        f"'{self._metadata.name}' has {num_classes} classes (0..{num_classes - 1})"
                    )
                result["category_id"] = reverse_id_mapping[category_id]

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
                f.flush()

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with faster-coco-eval ...")
        for task in sorted(tasks):
            if task not in {"bbox", "segm", "keypoints"}:
                raise ValueError(f"unknown COCO task {task!r}")
            if not coco_results:
                coco_eval = None  # the COCO API does not take an empty result list
            elif task == "keypoints":
                coco_eval = _evaluate_predictions_on_coco(
                    self._coco_api,
                    coco_results,
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    use_fast_impl=False,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
            else:
                coco_eval = evaluate_coco_faster(
                    self._faster_api(),
                    coco_results,
                    task,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )


class FasterLVISEvaluator(LVISEvaluator):
    """detectron2's ``LVISEvaluator`` with bbox / segm AP from faster-coco-eval's LVIS mode
    (proposal recall stays on detectron2's code). Takes ``LVISEvaluator``'s arguments."""

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        self._faster_gt = None

    def _faster_api(self):
        if self._faster_gt is None:
            self._faster_gt = _faster_coco(self._lvis_api.dataset)
        return self._faster_gt

    def _eval_predictions(self, predictions):
        # detectron2's LVISEvaluator._eval_predictions, with the evaluation call pointed at
        # faster-coco-eval.
        self._logger.info("Preparing results in the LVIS format ...")
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)

        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            reverse_id_mapping = {
                v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()
            }
            for result in lvis_results:
                result["category_id"] = reverse_id_mapping[result["category_id"]]
        else:
            # LVIS category ids are the contiguous ids + 1.
            for result in lvis_results:
                result["category_id"] += 1

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(lvis_results))
                f.flush()

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions with faster-coco-eval (LVIS mode) ...")
        for task in sorted(tasks):
            self._results[task] = evaluate_lvis_faster(
                self._faster_api(), lvis_results, task, self._max_dets_per_image
            )
