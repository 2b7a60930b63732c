"""Semantic-segmentation transfer heads (METHOD.md §6: Cityscapes / COCO-Stuff-10k).

- ``FCNHead``: mmseg's FCN head on a dilated ResNet (output stride 8), with its auxiliary
  FCN head on res4; used with detectron2's ``SemanticSegmentor``.
- ``build_frozen_block_backbone`` + ``LinearProbeHead``: the paper's frozen probe (§4, Fig. 5):
  the bootstrap feature (res3 block 2) of a frozen backbone, bilinearly upsampled to the image,
  and one trainable 1x1 conv.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, SEM_SEG_HEADS_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn


def _conv_norm_relu(in_ch: int, out_ch: int, norm: str) -> Conv2d:
    return Conv2d(
        in_ch,
        out_ch,
        kernel_size=3,
        padding=1,
        bias=not norm,
        norm=get_norm(norm, out_ch),
        activation=F.relu,
    )


def _upsample(x: torch.Tensor, stride: int, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None:
        return F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _FCNBranch(nn.Module):
    """convs -> (concat input -> conv) -> dropout -> 1x1 classifier (mmseg ``FCNHead``)."""

    def __init__(
        self,
        in_ch: int,
        ch: int,
        num_classes: int,
        num_convs: int,
        concat_input: bool,
        dropout: float,
        norm: str,
    ):
        super().__init__()
        convs = [_conv_norm_relu(in_ch if i == 0 else ch, ch, norm) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs)
        self.conv_cat = _conv_norm_relu(in_ch + ch, ch, norm) if concat_input else None
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(ch, num_classes, kernel_size=1)
        # mmseg initialises the classifier with N(0, 0.01), bias 0.
        nn.init.normal_(self.predictor.weight, 0, 0.01)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return self.predictor(self.dropout(y))


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(nn.Module):
    """FCN head on one stride-8 feature, plus an auxiliary FCN head (training only)."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        conv_dims: int,
        num_convs: int,
        concat_input: bool,
        dropout: float,
        norm: str,
        ignore_value: int,
        loss_weight: float,
        aux_in_feature: str,
        aux_conv_dims: int,
        aux_loss_weight: float,
    ):
        super().__init__()
        self.in_feature = in_feature
        self.common_stride = input_shape[in_feature].stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.head = _FCNBranch(
            input_shape[in_feature].channels,
            conv_dims,
            num_classes,
            num_convs,
            concat_input,
            dropout,
            norm,
        )
        self.aux_in_feature = aux_in_feature
        self.aux_loss_weight = aux_loss_weight
        if aux_in_feature:
            if input_shape[aux_in_feature].stride != self.common_stride:
                raise ValueError(
                    f"MODEL.FCN_HEAD.AUX_IN_FEATURE {aux_in_feature} has stride "
                    f"{input_shape[aux_in_feature].stride}, {in_feature} {self.common_stride}"
                )
            # mmseg's auxiliary head: one conv, no concat, same dropout.
            self.aux_head = _FCNBranch(
                input_shape[aux_in_feature].channels,
                aux_conv_dims,
                num_classes,
                1,
                False,
                dropout,
                norm,
            )

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        h, f = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.FCN_HEAD
        if len(h.IN_FEATURES) != 1:
            raise ValueError(
                f"FCNHead takes one feature, MODEL.SEM_SEG_HEAD.IN_FEATURES={h.IN_FEATURES}"
            )
        return {
            "input_shape": input_shape,
            "in_feature": h.IN_FEATURES[0],
            "num_classes": h.NUM_CLASSES,
            "conv_dims": h.CONVS_DIM,
            "num_convs": f.NUM_CONVS,
            "concat_input": f.CONCAT_INPUT,
            "dropout": f.DROPOUT,
            "norm": h.NORM,
            "ignore_value": h.IGNORE_VALUE,
            "loss_weight": h.LOSS_WEIGHT,
            "aux_in_feature": f.AUX_IN_FEATURE,
            "aux_conv_dims": f.AUX_CONVS_DIM,
            "aux_loss_weight": f.AUX_LOSS_WEIGHT,
        }

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = _upsample(logits, self.common_stride, tuple(targets.shape[-2:]))
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_value)

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None):
        logits = self.head(features[self.in_feature])
        if not self.training:
            return _upsample(logits, self.common_stride, None), {}
        losses = {"loss_sem_seg": self._loss(logits, targets) * self.loss_weight}
        if self.aux_in_feature:
            aux = self.aux_head(features[self.aux_in_feature])
            losses["loss_sem_seg_aux"] = self._loss(aux, targets) * self.aux_loss_weight
        return None, losses


class FrozenBlockFeatures(Backbone):
    """A frozen ResNet truncated after block ``block`` of stage ``stage`` (always eval mode).

    The whole stage is kept so that every pretrained tensor of the stages it uses loads (no
    "missing key" noise); blocks after ``block`` are simply not run.
    """

    def __init__(self, resnet: Backbone, stage: str, block: int):
        super().__init__()
        self.stem = resnet.stem
        self.stage_names = [n for n in ("res2", "res3", "res4", "res5") if hasattr(resnet, n)]
        self.stage_names = self.stage_names[: self.stage_names.index(stage) + 1]
        for n in self.stage_names:
            self.add_module(n, getattr(resnet, n))
        self.block = block
        self.feature_name = f"{stage}.{block}"
        self._stride = resnet.output_shape()[stage].stride  # built with OUT_FEATURES [stage]
        last = getattr(self, stage)[block]
        self._channels = last.out_channels
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBlockFeatures:
        # Frozen means frozen BN statistics as well.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        for n in self.stage_names[:-1]:
            x = getattr(self, n)(x)
        for blk in getattr(self, self.stage_names[-1])[: self.block + 1]:
            x = blk(x)
        return {self.feature_name: x}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {self.feature_name: ShapeSpec(channels=self._channels, stride=self._stride)}


def parse_block_feature(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(res[2-5])\.(\d+)", name)
    if not m:
        raise ValueError(f"MODEL.LINEAR_PROBE.FEATURE must look like 'res3.2', got {name!r}")
    return m.group(1), int(m.group(2))


@BACKBONE_REGISTRY.register()
def build_frozen_block_backbone(cfg, input_shape: ShapeSpec) -> FrozenBlockFeatures:
    stage, block = parse_block_feature(cfg.MODEL.LINEAR_PROBE.FEATURE)
    c = cfg.clone()
    c.defrost()
    c.MODEL.RESNETS.OUT_FEATURES = [stage]  # stages after it are not built
    c.MODEL.RESNETS.RES5_DILATION = 1  # irrelevant to the stages kept; detectron2 checks it
    resnet = build_resnet_backbone(c, input_shape)
    n_blocks = len(getattr(resnet, stage))
    if block >= n_blocks:
        raise ValueError(
            f"MODEL.LINEAR_PROBE.FEATURE {stage}.{block}: {stage} has {n_blocks} blocks"
        )
    return FrozenBlockFeatures(resnet, stage, block)


@SEM_SEG_HEADS_REGISTRY.register()
class LinearProbeHead(nn.Module):
    """One 1x1 conv on the bilinearly upsampled feature.

    Bilinear interpolation and a 1x1 conv are both linear per pixel and the interpolation
    weights sum to one, so conv-then-upsample equals upsample-then-conv exactly; we apply the
    conv at feature resolution (stride 8) and upsample the logits: same model, 64x cheaper.
    """

    @configurable
    def __init__(
        self, *, in_feature: str, in_channels: int, stride: int, num_classes: int, ignore_value: int
    ):
        super().__init__()
        self.in_feature = in_feature
        self.common_stride = stride
        self.ignore_value = ignore_value
        self.predictor = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.01)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        name = cfg.MODEL.LINEAR_PROBE.FEATURE
        if name not in input_shape:
            raise ValueError(f"LinearProbeHead: backbone gives {list(input_shape)}, not {name}")
        return {
            "in_feature": name,
            "in_channels": input_shape[name].channels,
            "stride": input_shape[name].stride,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None):
        logits = self.predictor(features[self.in_feature])
        if not self.training:
            return _upsample(logits, self.common_stride, None), {}
        logits = _upsample(logits, self.common_stride, tuple(targets.shape[-2:]))
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
        return None, {"loss_sem_seg": loss}
