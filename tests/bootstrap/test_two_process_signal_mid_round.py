"""Two CPU processes (gloo), a stop signal to one rank in the middle of a bootstrap round, then
``--resume``: every rank stops with the documented status, and the resumed run ends
bit-identical (weights and masks) to a run never stopped.

``tools/pretrain_net.py``'s ``main`` runs in both processes of one launch (the run of
``test_kill_during_bootstrap.py``: 24 tiny images, batch 8 over 2 ranks, the round after
iteration 2 in groups of 8 images). Rank 1 sends itself SIGTERM right after writing its first
map of round 1: it finishes that group and stops; rank 0, which never got the signal, learns of
it when the ranks meet after their shards. Nothing of the round is used, the pre-round
checkpoint is the last one, and the resume redoes the round.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from test_kill_during_bootstrap import DATASET, _args, _maps

from cyborgs.engine.checkpoint import safe_load
from cyborgs.engine.launch import launch
from cyborgs.masks.store import MaskStore, image_key
from cyborgs.utils import preemption
from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS


def _main(out: Path, *extra: str) -> int:
    """pretrain_net's ``main`` in this (already launched) process: its exit status."""
    import pretrain_net  # tools/ (tests/conftest.py; spawned processes inherit sys.path)

    args = pretrain_net.get_parser().parse_args(_args(out, "--num-gpus", "2", *extra))
    try:
        pretrain_net.main(args)
        status = 0
    except SystemExit as e:
        status = e.code
    preemption.uninstall()  # a new process would start without the handler and the request
    return status


def _signal_after_first_map_of_round_1():
    """Patch ``MaskStore.write`` in this process: SIGTERM to itself after its first map of
    round 1 (the handler only records it; the round checks after the group). Returns the
    original to put back."""
    write = MaskStore.write

    def write_then_signal(self, round_id, image_id, label_map):
        n = write(self, round_id, image_id, label_map)
        if round_id == 1 and preemption.requested() is None:
            os.kill(os.getpid(), signal.SIGTERM)
        return n

    MaskStore.write = write_then_signal
    return write


def _worker(out_dir: str) -> None:
    out = Path(out_dir)
    rank = comm.get_rank()
    report = {"straight": _main(out / "straight")}
    write = _signal_after_first_map_of_round_1() if rank == 1 else MaskStore.write
    report["stopped"] = _main(out / "stopped")
    MaskStore.write = write
    round_dir = out / "stopped" / "masks" / "bootstrap" / image_key(DATASET) / "round_0001"
    comm.synchronize()  # every rank has stopped: the round as the stop left it
    if rank == 0:
        report["maps_at_stop"] = len(_maps(round_dir))
        report["manifest_at_stop"] = (round_dir / "manifest.json").exists()
        report["last_at_stop"] = (out / "stopped" / "last_checkpoint").read_text()
    comm.synchronize()
    report["resumed"] = _main(out / "stopped", "--resume")
    (out / f"rank{rank}.json").write_text(json.dumps(report))


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU (gloo) path")
def test_signal_to_one_rank_mid_round_stops_all_and_resume_is_exact(
    tiny_data_root, tmp_path, capfd
) -> None:
    launch(_worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),),
           timeout=timedelta(seconds=120))  # fmt: skip
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["straight"] == r1["straight"] == 0
    # both ranks stopped with the documented status, rank 0 without a signal of its own
    assert r0["stopped"] == r1["stopped"] == PREEMPTED_EXIT_STATUS
    assert "preempted: stopped on SIGTERM" in capfd.readouterr().err
    # mid-round: rank 1 stopped after its first group (8 maps), rank 0 after its shard (12);
    # the round is not finished and the pre-round checkpoint is the last one
    assert r0["maps_at_stop"] == 8 + 12 and not r0["manifest_at_stop"]
    assert r0["last_at_stop"] == "model_0000002.pth"
    assert r0["resumed"] == r1["resumed"] == 0

    stores = [MaskStore(str(tmp_path / d / "masks" / "bootstrap" / image_key(DATASET)))
              for d in ("straight", "stopped")]  # fmt: skip
    assert [s.rounds() for s in stores] == [[1], [1]]
    ids = [d["image_id"] for d in DatasetCatalog.get(DATASET)]
    differ = [i for i in ids if not torch.equal(*(torch.from_numpy(s.read(i, round_id=1))
                                                  for s in stores))]  # fmt: skip
    assert differ == [], f"masks of images {differ} differ"
    a, b = (safe_load(str(tmp_path / d / "model_final.pth"))["model"]
            for d in ("straight", "stopped"))  # fmt: skip
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
