"""Every value of a pretraining config checked once, up front, one function per topic.

:func:`validate_cyborgs_config` runs them all; the one caller in the pipeline is
:func:`cyborgs.engine.setup.finalize_pretrain_cfg` (behind every entry point), so the model
(``CYBORGS.from_config``) and the bootstrap rounds (``RoundSettings.from_cfg``) can rely on a
validated config and need not check it again.
"""

from __future__ import annotations

import logging
import math
import re

from detectron2.config import CfgNode as CN

from .defaults import SWITCH_KEYS, SYNC_NORMS, VMF_FEATURES, get_key, parse_switch
from .registries import (
    KMEANS_BACKEND_REGISTRY,
    LOSS_TERM_REGISTRY,
    MASK_SOURCE_REGISTRY,
    VMF_DISTANCE_REGISTRY,
)
from .resnet import RESNET_BLOCKS, RESNET_BUILDERS, RESNET_STAGES, STAGE_STRIDES, parse_tap

__all__ = [
    "ConfigError",
    "canonical_switch",
    "check_augmentation",
    "check_bootstrap",
    "check_contrastive",
    "check_masks",
    "check_model",
    "check_solver",
    "check_switches",
    "check_vmf",
    "fall_back_to_cpu",
    "validate_cyborgs_config",
    "warn_unlikely_schedules",
]

logger = logging.getLogger(__name__)

# Label maps are uint8: ids 0..255.
_K_CAP = 256


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value, what is expected."""


def validate_cyborgs_config(cfg: CN, world_size: int | None = None) -> None:
    """Check every ``CYBORGS.*`` / pretraining ``SOLVER.*`` value that can be checked up front.

    Runs in milliseconds and touches no file and no data set; idempotent, so library users may
    call it on a config of their own.

    Args:
        cfg: a config with :func:`add_cyborgs_config` applied (frozen or not; not modified).
        world_size: processes sharing ``SOLVER.IMS_PER_BATCH``; default: the current process
            group's size (1 outside ``launch``).

    Raises:
        ConfigError (a ``ValueError``) naming the key, its value and what was expected.
        Settings that are legal but probably not what was meant (a schedule that never reaches
        a bootstrap round) are logged as warnings instead.
    """
    if not hasattr(cfg, "CYBORGS"):
        raise ConfigError("cfg has no CYBORGS node: call cyborgs.config.add_cyborgs_config(cfg)")
    strides = check_model(cfg)
    check_contrastive(cfg)
    check_augmentation(cfg)
    check_masks(cfg)
    check_bootstrap(cfg, strides)
    check_vmf(cfg)
    check_switches(cfg)
    check_solver(cfg, world_size)
    check_loss_term_weights(cfg)
    warn_unlikely_schedules(cfg)


def check_loss_term_weights(cfg: CN) -> None:
    """Every registered loss term's weight key exists and holds a finite number >= 0 (the
    terms' own keys need no check of their own: the "add a loss term" recipe of DESIGN.md)."""
    for name in _names(LOSS_TERM_REGISTRY):
        key = LOSS_TERM_REGISTRY.get(name).weight_key
        value = get_key(cfg, key, _ABSENT)
        if value is _ABSENT:
            raise ConfigError(
                f"{key}: the weight of loss term {name!r} is not a config key (declare it in "
                "cyborgs/config/defaults.py)"
            )
        _number(key, value, lo=0)


_ABSENT = object()


# ---- helpers: one message format for every key ----


def _fail(key: str, value, expected: str) -> None:
    raise ConfigError(f"{key} = {value!r}: expected {expected}")


def _is_num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _range_text(lo, hi, lo_open: bool) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" <= {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}]"


def _number(key: str, value, *, lo=None, hi=None, lo_open=False, integer=False, why="") -> None:
    what = ("an integer" if integer else "a finite number") + _range_text(lo, hi, lo_open)
    what += f" ({why})" if why else ""
    if integer and not (isinstance(value, int) and not isinstance(value, bool)):
        _fail(key, value, what)
    if not _is_num(value):
        _fail(key, value, what)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(key, value, what)
    if hi is not None and value > hi:
        _fail(key, value, what)


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        _fail(key, value, f"one of {sorted(allowed)}")


def _pair(key: str, value, n: int = 2) -> tuple:
    if not isinstance(value, list | tuple) or len(value) != n:
        _fail(key, value, f"a list of {n} values")
    return tuple(value)


def _names(registry) -> list[str]:
    return sorted(name for name, _ in registry)


# ---- topics ----


def check_model(cfg: CN) -> dict[str, int | None]:
    """Backbone, pixel statistics and the feature names of ``CYBORGS.FUSION_FEATURES`` /
    ``BOOTSTRAP.FEATURES``; returns each feature name's stride (None off ResNets)."""
    c, m = cfg.CYBORGS, cfg.MODEL
    depth = m.RESNETS.DEPTH
    resnet = m.BACKBONE.NAME in RESNET_BUILDERS
    if resnet:
        _choice("MODEL.RESNETS.DEPTH", depth, RESNET_BLOCKS)
        if depth in (18, 34) and m.RESNETS.RES2_OUT_CHANNELS != 64:
            _fail(
                "MODEL.RESNETS.RES2_OUT_CHANNELS",
                m.RESNETS.RES2_OUT_CHANNELS,
                f"64 for MODEL.RESNETS.DEPTH {depth} (detectron2's basic-block ResNets)",
            )
        _choice("MODEL.RESNETS.RES5_DILATION", m.RESNETS.RES5_DILATION, (1, 2))
    for v in _pair("MODEL.PIXEL_MEAN", m.PIXEL_MEAN, 3):
        _number("MODEL.PIXEL_MEAN", v)
    for v in _pair("MODEL.PIXEL_STD", m.PIXEL_STD, 3):
        _number("MODEL.PIXEL_STD", v, lo=0, lo_open=True)
    strides: dict[str, int | None] = {}
    for key, names in (
        ("CYBORGS.FUSION_FEATURES", c.FUSION_FEATURES),
        ("CYBORGS.BOOTSTRAP.FEATURES", c.BOOTSTRAP.FEATURES),
    ):
        if not isinstance(names, list | tuple) or not names:
            _fail(key, names, "a non-empty list of feature names such as ['res3', 'res4', 'res5']")
        for name in names:
            strides[name] = _check_feature_name(key, name, depth if resnet else None, m)
    return strides


def _check_feature_name(key: str, name, depth: int | None, model_cfg) -> int | None:
    """Validate one feature name (``res4``, ``res3.2``) against the ResNet depth; returns the
    map's stride (None for non-ResNet backbones, which the model checks when it is built)."""
    try:
        stage, block = parse_tap(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if depth is None:
        return None
    if stage == "stem":
        if block is not None:
            raise ConfigError(f"{key} = {name!r}: the stem has no blocks")
        return STAGE_STRIDES["stem"]
    if stage not in RESNET_STAGES:
        raise ConfigError(
            f"{key} = {name!r}: expected 'stem', one of {list(RESNET_STAGES)} or "
            "'<stage>.<block>' (e.g. 'res3.2')"
        )
    n_blocks = RESNET_BLOCKS[depth][RESNET_STAGES.index(stage)]
    if block is not None and block >= n_blocks:
        raise ConfigError(
            f"{key} = {name!r}: a ResNet-{depth} has {n_blocks} blocks in {stage}, so block "
            f"indices 0..{n_blocks - 1} (e.g. '{stage}.{n_blocks - 1}')"
        )
    stride = STAGE_STRIDES[stage]
    if stage == "res5" and model_cfg.RESNETS.RES5_DILATION == 2:
        stride = 16
    return stride


def check_contrastive(cfg: CN) -> None:
    """Stage 1, the mask-contrastive loss and its EMA target (paper §3.2)."""
    c = cfg.CYBORGS
    _number("CYBORGS.NUM_SAMPLED_MASKS", c.NUM_SAMPLED_MASKS, lo=1, integer=True)
    _number("CYBORGS.TEMPERATURE", c.TEMPERATURE, lo=0, lo_open=True)
    _number("CYBORGS.PROJECTOR_HIDDEN_DIM", c.PROJECTOR_HIDDEN_DIM, lo=1, integer=True)
    _number("CYBORGS.PROJECTOR_OUT_DIM", c.PROJECTOR_OUT_DIM, lo=1, integer=True)
    _number("CYBORGS.CONTRASTIVE_WEIGHT", c.CONTRASTIVE_WEIGHT, lo=0)
    _number("CYBORGS.EMA.BASE_MOMENTUM", c.EMA.BASE_MOMENTUM, lo=0, hi=1)
    _choice("CYBORGS.EMA.SCHEDULE", c.EMA.SCHEDULE, ("cosine", "constant"))


def check_augmentation(cfg: CN) -> None:
    """The two-view augmentation and the pretraining images' limits."""
    c = cfg.CYBORGS
    a = c.AUG
    _number("CYBORGS.AUG.CROP_SIZE", a.CROP_SIZE, lo=1, integer=True)
    _number("CYBORGS.DATA.MAX_IMAGE_PIXELS", c.DATA.MAX_IMAGE_PIXELS, lo=0, integer=True)
    lo, hi = _pair("CYBORGS.AUG.CROP_SCALE", a.CROP_SCALE)
    if not (_is_num(lo) and _is_num(hi) and 0 < lo <= hi <= 1):
        _fail("CYBORGS.AUG.CROP_SCALE", a.CROP_SCALE, "(lo, hi) with 0 < lo <= hi <= 1")
    lo, hi = _pair("CYBORGS.AUG.CROP_RATIO", a.CROP_RATIO)
    if not (_is_num(lo) and _is_num(hi) and 0 < lo <= hi):
        _fail("CYBORGS.AUG.CROP_RATIO", a.CROP_RATIO, "(lo, hi) with 0 < lo <= hi")
    for v in _pair("CYBORGS.AUG.COLOR_JITTER", a.COLOR_JITTER, 4):
        _number("CYBORGS.AUG.COLOR_JITTER", v, lo=0)
    for key in ("FLIP_PROB", "COLOR_JITTER_PROB", "GRAYSCALE_PROB"):
        _number(f"CYBORGS.AUG.{key}", a.get(key), lo=0, hi=1)
    for key in ("BLUR_PROB", "SOLARIZE_PROB"):
        for v in _pair(f"CYBORGS.AUG.{key}", a.get(key)):
            _number(f"CYBORGS.AUG.{key}", v, lo=0, hi=1)


def check_masks(cfg: CN) -> None:
    """The mask source and its parameters."""
    m = cfg.CYBORGS.MASKS
    _choice("CYBORGS.MASKS.SOURCE", m.SOURCE, _names(MASK_SOURCE_REGISTRY))
    _number("CYBORGS.MASKS.GRID_SIZE", m.GRID_SIZE, lo=1, hi=16, integer=True)
    _number("CYBORGS.MASKS.FH_SCALE", m.FH_SCALE, lo=0, lo_open=True)
    _number("CYBORGS.MASKS.FH_MIN_SIZE", m.FH_MIN_SIZE, lo=0)
    _number("CYBORGS.MASKS.FH_SIGMA", m.FH_SIGMA, lo=0)


def check_bootstrap(cfg: CN, strides: dict[str, int | None]) -> None:
    """Stage 2, the bootstrap rounds (paper §3.3); ``strides`` from :func:`check_model`."""
    b = cfg.CYBORGS.BOOTSTRAP
    why = "uint8 label maps"
    _number("CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", b.PERIOD_EPOCHS, lo=0, integer=True)
    _number("CYBORGS.BOOTSTRAP.GROUP_SIZE", b.GROUP_SIZE, lo=1, integer=True)
    _number("CYBORGS.BOOTSTRAP.K_MIN", b.K_MIN, lo=2, hi=_K_CAP, integer=True, why=why)
    _number("CYBORGS.BOOTSTRAP.K_MAX", b.K_MAX, lo=2, hi=_K_CAP, integer=True, why=why)
    if b.K_MIN > b.K_MAX:
        raise ConfigError(
            f"CYBORGS.BOOTSTRAP.K_MIN = {b.K_MIN} > CYBORGS.BOOTSTRAP.K_MAX = {b.K_MAX}: expected "
            f"2 <= K_MIN <= K_MAX <= {_K_CAP} (K ~ Uniform{{K_MIN..K_MAX}}; fix both for one K)"
        )
    _number("CYBORGS.BOOTSTRAP.KMEANS_ITERS", b.KMEANS_ITERS, lo=1, integer=True)
    _choice("CYBORGS.BOOTSTRAP.KMEANS_BACKEND", b.KMEANS_BACKEND, _kmeans_backends())
    _number("CYBORGS.BOOTSTRAP.INPUT_SIZE", b.INPUT_SIZE, lo=0, integer=True)
    _number("CYBORGS.BOOTSTRAP.BORDER_PAD", b.BORDER_PAD, lo=0, integer=True)
    stride = strides.get(b.FEATURES[-1])
    if b.BORDER_PAD and stride and b.BORDER_PAD % stride:
        _fail(
            "CYBORGS.BOOTSTRAP.BORDER_PAD",
            b.BORDER_PAD,
            f"a multiple of the stride {stride} of {b.FEATURES[-1]!r} (the bootstrap map's grid)",
        )
    _number("CYBORGS.BOOTSTRAP.BATCH_SIZE", b.BATCH_SIZE, lo=1, integer=True)
    _choice("CYBORGS.BOOTSTRAP.CRF", b.CRF, (True, False))


def _kmeans_backends() -> set[str]:
    return {"auto", *_names(KMEANS_BACKEND_REGISTRY)}


def check_vmf(cfg: CN) -> None:
    """The vMF warm-up and clustering-consistency term (paper §3.4)."""
    c = cfg.CYBORGS
    v = c.VMF
    _number("CYBORGS.WARMUP_EPOCHS", c.WARMUP_EPOCHS, lo=0, integer=True)
    _number("CYBORGS.VMF.KAPPA", v.KAPPA, lo=0, lo_open=True)
    # K = 1 makes the loss identically 0 (a softmax over one prototype).
    _number("CYBORGS.VMF.WARMUP_K", v.WARMUP_K, lo=2, integer=True)
    _choice("CYBORGS.VMF.K_SAMPLING", v.K_SAMPLING, ("uniform", "fixed"))
    _number("CYBORGS.VMF.K", v.K, lo=2, integer=True)
    _number("CYBORGS.VMF.LAMBDA", v.LAMBDA, lo=0)
    _number(
        "CYBORGS.VMF.PERIOD_EPOCHS",
        v.PERIOD_EPOCHS,
        lo=1,
        integer=True,
        why="turn the vMF term off after the warm-up with CYBORGS.VMF.LAMBDA 0",
    )
    _choice("CYBORGS.VMF.FEATURE", v.FEATURE, VMF_FEATURES)
    _choice("CYBORGS.VMF.DISTANCE", v.DISTANCE, _names(VMF_DISTANCE_REGISTRY))
    _number("CYBORGS.VMF.KMEANS_ITERS", v.KMEANS_ITERS, lo=1, integer=True)
    _number("CYBORGS.VMF.INTER_GRID", v.INTER_GRID, lo=1, integer=True)
    _choice("CYBORGS.VMF.KMEANS_BACKEND", v.KMEANS_BACKEND, _kmeans_backends())


def canonical_switch(value, key: str) -> str:
    """The switch value as "auto", "on" or "off" (None = "auto"; YAML booleans accepted)."""
    try:
        return parse_switch(value, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_switches(cfg: CN) -> None:
    """The "auto"/"on"/"off" switches (``SWITCH_KEYS``)."""
    for key in SWITCH_KEYS:
        canonical_switch(get_key(cfg, key), key)


def check_solver(cfg: CN, world_size: int | None = None) -> None:
    """Optimiser, LR schedule, checkpoints and the global batch (``world_size``: see
    :func:`validate_cyborgs_config`)."""
    s = cfg.SOLVER
    if str(s.OPTIMIZER).upper() not in ("LARS", "SGD"):
        _fail("SOLVER.OPTIMIZER", s.OPTIMIZER, "'LARS' or 'SGD'")
    _number("SOLVER.BASE_LR", s.BASE_LR, lo=0, lo_open=True)
    _number("SOLVER.MOMENTUM", s.MOMENTUM, lo=0, hi=1)
    if s.MOMENTUM == 1:
        _fail("SOLVER.MOMENTUM", s.MOMENTUM, "a number in [0, 1)")
    _number("SOLVER.WEIGHT_DECAY", s.WEIGHT_DECAY, lo=0)
    _number("SOLVER.LARS_TRUST_COEFFICIENT", s.LARS_TRUST_COEFFICIENT, lo=0, lo_open=True)
    _number("SOLVER.EPOCHS", s.EPOCHS, lo=0, lo_open=True)
    _number("SOLVER.LR_WARMUP_EPOCHS", s.LR_WARMUP_EPOCHS, lo=0, hi=s.EPOCHS)
    _choice("SOLVER.EPOCH_SCHEDULE", s.EPOCH_SCHEDULE, ("cosine", "step"))
    if s.EPOCH_SCHEDULE == "step":
        steps = list(s.STEP_EPOCHS)
        ok = all(_is_num(e) and 0 < e <= s.EPOCHS for e in steps)
        if not ok or steps != sorted(steps):
            _fail(
                "SOLVER.STEP_EPOCHS",
                s.STEP_EPOCHS,
                f"increasing epochs in (0, SOLVER.EPOCHS = {s.EPOCHS}]",
            )
        _number("SOLVER.GAMMA", s.GAMMA, lo=0, lo_open=True)
    _number("SOLVER.CHECKPOINT_PERIOD", s.CHECKPOINT_PERIOD, lo=1, integer=True)
    _number("SOLVER.CHECKPOINTS_TO_KEEP", s.CHECKPOINTS_TO_KEEP, lo=0, integer=True)
    _choice("SOLVER.STOP_ON_NONFINITE", s.STOP_ON_NONFINITE, (True, False))
    if s.AMP.ENABLED:
        _fail("SOLVER.AMP.ENABLED", s.AMP.ENABLED, "False (use CYBORGS.GPU.BF16 instead)")
    _number("SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH, lo=1, integer=True)
    if s.get("REFERENCE_WORLD_SIZE", 0):
        # detectron2's auto_scale_workers would rescale the batch the epochs are counted in.
        _fail("SOLVER.REFERENCE_WORLD_SIZE", s.REFERENCE_WORLD_SIZE, "0 (IMS_PER_BATCH is global)")
    if world_size is None:
        from detectron2.utils import comm

        world_size = comm.get_world_size()
    if s.IMS_PER_BATCH % int(world_size):
        _fail(
            "SOLVER.IMS_PER_BATCH",
            s.IMS_PER_BATCH,
            f"a multiple of the {world_size} processes (it is the global batch)",
        )
    _number("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, lo=0, integer=True)


def warn_unlikely_schedules(cfg: CN) -> None:
    """Legal, but probably not meant: logged as warnings."""
    c, s, b = cfg.CYBORGS, cfg.SOLVER, cfg.CYBORGS.BOOTSTRAP
    if c.WARMUP_EPOCHS >= s.EPOCHS:
        logger.warning(
            f"CYBORGS.WARMUP_EPOCHS = {c.WARMUP_EPOCHS} >= SOLVER.EPOCHS = {s.EPOCHS}: the "
            "whole run is the vMF warm-up (no contrastive loss, no bootstrap round)"
        )
    elif c.MASKS.SOURCE == "bootstrap" and 0 < b.PERIOD_EPOCHS and c.WARMUP_EPOCHS + 1 < s.EPOCHS:
        if not any(e % b.PERIOD_EPOCHS == 0 for e in range(c.WARMUP_EPOCHS + 1, int(s.EPOCHS))):
            logger.warning(
                f"CYBORGS.BOOTSTRAP.PERIOD_EPOCHS = {b.PERIOD_EPOCHS}: no round after the "
                f"post-warm-up one within SOLVER.EPOCHS = {s.EPOCHS}"
            )


def fall_back_to_cpu(cfg: CN) -> list[str]:
    """Without CUDA, run on the CPU: ``MODEL.DEVICE`` -> ``cpu`` and every synchronised norm
    (:data:`SYNC_NORMS`) of the backbone and heads -> ``BN``, in place on an unfrozen ``cfg``.
    Returns one note per change.

    torch's SyncBatchNorm refuses CPU tensors once a process group exists, and in one process it
    is plain BN anyway (same parameters and buffers, so checkpoints are interchangeable). With
    CUDA available nothing changes."""
    import torch

    device = str(cfg.MODEL.DEVICE)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        # checked first: a typo ("cpuu") must not be "fixed" to the CPU without CUDA
        raise ConfigError(f"MODEL.DEVICE = {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if torch.cuda.is_available():
        return []
    notes: list[str] = []
    if cfg.MODEL.DEVICE != "cpu":
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    for name in ("RESNETS", "FPN", "SEM_SEG_HEAD", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        node = cfg.MODEL.get(name)
        if node is not None and node.get("NORM") in SYNC_NORMS:
            notes.append(f"CUDA is not available: MODEL.{name}.NORM {node.NORM} -> BN")
            node.NORM = "BN"
    return notes
