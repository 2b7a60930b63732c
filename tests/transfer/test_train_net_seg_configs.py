"""Semantic-segmentation transfer: the demo twins train one step; the dilated backbone has
output stride 8 with detectron2 names; the probe is frozen and conv-then-upsample is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone

from cyborgs.config import fall_back_to_cpu
from cyborgs.transfer.preflight import preflight
from cyborgs.transfer.setup import get_transfer_cfg
from cyborgs.transfer.trainer import TransferTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"


def cpu_cfg(name: str, opts: list | None = None):
    """A transfer config built and run on the CPU (SyncBN -> BN where there is no CUDA)."""
    cfg = get_transfer_cfg(CONFIGS / name, opts)
    cfg.MODEL.DEVICE = "cpu"
    fall_back_to_cpu(cfg)
    return cfg


SEG_CONFIGS = [
    "demo_cityscapes_fcn_dilated.yaml",
    "demo_coco_stuff10k_fcn.yaml",
    "demo_coco_stuff10k_linear_probe.yaml",
]


@pytest.mark.parametrize("config", SEG_CONFIGS)
def test_seg_demo_config_trains_one_step(config, tiny_data_root, r18_converted_pkl, tmp_path):
    cfg = get_transfer_cfg(
        CONFIGS / config,
        ["MODEL.WEIGHTS", r18_converted_pkl, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 1,
         "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0],
    )  # fmt: skip
    preflight(cfg)
    cfg.DATASETS.TEST = ()
    trainer = TransferTrainer(cfg)
    trainer.resume_or_load(resume=False)  # raises unless every backbone tensor loaded
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    losses = trainer.storage.latest()
    assert torch.isfinite(torch.tensor(losses["total_loss"][0]))
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)]
    if "linear_probe" in config:
        assert sorted(changed) == ["sem_seg_head.predictor.bias", "sem_seg_head.predictor.weight"]
    else:
        assert "loss_sem_seg_aux" in losses
        assert any(k.startswith("backbone.res5.") for k in changed)  # end-to-end


@pytest.mark.parametrize("depth", [18, 50])
def test_dilated_backbone_output_stride_8(depth):
    opts = ["MODEL.RESNETS.DEPTH", depth, "MODEL.BACKBONE.FREEZE_AT", 2]
    if depth == 18:
        opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    cfg = cpu_cfg("cityscapes_fcn_R50_dilated.yaml", opts)
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert shapes["res4"].stride == 8 and shapes["res5"].stride == 8
    out = backbone(torch.zeros(1, 3, 64, 96))
    assert out["res5"].shape[-2:] == (8, 12) and out["res4"].shape[-2:] == (8, 12)
    # Same names and shapes as the plain ResNet, so converted weights load unchanged.
    plain = cfg.clone()
    plain.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    plain.MODEL.RESNETS.RES5_DILATION = 1
    plain_backbone = build_backbone(plain)
    ref = {k: v.shape for k, v in plain_backbone.state_dict().items()}
    assert {k: v.shape for k, v in backbone.state_dict().items()} == ref
    # ... and the same MODEL.BACKBONE.FREEZE_AT stages frozen.
    trainable = {k: p.requires_grad for k, p in backbone.named_parameters()}
    assert trainable == {k: p.requires_grad for k, p in plain_backbone.named_parameters()}
    assert not trainable["res2.0.conv1.weight"] and trainable["res3.0.conv1.weight"]
    # mmseg: only the block's first 3x3 conv is dilated (BasicBlock conv1, Bottleneck conv2);
    # per-block values in test_dilated_resnet_contract_dilation.py.
    first_3x3 = backbone.res5[1].conv1 if depth == 18 else backbone.res5[1].conv2
    assert first_3x3.dilation == (4, 4)
    assert backbone.res4[0].conv1.stride == (1, 1) and backbone.res4[0].shortcut.stride == (1, 1)


def test_probe_conv_then_upsample_equals_upsample_then_conv():
    torch.manual_seed(0)
    feat = torch.randn(2, 16, 6, 7)
    conv = torch.nn.Conv2d(16, 5, 1)
    a = F.interpolate(conv(feat), scale_factor=8, mode="bilinear", align_corners=False)
    b = conv(F.interpolate(feat, scale_factor=8, mode="bilinear", align_corners=False))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_probe_backbone_is_frozen_and_reads_res3_block2():
    cfg = cpu_cfg("coco_stuff10k_linear_probe.yaml")
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == ["res3.2"]
    assert backbone.output_shape()["res3.2"].stride == 8
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training
    x = torch.randn(1, 3, 64, 64)
    expected = backbone.res3[2](backbone.res3[1](backbone.res3[0](backbone.res2(backbone.stem(x)))))
    torch.testing.assert_close(backbone(x)["res3.2"], expected)
