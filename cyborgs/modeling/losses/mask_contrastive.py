"""Mask-dependent contrastive loss (paper eq. 2; SPEC §2), DetCon's ``byol_nce_detcon``.

Every online prediction of (image b, view a, slot s) is an anchor. Its positives are the
target projections of the same image, the other view and the same mask id; its negatives are
all target projections of the global batch (both views, all ranks) except the ones of the same
image, same view and same id (DetCon removes those from the softmax). With several positives
(an id sampled twice in the other view) the label is DetCon's normalised multi-hot:

    loss(anchor) = -1/|P| * sum_{p in P} log softmax(logits)[p],

the softmax running over every non-excluded target entry (positives included). Anchors whose
id was not sampled in the other view have no positive and carry no loss.

Reduction across ranks: each rank returns ``sum of its anchor losses / (N_global / world)``
where ``N_global`` counts the anchors with a positive on all ranks. The mean of the per-rank
values, which is what DDP's gradient averaging and detectron2's metric logging compute, is then
exactly the mean over all anchors of the global batch, i.e. the single-process loss on the
concatenated batch. With one process this is the plain mean over anchors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MaskContrastiveLoss"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(t: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate ``t`` from all ranks along dim 0 (no gradient: targets are constants)."""
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class MaskContrastiveLoss(nn.Module):
    """DetCon-style mask contrastive loss over the global batch.

    Args:
        temperature: τ, logits are cosine / τ (DetCon / paper: 0.1).
        gather_distributed: all-gather targets and ids across ranks for the negatives when
            torch.distributed is initialised with world size > 1.

    Forward:
        pred: Tensor[B, 2, S, D], online predictions q(g(h)) per image, view, sampled slot.
        target: Tensor[B, 2, S, D], target projections g_ξ(h') (detached here).
        ids: LongTensor[B, 2, S], the mask id of each slot (shared by online and target of a
            view).

    Returns:
        Tensor[] (scalar), see the module docstring for the cross-rank reduction; a zero that
        still depends on ``pred`` when no anchor has a positive anywhere.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if pred.dim() != 4 or pred.shape[1] != 2:
            raise ValueError(f"pred must be [B, 2, S, D], got shape {tuple(pred.shape)}")
        if target.shape != pred.shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} must equal pred shape {tuple(pred.shape)}"
            )
        if tuple(ids.shape) != tuple(pred.shape[:3]):
            raise ValueError(
                f"ids must be [B, 2, S] = {tuple(pred.shape[:3])}, got {tuple(ids.shape)}"
            )
        if ids.dtype.is_floating_point:
            raise TypeError(f"ids must be integer, got {ids.dtype}")
        B, _, S, D = pred.shape

        rank, world = _world() if self.gather_distributed else (0, 1)
        # Work in float32: the logits feed a softmax with -inf entries.
        q = F.normalize(pred.float(), dim=-1).reshape(B * 2 * S, D)
        t_all = _all_gather(F.normalize(target.detach().float(), dim=-1), world)
        ids_all = _all_gather(ids.long(), world)
        if t_all.shape[0] != B * world:
            raise RuntimeError("all ranks must use the same local batch size")
        t = t_all.reshape(-1, D)

        # "Global index" of every entry: image = rank offset + local image, then view and id.
        dev = pred.device
        img = torch.arange(B, device=dev).view(B, 1, 1).expand(B, 2, S)
        view = torch.arange(2, device=dev).view(1, 2, 1).expand(B, 2, S)
        a_img, a_view, a_id = (rank * B + img).reshape(-1), view.reshape(-1), ids.long().reshape(-1)
        t_img = torch.arange(B * world, device=dev).view(-1, 1, 1).expand(-1, 2, S).reshape(-1)
        t_view = torch.arange(2, device=dev).view(1, 2, 1).expand(B * world, 2, S).reshape(-1)
        t_id = ids_all.reshape(-1)

        same = (a_img[:, None] == t_img[None, :]) & (a_id[:, None] == t_id[None, :])
        same_view = a_view[:, None] == t_view[None, :]
        positive = same & ~same_view
        excluded = same & same_view  # the anchor's own-view copies are neither pos. nor neg.

        logits = (q @ t.T) / self.temperature
        log_prob = torch.log_softmax(logits.masked_fill(excluded, float("-inf")), dim=1)
        num_pos = positive.sum(dim=1)
        has_pos = num_pos > 0
        # masked_fill (not a product) so the -inf of excluded entries never meets a 0 weight.
        per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / num_pos.clamp(min=1)
        # Sum over an empty selection is a zero still attached to pred's graph (never NaN).
        local_sum = per_anchor[has_pos].sum()

        count = has_pos.sum().to(torch.float32)
        if world > 1:
            dist.all_reduce(count)
        # No host sync: a zero count gives local_sum = 0 and a divisor of 1.
        return (local_sum * world / count.clamp(min=1.0)).to(pred.dtype)
