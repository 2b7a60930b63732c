"""ResNet with output stride 8 (dilated res4 and res5) that keeps detectron2's weight names.

detectron2 v0.6 can only dilate res5 (``RES5_DILATION``), giving output stride 16. The FCN
protocols (mmseg "R50-D8", SPEC §6) need stride 8: res4 stride 1 / dilation 2, res5 stride 1 /
dilation 4, every block of a stage with the same dilation (mmseg ``contract_dilation=False``).
We build the standard ResNet and then change strides and dilations of the convolutions in
place: parameter names and shapes are untouched, so converted weights load as for C4/FPN.
detectron2's ``ResNet`` derives each stage's output stride from its blocks' ``stride`` when it
is constructed, so re-wrapping the dilated stem and stages in a new ``ResNet`` makes
``output_shape()`` report the dilated strides (the same modules, hence the same names).
"""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import ResNet
from detectron2.modeling.backbone.resnet import build_resnet_backbone as _build_resnet
from torch import nn


def _dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    for block in stage:
        block.stride = 1
        for conv in block.children():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)  # the first block's stride 2 (conv1 or conv2, and shortcut)
            if conv.kernel_size[0] == 3:
                conv.dilation = (dilation, dilation)
                conv.padding = (dilation, dilation)


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
