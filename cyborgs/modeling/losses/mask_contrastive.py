"""Mask-dependent contrastive loss (paper eq. 2; METHOD.md §2), DetCon's ``byol_nce_detcon``.

Every online prediction of (image b, view a, slot i) is an anchor. Its positives are the
target projections of the same image, the other view and the same mask id; its candidates are
all target projections of the global batch (both views, all ranks) except the ones of the same
image, same view and same id (DetCon removes those from the softmax). With n_pos positives the
label is DetCon's normalised multi-hot:

    ce(b, a, i) = -1/n_pos * sum_{p in P} log softmax(logits)[p].

Each anchor is weighted by ``w = [n_pos > 0] / area``, where ``area`` is the number of the M
sampled slots of the same image and view that carry the same id: an object sampled five times
counts once, and an anchor whose id is absent in the other view carries no loss. Per direction
the weighted terms are averaged over ALL B·M anchors (zero-weight anchors stay in the
denominator) and the two directions are summed:

    loss = sum_{a in {1, 2}} 1/(B·M) * sum_{b, i} w(b, a, i) · ce(b, a, i).

Several processes: each rank computes this over its own B anchors per view against the
gathered candidates. DDP averages the ranks' gradients, so with equal shards the update is the
single-process one on the concatenated batch, and the logged mean of the per-rank values is
that loss too.
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
        Tensor[] (scalar): the module docstring's loss over this rank's anchors; a zero that
        still depends on ``pred`` when no anchor has a positive.
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
        # At least float32: the logits feed a softmax with -inf entries (float64 stays float64).
        work = torch.promote_types(pred.dtype, torch.float32)
        q = F.normalize(pred.to(work), dim=-1).reshape(B * 2 * S, D)
        t_all = _all_gather(F.normalize(target.detach().to(work), dim=-1), world)
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
        # masked_fill (not a product) so the -inf of excluded entries never meets a 0 weight.
        ce = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / num_pos.clamp(min=1)
        # area: slots of the same image and view with the anchor's id (itself included, >= 1);
        # it is the number of excluded entries in the anchor's row.
        area = excluded.sum(dim=1)
        weight = (num_pos > 0).to(work) / area.to(work)
        # Mean over all B·M anchors of each direction, summed over the two directions.
        return ((weight * ce).sum() / (B * S)).to(pred.dtype)
