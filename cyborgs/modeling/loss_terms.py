"""The loss terms of the CYBORGS pretrainer, declared once (paper §3.2, §3.4; METHOD.md §2, §4).

A term is a :class:`LossTerm` subclass registered in ``LOSS_TERM_REGISTRY``. Everything that
speaks of loss terms reads the registry, in registration order: the model computes every term
whose weight is positive (``CYBORGS.forward``), the loss schedule sets the weights per epoch
(``cyborgs.engine.hooks.LossScheduleHook``: the model attribute and the metric
``<name>_weight``), and the plan prints and stores them (``cyborgs.engine.plan``).

Schedule of a term's weight: ``warmup_weight`` during the vMF warm-up (epochs
``< CYBORGS.WARMUP_EPOCHS``); afterwards the value of its config key ``weight_key``, in every
epoch, or (``periodic``) only in epochs ``e % CYBORGS.VMF.PERIOD_EPOCHS == 0``, else 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from cyborgs.config import get_key
from cyborgs.config.registries import LOSS_TERM_REGISTRY

__all__ = ["LOSS_TERM_REGISTRY", "LossInputs", "LossTerm", "loss_terms"]

_ABSENT = object()


@dataclass(frozen=True)
class LossInputs:
    """What a step hands every term: per view (2), the online and the target backbone maps
    ``{name: fp32 [B, C, h, w]}`` of the names the active terms asked for (target maps without
    gradient), the masks [B, S, S], and the crop boxes [B, 2, 4] and flips [B, 2]."""

    online: Sequence[dict[str, torch.Tensor]]
    target: Sequence[dict[str, torch.Tensor]]
    masks: Sequence[torch.Tensor]
    boxes: torch.Tensor
    flips: torch.Tensor


class LossTerm:
    """One loss term. Subclass, set the class attributes, implement :meth:`features` and
    :meth:`compute`, and register the class with ``@LOSS_TERM_REGISTRY.register()``.

    Attributes:
        name: the term's short name; its weight is the model attribute, the metric and the
            plan field ``<name>_weight``.
        output: its key in the model's loss dict (``loss_*``, detectron2's convention).
        label: how the console and the plan name it.
        weight_key: dotted config key of its weight after the warm-up.
        warmup_weight: its weight during the vMF warm-up.
        periodic: after the warm-up, on only every ``CYBORGS.VMF.PERIOD_EPOCHS`` epochs.
    """

    name: ClassVar[str]
    output: ClassVar[str]
    label: ClassVar[str]
    weight_key: ClassVar[str]
    warmup_weight: ClassVar[float] = 0.0
    periodic: ClassVar[bool] = False

    @classmethod
    def weight_attr(cls) -> str:
        return f"{cls.name}_weight"

    @classmethod
    def configured_weight(cls, cfg: Any) -> float:
        """The value of ``weight_key`` in ``cfg``."""
        value = get_key(cfg, cls.weight_key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(
                f"{cls.weight_key}: the weight of loss term {cls.name!r} is not a config key "
                "(declare it where its term is added)"
            )
        return float(value)

    @staticmethod
    def features(model: torch.nn.Module) -> list[str]:
        """The backbone maps the term reads (both encoders, both views)."""
        raise NotImplementedError

    @staticmethod
    def compute(model: torch.nn.Module, inputs: LossInputs) -> torch.Tensor:
        """The unweighted term, a scalar; the model multiplies it by its weight."""
        raise NotImplementedError


def loss_terms() -> list[type[LossTerm]]:
    """Every registered term, in registration order (the order of the model's loss dict)."""
    return [term for _, term in LOSS_TERM_REGISTRY]
