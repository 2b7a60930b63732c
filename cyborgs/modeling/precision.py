"""The accelerator path of the pretraining step: channels_last and bf16 autocast switches.

Both switches (``CYBORGS.GPU.CHANNELS_LAST``, ``CYBORGS.GPU.BF16``) take ``"auto"`` (on iff the
model runs on CUDA), ``"on"`` or ``"off"``. ``"auto"`` is resolved from a device, not once at
build time, because detectron2's ``build_model`` constructs the model on the CPU and only then
moves it to ``MODEL.DEVICE``.

bf16 has the dynamic range of fp32, so no GradScaler is needed (unlike fp16). ``"auto"`` turns
bf16 on only on GPUs with native bf16 (Ampere and newer): older GPUs emulate it, which is
slower than fp32, so there it stays off unless forced with ``"on"``.
"""

from __future__ import annotations

import functools

import torch

# The switch vocabulary is the config's (shared with the data pipeline's CYBORGS.AUG.DEVICE).
from cyborgs.config import SWITCH_VALUES, parse_switch

__all__ = ["SWITCH_VALUES", "parse_switch", "channels_last_enabled", "bf16_enabled", "autocast"]


def channels_last_enabled(mode: str, device: torch.device | str) -> bool:
    """Whether channels_last applies on ``device`` (``mode`` already parsed)."""
    if mode == "auto":
        return torch.device(device).type == "cuda"
    return mode == "on"


@functools.cache
def _native_cuda_bf16(index: int | None) -> bool:
    # Cached: the capability query is per device and never changes during a run.
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def bf16_enabled(mode: str, device: torch.device | str) -> bool:
    """Whether the backbone runs under bf16 autocast on ``device`` (``mode`` already parsed)."""
    device = torch.device(device)
    if mode == "auto":
        return device.type == "cuda" and _native_cuda_bf16(device.index)
    return mode == "on"


def autocast(device: torch.device | str, enabled: bool) -> torch.autocast:
    """bf16 autocast for ``device``'s type when ``enabled``.

    ``enabled=False`` is an explicit fp32 region (it also switches off an autocast a caller may
    have opened), so ``"off"`` means fp32 backbone outputs whatever the caller does.
    """
    return torch.autocast(
        device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bool(enabled)
    )
