"""The evaluator of a data set, chosen from its metadata's ``evaluator_type`` (METHOD.md §6/§7)."""

from __future__ import annotations

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)

from cyborgs.transfer.faster_eval import EVAL_BACKENDS, FasterCOCOEvaluator, FasterLVISEvaluator
from cyborgs.utils.env import HAS_D2_OPS

# Classification types: evaluated by their own protocols (benchmark evaluators of the same name
# in cyborgs.transfer.table), not by a detectron2 model.
_OWN_PROTOCOL = {"voc_cls": "voc07_svm", "imagenet_cls": "semi_supervised"}


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
    meta = MetadataCatalog.get(dataset_name)
    kind = meta.get("evaluator_type", None)
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    if kind in ("coco", "lvis"):
        backend = cfg.TRANSFER.EVAL_BACKEND
        if backend not in EVAL_BACKENDS:
            raise ValueError(
                f"TRANSFER.EVAL_BACKEND: {backend!r} is not one of {', '.join(EVAL_BACKENDS)}"
            )
        faster = backend == "faster_coco_eval"
    if kind == "coco":
        if faster:
            return FasterCOCOEvaluator(dataset_name, output_dir=output_folder)
        # Without detectron2's compiled ops its fast COCO evaluator is unavailable (METHOD.md §7).
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=HAS_D2_OPS)
    if kind == "lvis":
        lvis_evaluator = FasterLVISEvaluator if faster else LVISEvaluator
        return lvis_evaluator(
            dataset_name, output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE
        )
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind in ("sem_seg", "cityscapes_sem_seg"):
        # detectron2's CityscapesSemSegEvaluator imports an internal module and fails; mIoU
        # over the trainId maps is what SemSegEvaluator computes (METHOD.md §6).
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    if kind in _OWN_PROTOCOL:
        protocol = _OWN_PROTOCOL[kind]
        raise ValueError(
            f"data set '{dataset_name}' (evaluator_type '{kind}') is evaluated by its own "
            f"{protocol} protocol (cyborgs.transfer.{protocol}), not by a detectron2 model"
        )
    raise ValueError(
        f"data set '{dataset_name}': no evaluator for evaluator_type {kind!r} (metadata must set "
        "one of coco, lvis, pascal_voc, sem_seg, cityscapes_sem_seg)"
    )
