"""BYOL MLP heads: the projector g and the predictor q (METHOD.md §2)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPHead"]


class MLPHead(nn.Sequential):
    """``Linear(in, hidden) - BN1d - ReLU - Linear(hidden, out)`` (BYOL / DetCon).

    The projector maps the fused pooled feature D -> hidden -> out; the predictor has the same
    shape out -> hidden -> out. The first linear has no bias because BN follows it; the last
    keeps its bias as in BYOL. ``norm="SyncBN"`` synchronises the batch statistics across
    processes, as BYOL does when the backbone uses SyncBN (same state_dict keys either way).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: str = "BN") -> None:
        if norm not in ("BN", "SyncBN"):
            raise ValueError(f"MLPHead norm must be 'BN' or 'SyncBN', got {norm!r}")
        for key, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if int(v) <= 0:
                raise ValueError(f"MLPHead {key} must be positive, got {v}")
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.SyncBatchNorm(hidden_dim) if norm == "SyncBN" else nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = int(in_dim), int(hidden_dim), int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``[..., in_dim]`` (leading dims flattened so BN sees every vector)."""
        lead = x.shape[:-1]
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_dim)
