"""ResNet with output stride 8 (dilated res4 and res5) that keeps detectron2's weight names.

detectron2 v0.6 can only dilate res5 (``RES5_DILATION``), giving output stride 16. The FCN
protocols (mmseg "R50-D8", METHOD.md §6) need stride 8: res4 stride 1 / dilation 2, res5 stride 1 /
dilation 4, as mmseg's ``fcn_r50-d8`` backbone (``dilations=(1, 1, 2, 4)``,
``strides=(1, 2, 1, 1)``, ``contract_dilation=True``). mmseg's ``ResLayer`` contracts the first
block of a dilated stage to ``dilation // 2``, so the blocks' 3x3 dilations are res4
``[1, 2, 2, 2, 2, 2]`` and res5 ``[2, 4, 4]`` for R50. Only the block's first 3x3 conv is
dilated (padding = dilation), as in mmseg: the Bottleneck's conv2, and the BasicBlock's conv1
(mmseg's BasicBlock leaves conv2 at dilation 1). We build the standard ResNet and then change
strides and dilations of the convolutions in place: parameter names and shapes are untouched,
so converted weights load as for C4/FPN (the stride-1 1x1 shortcut of the first block stays).
detectron2's ``ResNet`` derives each stage's output stride from its blocks' ``stride`` when it
is constructed, so re-wrapping the dilated stem and stages in a new ``ResNet`` makes
``output_shape()`` report the dilated strides (the same modules, hence the same names).
Known difference from mmseg's backbone: ResNetV1c's deep stem (three 3x3 convs) is not used,
the stem is the plain 7x7 one, because the pretrained checkpoints are standard ResNets.
"""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.modeling.backbone.resnet import build_resnet_backbone as _build_resnet
from torch import nn


def _dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Stride 1 everywhere in ``stage``; mmseg's ``contract_dilation=True`` dilations.

    Block 0 gets ``dilation // 2`` (mmseg ``ResLayer``), the others ``dilation``; in each block
    only the first 3x3 conv is dilated (mmseg's Bottleneck conv2 / BasicBlock conv1).
    """
    for index, block in enumerate(stage):
        block.stride = 1
        block_dilation = max(dilation // 2, 1) if index == 0 else dilation
        for conv in block.children():
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)  # the first block's stride 2 (conv1 or conv2, and shortcut)
        first_3x3 = next(
            conv
            for conv in (getattr(block, name, None) for name in ("conv1", "conv2", "conv3"))
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
        )
        first_3x3.dilation = (block_dilation, block_dilation)
        first_3x3.padding = (block_dilation, block_dilation)


@BACKBONE_REGISTRY.register()
def build_dilated_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2 ResNet with res4/res5 dilated by RES4_DILATION / RES5_DILATION (no stride)."""
    dilations = {"res4": cfg.MODEL.RESNETS.RES4_DILATION, "res5": cfg.MODEL.RESNETS.RES5_DILATION}
    # Build undilated and dilate here, also res5: one code path, and it works for R18/R34
    # (whose BasicBlock detectron2 refuses to dilate).
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.RESNETS.RES5_DILATION = 1
    model = _build_resnet(plain, input_shape)
    for name, stage in zip(model.stage_names, model.stages, strict=True):
        if dilations.get(name, 1) > 1:
            _dilate_stage(stage, dilations[name])
    # freeze_at=0: the FREEZE_AT stages were frozen by the first build and stay so.
    return ResNet(
        model.stem,
        [list(stage) for stage in model.stages],
        out_features=list(model.output_shape()),
        freeze_at=0,
    )
