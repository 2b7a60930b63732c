"""Training engine: trainer, EMA / loss-schedule hooks, safe checkpoints, CPU-capable launch."""

from cyborgs.utils.nonfinite import NonFiniteLossError, check_finite_losses

from .checkpoint import SafeCheckpointer, UnsafeCheckpointError, check_plain, safe_load
from .hooks import EMAHook, LossPhase, LossScheduleHook, RNGStateHook
from .launch import launch
from .setup import finalize_pretrain_cfg, setup_pretrain_cfg
from .trainer import CyborgsTrainer

__all__ = [
    "CyborgsTrainer",
    "EMAHook",
    "LossPhase",
    "LossScheduleHook",
    "NonFiniteLossError",
    "RNGStateHook",
    "SafeCheckpointer",
    "UnsafeCheckpointError",
    "check_finite_losses",
    "check_plain",
    "finalize_pretrain_cfg",
    "launch",
    "safe_load",
    "setup_pretrain_cfg",
]
