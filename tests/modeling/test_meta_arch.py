"""The CYBORGS meta-architecture: building, training forward, gradients, EMA, features."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import cyborgs.modeling  # noqa: F401  (registers CYBORGS)
from cyborgs.config import add_cyborgs_config
from cyborgs.modeling.meta_arch import CYBORGS

SIZE = 64


def tiny_cfg():
    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "CYBORGS"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.INPUT.FORMAT = "RGB"
    cfg.CYBORGS.PROJECTOR_HIDDEN_DIM = 64
    cfg.CYBORGS.PROJECTOR_OUT_DIM = 32
    cfg.CYBORGS.AUG.CROP_SIZE = SIZE
    cfg.CYBORGS.NUM_SAMPLED_MASKS = 4
    cfg.CYBORGS.BOOTSTRAP.FEATURES = ["res3.1"]  # R18 has 2 blocks per stage
    return cfg


def two_view_batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(b):
        views = []
        for _ in range(2):
            mask = torch.zeros(SIZE, SIZE, dtype=torch.long)
            mask[:, SIZE // 2 :] = 1
            mask[SIZE // 2 :, :] += 2  # 4 quadrant ids
            views.append(
                {
                    "image": torch.randint(0, 256, (3, SIZE, SIZE), generator=g, dtype=torch.uint8),
                    "mask": mask,
                    "box": torch.tensor([0.0, 0.0, 80.0, 80.0]),
                    "flip": bool(i % 2),
                }
            )
        out.append({"image_id": i, "height": 100, "width": 100, "views": views})
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).train()


def test_builds_from_cfg_with_pretraining_backbone_settings(model):
    assert isinstance(model, CYBORGS)
    # FrozenBN / FREEZE_AT defaults of detectron2 are overridden for pretraining
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert model.projector[0].in_features == 128 + 256 + 512
    assert model.projector[3].out_features == 32
    assert not any(p.requires_grad for p in model.target_backbone.parameters())
    assert not any(p.requires_grad for p in model.target_projector.parameters())
    assert model.contrastive_weight == 1.0 and model.vmf_weight == 0.0
    assert model.vmf_num_clusters == 8


def test_builds_from_kwargs_and_validates_taps(model):
    kw = dict(
        fusion_features=["res5"],
        bootstrap_features=["res3.1"],
        projector_hidden_dim=16,
        projector_out_dim=8,
        num_sampled_masks=2,
        max_mask_ids=257,
        temperature=0.1,
        vmf_kappa=10.0,
        vmf_k=4,
        vmf_kmeans_iters=3,
        vmf_inter_grid=3,
        vmf_distance="vmf",
        vmf_feature="bootstrap",
        contrastive_weight=1.0,
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
    )
    m = CYBORGS(backbone=model.backbone, **kw)
    assert m.projector[0].in_features == 512
    with pytest.raises(ValueError, match=r"BOOTSTRAP.FEATURES.*res3\.0', 'res3\.1'"):
        CYBORGS(backbone=model.backbone, **{**kw, "bootstrap_features": ["res3.2"]})
    with pytest.raises(ValueError, match="VMF.FEATURE"):
        CYBORGS(backbone=model.backbone, **{**kw, "vmf_feature": "bogus"})


def test_train_forward_losses_and_gradients(model):
    model.zero_grad(set_to_none=True)
    model.contrastive_weight, model.vmf_weight = 1.0, 0.0
    with EventStorage(0) as storage:
        losses = model(two_view_batch())
        assert set(losses) == {"loss_mask_contrastive"}
        loss = losses["loss_mask_contrastive"]
        assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
        logged = storage.latest()
        assert logged["cyborgs/mask_ids_view1"][0] == 4.0
    loss.backward()
    for mod in (model.backbone, model.projector, model.predictor):
        grads = [p.grad for p in mod.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads[-2:])
        assert sum(g.abs().sum() for g in grads if g is not None) > 0
    # stem gets a gradient too (FREEZE_AT 0)
    assert model.backbone.stem.conv1.weight.grad is not None
    for mod in (model.target_backbone, model.target_projector):
        assert all(p.grad is None for p in mod.parameters())


def test_weights_switch_terms_on_and_off(model):
    model.contrastive_weight, model.vmf_weight = 0.0, 1.0  # vMF warm-up
    model.vmf_num_clusters = 2
    with EventStorage(0) as storage:
        losses = model(two_view_batch(b=2, seed=1))
        assert "cyborgs/vmf_intra" in storage.latest()
    assert set(losses) == {"loss_vmf"} and torch.isfinite(losses["loss_vmf"])
    model.zero_grad(set_to_none=True)
    losses["loss_vmf"].backward()
    # only the stages up to the vMF feature (res3.1) are used in the warm-up
    assert model.backbone.res3[1].conv2.weight.grad is not None
    assert model.backbone.res5[0].conv1.weight.grad is None
    model.contrastive_weight, model.vmf_weight = 0.5, 0.1
    losses = model(two_view_batch(b=2, seed=1))  # no EventStorage: logging is skipped
    assert set(losses) == {"loss_mask_contrastive", "loss_vmf"}
    model.contrastive_weight, model.vmf_weight = 0.0, 0.0
    with pytest.raises(ValueError, match="no loss"):
        model(two_view_batch(b=2))
    model.contrastive_weight, model.vmf_weight = 1.0, 0.0


def test_contrastive_weight_scales_loss(model):
    batch = two_view_batch(b=2, seed=3)
    torch.manual_seed(5)
    base = model(batch)["loss_mask_contrastive"].detach()
    model.contrastive_weight = 0.25
    torch.manual_seed(5)
    scaled = model(batch)["loss_mask_contrastive"].detach()
    model.contrastive_weight = 1.0
    torch.testing.assert_close(scaled, 0.25 * base)


def test_update_target_ema_math():
    torch.manual_seed(1)
    m = build_model(tiny_cfg()).train()
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(torch.randn_like(p))
        for p in m.projector.parameters():
            p.add_(1.0)
        for b in m.backbone.buffers():
            b.add_(3)
    tgt_before = {k: v.clone() for k, v in m.target_backbone.state_dict().items()}
    proj_before = {k: v.clone() for k, v in m.target_projector.named_parameters()}
    m.update_target(0.9)
    on_params = dict(m.backbone.named_parameters())
    for k, p_t in m.target_backbone.named_parameters():
        torch.testing.assert_close(p_t, 0.9 * tgt_before[k] + 0.1 * on_params[k])
    on_proj = dict(m.projector.named_parameters())
    for k, p_t in m.target_projector.named_parameters():
        torch.testing.assert_close(p_t, 0.9 * proj_before[k] + 0.1 * on_proj[k])
    for k, b_t in m.target_backbone.named_buffers():
        torch.testing.assert_close(b_t, dict(m.backbone.named_buffers())[k], rtol=0, atol=0)
    m.update_target(0.0)
    for k, p_t in m.target_backbone.named_parameters():
        assert torch.equal(p_t, on_params[k])
    with pytest.raises(ValueError, match="momentum"):
        m.update_target(1.5)


def test_extract_features_eval_mode_and_restores_training(model):
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    feats = model.extract_features(x, ["res3.1", "res5"])
    assert feats["res3.1"].shape == (2, 128, 8, 8) and feats["res5"].shape == (2, 512, 2, 2)
    assert model.backbone.training  # mode restored
    # eval mode: per-image result independent of the rest of the batch (running stats)
    one = model.extract_features(x[:1].float(), ["res5"])["res5"]
    torch.testing.assert_close(one, feats["res5"][:1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.extract_features(x[:, :1], ["res5"])


def test_online_and_target_of_a_view_share_sampled_ids(model, monkeypatch):
    import cyborgs.modeling.meta_arch as ma

    calls = []
    real = ma.pool_by_mask

    def spy(features, grid, ids):
        calls.append((features.requires_grad, ids.clone()))
        return real(features, grid, ids)

    monkeypatch.setattr(ma, "pool_by_mask", spy)
    model(two_view_batch(b=2, seed=4))
    # per view: online (grad) then target (no grad), with the very same ids
    assert [c[0] for c in calls] == [True, False, True, False]
    assert torch.equal(calls[0][1], calls[1][1]) and torch.equal(calls[2][1], calls[3][1])
    assert calls[0][1].shape == (2, model.num_sampled_masks)


@pytest.mark.parametrize("feature,channels,hw", [("bootstrap", 128, 8), ("fused", 896, 2)])
def test_vmf_loss_sees_the_configured_feature(model, monkeypatch, feature, channels, hw):
    seen = {}
    real = model.vmf_loss.forward

    def spy(online, target, boxes, flips, num_clusters=None):
        seen.update(online=online, target=target, boxes=boxes, flips=flips, k=num_clusters)
        return real(online, target, boxes, flips, num_clusters=num_clusters)

    monkeypatch.setattr(model.vmf_loss, "forward", spy)
    monkeypatch.setattr(model, "vmf_feature", feature)
    model.contrastive_weight, model.vmf_weight, model.vmf_num_clusters = 0.0, 0.5, 3
    try:
        batch = two_view_batch(b=2, seed=2)
        model(batch)
    finally:
        model.contrastive_weight, model.vmf_weight = 1.0, 0.0
    assert seen["online"][0].shape == (2, channels, hw, hw) and seen["online"][0].requires_grad
    assert not seen["target"][1].requires_grad
    assert seen["boxes"].shape == (2, 2, 4) and seen["flips"].tolist() == [
        [False, False],
        [True, True],
    ]
    assert seen["k"] == 3


def test_mapper_output_trains_end_to_end(model, tmp_path):
    """The two-view mapper's items are valid model input (the data/model contract)."""
    import numpy as np
    from PIL import Image

    from cyborgs.data.two_view_mapper import TwoViewDatasetMapper

    cfg = tiny_cfg()
    cfg.CYBORGS.MASKS.SOURCE = "grid"
    cfg.CYBORGS.MASKS.GRID_SIZE = 4
    cfg.DATASETS.TRAIN = ("unused",)
    mapper = TwoViewDatasetMapper(cfg)
    rng = np.random.default_rng(0)
    items = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        items.append(mapper({"file_name": str(tmp_path / f"{i}.png"), "image_id": i}))
    model.vmf_weight = 0.1
    try:
        losses = model(items)
    finally:
        model.vmf_weight = 0.0
    assert set(losses) == {"loss_mask_contrastive", "loss_vmf"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_default_r50_layer_names_follow_the_spec_table():
    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "CYBORGS"
    cfg.MODEL.DEVICE = "cpu"
    cfg.CYBORGS.PROJECTOR_HIDDEN_DIM = 8  # keep the heads small; the backbone is the point
    m = build_model(cfg)
    # res3+res4+res5 fused: 512+1024+2048; res3.2 = third block of res3 exists in R50
    assert m.projector[0].in_features == 3584
    assert m.bootstrap_features == ["res3.2"] and len(m.backbone.res3) == 4
    feats = m.extract_features(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["res3.2"])
    assert feats["res3.2"].shape == (1, 512, 8, 8)


@pytest.mark.slow
def test_a_few_sgd_steps_lower_the_contrastive_loss():
    torch.manual_seed(0)
    m = build_model(tiny_cfg()).train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    batch = two_view_batch(b=4, seed=11)
    losses = []
    for _ in range(12):
        loss = m(batch)["loss_mask_contrastive"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.update_target(0.9)
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
