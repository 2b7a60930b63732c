"""Shared pieces of the classification protocols: image lists, transforms, the ResNet trunk."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from cyborgs.config.resnet import res2_out_channels
from cyborgs.engine.weights_io import load_weights
from cyborgs.transfer.convert import infer_depth
from cyborgs.transfer.load_check import assert_backbone_loaded

# METHOD.md §6 pixel statistics (torchvision's), in [0, 1] units.
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def eval_transform(resize: int, crop: int) -> T.Compose:
    """Resize the shorter side, center crop (VirTex / ImageNet evaluation)."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(MEAN, STD)])


def train_transform(crop: int) -> T.Compose:
    return T.Compose(
        [T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
    )


class ImageList(Dataset):
    """Dataset dicts with ``file_name`` -> (image tensor, index)."""

    def __init__(self, dicts: list[dict], transform: T.Compose):
        self.dicts, self.transform = dicts, transform

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.dicts[i]["file_name"]) as im:
            return self.transform(im.convert("RGB")), i


def build_pretrained_resnet(weights: str | None, depth: int | None = None) -> ResNet:
    """detectron2 ResNet (BN, up to res5) holding the converted weights; every tensor checked.

    Nothing is frozen (``MODEL.BACKBONE.FREEZE_AT`` 0; detectron2's default 2 would turn the stem
    and res2 into FrozenBatchNorm2d with ``requires_grad`` False): the semi-supervised protocol
    fine-tunes the whole trunk (METHOD.md §6). The VOC07 SVM features are unaffected: they are taken
    in eval mode, where BatchNorm2d and FrozenBatchNorm2d both apply the loaded running stats.
    """
    state = None
    if weights:
        data = load_weights(weights, expect="pkl", purpose="a classification protocol's --weights")
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise ValueError(f"{weights}: expected a detectron2 .pkl with a 'model' dict")
        state = data["model"]
    if state is not None:
        found = infer_depth(state)
        if depth is not None and depth != found:
            raise ValueError(f"{weights}: --depth {depth} but the weights are a ResNet-{found}")
        depth = found
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = depth or 50
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2_out_channels(cfg.MODEL.RESNETS.DEPTH)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    if state is not None:
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(f"{weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        assert_backbone_loaded(model, state, weights)
    return model


def res5_dim(model: ResNet) -> int:
    return model.output_shape()["res5"].channels
