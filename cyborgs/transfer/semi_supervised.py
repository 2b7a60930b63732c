"""ImageNet semi-supervised fine-tuning on 1% / 10% of the labels (METHOD.md §6).

The whole R50 plus a linear head on res5's global average pool is fine-tuned: 20 epochs, SGD
momentum 0.9, LR steps at epochs 12 and 16 (x0.2), batch 256, the head's LR a multiple of the
backbone's (the protocol of OpenSelfSup / ORL, which the CYBORGS comparison follows; the
multiplier is swept over 10-100). Reported: top-1 / top-5 on the ImageNet val set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.utils.data import DataLoader

from cyborgs.utils.progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class FinetuneSchedule:
    epochs: int = 20
    base_lr: float = 0.01  # backbone LR at batch 256; OpenSelfSup's semi-supervised default
    head_lr_mult: float = 100.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    steps: tuple[int, ...] = (12, 16)
    gamma: float = 0.2


class ResNetClassifier(nn.Module):
    """Backbone (returns {"res5": map} or a [N, D] tensor) + GAP + linear head."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.head.weight, 0, 0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        if isinstance(f, dict):
            f = f["res5"]
        if f.dim() == 4:
            f = f.mean(dim=(2, 3))
        return self.head(f)


def build_optimizer(model: ResNetClassifier, sched: FinetuneSchedule, lr_scale: float = 1.0):
    """SGD over every backbone parameter (base LR) and the head (x ``head_lr_mult``).

    The protocol fine-tunes the whole trunk, so a frozen parameter or a FrozenBatchNorm2d in the
    backbone is an error rather than something silently left out of the optimizer.
    """
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    frozen += [n for n, m in model.backbone.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    if frozen:
        raise ValueError(
            f"semi-supervised fine-tuning trains the whole backbone, but {len(frozen)} of its "
            f"parameters / norm layers are frozen (e.g. {frozen[:3]}): build it with "
            "MODEL.BACKBONE.FREEZE_AT 0 (build_pretrained_resnet does)"
        )
    groups = [
        {"params": list(model.backbone.parameters()),
         "lr": sched.base_lr * lr_scale},
        {"params": list(model.head.parameters()), "lr": sched.base_lr * lr_scale * sched.head_lr_mult},
    ]  # fmt: skip
    opt = torch.optim.SGD(groups, momentum=sched.momentum, weight_decay=sched.weight_decay)
    lr_sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(sched.steps), sched.gamma)
    return opt, lr_sched


def finetune(
    model: ResNetClassifier,
    loader: DataLoader,
    sched: FinetuneSchedule,
    lr_scale: float = 1.0,
    device: str = "cpu",
) -> list[float]:
    """Train ``model`` in place; returns the mean loss of each epoch. The loader yields
    (images, labels)."""
    model.to(device).train()
    opt, lr_sched = build_optimizer(model, sched, lr_scale)
    history = []
    progress = Progress(
        sched.epochs * len(loader), "semi-supervised fine-tuning", logger, unit="iterations"
    )
    for epoch in range(sched.epochs):
        total, n = 0.0, 0
        for x, y in loader:
            progress.update()
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        lr_sched.step()
        history.append(total / max(n, 1))
        logger.info("epoch %d/%d: loss %.4f", epoch + 1, sched.epochs, history[-1])
    progress.close()
    return history


@torch.no_grad()
def evaluate_topk(model: nn.Module, loader: DataLoader, ks=(1, 5), device: str = "cpu"):
    """{"top1": %, "top5": %} (k capped at the number of classes)."""
    model.to(device).eval()
    correct = {k: 0 for k in ks}
    n = 0
    progress = Progress(len(loader), "top-k evaluation", logger, unit="batches")
    for x, y in loader:
        progress.update()
        logits = model(x.to(device))
        y = y.to(device)
        top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        for k in ks:
            correct[k] += (top[:, :k] == y[:, None]).any(dim=1).sum().item()
        n += len(y)
    progress.close()
    return {f"top{k}": 100.0 * correct[k] / max(n, 1) for k in ks}
