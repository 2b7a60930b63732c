"""Stop on a non-finite loss with a message naming the term and the iteration (DINO habit).

detectron2's ``SimpleTrainer`` only notices NaN/inf after backward, on the main process, and
prints the whole dict; we check each term *before* backward (so no NaN reaches the weights or
the EMA target) on every rank, and name the culprit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["NonFiniteLossError", "check_finite_losses"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite."""


def check_finite_losses(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` if any term of ``loss_dict`` is not finite."""
    bad = {}
    for name, value in loss_dict.items():
        v = float(value.detach().float().sum()) if isinstance(value, torch.Tensor) else float(value)
        if not math.isfinite(v):
            bad[name] = v
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        values = ", ".join(
            f"{k}={float(v.detach().float().sum()) if isinstance(v, torch.Tensor) else v:.4g}"
            for k, v in loss_dict.items()
        )
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {iteration}: {terms} (all terms: {values}). "
            "Training stopped before the update, so the last checkpoint is clean. Usual causes: "
            "LR too high for the batch size (lower SOLVER.BASE_LR or raise "
            "SOLVER.WARMUP_EPOCHS), VMF.KAPPA too large, or corrupt input images. Set "
            "SOLVER.STOP_ON_NONFINITE False to skip this check."
        )
