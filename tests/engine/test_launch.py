"""CPU multi-process launch (gloo): world size, local rank and an all_reduce."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from detectron2.utils import comm

from cyborgs.engine.launch import find_free_port, launch


def _worker(out_dir: str) -> None:
    rank = comm.get_rank()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    # also a detectron2 comm helper that uses the local group
    gathered = comm.all_gather(rank)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(
            f"{comm.get_world_size()} {comm.get_local_rank()} {comm.get_local_size()} "
            f"{t.item()} {sorted(gathered)}"
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_two_cpu_processes(tmp_path) -> None:
    # file:// rendezvous: no TCP port that a concurrent job could grab between pick and bind
    launch(_worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),))
    for rank in (0, 1):
        ws, lr, ls, total, gathered = (tmp_path / f"rank{rank}.txt").read_text().split(" ", 4)
        assert (int(ws), int(lr), int(ls)) == (2, rank, 2)
        assert float(total) == 3.0
        assert gathered == "[0, 1]"


def test_single_process_runs_inline(tmp_path) -> None:
    calls = []
    launch(lambda x: calls.append(x), 1, args=(5,))
    assert calls == [5]
    assert 1024 <= find_free_port() < 65536


def test_bad_process_count() -> None:
    with pytest.raises(ValueError, match="num-gpus"):
        launch(print, 0)
