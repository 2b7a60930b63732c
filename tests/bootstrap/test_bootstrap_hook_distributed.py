"""BootstrapHook across two gloo processes: a failure on rank 0 or a round that one rank
cannot see stops every rank with an error naming the cause, instead of hanging the others."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

import cyborgs.bootstrap.hook as hook_module
from cyborgs.bootstrap.hook import BootstrapHook
from cyborgs.bootstrap.round import RoundSettings
from cyborgs.config import add_cyborgs_config
from cyborgs.engine.launch import launch
from cyborgs.masks.store import MaskStore

DICTS = [{"image_id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(4)]
# The round functions below are stand-ins: the settings only reach the manifest.
SETTINGS = RoundSettings.from_cfg(add_cyborgs_config(get_cfg()))
# A hang shows up as a gloo timeout (a different message) within this, not after 30 minutes.
TIMEOUT = timedelta(seconds=60)


def _write_shard(model, settings, dicts, store, round_id, *, iteration, world_size, rank):
    for d in dicts[rank::world_size]:
        store.write(round_id, d["image_id"], np.full((2, 2), 1, np.uint8))
    return {"k_values": [3], "time_s": 0.1, "images": len(dicts[rank::world_size])}


def _out_of_memory_on_rank_1(model, settings, dicts, store, round_id, *, iteration,
                             world_size, rank):  # fmt: skip
    if rank == 1:
        raise RuntimeError("CUDA out of memory (simulated)")
    return _write_shard(model, settings, dicts, store, round_id, iteration=iteration,
                        world_size=world_size, rank=rank)  # fmt: skip


def _write_nothing(model, settings, dicts, store, round_id, *, iteration, world_size, rank):
    return {"k_values": [3], "time_s": 0.1, "images": 0}


class _BlindStore(MaskStore):
    """A store whose pointer this process cannot see (as on a node without the shared disk)."""

    def current_round(self):
        return None


class _ReadOnlyPointerStore(MaskStore):
    """A store whose pointer cannot be written (a read-only or full file system)."""

    def set_current(self, round_id):
        raise PermissionError(f"{self.pointer_path}: read-only file system (simulated)")


def _broken_quality(store, round_id):
    raise ValueError("simulated broken quality metric")


class _Trainer:
    def __init__(self):
        self.iter, self.max_iter, self.model = 0, 30, None


def _hook(root: str, round_fn, store_cls=MaskStore, quality=None) -> BootstrapHook:
    hook = BootstrapHook(
        settings=SETTINGS,
        round_fn=round_fn,
        datasets=[("demo", DICTS, store_cls(root))],
        iters_per_epoch=3,
        warmup_epochs=2,
        period_epochs=0,
        quality_fns={"demo": quality} if quality else None,
    )
    hook.trainer = _Trainer()
    return hook


def _run(root: str, round_fn, store_cls=MaskStore, quality=None) -> dict:
    hook = _hook(root, round_fn, store_cls, quality)
    try:
        with EventStorage(0) as storage:
            hook.trainer.storage = storage
            hook._run_round(2)
            miou = "bootstrap/mask_miou" in storage.histories()
    except Exception as e:  # noqa: BLE001 - the outcome is what the test checks
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None, "completed": hook.completed, "miou": miou}


def _start(root: str, store_cls) -> dict:
    """``before_train`` of a fresh run (it writes the store's pointer on rank 0)."""
    hook = _hook(root, _write_shard, store_cls)
    try:
        with EventStorage(0) as storage:
            hook.trainer.storage = storage
            hook.before_train()
    except Exception as e:  # noqa: BLE001 - the outcome is what the test checks
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


def _worker(tmp: str) -> None:
    hook_module.VISIBILITY_WAIT_S = 0.0  # fail at once; the default waits for NFS caches
    rank = comm.get_rank()
    blind = _BlindStore if rank == 1 else MaskStore
    out = {
        # finish_round refuses a round without maps, on rank 0 only
        "no_maps": _run(os.path.join(tmp, "no_maps"), _write_nothing),
        # each rank its own node-local store: rank 1 never sees rank 0's round directory
        "local_disk": _run(os.path.join(tmp, f"local_{rank}"), _write_shard),
        # rank 1 sees the maps but not the pointer rank 0 moved
        "blind_pointer": _run(os.path.join(tmp, "blind"), _write_shard, blind),
        # a failing quality metric is logged; the round completes on every rank
        "bad_quality": _run(os.path.join(tmp, "quality"), _write_shard, quality=_broken_quality),
        # one rank's shard fails (out of memory): it raises its error, the other names it
        "oom_rank_1": _run(os.path.join(tmp, "oom"), _out_of_memory_on_rank_1),
        # rank 0 cannot write the pointer when the run starts: every rank stops, none waits
        "read_only_start": _start(os.path.join(tmp, "ro"), _ReadOnlyPointerStore),
    }
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_round_failures_stop_every_rank_with_the_cause(tmp_path) -> None:
    launch(
        _worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),), timeout=TIMEOUT
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["no_maps"]["error"] == "BootstrapRoundError"
        assert "refusing to finish a round with no label maps" in r["no_maps"]["message"]
        for case, problem in (("local_disk", "does not exist"), ("blind_pointer", "names round")):
            assert r[case]["error"] == "BootstrapRoundError", r[case]
            msg = r[case]["message"]
            assert "rank(s) 1 (rank 1:" in msg and problem in msg
            assert "CYBORGS.MASKS.STORE_DIR" in msg and "shared by all ranks" in msg
        assert r["bad_quality"]["error"] is None and r["bad_quality"]["completed"] == [2]
    assert "(on rank 0; see its log)" in r1["no_maps"]["message"]
    assert str(tmp_path / "local_0") in r0["local_disk"]["message"]
    assert MaskStore(str(tmp_path / "quality")).current_round() == 2
    assert not r0["bad_quality"]["miou"]
    assert r1["oom_rank_1"] == {
        "error": "RuntimeError",
        "message": "CUDA out of memory (simulated)",
    }
    assert r0["oom_rank_1"]["error"] == "BootstrapRoundError"
    assert (
        "rank 1 failed (RuntimeError: CUDA out of memory (simulated)" in r0["oom_rank_1"]["message"]
    )
    assert MaskStore(str(tmp_path / "oom")).current_round() is None  # the round never finished
    for r in (r0, r1):
        assert r["read_only_start"]["error"] == "BootstrapRoundError", r["read_only_start"]
        assert "PermissionError" in r["read_only_start"]["message"]
        assert "read-only file system (simulated)" in r["read_only_start"]["message"]
