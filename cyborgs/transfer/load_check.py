"""Proof that pretrained backbone weights actually landed in a transfer model.

detectron2's matching heuristics silently skip any name or shape they cannot match, so a
pretrained file can leave a transfer model at random init without an error -- the most common
complaint in self-supervised transfer (METHOD.md §6). After loading we therefore compare, tensor by
tensor, every ResNet weight of the model against the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

# A model key that belongs to the ResNet: ``...stem.conv1.*`` or ``...resN.<block>.*``
# (C4: ``backbone.res4.*`` and ``roi_heads.res5.*``; FPN: ``backbone.bottom_up.*``). Group 1
# is the checkpoint name. ``roi_heads.res5.norm.*`` (the extra norm) has no block index and so
# is correctly a head parameter.
_RESNET_KEY = re.compile(r"(?:^|\.)((?:stem\.conv1|res[2-5]\.\d+)\..+)$")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)  # model keys equal to the file
    missing: list[str] = field(default_factory=list)  # model ResNet keys absent from the file
    mismatched: list[str] = field(default_factory=list)  # present but not equal after loading
    unused: list[str] = field(default_factory=list)  # file keys no model key uses

    def ok(self, allow_unused: bool = False) -> bool:
        return not (self.missing or self.mismatched or (self.unused and not allow_unused))

    def summary(self) -> str:
        def head(xs: list[str]) -> str:
            return f"{len(xs)} {xs[:8]}{' ...' if len(xs) > 8 else ''}"

        return (
            f"loaded {len(self.loaded)} backbone tensors; missing {head(self.missing)}; "
            f"not equal after loading {head(self.mismatched)}; unused from file "
            f"{head(self.unused)}"
        )


def resnet_keys(model: nn.Module) -> dict[str, str]:
    """Model key -> checkpoint name, for every ResNet weight/buffer the model holds."""
    out = {}
    for k in model.state_dict():
        if k.endswith("num_batches_tracked"):
            continue
        m = _RESNET_KEY.search(k)
        if m:
            out[k] = m.group(1)
    return out


def compare_loaded(
    model: nn.Module, pretrained: Mapping[str, np.ndarray | torch.Tensor]
) -> LoadReport:
    """Which of the model's ResNet tensors equal the pretrained file's."""
    report = LoadReport()
    state = model.state_dict()
    used = set()
    for model_key, name in sorted(resnet_keys(model).items()):
        if name not in pretrained:
            report.missing.append(model_key)
            continue
        used.add(name)
        expected = torch.as_tensor(np.asarray(pretrained[name]))
        actual = state[model_key].detach().cpu()
        if expected.shape != actual.shape or not torch.equal(actual, expected.to(actual.dtype)):
            report.mismatched.append(model_key)
        else:
            report.loaded.append(model_key)
    report.unused = sorted(k for k in pretrained if k not in used)
    return report


def assert_backbone_loaded(
    model: nn.Module,
    pretrained: Mapping[str, np.ndarray | torch.Tensor],
    what: str,
    allow_unused: bool = False,
) -> LoadReport:
    """Raise unless every ResNet tensor of ``model`` came from ``pretrained``."""
    report = compare_loaded(model, pretrained)
    if not report.loaded or not report.ok(allow_unused=allow_unused):
        raise RuntimeError(f"{what}: backbone weights did not load cleanly: {report.summary()}")
    return report


def resnet_tensors_of_file(
    state: Mapping[str, np.ndarray | torch.Tensor],
) -> dict[str, np.ndarray | torch.Tensor]:
    """A weight file's ResNet tensors keyed by checkpoint name (``stem.*``, ``resN.*``).

    Our .pkl already uses these names; a full-model .pth (e.g. another transfer run's
    ``model_final.pth``) has them under a module prefix, which is dropped here.
    """
    out = {}
    for k, v in state.items():
        m = _RESNET_KEY.search(k)
        if m and not k.endswith("num_batches_tracked"):
            out[m.group(1)] = v
    return out
