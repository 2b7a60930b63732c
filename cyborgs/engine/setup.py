"""The final, frozen config of a pretraining run, built one way for every entry point.

``tools/pretrain_net.py`` (``setup(args)`` and ``--plan-only``), ``tools/bootstrap_masks.py`` and
the benchmarks call :func:`setup_pretrain_cfg`; code that assembles a config itself (tests, a
library user) calls :func:`finalize_pretrain_cfg` on it. ``CyborgsTrainer`` takes the result
as detectron2's ``DefaultTrainer`` takes ``setup(args)``'s: it changes nothing in it.

What "final" means, in order (each step in exactly one place):

1. the "auto"/"on"/"off" switches written as those strings (YAML booleans accepted);
2. no CUDA: ``MODEL.DEVICE`` cpu and SyncBN -> BN (:func:`cyborgs.config.fall_back_to_cpu`);
3. every value checked (:func:`cyborgs.config.validate_cyborgs_config`), before anything slow;
4. the derived values (``cyborgs.config.DERIVED_KEYS``): ``CYBORGS.DATA.NUM_IMAGES`` (the data
   set counted once, here) and ``SOLVER.MAX_ITER = round(SOLVER.EPOCHS x iterations per
   epoch)``. The run length is ``SOLVER.EPOCHS``: a config that also sets ``SOLVER.MAX_ITER``
   (or ``NUM_IMAGES``) to anything but 0 or the derived value is rejected, never overwritten.
   The mask-id width is derived where it is used, from ``BOOTSTRAP.K_MAX``
   (:func:`cyborgs.config.mask_id_width`);
5. frozen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from detectron2.config import CfgNode, get_cfg

from cyborgs.config import (
    SWITCH_KEYS,
    ConfigError,
    add_cyborgs_config,
    canonical_switch,
    fall_back_to_cpu,
    get_key,
    set_key,
    validate_cyborgs_config,
)
from cyborgs.config_io import load_yaml_config
from cyborgs.solver.schedule import iters_per_epoch

__all__ = ["finalize_pretrain_cfg", "iters_per_epoch_of", "setup_pretrain_cfg"]


_YAML_BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}


def setup_pretrain_cfg(
    config_file: str,
    opts: Sequence[object] = (),
    *,
    num_images: int | None = None,
    world_size: int | None = None,
    schedule: bool = True,
) -> tuple[CfgNode, list[str]]:
    """detectron2 defaults + ``add_cyborgs_config`` + ``config_file`` + ``opts``, finalized.

    Args:
        config_file: a pretraining YAML (``_BASE_`` allowed); "" for the defaults alone.
        opts: ``KEY VALUE`` pairs as on the command line.
        num_images, world_size, schedule: see :func:`finalize_pretrain_cfg`.

    Returns:
        ``(cfg, notes)``: the frozen config, and one line per automatic change (CPU
        fallback) for the caller to log as warnings once its logger exists.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        ConfigError: a value that cannot work, naming the key (before the data set is read).
    """
    cfg = add_cyborgs_config(get_cfg())
    notes: list[str] = []
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file} does not exist")
        loaded = load_yaml_config(config_file)
        version = loaded.get("VERSION", cfg.VERSION)
        if version != cfg.VERSION:
            raise ConfigError(
                f"{config_file}: VERSION {version!r}, but pretraining configs are detectron2 "
                f"config version {cfg.VERSION}"
            )
        cfg.merge_from_other_cfg(CfgNode(loaded))
    # A YAML boolean merged over the (typeless) switch default is written as "on"/"off" first,
    # so that an override string merges over a string.
    _canonicalize_switches(cfg)
    cfg.merge_from_list(_switch_opts_as_strings(list(opts)))
    notes += finalize_pretrain_cfg(
        cfg, num_images=num_images, world_size=world_size, schedule=schedule
    )
    return cfg, notes


def finalize_pretrain_cfg(
    cfg: CfgNode,
    *,
    num_images: int | None = None,
    world_size: int | None = None,
    schedule: bool = True,
) -> list[str]:
    """Steps 1-5 of the module docstring, in place on a merged, unfrozen ``cfg``; returns the
    notes of :func:`setup_pretrain_cfg`.

    Args:
        num_images: pretraining images, when the caller knows them (``--plan-only --images``,
            tests); None: count ``DATASETS.TRAIN`` (``pretrain_dataset_size``).
        world_size: processes sharing ``SOLVER.IMS_PER_BATCH`` (validation); None: the
            current process group's.
        schedule: False for a config that trains nothing (offline bootstrap rounds,
            benchmarks): the derived keys stay 0 and the data set is not counted.
    """
    if cfg.is_frozen():
        raise ValueError("finalize_pretrain_cfg needs an unfrozen config (it freezes it)")
    _canonicalize_switches(cfg)
    notes = fall_back_to_cpu(cfg)
    validate_cyborgs_config(cfg, world_size=world_size)
    if schedule:
        if num_images is None:
            from cyborgs.pretrain_data.pretrain_loader import pretrain_dataset_size

            num_images = pretrain_dataset_size(cfg)
        _derive_schedule(cfg, int(num_images))
    cfg.freeze()
    return notes


def iters_per_epoch_of(cfg: CfgNode) -> int:
    """Iterations per epoch of a finalized config: ``ceil(NUM_IMAGES / IMS_PER_BATCH)``."""
    n = int(cfg.CYBORGS.DATA.NUM_IMAGES)
    if n <= 0:
        raise ConfigError(
            "CYBORGS.DATA.NUM_IMAGES = 0: the config was not finalized (build it with "
            "cyborgs.engine.setup.setup_pretrain_cfg or finalize_pretrain_cfg)"
        )
    return iters_per_epoch(n, int(cfg.SOLVER.IMS_PER_BATCH))


def _derive_schedule(cfg: CfgNode, num_images: int) -> None:
    s = cfg.SOLVER
    if num_images <= 0:
        raise ConfigError(
            f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)} has no images: nothing to pretrain on"
        )
    given = int(cfg.CYBORGS.DATA.NUM_IMAGES)
    if given not in (0, num_images):
        raise ConfigError(
            f"CYBORGS.DATA.NUM_IMAGES = {given}, but DATASETS.TRAIN "
            f"{list(cfg.DATASETS.TRAIN)} has {num_images} images: the key is derived (counted "
            "when the run starts, recorded in OUTPUT_DIR/config.yaml). Remove it, or reusing a "
            "dumped config.yaml, pass CYBORGS.DATA.NUM_IMAGES 0 SOLVER.MAX_ITER 0 on the command line."
        )
    ipe = iters_per_epoch(num_images, int(s.IMS_PER_BATCH))
    max_iter = int(round(s.EPOCHS * ipe))
    given = int(s.MAX_ITER)
    if given not in (0, max_iter):
        raise ConfigError(
            f"SOLVER.MAX_ITER = {given}: pretraining runs for SOLVER.EPOCHS = {s.EPOCHS} epochs "
            f"x {ipe} iterations/epoch = {max_iter} iterations, and SOLVER.MAX_ITER is derived "
            "from SOLVER.EPOCHS, not a setting. Remove SOLVER.MAX_ITER (or set it to 0) and set "
            "the length with SOLVER.EPOCHS; reusing a dumped OUTPUT_DIR/config.yaml with another "
            "schedule or data set, pass SOLVER.MAX_ITER 0 CYBORGS.DATA.NUM_IMAGES 0 on the command line."
        )
    if max_iter <= 0:
        raise ConfigError(
            f"SOLVER.EPOCHS = {s.EPOCHS}: x {ipe} iterations/epoch rounds to 0 iterations"
        )
    cfg.CYBORGS.DATA.NUM_IMAGES = num_images
    s.MAX_ITER = max_iter


def _canonicalize_switches(cfg: CfgNode) -> None:
    for key in SWITCH_KEYS:
        set_key(cfg, key, canonical_switch(get_key(cfg, key), key))


def _switch_opts_as_strings(opts: list[object]) -> list[object]:
    """Switch values of ``KEY VALUE`` pairs as "auto"/"on"/"off" ("True" from a command line,
    ``True`` from Python); yacs would reject a boolean over the string already merged."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        if out[i] in SWITCH_KEYS:
            value = out[i + 1]
            if isinstance(value, str):
                value = _YAML_BOOLEANS.get(value.strip().lower(), value)
            out[i + 1] = canonical_switch(value, str(out[i]))
    return out
