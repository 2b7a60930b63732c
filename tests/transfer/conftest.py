"""Shared fixtures of the transfer tests."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from cyborgs.transfer.convert import convert_checkpoint


@pytest.fixture(scope="session")
def r18_converted_pkl(tmp_path_factory) -> str:
    """A seeded random R18 in a CYBORGS-shaped checkpoint, converted to the detectron2 .pkl."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    torch.manual_seed(0)
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    d = tmp_path_factory.mktemp("r18")
    torch.save({"model": {"backbone." + k: v for k, v in state.items()}}, d / "ckpt.pth")
    convert_checkpoint(str(d / "ckpt.pth"), str(d / "r18.pkl"))
    return str(d / "r18.pkl")
