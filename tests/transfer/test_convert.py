"""Checkpoint conversion: round trip, C4/FPN loading with every tensor equal, torchvision."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from cyborgs.engine.checkpoint import UnsafeCheckpointError, safe_load_pickle
from cyborgs.transfer.convert import (
    convert_checkpoint,
    detectron2_to_torchvision_name,
    extract_backbone_state_dict,
    infer_depth,
)
from cyborgs.transfer.verify import load_and_check, verify_transfer_loading

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"


def resnet_state(depth: int, seed: int) -> dict[str, torch.Tensor]:
    """A detectron2 ResNet state_dict with random (non-default) values, BN buffers included."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    g = torch.Generator().manual_seed(seed)
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    return {
        k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone())
        for k, v in state.items()
    }


def write_cyborgs_checkpoint(path, depth: int) -> tuple[dict, dict]:
    """The pretrainer's layout: {'model': meta-arch state_dict, 'iteration': ...}."""
    online, target = resnet_state(depth, 0), resnet_state(depth, 1)
    model = {"backbone." + k: v for k, v in online.items()}
    model.update({"target_backbone." + k: v for k, v in target.items()})
    model["projector.net.0.weight"] = torch.zeros(8, 4)
    model["predictor.net.0.weight"] = torch.zeros(8, 4)
    torch.save({"model": model, "iteration": 7}, path)
    return online, target


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_depth_is_inferred_from_the_key_set(depth):
    """Block counts per stage (He et al. Table 1) plus basic vs bottleneck blocks: R34 and R50
    share (3, 4, 6, 3) and differ only in the block type."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    with torch.device("meta"):  # key names only: no 170 MB of R101 weights
        state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    assert infer_depth(state) == depth
    assert infer_depth({k: v for k, v in state.items() if "num_batches_tracked" not in k}) == depth


@pytest.mark.parametrize("depth", [18, 50])
def test_round_trip_and_transfer_loading(tmp_path, depth):
    ckpt = tmp_path / "model_final.pth"
    online, target = write_cyborgs_checkpoint(ckpt, depth)
    out = tmp_path / "backbone.pkl"
    convert_checkpoint(str(ckpt), str(out))

    data = safe_load_pickle(str(out))
    assert data["__author__"] == "CYBORGS" and data["matching_heuristics"] is True
    expected = {k for k in online if not k.endswith("num_batches_tracked")}
    assert set(data["model"]) == expected
    for k in expected:
        assert isinstance(data["model"][k], np.ndarray)
        np.testing.assert_array_equal(data["model"][k], online[k].numpy())

    # C4 (res5 in roi_heads.res5, R18 via basic-block res5) and FPN (backbone.bottom_up).
    reports = verify_transfer_loading(str(out), depth, CONFIGS, ("c4", "fpn"))
    n = len(expected)
    assert len(reports["fpn"].loaded) == n
    assert len(reports["c4"].loaded) == n
    assert any(k.startswith("roi_heads.res5.") for k in reports["c4"].loaded)
    assert all(k.startswith("backbone.bottom_up.") for k in reports["fpn"].loaded)


def test_target_source_and_bad_checkpoints(tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    _, target = write_cyborgs_checkpoint(ckpt, 18)
    out = tmp_path / "target.pkl"
    convert_checkpoint(str(ckpt), str(out), source="target")
    got = safe_load_pickle(str(out))["model"]
    np.testing.assert_array_equal(got["stem.conv1.weight"], target["stem.conv1.weight"].numpy())

    with pytest.raises(ValueError, match="--depth 50 but the weights are a ResNet-18"):
        convert_checkpoint(str(ckpt), str(tmp_path / "x.pkl"), depth=50)

    # A backbone with a tensor missing must not convert (would silently random-init it).
    sd = torch.load(ckpt, weights_only=True)
    del sd["model"]["backbone.res4.1.conv2.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing=\['res4.1.conv2.weight'\]"):
        convert_checkpoint(str(tmp_path / "broken.pth"), str(tmp_path / "b.pkl"))
    assert not (tmp_path / "b.pkl").exists()

    torch.save({"model": {"head.weight": torch.zeros(1)}}, tmp_path / "nobackbone.pth")
    with pytest.raises(KeyError, match="no online backbone found"):
        convert_checkpoint(str(tmp_path / "nobackbone.pth"), str(tmp_path / "c.pkl"))


def test_ddp_prefix_is_stripped():
    sd = {"module.backbone.stem.conv1.weight": torch.ones(1)}
    assert list(extract_backbone_state_dict({"model": sd})) == ["stem.conv1.weight"]


def test_check_catches_weights_that_did_not_land(tmp_path):
    ckpt = tmp_path / "ckpt.pth"
    write_cyborgs_checkpoint(ckpt, 18)
    out = tmp_path / "w.pkl"
    convert_checkpoint(str(ckpt), str(out))
    data = safe_load_pickle(str(out))
    # Renamed key: detectron2's heuristics skip it silently; the check must not.
    data["model"]["res3.0.conv1.weightX"] = data["model"].pop("res3.0.conv1.weight")
    with open(out, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(RuntimeError, match="res3.0.conv1.weight"):
        load_and_check(CONFIGS / "coco_mask_rcnn_R50_FPN_2x.yaml", str(out), 18, allow_unused=False)


def test_unsafe_pickle_is_refused(tmp_path):
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "__author__": "x", "f": print}, f)
    with pytest.raises(UnsafeCheckpointError, match="contains builtins.print"):
        safe_load_pickle(str(evil))


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_export_loads_strictly(tmp_path, depth):
    ckpt = tmp_path / "ckpt.pth"
    online, _ = write_cyborgs_checkpoint(ckpt, depth)
    out = tmp_path / "tv.pth"
    convert_checkpoint(str(ckpt), str(out), fmt="torchvision")
    state = torch.load(out, weights_only=True)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("fc.")})
    model.load_state_dict(state, strict=True)
    tv = model.state_dict()
    for k, v in online.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(tv[detectron2_to_torchvision_name(k)], v), k
    assert detectron2_to_torchvision_name("res2.0.shortcut.norm.running_mean") == (
        "layer1.0.downsample.1.running_mean"
    )
    assert detectron2_to_torchvision_name("stem.conv1.norm.weight") == "bn1.weight"
