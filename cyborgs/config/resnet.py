"""detectron2's ResNet layout, written once: blocks per stage, channels, strides, feature names.

Config validation checks feature names (``res4``, ``res3.2``) against it; the model taps blocks by
these names; the transfer code builds and recognises ResNets of each depth from it.
"""

from __future__ import annotations

__all__ = [
    "RESNET_BLOCKS",
    "RESNET_BUILDERS",
    "RESNET_STAGES",
    "STAGE_STRIDES",
    "parse_tap",
    "res2_out_channels",
]

# Blocks per stage (res2..res5) of detectron2's ``build_resnet_backbone`` for each depth.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# Backbone builders (MODEL.BACKBONE.NAME) whose feature names this table describes.
RESNET_BUILDERS = ("build_resnet_backbone",)
RESNET_STAGES = ("res2", "res3", "res4", "res5")
# Output stride of each stage (res5 with MODEL.RESNETS.RES5_DILATION 2: 16).
STAGE_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def res2_out_channels(depth: int) -> int:
    """``MODEL.RESNETS.RES2_OUT_CHANNELS`` that detectron2's ResNet of ``depth`` needs: 64 for the
    basic-block R18/R34, 256 for the bottleneck R50/R101/R152."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth {depth!r}: expected one of {sorted(RESNET_BLOCKS)}")
    return 64 if depth in (18, 34) else 256


def parse_tap(name: str) -> tuple[str, int | None]:
    """``"res3.2"`` -> ``("res3", 2)``; ``"res4"`` -> ``("res4", None)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"feature name must be a non-empty string, got {name!r}")
    stage, dot, block = name.partition(".")
    if not dot:
        return stage, None
    if not block.isdigit():
        raise ValueError(
            f"feature name {name!r} must be '<stage>' or '<stage>.<block index>' (e.g. 'res3.2')"
        )
    return stage, int(block)
