"""Load converted weights into the transfer models and prove every backbone tensor arrived."""

from __future__ import annotations

import logging
import os

from detectron2.modeling import build_model

from cyborgs.config import res2_out_channels
from cyborgs.engine.checkpoint import SafeCheckpointer, safe_load_pickle
from cyborgs.transfer.load_check import LoadReport, assert_backbone_loaded
from cyborgs.transfer.setup import get_transfer_cfg

logger = logging.getLogger(__name__)

# name -> (config file name in the transfer config directory, whether file tensors may go unused). C4 puts res5 in roi_heads.res5, FPN
# nests the ResNet as backbone.bottom_up; the probe only runs up to res3, so res4/res5 of the
# file are legitimately unused there.
TRANSFER_MODELS: dict[str, tuple[str, bool]] = {
    "c4": ("voc_det_R50_C4_24k.yaml", False),
    "fpn": ("coco_mask_rcnn_R50_FPN_2x.yaml", False),
    "fcn": ("cityscapes_fcn_R50_dilated.yaml", False),
    "probe": ("coco_stuff10k_linear_probe.yaml", True),
}


def depth_opts(depth: int) -> list:
    """Overrides that turn an R50 transfer config into an R``depth`` one."""
    return [
        "MODEL.RESNETS.DEPTH",
        depth,
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        res2_out_channels(depth),
    ]


def load_and_check(
    config: str | os.PathLike, weights: str, depth: int, allow_unused: bool
) -> LoadReport:
    """Build the model of ``config`` (a YAML path) as R``depth`` on the CPU, load ``weights``
    and prove every backbone tensor arrived."""
    cfg = get_transfer_cfg(config, depth_opts(depth))
    # The check compares tensors on the CPU whatever the machine has. It builds and loads, never
    # runs a forward, so SyncBN layers stay as configured (same parameters and buffers as BN).
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    SafeCheckpointer(model).load(weights)
    pretrained = safe_load_pickle(weights)["model"]
    return assert_backbone_loaded(model, pretrained, f"{weights} -> {config}", allow_unused)


def verify_transfer_loading(
    weights: str,
    depth: int,
    config_dir: str | os.PathLike,
    models: tuple[str, ...] = ("c4", "fpn"),
) -> dict[str, LoadReport]:
    """Load ``weights`` into each named transfer model (:data:`TRANSFER_MODELS`, configs read
    from ``config_dir``); raise on any missing/unequal tensor."""
    reports = {}
    for name in models:
        if name not in TRANSFER_MODELS:
            raise ValueError(
                f"unknown transfer model {name!r}; choose from {list(TRANSFER_MODELS)}"
            )
        config, allow_unused = TRANSFER_MODELS[name]
        path = os.path.join(config_dir, config)
        reports[name] = load_and_check(path, weights, depth, allow_unused)
        logger.info("%s: %s", name, reports[name].summary())
    return reports
