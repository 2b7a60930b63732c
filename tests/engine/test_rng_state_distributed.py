"""RNGStateHook across two gloo processes: every rank's streams are saved and restored."""

from __future__ import annotations

import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from cyborgs.engine.hooks import RNGStateHook
from cyborgs.engine.launch import launch


def _draw() -> list:
    return [random.random(), float(np.random.rand()), *torch.rand(3).tolist()]


def _hook(it: int) -> RNGStateHook:
    h = RNGStateHook(checkpoint_period=2)
    h.trainer = SimpleNamespace(iter=it, max_iter=10)
    return h


def _worker(out_dir: str) -> None:
    rank = comm.get_rank()
    seed_all_rng(100 + rank)  # each rank has its own streams, as in training
    h = _hook(0)
    h.after_step()  # iteration 0 is not a checkpoint iteration: nothing gathered
    off_iter = h.state_dict()
    h.trainer.iter = 1
    h.after_step()  # (1 + 1) % 2 == 0: every rank's states gathered
    saved = comm.all_gather(h.state_dict())[0]  # what rank 0's checkpoint holds, seen by all
    expected = _draw()
    _draw()  # the streams move on before the "crash"

    resumed = _hook(1)
    resumed.load_state_dict(saved)
    resumed.before_train()
    exact = _draw() == expected

    # a checkpoint with rank 0's state only (another world size): rank 0 exact, others re-seeded
    _draw()
    partial = _hook(1)
    partial.load_state_dict({"ranks": saved["ranks"][:1]})
    partial.before_train()
    partial_exact = _draw() == expected
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "n_saved": len(saved["ranks"]),
                "n_off_iter": len(off_iter["ranks"]),
                "exact": exact,
                "partial_exact": partial_exact,
                "expected": expected,
            },
            f,
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_every_rank_resumes_its_own_streams(tmp_path) -> None:
    launch(_worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["n_saved"] == r1["n_saved"] == 2
    assert r0["n_off_iter"] == 1  # outside a checkpoint iteration: the local state only
    assert r0["expected"] != r1["expected"]  # the ranks' streams really differ
    assert r0["exact"] and r1["exact"]
    assert r0["partial_exact"] and not r1["partial_exact"]
