"""SIGKILL during a bootstrap round, then ``--resume``: the round is redone in full and used.

tools/pretrain_net.py runs as a subprocess on the tiny demo set: 24 images / batch 8 = 3
iterations per epoch, epoch 0 is the vMF warm-up, the bootstrap round (round 1) runs after
iteration 2, epoch 1 trains on its masks. Checkpoints every 2 iterations, and the step before a
round always: the last one before the round is model_0000002.pth (the warm-up epoch is kept). The killed run goes through ``slow_mask_writes.py``
(next to this file), which sleeps after each label map written, to stretch the round; the test
watches the store and kills the process as soon as the first maps of round 1 exist and its
manifest does not -- a real kill in the middle of a round.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog
from slow_mask_writes import slow_mask_writes_cmd

import cyborgs.data.datasets  # noqa: F401  (registers the demo_* sets)
from cyborgs.engine.checkpoint import safe_load
from cyborgs.masks.store import MaskStore, image_key

REPO = Path(__file__).resolve().parents[2]
DATASET = "demo_coco_2017_train_unlabeled"
K_MAX = 8

_OPTS = [
    "SOLVER.EPOCHS", "2",
    "SOLVER.IMS_PER_BATCH", "8",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "DATALOADER.NUM_WORKERS", "0",  # no worker processes outliving the SIGKILL
    "CYBORGS.PROJECTOR_HIDDEN_DIM", "32",
    "CYBORGS.PROJECTOR_OUT_DIM", "16",
    "CYBORGS.AUG.CROP_SIZE", "32",
    "CYBORGS.MASKS.SOURCE", "bootstrap",
    "CYBORGS.WARMUP_EPOCHS", "1",
    "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", "0",  # only the round right after the warm-up
    "CYBORGS.BOOTSTRAP.FEATURES", "['res3.1']",
    "CYBORGS.BOOTSTRAP.INPUT_SIZE", "64",
    "CYBORGS.BOOTSTRAP.GROUP_SIZE", "8",
    "CYBORGS.BOOTSTRAP.K_MAX", str(K_MAX),
    "CYBORGS.BOOTSTRAP.KMEANS_BACKEND", "torch",
]  # fmt: skip


def _args(out: Path, *extra: str) -> list[str]:
    cfg = ["--config-file", "pretrain_configs/demo_R18.yaml", *extra]
    return [*cfg, "OUTPUT_DIR", str(out), *_OPTS]


def _env(data_root: Path) -> dict[str, str]:
    return dict(os.environ, CYBORGS_DEMO_DATASETS=str(data_root), OMP_NUM_THREADS="2")


def _maps(round_dir: Path) -> list[str]:
    """Keys of the whole label-map records in the round's part files (written or being
    written; a record torn by the kill is not counted)."""
    from cyborgs.masks.packed import HEADER

    keys = []
    for part in round_dir.glob("*part-*.bin*"):
        data, pos = part.read_bytes(), 0
        while pos + HEADER.size <= len(data):
            _, _, _, klen, plen, _ = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + klen + plen
            if end > len(data):
                break
            keys.append(data[pos + HEADER.size : pos + HEADER.size + klen].decode())
            pos = end
    return keys


def _kill_during_round(out: Path, data_root: Path, round_dir: Path, timeout_s: float) -> int:
    """Start a run, SIGKILL it once round 1 has maps but no manifest; return #maps then."""
    log = open(out.parent / "killed_run.log", "w")  # noqa: SIM115  (closed below)
    cmd = slow_mask_writes_cmd(0.3, str(REPO / "tools/pretrain_net.py"), *_args(out))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(data_root), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                "run ended before its bootstrap round was caught:\n"
                + (out.parent / "killed_run.log").read_text()[-3000:]
            )
            if round_dir.is_dir() and _maps(round_dir):
                # Observed in the round: kill at once (24 maps x 0.3 s delay = a 7 s window).
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                assert not (round_dir / "manifest.json").exists(), "round finished before kill"
                return len(_maps(round_dir))
            time.sleep(0.02)
        raise AssertionError(f"no map of round 1 appeared within {timeout_s} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()


def test_sigkill_during_bootstrap_round_then_resume(tiny_data_root, tmp_path) -> None:
    out = tmp_path / "run"
    store_dir = out / "masks" / "bootstrap" / image_key(DATASET)
    round_dir = store_dir / "round_0001"
    store = MaskStore(str(store_dir))
    image_ids = [d["image_id"] for d in DatasetCatalog.get(DATASET)]
    assert len(image_ids) == 24

    n_at_kill = _kill_during_round(out, tiny_data_root, round_dir, timeout_s=240)
    # Killed mid-round: a partial round directory that nothing points at, and the last
    # checkpoint is the step the round follows (iteration 2), written before the round.
    assert 0 < n_at_kill < len(image_ids)
    assert store.current_round() is None and store.rounds() == []
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    assert safe_load(str(out / "model_0000002.pth"))["trainer"]["hooks"]["BootstrapHook"] == {
        "completed": []
    }
    assert not (out / "model_final.pth").exists()

    res = subprocess.run(
        [sys.executable, str(REPO / "tools/pretrain_net.py"), *_args(out, "--resume")],
        cwd=REPO,
        env=_env(tiny_data_root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "Starting training from iteration 3" in res.stderr + res.stdout

    # The round is complete and current: manifest, pointer, one map per image, uint8 ids.
    assert store.rounds() == [1] and store.current_round() == 1
    assert json.loads((store_dir / "current.json").read_text())["dir"] == "round_0001"
    man = store.manifest(1)
    assert man["num_images"] == len(image_ids) and man["epoch"] == 1 and man["iteration"] == 3
    assert sorted(_maps(round_dir)) == sorted(image_key(i) for i in image_ids)
    for image_id in image_ids:
        m = store.read(image_id, round_id=1)
        assert m.dtype == np.uint8 and m.ndim == 2
        # ids renumbered 0..n-1 per image, n <= K (so far below 256)
        assert int(m.max()) < K_MAX and int(m.max()) + 1 == len(np.unique(m))
    # No partial or temporary leftovers: every round directory has its manifest, no temp file.
    for d in store_dir.iterdir():
        if d.is_dir():
            assert (d / "manifest.json").is_file(), f"partial round directory {d}"
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".tmp"]
    assert leftovers == []

    # The round's metrics reached metrics.json (rerun before the resumed run's first step, 3).
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    boot = [r for r in rows if any(k.startswith("bootstrap/") for k in r)]
    assert boot and boot[0]["iteration"] == 3
    for k in ("bootstrap/time_s", "bootstrap/images_per_s", "bootstrap/bytes_per_image"):
        assert k in boot[0] and boot[0][k] > 0, k
    assert 2 <= boot[0]["bootstrap/k_mean"] <= K_MAX

    # The run finished; its checkpoint records the round.
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    ck = safe_load(str(out / "model_final.pth"))
    assert ck["iteration"] == 5
    assert ck["trainer"]["hooks"]["BootstrapHook"]["completed"] == [1]
