"""BootstrapHook across two gloo processes: a failure on rank 0 or a round that one rank
cannot see stops every rank with an error naming the cause, instead of hanging the others;
and a real round (``bootstrap_shard``) whose manifest merges both ranks' shards. One launch
serves every test here (starting two processes costs more than the cases)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from datetime import timedelta

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from PIL import Image

import cyborgs.bootstrap.hook as hook_module
from cyborgs.bootstrap.hook import BootstrapHook
from cyborgs.bootstrap.round import RoundSettings, bootstrap_shard, shard_indices
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


ROUND = 2  # = the warm-up epochs below: the first round
N_IMAGES = 10
SLOW_WRITE_S = 0.3  # rank 1 sleeps this long after each label map it writes
REAL_SETTINGS = dataclasses.replace(
    RoundSettings.from_cfg(add_cyborgs_config(get_cfg())),
    num_workers=0, group_size=2, k_min=2, k_max=3, kmeans_iters=5, backend="torch",
    input_size=0, batch_size=2, seed=1,
)  # fmt: skip


class _ColourNet(torch.nn.Module):
    """Stride-8 stand-in encoder: the mean colour of each 8x8 cell."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def extract_features(self, images, names):
        f = torch.nn.functional.avg_pool2d(images.float() / 255.0, 8)
        f = torch.cat([f, torch.full_like(f[:, :1], 0.5)], dim=1)
        return {n: f for n in names}


def _bad_indices() -> list[int]:
    """One image of each rank's shard of the round is unreadable."""
    return [int(shard_indices(N_IMAGES, ROUND, REAL_SETTINGS.seed, 2, r)[0]) for r in (0, 1)]


def _write_images(root: str) -> list[dict]:
    bad = _bad_indices()
    os.makedirs(root, exist_ok=True)
    dicts = []
    for i in range(N_IMAGES):
        p = os.path.join(root, f"img{i}.png")
        if i in bad:
            with open(p, "wb") as f:
                f.write(b"not a png")
        else:
            img = np.zeros((32, 48, 3), np.uint8)
            img[:, :24] = (200, 30 * (i % 5), 20)
            img[:, 24:] = (20, 40, 220)
            Image.fromarray(img).save(p)
        dicts.append({"file_name": p, "image_id": i, "height": 32, "width": 48})
    return dicts


def _real_round(tmp: str) -> dict:
    """A real round in ``tmp``; this rank's shard stats."""
    rank = comm.get_rank()
    if rank == 1:  # this process only: rank 1 is the slower one
        write = MaskStore.write

        def slow_write(self, *args, **kwargs):
            n = write(self, *args, **kwargs)
            time.sleep(SLOW_WRITE_S)
            return n

        MaskStore.write = slow_write
    try:
        return _run_real_round(tmp)
    finally:
        if rank == 1:
            MaskStore.write = write


def _run_real_round(tmp: str) -> dict:
    rank = comm.get_rank()
    mine = {}

    def round_fn(*args, **kwargs):  # the real shard, its stats kept for the test
        mine.update(bootstrap_shard(*args, **kwargs))
        return mine

    dicts = _write_images(tmp) if rank == 0 else None
    dicts = comm.all_gather(dicts)[0]  # the images exist before either rank reads them
    hook = BootstrapHook(
        settings=REAL_SETTINGS,
        round_fn=round_fn,
        datasets=[("demo", dicts, MaskStore(os.path.join(tmp, "store")))],
        iters_per_epoch=3,
        warmup_epochs=ROUND,
        period_epochs=0,
    )
    hook.trainer = _Trainer()
    hook.trainer.model = _ColourNet()
    with EventStorage(0) as storage:
        hook.trainer.storage = storage
        hook._run_round(ROUND)
    keys = ("images", "time_s", "k_values", "skipped_images", "skipped_files")
    return {k: mine[k] for k in keys}


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
        "real_round": _real_round(os.path.join(tmp, "real")),
    }
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Every case of ``_worker`` on two gloo processes: (tmp dir, rank 0's, rank 1's outcomes)."""
    if torch.cuda.is_available():
        pytest.skip("tests the CPU (gloo) path")
    tmp_path = tmp_path_factory.mktemp("hook_distributed")
    launch(
        _worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),), timeout=TIMEOUT
    )
    return tmp_path, *(json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))


def test_round_failures_stop_every_rank_with_the_cause(launched) -> None:
    tmp_path, r0, r1 = launched
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


def test_two_rank_round_manifest_merges_both_shards(launched) -> None:
    """The manifest of a real round: world size 2, every image of both shards, the slowest
    rank's time (a round is done when its last rank is), K of every group of both ranks and
    both ranks' skipped images."""
    tmp_path, r0, r1 = launched
    r0, r1 = r0["real_round"], r1["real_round"]
    store = MaskStore(str(tmp_path / "real" / "store"))
    assert store.current_round() == ROUND
    man = store.manifest(ROUND)

    assert man["world_size"] == 2
    # each rank did its own half (5 images, one unreadable), none twice
    assert r0["images"] == r1["images"] == 4
    assert man["num_images"] == 8 == r0["images"] + r1["images"]
    good = [i for i in range(N_IMAGES) if i not in _bad_indices()]
    assert all(store.has(i, ROUND) for i in good)
    assert not any(store.has(i, ROUND) for i in _bad_indices())
    # the round lasts as long as its slowest rank: rank 1 slept after each of its 4 maps
    assert r1["time_s"] >= 4 * SLOW_WRITE_S and r1["time_s"] > r0["time_s"]
    assert man["time_s"] == max(r0["time_s"], r1["time_s"]) == r1["time_s"]
    # K of every group, rank 0's groups then rank 1's (2 groups of 2 per shard of 4 good images)
    assert len(r0["k_values"]) == len(r1["k_values"]) == 2
    assert man["k_per_group"] == r0["k_values"] + r1["k_values"]
    assert man["k_histogram"] == {
        str(k): c for k, c in Counter(r0["k_values"] + r1["k_values"]).items()
    }
    assert man["k_mean"] == pytest.approx(np.mean(r0["k_values"] + r1["k_values"]))
    # both ranks' unreadable images, each named
    assert r0["skipped_images"] == r1["skipped_images"] == 1
    assert man["skipped_images"] == 2
    assert sorted(man["skipped_files"]) == sorted(r0["skipped_files"] + r1["skipped_files"])
    for i, listed in zip(_bad_indices(), (r0["skipped_files"], r1["skipped_files"]), strict=True):
        assert f"img{i}.png" in listed[0]
