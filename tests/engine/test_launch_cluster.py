"""Cluster launching on the CPU (gloo): a frozen rank is named within the timeout, torchrun's
process group is joined, the CPU launcher forwards a stop signal to its processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch.multiprocessing import ProcessRaisedException

from cyborgs.engine.launch import launch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")


def _freeze_rank_1(out_dir: str) -> None:
    if comm.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen: alive, but neither working nor exiting
    with open(os.path.join(out_dir, "t0"), "w") as f:
        f.write(repr(time.time()))
    dist.all_reduce(torch.ones(1))


def test_a_stopped_rank_is_named_within_the_timeout(tmp_path) -> None:
    with pytest.raises(ProcessRaisedException) as info:
        launch(
            _freeze_rank_1, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),),
            timeout=timedelta(seconds=3),
        )  # fmt: skip
    t0 = float((tmp_path / "t0").read_text())
    message = str(info.value)
    assert "StalledRankError" in message and "rank(s) 1 stopped responding" in message, message
    assert "--dist-timeout" in message
    # 3 s timeout + the heartbeat probe (~1 s) + the launcher's grace period to end rank 1 (5 s
    # + 5 s: a stopped process ignores SIGTERM): far below gloo's default 30 minutes
    assert time.time() - t0 < 3 + 25


_TORCHRUN_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from detectron2.utils import comm
from cyborgs.engine.launch import launch

def main(out):
    t = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(t)
    with open(os.path.join(out, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump([comm.get_world_size(), comm.get_local_rank(), comm.get_local_size(),
                   t.item(), os.getpid()], f)

launch(main, 1, args=(sys.argv[1],))  # --num-gpus 1: torchrun's group decides
"""


def test_torchrun_processes_join_its_group(tmp_path) -> None:
    script = tmp_path / "entry.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    r = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [x[:4] for x in r] == [[2, 0, 2, 3.0], [2, 1, 2, 3.0]]
    assert r[0][4] != r[1][4]  # two processes, both torchrun's (none spawned by launch)
