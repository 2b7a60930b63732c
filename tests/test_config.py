"""validate_cyborgs_config: every shipped config passes; each bad value fails up front, naming
the key, the value and what was expected, before data sets are sized or the model is built."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from cyborgs.config import (
    ConfigError,
    add_cyborgs_config,
    fall_back_to_cpu,
    res2_out_channels,
    validate_cyborgs_config,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "pretrain_configs").rglob("*.yaml"))


def _cfg(*opts):
    cfg = add_cyborgs_config(get_cfg())
    cfg.merge_from_list(list(opts))
    return cfg


def test_configs_are_found() -> None:
    names = {p.name for p in CONFIGS}
    assert {"Base-CYBORGS.yaml", "demo_R18.yaml", "cyborgs_R50_coco_800ep.yaml"} <= names
    assert sum(p.parent.name == "ablations" for p in CONFIGS) >= 30


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = add_cyborgs_config(get_cfg())
    cfg.merge_from_file(str(path))
    cfg.freeze()
    # the paper's global batch 64 on 1 process and on 8 GPUs; the call is idempotent
    for world_size in (1, 8, 8):
        validate_cyborgs_config(cfg, world_size=world_size)


# (opts, pieces the message must contain)
BAD = [
    (["CYBORGS.BOOTSTRAP.K_MIN", 20, "CYBORGS.BOOTSTRAP.K_MAX", 5], ["K_MIN = 20", "K_MAX = 5"]),
    (["CYBORGS.BOOTSTRAP.K_MAX", 300], ["CYBORGS.BOOTSTRAP.K_MAX = 300", "[2, 256]", "uint8"]),
    (["CYBORGS.BOOTSTRAP.K_MIN", 1], ["CYBORGS.BOOTSTRAP.K_MIN = 1", "[2, 256]"]),
    # K must fit the mask-id one-hot of the contrastive loss (ids 0..MAX_MASK_IDS-1)
    (["CYBORGS.MAX_MASK_IDS", 81], ["CYBORGS.BOOTSTRAP.K_MAX = 256", "[2, 80]"]),
    # R50's res3 has 4 blocks (res3.0..res3.3)
    (
        ["CYBORGS.BOOTSTRAP.FEATURES", ["res3.4"]],
        ["CYBORGS.BOOTSTRAP.FEATURES", "'res3.4'", "0..3"],
    ),
    # R18's res3 has 2: the paper's res3.2 does not exist there
    (
        ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64],
        ["CYBORGS.BOOTSTRAP.FEATURES", "'res3.2'", "ResNet-18", "res3.1"],
    ),
    (["CYBORGS.FUSION_FEATURES", ["res4", "res6"]], ["CYBORGS.FUSION_FEATURES", "'res6'"]),
    (["CYBORGS.FUSION_FEATURES", []], ["CYBORGS.FUSION_FEATURES", "non-empty"]),
    (["MODEL.RESNETS.DEPTH", 42], ["MODEL.RESNETS.DEPTH = 42"]),
    (["CYBORGS.TEMPERATURE", 0.0], ["CYBORGS.TEMPERATURE = 0.0", "> 0"]),
    (["CYBORGS.VMF.KAPPA", -1.0], ["CYBORGS.VMF.KAPPA = -1.0", "> 0"]),
    (["CYBORGS.VMF.K", 1], ["CYBORGS.VMF.K = 1"]),
    (["CYBORGS.EMA.BASE_MOMENTUM", 1.5], ["CYBORGS.EMA.BASE_MOMENTUM = 1.5", "[0, 1]"]),
    (["CYBORGS.AUG.FLIP_PROB", 1.5], ["CYBORGS.AUG.FLIP_PROB = 1.5", "[0, 1]"]),
    (["CYBORGS.AUG.SOLARIZE_PROB", (0.0, -0.2)], ["CYBORGS.AUG.SOLARIZE_PROB = -0.2"]),
    (["CYBORGS.AUG.CROP_SCALE", (0.5, 0.1)], ["CYBORGS.AUG.CROP_SCALE", "lo <= hi"]),
    (["CYBORGS.MASKS.SOURCE", "watershed"], ["CYBORGS.MASKS.SOURCE = 'watershed'", "bootstrap"]),
    (["CYBORGS.VMF.FEATURE", "res4"], ["CYBORGS.VMF.FEATURE = 'res4'", "fused"]),
    (["CYBORGS.VMF.K_SAMPLING", "per_epoch"], ["CYBORGS.VMF.K_SAMPLING = 'per_epoch'", "uniform"]),
    (["CYBORGS.VMF.KMEANS_BACKEND", "sklearn"], ["CYBORGS.VMF.KMEANS_BACKEND = 'sklearn'"]),
    (["CYBORGS.GPU.BF16", "maybe"], ["CYBORGS.GPU.BF16", "maybe"]),
    (["CYBORGS.AUG.DEVICE", "gpu"], ["CYBORGS.AUG.DEVICE", "gpu"]),
    # res3.2 has stride 8
    (["CYBORGS.BOOTSTRAP.BORDER_PAD", 12], ["CYBORGS.BOOTSTRAP.BORDER_PAD = 12", "stride 8"]),
    (["SOLVER.EPOCHS", 10, "SOLVER.WARMUP_EPOCHS", 20], ["SOLVER.WARMUP_EPOCHS = 20", "10"]),
    (
        ["SOLVER.EPOCHS", 100, "SOLVER.EPOCH_SCHEDULE", "step"],  # STEP_EPOCHS (768, 784)
        ["SOLVER.STEP_EPOCHS", "SOLVER.EPOCHS = 100"],
    ),
    (["SOLVER.OPTIMIZER", "Adam"], ["SOLVER.OPTIMIZER = 'Adam'", "LARS"]),
    (["SOLVER.BASE_LR", float("nan")], ["SOLVER.BASE_LR = nan"]),
    (["SOLVER.CHECKPOINT_PERIOD", 0], ["SOLVER.CHECKPOINT_PERIOD = 0"]),
    (["SOLVER.AMP.ENABLED", True], ["SOLVER.AMP.ENABLED = True"]),
]


@pytest.mark.parametrize("opts,pieces", BAD, ids=[" ".join(map(str, o[:2])) for o, _ in BAD])
def test_bad_value_names_key_value_and_expectation(opts, pieces) -> None:
    cfg = _cfg(*opts)
    with pytest.raises(ConfigError) as e:
        validate_cyborgs_config(cfg, world_size=1)
    assert isinstance(e.value, ValueError)
    for piece in pieces:
        assert piece in str(e.value), (piece, str(e.value))


def test_batch_must_divide_over_processes() -> None:
    cfg = _cfg("SOLVER.IMS_PER_BATCH", 64)
    validate_cyborgs_config(cfg, world_size=8)
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH = 64: .*multiple of the 3"):
        validate_cyborgs_config(cfg, world_size=3)


def test_a_run_that_never_leaves_the_warmup_is_a_warning() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("cyborgs.config")
    log.addHandler(handler)
    try:
        cfg = _cfg("SOLVER.EPOCHS", 4, "SOLVER.WARMUP_EPOCHS", 1, "CYBORGS.VMF.WARMUP_EPOCHS", 5)
        validate_cyborgs_config(cfg, world_size=1)  # legal
    finally:
        log.removeHandler(handler)
    assert any("the whole run is the vMF warm-up" in r.getMessage() for r in records)


def test_trainer_rejects_inverted_k_range_before_sizing_the_data(monkeypatch, tmp_path) -> None:
    """Library users get the check too, before the (slow) data set sizing and model build."""
    from cyborgs.engine.trainer import CyborgsTrainer

    def never(*a, **k):
        raise AssertionError("reached data set sizing / model construction")

    monkeypatch.setattr(CyborgsTrainer, "dataset_size", classmethod(never))
    monkeypatch.setattr(CyborgsTrainer, "build_model", classmethod(never))
    cfg = _cfg("CYBORGS.BOOTSTRAP.K_MIN", 20, "CYBORGS.BOOTSTRAP.K_MAX", 5)
    cfg.OUTPUT_DIR = str(tmp_path)
    with pytest.raises(ConfigError, match="K_MIN = 20 > CYBORGS.BOOTSTRAP.K_MAX = 5"):
        CyborgsTrainer(cfg)


def test_model_and_bootstrap_hook_construction_validate() -> None:
    from detectron2.modeling import build_model

    import cyborgs.modeling  # noqa: F401  (registers CYBORGS)
    from cyborgs.bootstrap.hook import BootstrapHook

    cfg = _cfg(
        "MODEL.META_ARCHITECTURE", "CYBORGS", "MODEL.DEVICE", "cpu",
        "CYBORGS.BOOTSTRAP.K_MIN", 20, "CYBORGS.BOOTSTRAP.K_MAX", 5,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="K_MIN = 20"):
        build_model(cfg)
    with pytest.raises(ConfigError, match="K_MIN = 20"):
        BootstrapHook(cfg, iters_per_epoch=1)


def test_pretrain_net_setup_rejects_before_writing_anything(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("pretrain_net", REPO / "tools/pretrain_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "run"
    args = tool.get_parser().parse_args(
        [
            "--config-file", str(REPO / "pretrain_configs" / "demo_R18.yaml"),
            "CYBORGS.BOOTSTRAP.K_MIN", "20", "CYBORGS.BOOTSTRAP.K_MAX", "5",
            "OUTPUT_DIR", str(out),
        ]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="K_MIN = 20"):
        tool.setup(args)
    assert not out.exists()


def test_res2_out_channels_follows_block_type() -> None:
    # detectron2's basic-block ResNets (R18/R34) have 64 res2 channels, bottleneck ones 4 x 64.
    assert [res2_out_channels(d) for d in (18, 34, 50, 101, 152)] == [64, 64, 256, 256, 256]
    with pytest.raises(ValueError, match="depth 20"):
        res2_out_channels(20)


def test_fall_back_to_cpu_without_cuda(monkeypatch) -> None:
    import torch

    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.RESNETS.NORM = "SyncBN"
    cfg.MODEL.FPN.NORM = "SyncBN"
    cfg.MODEL.DEVICE = "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fall_back_to_cpu(cfg) == [] and cfg.MODEL.DEVICE == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    notes = fall_back_to_cpu(cfg)
    assert (cfg.MODEL.DEVICE, cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == ("cpu", "BN", "BN")
    assert len(notes) == 3 and all("CUDA is not available" in n for n in notes)
    assert fall_back_to_cpu(cfg) == []  # nothing left to change
