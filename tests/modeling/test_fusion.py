"""Multi-layer fusion (pool to the last grid, concat) and block taps of the backbone."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from cyborgs.modeling.backbone_taps import forward_taps, parse_tap, stages_needed, validate_taps
from cyborgs.modeling.fusion import fuse_features, fused_channels


def _r18():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.DEVICE = "cpu"
    return build_backbone(cfg).eval()


def test_fuse_pools_to_last_grid_and_concatenates():
    feats = {
        "res3": torch.randn(2, 128, 8, 8),
        "res4": torch.randn(2, 256, 4, 4),
        "res5": torch.randn(2, 512, 2, 2),
    }
    out = fuse_features(feats, ["res3", "res4", "res5"])
    assert out.shape == (2, 128 + 256 + 512, 2, 2)
    # res3 channel block is the 4x4 average of the 8x8 map
    expected = feats["res3"].reshape(2, 128, 2, 4, 2, 4).mean(dim=(3, 5))
    torch.testing.assert_close(out[:, :128], expected)
    torch.testing.assert_close(out[:, 128 + 256 :], feats["res5"])
    assert fused_channels({"res3": 128, "res4": 256, "res5": 512}, ["res3", "res4", "res5"]) == 896


def test_fuse_order_sets_grid_and_errors():
    feats = {"a": torch.randn(1, 3, 6, 6), "b": torch.randn(1, 5, 3, 3)}
    assert fuse_features(feats, ["b", "a"]).shape == (1, 8, 6, 6)  # the last name sets the grid
    with pytest.raises(KeyError, match="'c'"):
        fuse_features(feats, ["a", "c"])
    with pytest.raises(ValueError, match="FUSION_FEATURES"):
        fuse_features(feats, [])


def test_block_taps_match_stage_outputs_on_r18():
    bb = _r18()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = bb(x)
        taps = forward_taps(bb, x, ["res3.0", "res3.1", "res5", "res4"])
    assert list(taps) == ["res3.0", "res3.1", "res5", "res4"]
    torch.testing.assert_close(taps["res3.1"], ref["res3"])  # last block = the stage
    torch.testing.assert_close(taps["res5"], ref["res5"])
    assert taps["res3.0"].shape == (2, 128, 8, 8)
    assert not torch.allclose(taps["res3.0"], taps["res3.1"])
    fused = fuse_features(forward_taps(bb, x, ["res3", "res4", "res5"]), ["res3", "res4", "res5"])
    assert fused.shape == (2, 128 + 256 + 512, 2, 2)


def test_block_tap_errors_name_available_blocks():
    bb = _r18()
    with pytest.raises(ValueError, match=r"res3\.0', 'res3\.1'"):
        validate_taps(bb, ["res3.2"], "CYBORGS.BOOTSTRAP.FEATURES")
    with pytest.raises(ValueError, match="res6"):
        validate_taps(bb, ["res6"])
    with pytest.raises(ValueError, match="block index"):
        parse_tap("res3.x")
    assert stages_needed(["res3.2", "res4", "res3"]) == ["res3", "res4"]
