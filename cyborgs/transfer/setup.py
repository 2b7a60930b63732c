"""Loading a transfer config (ours + detectron2 defaults) and building its model."""

from __future__ import annotations

import os
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from cyborgs.transfer.config import add_transfer_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "transfer_configs"


def resolve_config(path: str) -> str:
    """A config path as given, or its name inside ``transfer_configs/``."""
    if os.path.isfile(path):
        return path
    candidate = CONFIG_DIR / path
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(f"config file not found: {path} (nor {candidate})")


def get_transfer_cfg(config_file: str, opts: list[str] | None = None) -> CfgNode:
    cfg = get_cfg()
    add_transfer_config(cfg)
    cfg.merge_from_file(resolve_config(config_file))
    cfg.merge_from_list(list(opts or []))
    return cfg


def cpu_friendly(cfg: CfgNode) -> CfgNode:
    """SyncBN needs a process group; for single-process CPU checks use plain BN (same weights)."""
    cfg = cfg.clone()
    cfg.defrost()
    for node in (cfg.MODEL.RESNETS, cfg.MODEL.FPN, cfg.MODEL.SEM_SEG_HEAD):
        if node.NORM == "SyncBN":
            node.NORM = "BN"
    cfg.MODEL.DEVICE = "cpu"
    return cfg
