"""Epoch-based LR and EMA-momentum schedules, converted to iterations (METHOD.md §5).

The config writes schedules in epochs (``SOLVER.EPOCHS``, ``SOLVER.LR_WARMUP_EPOCHS``,
``SOLVER.STEP_EPOCHS``) because the paper does; the trainer turns them into iterations with
``iters_per_epoch = ceil(dataset_size / SOLVER.IMS_PER_BATCH)`` and writes ``SOLVER.MAX_ITER``.

LR multiplier at iteration k (W warm-up iterations, K total):

* warm-up (k < W):  (k + 1) / W   -- linear, non-zero from the first step, 1.0 at k = W - 1
* "cosine":         0.5 * (1 + cos(pi * (k - W) / (K - W)))   -- 1.0 at k = W, 0 at k = K
* "step":           GAMMA ** #{s in STEP_EPOCHS : k >= s * iters_per_epoch}

EMA momentum (BYOL): ``1 - (1 - base) * (cos(pi * k / K) + 1) / 2`` or constant ``base``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler

__all__ = [
    "EpochLRScheduler",
    "build_epoch_lr_scheduler",
    "due_epochs",
    "ema_momentum",
    "iters_per_epoch",
    "resolve_epoch_schedule",
    "round_epochs",
]


def iters_per_epoch(dataset_size: int, ims_per_batch: int) -> int:
    """``ceil(dataset_size / ims_per_batch)``; ``ims_per_batch`` is the global batch."""
    if dataset_size <= 0:
        raise ValueError(f"dataset size must be > 0, got {dataset_size} (empty DATASETS.TRAIN?)")
    if ims_per_batch <= 0:
        raise ValueError(f"SOLVER.IMS_PER_BATCH must be > 0, got {ims_per_batch}")
    return math.ceil(dataset_size / ims_per_batch)


class EpochLRScheduler(ParamScheduler):
    """Warm-up + cosine/step multiplier, defined on iterations (fvcore ``ParamScheduler``).

    fvcore calls schedulers with ``where = iter / max_iter``; we map it back to the integer
    iteration (rounded, so float error never shifts a step boundary) and evaluate there.
    Stateless: detectron2's ``LRMultiplier`` keeps ``last_epoch`` for resume.
    """

    def __init__(
        self,
        max_iter: int,
        warmup_iters: int,
        kind: str = "cosine",
        step_iters: Sequence[int] = (),
        gamma: float = 0.1,
    ) -> None:
        if max_iter <= 0:
            raise ValueError(f"max_iter must be > 0, got {max_iter}")
        if not 0 <= warmup_iters <= max_iter:
            raise ValueError(f"warm-up ({warmup_iters} iters) must be within [0, {max_iter}]")
        if kind not in ("cosine", "step"):
            raise ValueError(f"SOLVER.EPOCH_SCHEDULE must be 'cosine' or 'step', got {kind!r}")
        steps = list(step_iters)
        if kind == "step" and (sorted(steps) != steps or any(s > max_iter for s in steps)):
            raise ValueError(f"step iterations {steps} must be increasing and <= {max_iter}")
        self.max_iter = int(max_iter)
        self.warmup_iters = int(warmup_iters)
        self.kind = kind
        self.step_iters = [int(s) for s in steps]
        self.gamma = float(gamma)

    def at_iter(self, k: int) -> float:
        if k < self.warmup_iters:
            return (k + 1) / self.warmup_iters
        if self.kind == "cosine":
            span = self.max_iter - self.warmup_iters
            if span <= 0:
                return 1.0
            t = min(max(k - self.warmup_iters, 0), span) / span
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return self.gamma ** sum(k >= s for s in self.step_iters)

    def __call__(self, where: float) -> float:
        return self.at_iter(int(round(where * self.max_iter)))


def resolve_epoch_schedule(cfg: CfgNode, ipe: int) -> EpochLRScheduler:
    """Build the multiplier from the epoch keys of ``cfg.SOLVER`` and ``ipe`` iters/epoch."""
    s = cfg.SOLVER
    if s.EPOCHS <= 0:
        raise ValueError(f"SOLVER.EPOCHS must be > 0, got {s.EPOCHS}")
    if not 0 <= s.LR_WARMUP_EPOCHS <= s.EPOCHS:
        raise ValueError(
            f"SOLVER.LR_WARMUP_EPOCHS={s.LR_WARMUP_EPOCHS} not in [0, EPOCHS={s.EPOCHS}]"
        )
    max_iter = int(round(s.EPOCHS * ipe))
    return EpochLRScheduler(
        max_iter=max_iter,
        warmup_iters=int(round(s.LR_WARMUP_EPOCHS * ipe)),
        kind=str(s.EPOCH_SCHEDULE),
        step_iters=[int(round(e * ipe)) for e in s.STEP_EPOCHS],
        gamma=float(s.GAMMA),
    )


def build_epoch_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer, ipe: int
) -> LRMultiplier:
    """detectron2 ``LRMultiplier`` over :class:`EpochLRScheduler`; its state_dict is plain."""
    mult = resolve_epoch_schedule(cfg, ipe)
    return LRMultiplier(optimizer, mult, mult.max_iter)


def ema_momentum(base: float, k: int, total: int, schedule: str = "cosine") -> float:
    """Target-encoder EMA momentum at iteration ``k`` of ``total`` (CYBORGS.EMA.*)."""
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"CYBORGS.EMA.BASE_MOMENTUM must be in [0, 1], got {base}")
    if schedule == "constant":
        return float(base)
    if schedule != "cosine":
        raise ValueError(f"CYBORGS.EMA.SCHEDULE must be 'cosine' or 'constant', got {schedule!r}")
    if total <= 0:
        raise ValueError(f"total iterations must be > 0, got {total}")
    k = min(max(k, 0), total)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total) + 1.0) / 2.0


# ---- bootstrap rounds (paper §3.3; METHOD.md §3) ----


def due_epochs(warmup_epochs: int, period_epochs: int, max_epoch: int) -> list[int]:
    """Epochs (< max_epoch) at whose start a round runs."""
    out = [warmup_epochs] if warmup_epochs < max_epoch else []
    if period_epochs > 0:
        out += [e for e in range(warmup_epochs + 1, max_epoch) if e % period_epochs == 0]
    return out


def round_epochs(
    warmup_epochs: int, period_epochs: int, max_iter: int, iters_per_epoch: int
) -> list[int]:
    """Epochs after which a round runs in a run of ``max_iter`` iterations: the schedule the
    bootstrap hook follows and the plan (``cyborgs.engine.plan``) prints. A round at the final
    boundary would never be trained on, so none is due there."""
    max_epoch = -(-int(max_iter) // int(iters_per_epoch))
    return due_epochs(warmup_epochs, period_epochs, max_epoch)
