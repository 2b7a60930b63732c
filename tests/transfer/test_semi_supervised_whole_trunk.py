"""Semi-supervised fine-tuning trains the whole ResNet (METHOD.md §6: "whole R50 + linear head").

detectron2's default MODEL.BACKBONE.FREEZE_AT 2 would freeze the stem and res2 (FrozenBatchNorm2d,
requires_grad False); the protocol fine-tunes every layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d

from cyborgs.transfer.image_data import build_pretrained_resnet, res5_dim
from cyborgs.transfer.semi_supervised import FinetuneSchedule, ResNetClassifier, build_optimizer
from cyborgs.transfer.voc07_svm import extract_features


def test_every_backbone_parameter_is_trained(r18_converted_pkl):
    torch.manual_seed(0)
    backbone = build_pretrained_resnet(r18_converted_pkl)
    model = ResNetClassifier(backbone, res5_dim(backbone), 5)
    assert not [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    assert all(p.requires_grad for p in backbone.parameters())

    opt, _ = build_optimizer(model, FinetuneSchedule(base_lr=0.1))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if id(p) not in in_opt]
    assert missing == []

    stem_w = backbone.stem.conv1.weight.detach().clone()
    stem_bn = backbone.stem.conv1.norm
    stem_mean = stem_bn.running_mean.clone()
    res2_w = backbone.res2[0].conv1.weight.detach().clone()
    model.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(backbone.stem.conv1.weight, stem_w)
    assert not torch.equal(backbone.res2[0].conv1.weight, res2_w)
    assert not torch.equal(stem_bn.running_mean, stem_mean)  # a BatchNorm that learns stats


def test_optimizer_refuses_a_partly_frozen_backbone(r18_converted_pkl):
    backbone = build_pretrained_resnet(r18_converted_pkl)
    backbone.freeze(2)  # what detectron2's default FREEZE_AT would have done
    model = ResNetClassifier(backbone, res5_dim(backbone), 5)
    with pytest.raises(ValueError, match="FREEZE_AT 0"):
        build_optimizer(model, FinetuneSchedule())


def test_svm_features_are_the_frozen_network_features(r18_converted_pkl, tmp_path):
    """The SVM protocol uses frozen features: with FREEZE_AT 0 the eval-mode features equal those
    of the same weights with every norm layer a FrozenBatchNorm2d (the loaded running stats)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    dicts = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        dicts.append({"file_name": str(path)})
    model = build_pretrained_resnet(r18_converted_pkl)
    model.train()  # extract_features must switch to eval itself
    feats = extract_features(model, dicts, 36, 32, batch_size=2, num_workers=0)

    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(build_pretrained_resnet(r18_converted_pkl))
    assert not [m for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ref = extract_features(frozen, dicts, 36, 32, batch_size=2, num_workers=0)
    np.testing.assert_allclose(feats, ref, atol=1e-5)
