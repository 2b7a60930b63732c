"""Load converted weights into the transfer models and prove every backbone tensor arrived."""

from __future__ import annotations

import logging

from detectron2.modeling import build_model

from cyborgs.engine.checkpoint import SafeCheckpointer, safe_load_pickle
from cyborgs.transfer.load_check import LoadReport, assert_backbone_loaded
from cyborgs.transfer.setup import cpu_friendly, get_transfer_cfg

logger = logging.getLogger(__name__)

# name -> (config, whether file tensors may go unused). C4 puts res5 in roi_heads.res5, FPN
# nests the ResNet as backbone.bottom_up; the probe only runs up to res3, so res4/res5 of the
# file are legitimately unused there.
TRANSFER_MODELS: dict[str, tuple[str, bool]] = {
    "c4": ("voc_det_R50_C4_24k.yaml", False),
    "fpn": ("coco_mask_rcnn_R50_FPN_2x.yaml", False),
    "fcn": ("cityscapes_fcn_R50_dilated.yaml", False),
    "probe": ("coco_stuff10k_linear_probe.yaml", True),
}


def depth_opts(depth: int) -> list[str]:
    """Overrides that turn an R50 transfer config into an R``depth`` one."""
    opts = ["MODEL.RESNETS.DEPTH", depth]
    if depth in (18, 34):
        opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    return opts


def load_and_check(config: str, weights: str, depth: int, allow_unused: bool) -> LoadReport:
    cfg = cpu_friendly(get_transfer_cfg(config, depth_opts(depth)))
    model = build_model(cfg)
    SafeCheckpointer(model).load(weights)
    pretrained = safe_load_pickle(weights)["model"]
    return assert_backbone_loaded(model, pretrained, f"{weights} -> {config}", allow_unused)


def verify_transfer_loading(
    weights: str, depth: int, models: tuple[str, ...] = ("c4", "fpn")
) -> dict[str, LoadReport]:
    """Load ``weights`` into each named transfer model; raise on any missing/unequal tensor."""
    reports = {}
    for name in models:
        if name not in TRANSFER_MODELS:
            raise ValueError(
                f"unknown transfer model {name!r}; choose from {list(TRANSFER_MODELS)}"
            )
        config, allow_unused = TRANSFER_MODELS[name]
        reports[name] = load_and_check(config, weights, depth, allow_unused)
        logger.info("%s: %s", name, reports[name].summary())
    return reports
