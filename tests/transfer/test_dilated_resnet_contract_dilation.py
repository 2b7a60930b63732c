"""The dilated backbone follows mmseg's R50-D8 rule (``contract_dilation=True``).

mmseg's ``fcn_r50-d8`` backbone has ``dilations=(1, 1, 2, 4)``, ``strides=(1, 2, 1, 1)`` and
``contract_dilation=True``; its ``ResLayer`` gives the first block of a stage with dilation
d > 1 the dilation d // 2 and the other blocks d. The dilated conv is the block's first 3x3 conv
(Bottleneck conv2, BasicBlock conv1; mmseg's BasicBlock conv2 stays at dilation 1), with
padding = dilation, and every stride in res4/res5 is 1. The expected values are written out
here from that rule, not read back from the implementation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_backbone

from cyborgs.config import fall_back_to_cpu
from cyborgs.transfer.setup import get_transfer_cfg

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"
STAGE_DILATION = {"res2": 1, "res3": 1, "res4": 2, "res5": 4}  # mmseg dilations=(1, 1, 2, 4)


def _dilated_backbone(depth: int):
    opts = ["MODEL.RESNETS.DEPTH", depth]
    if depth == 18:
        opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    cfg = get_transfer_cfg(CONFIGS / "cityscapes_fcn_R50_dilated.yaml", opts)
    cfg.MODEL.DEVICE = "cpu"
    fall_back_to_cpu(cfg)
    return build_backbone(cfg)


def _mmseg_block_dilation(stage: str, index: int) -> int:
    d = STAGE_DILATION[stage]
    return d // 2 if (d > 1 and index == 0) else d


def test_r50_block_dilations_are_contracted_like_mmseg():
    backbone = _dilated_backbone(50).eval()
    got = {
        name: [block.conv2.dilation[0] for block in getattr(backbone, name)]
        for name in ("res4", "res5")
    }
    assert got == {"res4": [1, 2, 2, 2, 2, 2], "res5": [2, 4, 4]}


@pytest.mark.parametrize("depth", [18, 50])
def test_every_conv_matches_mmseg_rule_and_output_stride_is_8(depth):
    backbone = _dilated_backbone(depth).eval()
    dilated_name = "conv2" if depth == 50 else "conv1"  # the block's first 3x3 conv
    for stage in ("res2", "res3", "res4", "res5"):
        for index, block in enumerate(getattr(backbone, stage)):
            d = _mmseg_block_dilation(stage, index)
            for name, conv in block.named_children():
                if not isinstance(conv, torch.nn.Conv2d):
                    continue
                where = f"{stage}[{index}].{name}"
                k = conv.kernel_size[0]
                expected = d if name == dilated_name else 1
                assert conv.dilation == (expected, expected), where
                assert conv.padding == ((k // 2) * expected,) * 2, where
                if stage in ("res4", "res5"):
                    assert conv.stride == (1, 1), where  # incl. block 0's 1x1 shortcut
    shapes = backbone.output_shape()
    assert (shapes["res4"].stride, shapes["res5"].stride) == (8, 8)
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert out["res4"].shape[-2:] == (8, 8) and out["res5"].shape[-2:] == (8, 8)
