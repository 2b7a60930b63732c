"""Optimisation for CYBORGS pretraining: LARS and epoch-based schedules (METHOD.md §5)."""

from .lars import LARS, build_lars_optimizer, lars_param_groups
from .schedule import (
    EpochLRScheduler,
    build_epoch_lr_scheduler,
    ema_momentum,
    iters_per_epoch,
    resolve_epoch_schedule,
)

__all__ = [
    "LARS",
    "EpochLRScheduler",
    "build_epoch_lr_scheduler",
    "build_lars_optimizer",
    "ema_momentum",
    "iters_per_epoch",
    "lars_param_groups",
    "resolve_epoch_schedule",
]
