"""Two CPU processes (gloo), a bootstrap round, a stop before it and ``--resume``: the run ends
bit-identical (weights and masks) to an uninterrupted one.

On the CPU SyncBN is plain BN, so each rank's BN running statistics follow its own batches while
a checkpoint holds rank 0's only. A round runs the backbone in eval mode, so a resumed rank 1
would cluster with other statistics than in the uninterrupted run unless every rank takes rank
0's before the round (``sync_buffers_from_main``). The fast test checks that broadcast; the
pretraining test (``--run-slow``) the whole path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from test_kill_during_bootstrap import DATASET, REPO, _args, _env

from cyborgs.bootstrap.hook import sync_buffers_from_main
from cyborgs.engine.checkpoint import safe_load
from cyborgs.engine.launch import launch
from cyborgs.masks.store import MaskStore, image_key


def _bn_worker(out_dir: str) -> None:
    rank = comm.get_rank()
    torch.manual_seed(0)  # same weights on both ranks
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.manual_seed(1 + rank)  # each rank's own batches: own running statistics
    for _ in range(3):
        net(torch.randn(2, 3, 8, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}

    class Wrapped(torch.nn.Module):  # as DDP: the model under ``.module``
        def __init__(self) -> None:
            super().__init__()
            self.module = net

    sync_buffers_from_main(Wrapped())
    after = net.state_dict()
    torch.save({"before": before, "after": after}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_every_rank_takes_rank_0s_bn_statistics(tmp_path) -> None:
    launch(_bn_worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),),
           timeout=timedelta(seconds=60))  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    stats = ("1.running_mean", "1.running_var")
    # the ranks' statistics differed, and now rank 1 holds rank 0's; rank 0 kept its own
    assert all(not torch.equal(r0["before"][k], r1["before"][k]) for k in stats)
    for k in r0["after"]:
        assert torch.equal(r1["after"][k], r0["before"][k]), k
        assert torch.equal(r0["after"][k], r0["before"][k]), k


def _pretrain(out: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess:
    opts = ["SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.CHECKPOINTS_TO_KEEP", "0"]  # fmt: skip
    cmd = [sys.executable, str(REPO / "tools/pretrain_net.py"),
           *_args(out, "--num-gpus", "2", *extra), *opts]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=_env(data_root), capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_two_process_resume_before_a_round_is_exact(tiny_data_root, tmp_path) -> None:
    # 24 images, batch 8 over 2 ranks: 3 iterations per epoch, the round after iteration 2,
    # a checkpoint after every iteration (the one after iteration 1: before the round).
    straight = tmp_path / "straight"
    res = _pretrain(straight, tiny_data_root)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    first = safe_load(str(straight / "model_0000001.pth"))
    assert first["trainer"]["hooks"]["BootstrapHook"] == {"completed": []}

    # The run as it was when killed right after writing model_0000001.pth: nothing of the
    # round, no later checkpoint.
    stopped = tmp_path / "stopped"
    shutil.copytree(straight, stopped)
    for p in stopped.glob("model_*.pth"):
        if p.name not in ("model_0000000.pth", "model_0000001.pth"):
            p.unlink()
    shutil.rmtree(stopped / "masks")
    (stopped / "metrics.json").unlink()
    (stopped / "last_checkpoint").write_text("model_0000001.pth")
    res = _pretrain(stopped, tiny_data_root, "--resume")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "Starting training from iteration 2" in res.stdout + res.stderr

    stores = [MaskStore(str(d / "masks" / "bootstrap" / image_key(DATASET)))
              for d in (straight, stopped)]  # fmt: skip
    assert [s.rounds() for s in stores] == [[1], [1]]
    ids = [d["image_id"] for d in DatasetCatalog.get(DATASET)]
    differ = [i for i in ids if not torch.equal(*(torch.from_numpy(s.read(i, round_id=1))
                                                  for s in stores))]  # fmt: skip
    assert differ == [], f"masks of images {differ} differ"
    a, b = (safe_load(str(d / "model_final.pth"))["model"] for d in (straight, stopped))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
