"""LR schedules the transfer protocols need beyond detectron2 v0.6's (mmseg's poly)."""

from __future__ import annotations

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler


class PolyParamScheduler(ParamScheduler):
    """Multiplier (1 - t)^power scaled to end at ``end_ratio`` (mmseg ``poly`` with min_lr)."""

    def __init__(self, power: float, end_ratio: float) -> None:
        self.power = power
        self.end_ratio = end_ratio

    def __call__(self, where: float) -> float:
        return (1.0 - self.end_ratio) * (1.0 - where) ** self.power + self.end_ratio


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = PolyParamScheduler(
        cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_MIN / cfg.SOLVER.BASE_LR
    )
    sched = WarmupParamScheduler(
        sched,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
