"""Stop on non-finite values with a message naming the term, the iteration and the last good
checkpoint (DINO habit).

detectron2's ``SimpleTrainer`` only notices NaN/inf after backward, on the main process, and
prints the whole dict; we check each term *before* backward (so no NaN reaches the weights or
the EMA target) on every rank, and name the culprit. Features are checked where they would
otherwise crash something less helpful first: the vMF loss checks the target features before its
k-means (and returns a NaN term, which this check then reports), a bootstrap round checks each
group's features before clustering them.

"Last good checkpoint": the step at iteration N runs on the weights written after step N - 1,
so ``model_{N-1}.pth`` holds the weights that produced the non-finite value; the newest
``model_{c}.pth`` with c <= N - 2 is the last one whose weights still gave a finite step.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import torch

__all__ = [
    "NonFiniteLossError",
    "check_finite_losses",
    "finite_flag",
    "last_good_checkpoint",
]

_CHECKPOINT_RE = re.compile(r"^model_(\d+)\.pth$")

_ADVICE = (
    "Usual causes: LR too high for the batch size (lower SOLVER.BASE_LR or raise "
    "SOLVER.LR_WARMUP_EPOCHS), CYBORGS.VMF.KAPPA too large, or corrupt input images."
)


class NonFiniteLossError(FloatingPointError):
    """A loss term or the features a loss / bootstrap round clusters became NaN or infinite.

    ``summary`` says what and when ("Non-finite loss at iteration 17: loss_vmf=nan ..."); the
    message adds the last good checkpoint in ``output_dir`` (when known) and advice.
    """

    def __init__(self, summary: str, iteration: int, output_dir: str | None = None) -> None:
        self.summary = summary
        self.iteration = int(iteration)
        self.output_dir = output_dir
        super().__init__(
            f"{summary}. Training stopped before the update. "
            f"{_checkpoint_text(output_dir, self.iteration)} {_ADVICE}"
        )

    def with_output_dir(self, output_dir: str | None) -> NonFiniteLossError:
        """The same error, its message naming the last good checkpoint in ``output_dir``."""
        return type(self)(self.summary, self.iteration, output_dir)


def last_good_checkpoint(output_dir: str | None, iteration: int) -> str | None:
    """Path of the newest ``model_XXXXXXX.pth`` in ``output_dir`` written at iteration
    <= ``iteration - 2`` (see the module docstring), or None."""
    if not output_dir or not os.path.isdir(output_dir):
        return None
    best: tuple[int, str] | None = None
    for name in os.listdir(output_dir):
        m = _CHECKPOINT_RE.match(name)
        if m and int(m.group(1)) <= iteration - 2 and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), name)
    return None if best is None else os.path.join(output_dir, best[1])


def _checkpoint_text(output_dir: str | None, iteration: int) -> str:
    if not output_dir:
        return "The last checkpoint is untouched."
    path = last_good_checkpoint(output_dir, iteration)
    if path is None:
        return (
            f"No checkpoint in {output_dir} predates the divergence (checkpoints before "
            f"iteration {iteration - 1}): start over with the changes below."
        )
    return (
        f"Last good checkpoint: {path} (its weights still gave a finite step); to continue "
        f"from it rather than from a later one, write its file name into "
        f"{os.path.join(output_dir, 'last_checkpoint')} and run with --resume, after the "
        "changes below."
    )


def finite_flag(values: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
    """0-dim bool tensor: every value of every term is finite. No host sync (one reduction)."""
    tensors = [v.detach() for v in values.values() if isinstance(v, torch.Tensor)]
    plain_ok = all(
        math.isfinite(float(v)) for v in values.values() if not isinstance(v, torch.Tensor)
    )
    if not tensors:
        return torch.tensor(plain_ok)
    flag = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    return flag if plain_ok else flag & False


def _value(v: torch.Tensor | float) -> float:
    return float(v.detach().float().sum()) if isinstance(v, torch.Tensor) else float(v)


def check_finite_losses(
    loss_dict: Mapping[str, torch.Tensor | float],
    iteration: int,
    output_dir: str | None = None,
    *,
    flag: torch.Tensor | bool | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` if any term of ``loss_dict`` is not finite.

    One host sync when everything is finite (``flag``: a :func:`finite_flag` already computed,
    e.g. reduced over ranks); the per-term values are read only to write the message.
    """
    ok = bool(finite_flag(loss_dict) if flag is None else flag)
    if ok:
        return
    values = {k: _value(v) for k, v in loss_dict.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    terms = ", ".join(f"{k}={v}" for k, v in bad.items())
    alls = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    raise NonFiniteLossError(
        f"Non-finite loss at iteration {iteration}: {terms} (all terms: {alls})",
        iteration,
        output_dir,
    )
