"""SIGTERM to tools/pretrain_net.py during a bootstrap round: it stops after the current group
of images with the documented status, and ``--resume`` ends bit-identical to a run never
stopped.

The run of ``test_kill_during_bootstrap.py`` (24 tiny images, 3 iterations per epoch, the round
after iteration 2 in groups of 8 images, every map write slowed to 0.3 s): the signal is sent
as soon as the round's first maps exist. The comparison with an uninterrupted run (a third
run) happens with ``--run-slow``; the in-process tests of ``tests/engine/test_preemption.py``
check bit-exactness after a mid-epoch stop by default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from slow_mask_writes import slow_mask_writes_cmd
from test_kill_during_bootstrap import DATASET, REPO, _args, _env, _maps

from cyborgs.engine.checkpoint import safe_load
from cyborgs.masks.store import MaskStore, image_key
from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS


def _run(out: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools/pretrain_net.py"), *_args(out, *extra)],
        cwd=REPO, env=_env(data_root), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_sigterm_during_round_stops_after_the_group_and_resumes_exactly(
    tiny_data_root, tmp_path, request
) -> None:
    out = tmp_path / "run"
    round_dir = out / "masks" / "bootstrap" / image_key(DATASET) / "round_0001"
    log = tmp_path / "stopped.log"
    cmd = slow_mask_writes_cmd(0.3, str(REPO / "tools/pretrain_net.py"), *_args(out))
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(tiny_data_root), stdout=f, stderr=f)
        try:
            deadline = time.monotonic() + 240
            while not (round_dir.is_dir() and _maps(round_dir)):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no map of round 1 appeared"
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGTERM)
            t0 = time.monotonic()
            # bounded: the rest of the current group (8 maps x 0.3 s) and the exit
            status = proc.wait(60)
            waited = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    text = log.read_text()
    assert status == PREEMPTED_EXIT_STATUS, text[-3000:]
    assert "preempted: stopped on SIGTERM" in text and "Traceback" not in text, text[-3000:]
    assert waited < 30
    # stopped between groups: whole groups of maps, no manifest, the pre-round checkpoint
    n = len(_maps(round_dir))
    assert n in (8, 16) and not (round_dir / "manifest.json").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"
    assert safe_load(str(out / "model_0000002.pth"))["trainer"]["hooks"]["BootstrapHook"] == {
        "completed": []
    }

    res = _run(out, tiny_data_root, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    store = MaskStore(str(round_dir.parent))
    assert store.rounds() == [1] and len(_maps(round_dir)) == 24

    if not request.config.getoption("--run-slow"):
        return  # the bit-exact comparison needs a third run (~30 s on idle cores)
    straight = tmp_path / "straight"
    res = _run(straight, tiny_data_root)
    assert res.returncode == 0, res.stderr[-3000:]
    a = safe_load(str(straight / "model_final.pth"))["model"]
    b = safe_load(str(out / "model_final.pth"))["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
