"""Cluster launching on the CPU (gloo): a frozen rank is named within the timeout, torchrun's
process group is joined, the CPU launcher forwards a stop signal to its processes."""

from __future__ import annotations

import fcntl
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


def _freeze_rank_1(out_dir: str, lock_path: str = "") -> None:
    if comm.get_rank() == 1:
        if lock_path:  # frozen inside a FileStore operation: its lock on the store file held
            fcntl.flock(os.open(lock_path, os.O_RDWR), fcntl.LOCK_EX)
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen: alive, but neither working nor exiting
    with open(os.path.join(out_dir, "t0"), "w") as f:
        f.write(repr(time.time()))
    dist.all_reduce(torch.ones(1))


def _stalled_run_message(tmp_path: Path, dist_url: str | None, lock_path: str = "") -> str:
    with pytest.raises(ProcessRaisedException) as info:
        launch(
            _freeze_rank_1, 2, dist_url=dist_url, args=(str(tmp_path), lock_path),
            timeout=timedelta(seconds=3),
        )  # fmt: skip
    t0 = float((tmp_path / "t0").read_text())
    # 3 s timeout + the heartbeat probe (~1 s; ~7 s for a store that does not answer) + the
    # launcher's grace period to end rank 1 (5 s + 5 s: a stopped process ignores SIGTERM):
    # far below gloo's default 30 minutes
    assert time.time() - t0 < 3 + 25
    message = str(info.value)
    assert "StalledRankError" in message and "--dist-timeout" in message, message
    return message


def test_a_stopped_rank_is_named_within_the_timeout(tmp_path) -> None:
    # the default rendezvous (tcp://, as torchrun and SLURM jobs use): the store is served by
    # rank 0's thread, so rank 1 freezing at any point leaves it answering
    message = _stalled_run_message(tmp_path, None)
    assert "rank(s) 1 stopped responding" in message, message


def test_a_rank_frozen_holding_the_file_rendezvous_is_reported_as_such(tmp_path) -> None:
    # A file:// rendezvous locks its one file for every operation: a rank frozen inside one
    # blocks the store for all, and no rank can be named. The message says so instead of
    # blaming rank 0 (whose store it is not).
    store_file = tmp_path / "rendezvous"
    message = _stalled_run_message(tmp_path, f"file://{store_file}", str(store_file))
    assert "rendezvous file store" in message and "rank 0 is likely" not in message, message


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
