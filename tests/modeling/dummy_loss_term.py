"""A loss term added from outside the package, exactly as docs/DESIGN.md's "Add a loss term"
recipe says (used by ``test_add_loss_term.py`` in a process of its own, so the registration
does not reach other tests): a registered ``LossTerm`` and its weight key.

The term is the constant 3 (connected to the graph through the maps it asked for), so its
logged value is its weight times 3 whatever the model learns, and it checks that the model
handed it the maps it declared."""

from __future__ import annotations

import torch

from cyborgs.modeling.loss_terms import LOSS_TERM_REGISTRY, LossInputs, LossTerm

DUMMY_VALUE = 3.0


def add_dummy_config(cfg) -> None:
    """Declare the weight key (an in-tree term declares it in ``add_cyborgs_config``, in
    cyborgs/config/defaults.py)."""
    cfg.CYBORGS.DUMMY_WEIGHT = 0.0


@LOSS_TERM_REGISTRY.register()
class DummyTerm(LossTerm):
    name, output, label = "dummy", "loss_dummy", "dummy"
    weight_key = "CYBORGS.DUMMY_WEIGHT"
    warmup_weight, periodic = 0.0, False

    @staticmethod
    def features(model: torch.nn.Module) -> list[str]:
        return ["res5"]

    @staticmethod
    def compute(model: torch.nn.Module, inputs: LossInputs) -> torch.Tensor:
        for view in (*inputs.online, *inputs.target):
            if "res5" not in view:
                raise AssertionError(f"the dummy term asked for res5, got {sorted(view)}")
        online = inputs.online[0]["res5"]
        return online.sum() * 0.0 + DUMMY_VALUE
