"""A pretraining run on a COCO-style set holding a zero-byte, a truncated, a 16-bit and a
4000x20 image registers, trains, completes its bootstrap round, and names and counts the
skipped files (``data/num_skipped_images``, the round manifest) -- issue 10's acceptance run.

tools/pretrain_net.py as a subprocess, R18 at 48 px on a copy of the tiny synthetic set with
the bad files added to ``coco/train2017``: 28 images / batch 8 = 3 iterations per epoch; epoch
0 is the vMF warm-up, the bootstrap round follows it, epoch 1 trains on its masks. Slow: the
pieces are tested fast in tests/data/test_image_io.py, tests/data/test_image_folder.py,
tests/bootstrap/test_round_bad_images.py and tests/masks/test_precompute_bad_images.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

_OPTS = [
    "SOLVER.EPOCHS", "2",
    "SOLVER.IMS_PER_BATCH", "8",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "DATALOADER.NUM_WORKERS", "0",
    "CYBORGS.PROJECTOR_HIDDEN_DIM", "32",
    "CYBORGS.PROJECTOR_OUT_DIM", "16",
    "CYBORGS.AUG.CROP_SIZE", "48",
    "CYBORGS.BOOTSTRAP.INPUT_SIZE", "64",
    "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", "0",  # only the round right after the warm-up
    "CYBORGS.BOOTSTRAP.KMEANS_BACKEND", "torch",
]  # fmt: skip

# zero-byte, truncated JPEG, 4000x20 strip: skipped; the 16-bit PNG is read (scaled to 8 bit)
_BAD = {"000000900001.jpg", "000000900002.jpg", "000000900004.jpg"}
_SIXTEEN_BIT = "000000900003.png"


def _add_bad_images(train: Path) -> None:
    (train / "000000900001.jpg").write_bytes(b"")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), np.uint8)).save(train / "cut.jpg")
    data = (train / "cut.jpg").read_bytes()
    (train / "cut.jpg").unlink()
    (train / "000000900002.jpg").write_bytes(data[: len(data) // 2])
    ramp = (np.arange(64 * 80).reshape(64, 80) * 12).astype(np.uint16)  # up to ~61k
    Image.fromarray(ramp).save(train / _SIXTEEN_BIT)
    Image.fromarray(rng.integers(0, 256, (20, 4000, 3), np.uint8)).save(train / "000000900004.jpg")


@pytest.mark.slow  # ~1 min of CPU (3 min on the shared 2-core machine)
def test_run_with_bad_images_completes_its_round_and_counts_them(tiny_data_root, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_root, data)
    _add_bad_images(data / "coco" / "train2017")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "pretrain_net.py"),
        "--config-file",
        "pretrain_configs/demo_R18.yaml",
        "OUTPUT_DIR",
        str(out),
        *_OPTS,
    ]
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(data), OMP_NUM_THREADS="2")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    log = (out / "log.txt").read_text()

    # registration named the unreadable header (zero bytes) instead of stopping
    assert "unreadable image(s)" in log and "000000900001.jpg" in log

    # the bootstrap round finished, skipped the three bad files and listed them
    manifests = list((out / "masks" / "bootstrap").rglob("manifest.json"))
    assert len(manifests) == 1, manifests
    man = json.loads(manifests[0].read_text())
    assert man["skipped_images"] == 3
    assert {Path(f.split(": ")[0]).name for f in man["skipped_files"]} == _BAD
    from cyborgs.masks.packed import scan_part

    round_dir = manifests[0].parent
    names = {r.key for p in round_dir.glob("part-*.bin") for r in scan_part(str(p))}
    assert len(names) == man["num_images"] == 25  # the 24 tiny images and the 16-bit one
    for name in _BAD:
        assert name in log

    # training met bad images, skipped them and counted them
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    counts = [r["data/num_skipped_images"] for r in rows if "data/num_skipped_images" in r]
    assert counts and counts[-1] >= 3  # every image is drawn in epoch 0's permutation
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
