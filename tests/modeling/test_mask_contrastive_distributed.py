"""Two gloo processes: the all-gathered loss equals the single-process loss on the whole batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cyborgs.modeling.losses import MaskContrastiveLoss

WORLD = 2
B_LOCAL, S, D = 2, 4, 6


def _global_inputs():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(WORLD * B_LOCAL, 2, S, D, generator=g)
    target = torch.randn(WORLD * B_LOCAL, 2, S, D, generator=g)
    ids = torch.randint(0, 3, (WORLD * B_LOCAL, 2, S), generator=g)
    # Uneven anchor counts per rank: rank 1's view-1 ids never match its view-0 ids.
    ids[B_LOCAL:, 0] = torch.randint(0, 2, (B_LOCAL, S), generator=g)
    ids[B_LOCAL:, 1] = 1 + torch.randint(1, 3, (B_LOCAL, S), generator=g)
    ids[-1, 1, 0] = ids[-1, 0, 0]  # ... except one positive pair
    return pred, target, ids


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        pred, target, ids = _global_inputs()
        sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        p = pred[sl].clone().requires_grad_(True)
        loss = MaskContrastiveLoss(temperature=0.1)(p, target[sl], ids[sl])
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": p.grad}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_loss_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"r{r}.pt") for r in range(WORLD)]

    pred, target, ids = _global_inputs()
    pred.requires_grad_(True)
    single = MaskContrastiveLoss(temperature=0.1, gather_distributed=False)(pred, target, ids)
    single.backward()

    # The per-rank values average (as DDP averages gradients) to the global-batch loss ...
    mean_loss = sum(r["loss"] for r in results) / WORLD
    torch.testing.assert_close(mean_loss, single.detach())
    assert not torch.isclose(results[0]["loss"], results[1]["loss"])  # ranks really differ
    # ... and so do the gradients: DDP's average of rank grads = grad of the global loss.
    grads = torch.cat([r["grad"] for r in results]) / WORLD
    torch.testing.assert_close(grads, pred.grad)
