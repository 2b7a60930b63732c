"""The full-size transfer configs carry METHOD.md §6's numbers and build their R50 models."""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.modeling import build_model

from cyborgs.config import fall_back_to_cpu
from cyborgs.transfer.setup import get_transfer_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"

FULL = [
    "voc_det_R50_C4_24k.yaml",
    "coco_mask_rcnn_R50_FPN_1x.yaml",
    "coco_mask_rcnn_R50_FPN_2x.yaml",
    "lvis_v1_mask_rcnn_R50_FPN.yaml",
    "cityscapes_fcn_R50_dilated.yaml",
    "coco_stuff10k_fcn_R50.yaml",
    "coco_stuff10k_linear_probe.yaml",
]


@pytest.mark.parametrize("name", FULL)
def test_common_settings_and_model_builds(name):
    cfg = get_transfer_cfg(CONFIGS / name)
    assert cfg.INPUT.FORMAT == "RGB"
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    expected_norm = "FrozenBN" if "probe" in name else "SyncBN"
    assert cfg.MODEL.RESNETS.NORM == expected_norm
    if cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        assert cfg.TEST.PRECISE_BN.ENABLED
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 0.02)
    assert cfg.TRANSFER.PROTOCOL
    cfg.MODEL.DEVICE = "cpu"
    fall_back_to_cpu(cfg)
    build_model(cfg)  # R50 model builds (CPU, no weights)


def test_voc_det_protocol():
    c = get_transfer_cfg(CONFIGS / "voc_det_R50_C4_24k.yaml")
    assert c.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and c.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert c.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
    assert c.DATASETS.TEST == ("voc_2007_test",)
    assert (c.SOLVER.STEPS, c.SOLVER.MAX_ITER, c.SOLVER.WARMUP_ITERS) == (
        (18000, 22000),
        24000,
        100,
    )
    assert c.INPUT.MIN_SIZE_TRAIN == tuple(range(480, 801, 32)) and c.INPUT.MIN_SIZE_TEST == 800


@pytest.mark.parametrize("name,iters,steps", [
    ("coco_mask_rcnn_R50_FPN_2x.yaml", 180000, (120000, 160000)),
    ("coco_mask_rcnn_R50_FPN_1x.yaml", 90000, (60000, 80000)),
])  # fmt: skip
def test_coco_protocol(name, iters, steps):
    c = get_transfer_cfg(CONFIGS / name)
    assert c.MODEL.MASK_ON and c.MODEL.FPN.NORM == "SyncBN"
    assert (c.SOLVER.MAX_ITER, c.SOLVER.STEPS) == (iters, steps)
    assert c.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)


def test_lvis_protocol():
    c = get_transfer_cfg(CONFIGS / "lvis_v1_mask_rcnn_R50_FPN.yaml")
    assert c.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert c.DATALOADER.REPEAT_THRESHOLD == 0.001
    assert c.MODEL.ROI_HEADS.NUM_CLASSES == 1203 and c.TEST.DETECTIONS_PER_IMAGE == 300
    assert c.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 1e-4 and c.SOLVER.MAX_ITER == 180000


def test_segmentation_protocols():
    c = get_transfer_cfg(CONFIGS / "cityscapes_fcn_R50_dilated.yaml")
    assert c.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19 and tuple(c.INPUT.CROP.SIZE) == (769, 769)
    assert (c.SOLVER.MAX_ITER, c.SOLVER.BASE_LR, c.SOLVER.IMS_PER_BATCH) == (40000, 0.01, 8)
    assert c.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and c.SOLVER.POLY_LR_POWER == 0.9
    assert c.SOLVER.WEIGHT_DECAY == 5e-4
    assert (c.MODEL.RESNETS.RES4_DILATION, c.MODEL.RESNETS.RES5_DILATION) == (2, 4)
    s = get_transfer_cfg(CONFIGS / "coco_stuff10k_fcn_R50.yaml")
    assert s.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 171 and s.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    assert tuple(s.INPUT.CROP.SIZE) == (512, 512)
    p = get_transfer_cfg(CONFIGS / "coco_stuff10k_linear_probe.yaml")
    assert (
        p.MODEL.LINEAR_PROBE.FEATURE == "res3.2" and p.MODEL.SEM_SEG_HEAD.NAME == "LinearProbeHead"
    )


def test_poly_schedule_ends_at_min_lr():
    import torch

    from cyborgs.transfer.solver import build_lr_scheduler

    c = get_transfer_cfg(CONFIGS / "cityscapes_fcn_R50_dilated.yaml", ["SOLVER.MAX_ITER", 100])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=c.SOLVER.BASE_LR)
    sched = build_lr_scheduler(c, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # mmseg poly: (base - min) * (1 - t)^0.9 + min
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[50] == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4, rel=1e-6)
    assert 1e-4 < lrs[-1] < 3e-4
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
