"""Read named backbone outputs, including single blocks inside a stage ("res3.2").

A name is either a stage (``"stem"``, ``"res2"`` .. ``"res5"``) or ``"<stage>.<i>"``: the output
of block index ``i`` (0-based) of that stage, e.g. ``"res3.2"`` = the third block of res3, the
paper's "res2.b2" (METHOD.md §1). Blocks are read by running the stages block by block (exactly what
detectron2's ``ResNet.forward`` does), not with forward hooks, so deep copies of the backbone
(the EMA target) never share hook state with the online encoder.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cyborgs.config.resnet import parse_tap

__all__ = ["parse_tap", "validate_taps", "stages_needed", "forward_taps", "tap_channels"]


def stages_needed(names: Iterable[str]) -> list[str]:
    """Stage names a backbone must compute (its out_features) to serve ``names``."""
    out: list[str] = []
    for n in names:
        stage = parse_tap(n)[0]
        if stage not in out:
            out.append(stage)
    return out


def _is_staged_resnet(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, a) for a in ("stem", "stages", "stage_names"))


def _stage_map(backbone: nn.Module) -> dict[str, nn.Sequential]:
    return dict(zip(backbone.stage_names, backbone.stages, strict=True))


def validate_taps(backbone: nn.Module, names: Iterable[str], key: str = "feature names") -> None:
    """Raise a clear error if any name cannot be read from ``backbone``.

    ``key`` names the config key the names came from, for the message.
    """
    names = list(names)
    if not _is_staged_resnet(backbone):
        shapes = backbone.output_shape()
        bad = [n for n in names if n not in shapes]
        if bad:
            raise ValueError(
                f"{key}: {bad} are not outputs of {type(backbone).__name__} "
                f"(available: {sorted(shapes)}); block taps like 'res3.2' need a detectron2 ResNet"
            )
        return
    stages = _stage_map(backbone)
    for n in names:
        stage, block = parse_tap(n)
        if stage == "stem":
            if block is not None:
                raise ValueError(f"{key}: {n!r}: the stem has no blocks")
            continue
        if stage not in stages:
            raise ValueError(
                f"{key}: {n!r}: stage {stage!r} is not computed by the backbone (stages: "
                f"{list(stages)}); include it in MODEL.RESNETS.OUT_FEATURES"
            )
        if block is not None and block >= len(stages[stage]):
            avail = [f"{stage}.{i}" for i in range(len(stages[stage]))]
            raise ValueError(
                f"{key}: {n!r}: stage {stage} has {len(stages[stage])} blocks, so the available "
                f"block taps are {avail} (e.g. R18 has 2 blocks per stage: use 'res3.1')"
            )


def tap_channels(backbone: nn.Module, names: Iterable[str]) -> dict[str, int]:
    """Output channels of each name (a block's channels are its stage's)."""
    shapes = backbone.output_shape()
    out = {}
    for n in names:
        stage = parse_tap(n)[0]
        if stage not in shapes:
            raise ValueError(f"{n!r}: stage {stage!r} is not a backbone output ({sorted(shapes)})")
        out[n] = int(shapes[stage].channels)
    return out


def forward_taps(
    backbone: nn.Module, x: torch.Tensor, names: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Run ``backbone`` on ``x`` and return ``{name: map}`` for every requested name.

    Stops after the last stage needed, so asking only for ``"res3.2"`` skips res4/res5.
    """
    names = list(dict.fromkeys(names))
    if not _is_staged_resnet(backbone):
        feats = backbone(x)
        validate_taps(backbone, names)
        return {n: feats[n] for n in names}
    validate_taps(backbone, names)
    wanted: dict[str, set[int | None]] = {}
    for n in names:
        stage, block = parse_tap(n)
        wanted.setdefault(stage, set()).add(block)
    out: dict[str, torch.Tensor] = {}
    x = backbone.stem(x)
    if "stem" in wanted:
        out["stem"] = x
    remaining = set(wanted) - {"stem"}
    for stage_name, stage in zip(backbone.stage_names, backbone.stages, strict=True):
        if not remaining:
            break
        blocks = wanted.get(stage_name, set())
        if blocks - {None}:
            for i, block in enumerate(stage):
                x = block(x)
                if i in blocks:
                    out[f"{stage_name}.{i}"] = x
        else:
            x = stage(x)
        if None in blocks:
            out[stage_name] = x
        remaining.discard(stage_name)
    return {n: out[n] for n in names}
