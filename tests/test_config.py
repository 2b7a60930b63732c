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
    # one way to turn the vMF term off after the warm-up: LAMBDA 0
    (["CYBORGS.VMF.PERIOD_EPOCHS", 0], ["CYBORGS.VMF.PERIOD_EPOCHS = 0", "CYBORGS.VMF.LAMBDA 0"]),
    (["SOLVER.REFERENCE_WORLD_SIZE", 8], ["SOLVER.REFERENCE_WORLD_SIZE = 8"]),
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
    (["CYBORGS.DATA.MAX_IMAGE_PIXELS", -1], ["CYBORGS.DATA.MAX_IMAGE_PIXELS = -1", "integer"]),
    (["CYBORGS.AUG.SOLARIZE_PROB", (0.0, -0.2)], ["CYBORGS.AUG.SOLARIZE_PROB = -0.2"]),
    (["CYBORGS.AUG.CROP_SCALE", (0.5, 0.1)], ["CYBORGS.AUG.CROP_SCALE", "lo <= hi"]),
    (["CYBORGS.MASKS.SOURCE", "watershed"], ["CYBORGS.MASKS.SOURCE = 'watershed'", "bootstrap"]),
    (["CYBORGS.VMF.FEATURE", "res4"], ["CYBORGS.VMF.FEATURE = 'res4'", "FUSION_FEATURES"]),
    (["CYBORGS.VMF.K_SAMPLING", "per_epoch"], ["CYBORGS.VMF.K_SAMPLING = 'per_epoch'", "uniform"]),
    (["CYBORGS.VMF.KMEANS_BACKEND", "sklearn"], ["CYBORGS.VMF.KMEANS_BACKEND = 'sklearn'"]),
    (["CYBORGS.GPU.BF16", "maybe"], ["CYBORGS.GPU.BF16", "maybe"]),
    (["CYBORGS.AUG.DEVICE", "gpu"], ["CYBORGS.AUG.DEVICE", "gpu"]),
    # res3.2 has stride 8
    (["CYBORGS.BOOTSTRAP.BORDER_PAD", 12], ["CYBORGS.BOOTSTRAP.BORDER_PAD = 12", "stride 8"]),
    (["SOLVER.EPOCHS", 10, "SOLVER.LR_WARMUP_EPOCHS", 20], ["SOLVER.LR_WARMUP_EPOCHS = 20", "10"]),
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
        cfg = _cfg("SOLVER.EPOCHS", 4, "SOLVER.LR_WARMUP_EPOCHS", 1, "CYBORGS.WARMUP_EPOCHS", 5)
        validate_cyborgs_config(cfg, world_size=1)  # legal
    finally:
        log.removeHandler(handler)
    assert any("the whole run is the vMF warm-up" in r.getMessage() for r in records)


def test_setup_rejects_inverted_k_range_before_sizing_the_data(monkeypatch) -> None:
    """The one setup validates before the (slow) data set sizing."""
    import cyborgs.pretrain_data.pretrain_loader as loader
    from cyborgs.engine.setup import setup_pretrain_cfg

    def never(*a, **k):
        raise AssertionError("reached data set sizing")

    monkeypatch.setattr(loader, "pretrain_dataset_size", never)
    opts = ["CYBORGS.BOOTSTRAP.K_MIN", 20, "CYBORGS.BOOTSTRAP.K_MAX", 5]
    with pytest.raises(ConfigError, match="K_MIN = 20 > CYBORGS.BOOTSTRAP.K_MAX = 5"):
        setup_pretrain_cfg(str(REPO / "pretrain_configs" / "demo_R18.yaml"), opts, world_size=1)


def test_trainer_rejects_a_config_that_skipped_setup(monkeypatch, tmp_path) -> None:
    """Without the derived values the run length is unknown: refused before building anything."""
    from cyborgs.engine.trainer import CyborgsTrainer

    def never(*a, **k):
        raise AssertionError("reached model construction")

    monkeypatch.setattr(CyborgsTrainer, "build_model", classmethod(never))
    cfg = _cfg("OUTPUT_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="NUM_IMAGES = 0.*finalize_pretrain_cfg"):
        CyborgsTrainer(cfg)


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
    for bad in ("cpuu", "gpu", "cuda:x", ""):  # a typo is not turned into the CPU
        cfg.MODEL.DEVICE = bad
        with pytest.raises(ConfigError, match=f"MODEL.DEVICE = '{bad}': expected 'cpu', 'cuda'"):
            fall_back_to_cpu(cfg)
    cfg.MODEL.DEVICE = "cuda:1"
    assert fall_back_to_cpu(cfg) == ["CUDA is not available: MODEL.DEVICE cuda:1 -> cpu"]
    for norm in ("nnSyncBN", "naiveSyncBN", "naiveSyncBN_N"):  # detectron2's other sync norms
        cfg.MODEL.RESNETS.NORM = norm
        assert fall_back_to_cpu(cfg) == [f"CUDA is not available: MODEL.RESNETS.NORM {norm} -> BN"]
        assert cfg.MODEL.RESNETS.NORM == "BN"


def test_every_registered_loss_term_has_a_checked_weight_key() -> None:
    """A loss term brings no check of its own: validation reads each registered term's weight
    key (DESIGN.md "Add a loss term"): missing or negative is refused naming the key."""
    from cyborgs.config.registries import LOSS_TERM_REGISTRY

    class Extra:
        weight_key = "CYBORGS.EXTRA_WEIGHT"

    LOSS_TERM_REGISTRY._obj_map["extra"] = Extra  # no unregister in detectron2's Registry
    try:
        with pytest.raises(ConfigError, match=r"CYBORGS.EXTRA_WEIGHT: the weight of loss term"):
            validate_cyborgs_config(_cfg())
        cfg = _cfg()
        cfg.CYBORGS.EXTRA_WEIGHT = -0.5
        with pytest.raises(ConfigError, match=r"CYBORGS.EXTRA_WEIGHT = -0.5"):
            validate_cyborgs_config(cfg)
        cfg.CYBORGS.EXTRA_WEIGHT = 0.5
        validate_cyborgs_config(cfg)
    finally:
        del LOSS_TERM_REGISTRY._obj_map["extra"]
    bad = _cfg("CYBORGS.VMF.LAMBDA", -1.0)
    with pytest.raises(ConfigError, match=r"CYBORGS.VMF.LAMBDA = -1.0"):
        validate_cyborgs_config(bad)
