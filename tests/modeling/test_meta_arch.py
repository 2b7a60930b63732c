"""The CYBORGS meta-architecture: building, training forward, gradients, EMA, features."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import cyborgs.modeling  # noqa: F401  (registers CYBORGS)
from cyborgs.config import add_cyborgs_config
from cyborgs.modeling.meta_arch import CYBORGS, ContrastiveSettings, InputSettings, VMFSettings

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


@pytest.mark.parametrize("norm", ["SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "BN"])
def test_heads_synchronise_when_the_backbone_does(norm):
    """BYOL synchronises its heads' BN when the backbone's is: with any of detectron2's
    synchronised norms (get_norm) the projector and predictor hold SyncBatchNorm, with BN they
    hold BatchNorm1d (built on the CPU: construction only, nothing runs)."""
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = norm
    m = build_model(cfg)
    heads = [*m.projector.modules(), *m.predictor.modules()]
    sync = [h for h in heads if isinstance(h, torch.nn.SyncBatchNorm)]
    plain = [h for h in heads if type(h) is torch.nn.BatchNorm1d]
    assert (len(sync), len(plain)) == ((2, 0) if norm != "BN" else (0, 2))


def test_builds_from_kwargs_and_validates_taps(model):
    kw = dict(
        bootstrap_features=["res3.1"],
        contrastive=ContrastiveSettings(
            fusion_features=("res5",),
            projector_hidden_dim=16,
            projector_out_dim=8,
            num_sampled_masks=2,
            max_mask_ids=257,
            temperature=0.1,
        ),
        vmf=VMFSettings(
            feature="BOOTSTRAP.FEATURES",
            kappa=10.0,
            k=4,
            kmeans_iters=3,
            inter_grid=3,
            distance="vmf",
        ),  # fmt: skip
        inputs=InputSettings(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3),
        loss_weights={"contrastive": 1.0},
    )
    m = CYBORGS(backbone=model.backbone, **kw)
    assert m.projector[0].in_features == 512
    with pytest.raises(ValueError, match=r"BOOTSTRAP.FEATURES.*res3\.0', 'res3\.1'"):
        CYBORGS(backbone=model.backbone, **{**kw, "bootstrap_features": ["res3.2"]})


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


@pytest.mark.parametrize(
    "feature,channels,hw", [("BOOTSTRAP.FEATURES", 128, 8), ("FUSION_FEATURES", 896, 2)]
)
def test_vmf_loss_sees_the_configured_feature(model, monkeypatch, feature, channels, hw):
    seen = {}
    real = model.vmf_loss.forward

    def spy(online, target, boxes, flips, num_clusters=None, seed=None):
        seen.update(
            online=online, target=target, boxes=boxes, flips=flips, k=num_clusters, seed=seed
        )
        return real(online, target, boxes, flips, num_clusters=num_clusters, seed=seed)

    monkeypatch.setattr(model.vmf_loss, "forward", spy)
    monkeypatch.setattr(model, "vmf_feature", feature)
    model.contrastive_weight, model.vmf_weight, model.vmf_num_clusters = 0.0, 0.5, 3
    model.vmf_step = 11
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
    assert seen["seed"] == 11  # the step seeds k-means, so resume draws the same prototypes


@pytest.mark.parametrize("aug_device", ["off", "on"])
def test_mapper_output_trains_end_to_end(model, tmp_path, aug_device):
    """The two-view mapper's items are valid model input (the data/model contract), with the
    photometric ops in the loader or deferred to the model (CYBORGS.AUG.DEVICE)."""
    import numpy as np
    from PIL import Image

    from cyborgs.pretrain_data.two_view_mapper import TwoViewDatasetMapper

    cfg = tiny_cfg()
    cfg.CYBORGS.AUG.DEVICE = aug_device
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
    assert all(("photometric" in v) == (aug_device == "on") for x in items for v in x["views"])
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


# ---------------------------------------------------------------- accelerator path (issue 6)
def build_gpu_variant(channels_last="off", bf16="off", device="cpu", seed=0):
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = device
    cfg.CYBORGS.GPU.CHANNELS_LAST = channels_last
    cfg.CYBORGS.GPU.BF16 = bf16
    torch.manual_seed(seed)
    return build_model(cfg).train()


def record_output_dtypes(module_by_name):
    """Forward hooks recording each module's output dtype; returns (log, handles)."""
    log = {name: [] for name in module_by_name}
    handles = [
        mod.register_forward_hook(lambda _m, _i, out, n=name: log[n].append(out.dtype))
        for name, mod in module_by_name.items()
    ]
    return log, handles


def test_gpu_switches_auto_is_off_on_cpu(model):
    # `model` is built with the defaults ("auto"): nothing of the GPU path applies on the CPU.
    assert model.channels_last_mode == "auto" and model.bf16_mode == "auto"
    assert not model.uses_channels_last and not model.uses_bf16
    w = model.backbone.stem.conv1.weight
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)
    log, handles = record_output_dtypes({"stem": model.backbone.stem})
    try:
        model(two_view_batch(b=2))
    finally:
        for h in handles:
            h.remove()
    assert log["stem"] and set(log["stem"]) == {torch.float32}


def test_bf16_on_runs_backbones_in_bf16_but_losses_and_grads_in_fp32(monkeypatch):
    import cyborgs.modeling.meta_arch as ma

    m = build_gpu_variant(bf16="on")
    assert m.uses_bf16
    m.vmf_weight, m.vmf_num_clusters = 0.5, 2
    log, handles = record_output_dtypes(
        {
            "online": m.backbone.res5,
            "target": m.target_backbone.res5,
            "online_res3_1": m.backbone.res3[1],
        }
    )
    pooled_dtypes = []
    real_pool = ma.pool_by_mask

    def spy_pool(features, grid, ids):
        pooled_dtypes.append(features.dtype)
        return real_pool(features, grid, ids)

    monkeypatch.setattr(ma, "pool_by_mask", spy_pool)
    vmf_inputs = []
    real_vmf = m.vmf_loss.forward

    def spy_vmf(online, target, *a, **kw):
        vmf_inputs.extend(t.dtype for t in (*online, *target))
        return real_vmf(online, target, *a, **kw)

    monkeypatch.setattr(m.vmf_loss, "forward", spy_vmf)
    try:
        losses = m(two_view_batch(b=2, seed=7))
    finally:
        for h in handles:
            h.remove()
    # inside: the backbones computed in bf16 (both views, online and target)
    assert log["online"] == [torch.bfloat16] * 2 and log["target"] == [torch.bfloat16] * 2
    # the vMF tap res3.1 (read block by block) too
    assert log["online_res3_1"] == [torch.bfloat16] * 2
    # outside: pooling / heads / losses see fp32
    assert pooled_dtypes and set(pooled_dtypes) == {torch.float32}
    assert vmf_inputs and set(vmf_inputs) == {torch.float32}
    assert set(losses) == {"loss_mask_contrastive", "loss_vmf"}
    for v in losses.values():
        assert v.dtype == torch.float32 and torch.isfinite(v)
    m.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    grads = [p.grad for p in m.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert m.backbone.stem.conv1.weight.grad.abs().sum() > 0
    assert m.backbone.stem.conv1.weight.dtype == torch.float32  # autocast never casts weights
    assert all(p.grad is None for p in m.target_backbone.parameters())


def test_bf16_off_gives_fp32_backbone_and_bf16_stays_close_to_it():
    off = build_gpu_variant(bf16="off")
    on = build_gpu_variant(bf16="on")
    on.load_state_dict(off.state_dict())
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    raw_off = off._run_backbone(off.backbone.eval(), off._normalize(x), ["res5"])["res5"]
    raw_on = on._run_backbone(on.backbone.eval(), on._normalize(x), ["res5"])["res5"]
    assert raw_off.dtype == torch.float32 and raw_on.dtype == torch.bfloat16
    f_off = off.extract_features(x, ["res3.1", "res5"])
    f_on = on.extract_features(x, ["res3.1", "res5"])
    for n in f_off:
        assert f_on[n].dtype == torch.float32 and f_on[n].is_contiguous()
        # bf16 keeps ~3 significant digits: the same features up to rounding, not other ones
        cos = torch.nn.functional.cosine_similarity(f_on[n].flatten(1), f_off[n].flatten(1))
        assert (cos > 0.99).all(), (n, cos)


def test_channels_last_on_converts_backbones_and_inputs_and_matches_off(monkeypatch):
    off = build_gpu_variant(channels_last="off")
    on = build_gpu_variant(channels_last="on")
    on.load_state_dict(off.state_dict())
    # load_state_dict copies into the existing (channels_last) parameters: layout kept
    for bb in (on.backbone, on.target_backbone):
        for name in ("stem.conv1.weight", "res3.0.conv2.weight", "res5.1.conv1.weight"):
            w = bb.get_parameter(name)
            assert w.is_contiguous(memory_format=torch.channels_last), name
            assert not w.is_contiguous(), name  # a real layout change, not a 1x1 coincidence
    assert off.backbone.stem.conv1.weight.is_contiguous()

    seen_inputs = []
    for m in (on.backbone.stem, on.target_backbone.stem):
        m.register_forward_pre_hook(
            lambda _m, args: seen_inputs.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
    batch = two_view_batch(b=2, seed=9)
    torch.manual_seed(3)  # same sampled mask ids in both models
    l_off = off(batch)["loss_mask_contrastive"]
    torch.manual_seed(3)
    l_on = on(batch)["loss_mask_contrastive"]
    assert seen_inputs == [True] * 4  # 2 views x (online, target)
    torch.testing.assert_close(l_on, l_off, rtol=1e-4, atol=1e-5)
    for m, loss in ((off, l_off), (on, l_on)):
        m.zero_grad(set_to_none=True)
        loss.backward()
    g_on = on.backbone.stem.conv1.weight.grad
    assert g_on.is_contiguous(memory_format=torch.channels_last)
    # Same gradient up to fp32 summation order, which BN backward on a 2-image batch (and
    # max-pool ties) amplify in the early layers: compare by relative norm, not elementwise.
    g_off = off.backbone.stem.conv1.weight.grad
    assert float((g_on - g_off).norm() / g_off.norm()) < 1e-2
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    f_on, f_off = on.extract_features(x, ["res5"])["res5"], off.extract_features(x, ["res5"])
    assert f_on.is_contiguous()  # the layout never leaks out of the backbone
    torch.testing.assert_close(f_on, f_off["res5"], rtol=1e-4, atol=1e-4)


def test_layout_follows_the_switch_on_device_moves_keeping_parameter_objects():
    m = build_gpu_variant(channels_last="on")
    params = list(m.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    # "auto" re-resolved at the next move: on the CPU it means the default layout again
    m.channels_last_mode = "auto"
    m.to("cpu")
    w = m.backbone.stem.conv1.weight
    assert w.is_contiguous() and not m._backbones_channels_last
    # same Parameter objects, so an optimizer built before the move still updates the model
    assert all(a is b for a, b in zip(params, m.parameters(), strict=True))
    assert opt.param_groups[0]["params"][0] is params[0]


@pytest.mark.parametrize("key", ["CHANNELS_LAST", "BF16"])
def test_invalid_gpu_switch_raises_naming_the_key(key):
    cfg = tiny_cfg()
    setattr(cfg.CYBORGS.GPU, key, "yes")
    with pytest.raises(ValueError, match=rf"CYBORGS\.GPU\.{key}.*'yes'"):
        build_model(cfg)


def test_vmf_kmeans_backend_comes_from_the_config():
    cfg = tiny_cfg()
    cfg.CYBORGS.VMF.KMEANS_BACKEND = "faiss"
    cfg.CYBORGS.GPU.BF16 = "OFF"  # case-insensitive
    m = build_model(cfg)
    assert m.vmf_loss.kmeans_backend == "faiss" and m.bf16_mode == "off"


@pytest.mark.gpu
def test_cuda_training_step_uses_bf16_and_channels_last_by_default():
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = "cuda"
    assert cfg.CYBORGS.GPU.BF16 == "auto" and cfg.CYBORGS.GPU.CHANNELS_LAST == "auto"
    torch.manual_seed(0)
    m = build_model(cfg).train()  # built on the CPU, then moved: "auto" must still apply
    assert m.uses_channels_last and m.uses_bf16
    for bb in (m.backbone, m.target_backbone):
        assert bb.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    m.vmf_weight, m.vmf_num_clusters = 0.1, 2
    log, handles = record_output_dtypes({"stem": m.backbone.stem, "res5": m.backbone.res5})
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    before = m.backbone.stem.conv1.weight.detach().clone()
    try:
        losses = m(two_view_batch(b=2, seed=5))
    finally:
        for h in handles:
            h.remove()
    assert set(log["stem"]) == {torch.bfloat16} and set(log["res5"]) == {torch.bfloat16}
    assert set(losses) == {"loss_mask_contrastive", "loss_vmf"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    opt.zero_grad()
    sum(losses.values()).backward()
    g = m.backbone.stem.conv1.weight.grad
    assert g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
    opt.step()
    m.update_target(0.99)
    assert not torch.equal(m.backbone.stem.conv1.weight.detach(), before)
    assert m.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
def test_cuda_switches_off_give_an_fp32_contiguous_backbone():
    """ "off" on CUDA: fp32 backbone outputs (no bf16 autocast) and contiguous (NCHW) weights."""
    cfg = tiny_cfg()
    cfg.MODEL.DEVICE = "cuda"
    cfg.CYBORGS.GPU.BF16, cfg.CYBORGS.GPU.CHANNELS_LAST = "off", "off"
    torch.manual_seed(0)
    m = build_model(cfg).train()
    assert not m.uses_bf16 and not m.uses_channels_last
    assert m.backbone.stem.conv1.weight.is_contiguous()
    assert not m.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    log, handles = record_output_dtypes({"stem": m.backbone.stem, "res5": m.backbone.res5})
    try:
        losses = m(two_view_batch(b=2, seed=5))
    finally:
        for h in handles:
            h.remove()
    assert set(log["stem"]) == {torch.float32} and set(log["res5"]) == {torch.float32}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_views_with_photometric_parameters_are_augmented_on_the_model_device(model):
    """CYBORGS.AUG.DEVICE: views carry drawn parameters; the model applies them (batched)
    before normalising, exactly as ``device_augment.apply_photometric`` on the stacked view."""
    import numpy as np

    from cyborgs.data.device_augment import apply_photometric, stack_photometric
    from cyborgs.pretrain_data.augment import ViewAugment

    batch = two_view_batch(b=3, seed=4)
    view = ViewAugment(size=SIZE, color_jitter_prob=1.0, grayscale_prob=0.5, solarize_prob=0.5)
    rng = np.random.default_rng(0)
    for x in batch:
        for v in x["views"]:
            v["photometric"] = view.draw_photometric(rng)
    images, *_ = model._unpack(batch)
    for v in range(2):
        params = [x["views"][v]["photometric"] for x in batch]
        raw = torch.stack([x["views"][v]["image"] for x in batch])
        want = model._normalize(apply_photometric(raw, stack_photometric(params, "cpu")))
        assert torch.equal(images[v], want)
        assert not torch.allclose(images[v], model._normalize(raw))
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(t) for t in losses.values())
    del batch[0]["views"][1]["photometric"]
    with pytest.raises(ValueError, match="photometric"):
        model._unpack(batch)
