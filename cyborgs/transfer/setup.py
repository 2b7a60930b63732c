"""Loading a transfer config (ours + detectron2 defaults)."""

from __future__ import annotations

import os

from detectron2.config import CfgNode, get_cfg

from cyborgs.config_io import merge_config_file
from cyborgs.transfer.config import add_transfer_config


def get_transfer_cfg(config_file: str | os.PathLike, opts: list | None = None) -> CfgNode:
    """The transfer config in ``config_file`` (a YAML path) with ``opts`` merged on top; the file
    and its ``_BASE_`` chain are read as safe YAML (:func:`cyborgs.config_io.merge_config_file`,
    which raises ``ConfigFileError`` naming the file)."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"transfer config file not found: {config_file} (expected a YAML file)"
        )
    cfg = get_cfg()
    add_transfer_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts or []))
    return cfg
