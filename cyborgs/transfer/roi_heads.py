"""``Res5ROIHeadsExtraNorm``: the C4 ROI head of the VirTex / MoCo detection protocol.

MoCo's and VirTex's VOC detection configs (``Res5ROIHeadsExtraNorm``) add one normalisation
layer after the res5 block of detectron2's ``Res5ROIHeads``: with BN fine-tuning, the res5
output otherwise enters the box predictor un-normalised. The extra norm is a new head layer
(``roi_heads.res5.norm``), not part of the pretrained weights.

detectron2 always builds the C4 res5 with bottleneck blocks; for ResNet-18/34 (our CPU demo
twins) we build it from basic blocks instead so that a converted R18 loads fully.
"""

from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from torch import nn

# Blocks of the res5 stage per ResNet depth (torchvision / detectron2 layout).
_RES5_BLOCKS = {18: 2, 34: 3}


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    # Overrides detectron2's protected builder of the head's res5: v0.6 has no public hook
    # for the res5 block (VirTex's Res5ROIHeadsExtraNorm overrides the same method), and
    # Res5ROIHeads.__init__/from_config call it by this name.
    @classmethod
    def _build_res5_block(cls, cfg) -> tuple[nn.Sequential, int]:
        depth = cfg.MODEL.RESNETS.DEPTH
        if depth in _RES5_BLOCKS:
            # Basic-block res5 of R18/R34: stride 2, 256 -> 512 channels, names res5.{i}.*.
            out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
            blocks = ResNet.make_stage(
                BasicBlock,
                _RES5_BLOCKS[depth],
                stride_per_block=[2] + [1] * (_RES5_BLOCKS[depth] - 1),
                in_channels=out_channels // 2,
                out_channels=out_channels,
                norm=cfg.MODEL.RESNETS.NORM,
            )
            seq = nn.Sequential(*blocks)
        else:
            seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels
