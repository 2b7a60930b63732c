"""Each evaluator type, chosen from the demo data set's evaluator_type, scores an oracle that
returns the ground truth perfectly (and a model returning nothing at zero)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from torch import nn

import cyborgs.data.datasets  # noqa: F401
from cyborgs.transfer.evaluators import build_evaluator
from cyborgs.transfer.setup import get_transfer_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"


class Oracle(nn.Module):
    """Returns each image's ground truth as predictions (score 1); ``empty`` returns nothing."""

    def __init__(
        self, dataset: str, num_classes: int = 0, empty: bool = False, empty_masks: bool = False
    ):
        super().__init__()
        self.gt = {d["file_name"]: d for d in DatasetCatalog.get(dataset)}
        self.num_classes = num_classes
        self.empty = empty
        self.empty_masks = empty_masks  # right boxes and classes, all-background masks

    def forward(self, inputs):
        return [self._one(self.gt[x["file_name"]]) for x in inputs]

    def _one(self, d):
        if "sem_seg_file_name" in d:
            gt = torch.from_numpy(np.asarray(Image.open(d["sem_seg_file_name"]), dtype=np.int64))
            gt[gt >= self.num_classes] = 0  # ignored pixels: any class will do
            logits = torch.zeros(self.num_classes, *gt.shape)
            if not self.empty:
                logits.scatter_(0, gt[None], 1.0)
            return {"sem_seg": logits}
        h, w = d["height"], d["width"]
        anns = [] if self.empty else d["annotations"]
        inst = Instances((h, w))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        if anns and "segmentation" in anns[0]:
            inst.pred_masks = _masks(anns, h, w)
            if self.empty_masks:
                inst.pred_masks = torch.zeros_like(inst.pred_masks)
        elif "segmentation" in (d.get("annotations") or [{}])[0]:
            inst.pred_masks = torch.zeros(0, h, w, dtype=torch.bool)
        return {"instances": inst}


def _masks(anns, h, w) -> torch.Tensor:
    from detectron2.structures.masks import polygons_to_bitmask
    from pycocotools import mask as mask_util

    out = []
    for a in anns:
        seg = a["segmentation"]
        if isinstance(seg, list):
            out.append(polygons_to_bitmask(seg, h, w))
        else:
            if isinstance(seg["counts"], list):
                seg = mask_util.frPyObjects(seg, h, w)
            out.append(mask_util.decode(seg).astype(bool))
    return torch.from_numpy(np.stack(out))


CASES = [
    # (config giving cfg defaults, test data set, task, metric key)
    ("demo_voc_det_C4.yaml", "demo_voc_2007_test", "bbox", "AP50"),
    ("demo_coco_mask_rcnn_FPN.yaml", "demo_coco_2017_val", "segm", "AP"),
    ("demo_lvis_v1_mask_rcnn_FPN.yaml", "demo_lvis_v1_val", "segm", "AP"),
    ("demo_cityscapes_fcn_dilated.yaml", "demo_cityscapes_fine_sem_seg_val", "sem_seg", "mIoU"),
    ("demo_coco_stuff10k_fcn.yaml", "demo_coco_stuff_10k_sem_seg_test", "sem_seg", "mIoU"),
]


@pytest.mark.parametrize("config,dataset,task,metric", CASES)
def test_evaluator_scores_oracle_perfectly(config, dataset, task, metric, tiny_data_root, tmp_path):
    cfg = get_transfer_cfg(
        CONFIGS / config, ["OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", 0]
    )
    loader = build_detection_test_loader(cfg, dataset)
    n = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    perfect = inference_on_dataset(Oracle(dataset, n), loader, build_evaluator(cfg, dataset))
    expected = 100.0
    if dataset.startswith("demo_voc"):
        # detectron2's VOC mAP averages all 20 classes; absent ones score 0 (none in the demo
        # data has every VOC class).
        present = {a["category_id"] for d in DatasetCatalog.get(dataset) for a in d["annotations"]}
        expected = 100.0 * len(present) / 20
    assert perfect[task][metric] == pytest.approx(expected, abs=0.5), perfect
    if task == "sem_seg":
        oracle = Oracle(dataset, n, empty=True)  # predicts class 0 everywhere
        nothing = inference_on_dataset(oracle, loader, build_evaluator(cfg, dataset))
        assert nothing[task][metric] < 50.0


def test_classification_sets_are_refused_with_pointer(tiny_data_root):
    cfg = get_transfer_cfg(CONFIGS / "demo_voc_det_C4.yaml")
    with pytest.raises(ValueError, match=r"own voc07_svm protocol \(cyborgs.transfer.voc07_svm\)"):
        build_evaluator(cfg, "demo_voc_2007_cls_test")


@pytest.mark.parametrize("config,dataset", [c[:2] for c in CASES if c[2] == "segm"])
def test_mask_ap_reads_the_masks_not_the_boxes(config, dataset, tiny_data_root, tmp_path):
    """Negative control of the instance-segmentation evaluators: perfect boxes and classes
    with empty masks overlap no ground-truth mask (IoU 0 < 0.5 at every COCO threshold), so
    mask AP is exactly 0 while box AP stays 100."""
    cfg = get_transfer_cfg(
        CONFIGS / config, ["OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", 0]
    )
    loader = build_detection_test_loader(cfg, dataset)
    res = inference_on_dataset(
        Oracle(dataset, empty_masks=True), loader, build_evaluator(cfg, dataset)
    )
    assert res["bbox"]["AP"] == pytest.approx(100.0, abs=0.5), res
    assert res["segm"]["AP"] == pytest.approx(0.0, abs=1e-6), res
