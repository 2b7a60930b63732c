"""Smoke test of benchmarks/dataloader.py on the tiny preset: the CLI runs and its JSON is sane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "dataloader.py"


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_dataloader_benchmark_reports_rates_per_worker(
    tiny_data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res" / "dataloader.json"
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(tiny_data_root))
    # grid masks: a real (non-zero) mask source that needs no precomputation.
    cmd = [sys.executable, str(SCRIPT), "--num-images", "8", "--crop-size", "48"]
    cmd += ["--mask-source", "grid", "--workers", "0,2", "--batch-size", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == res  # --out holds the same result as stdout
    assert res["dataset"] == "demo_coco_2017_train_unlabeled"
    assert res["mask_source"] == "grid" and res["crop_size"] == 48
    assert res["dataset_images"] > 0 and res["notes"] == []

    ip = res["in_process"]
    assert ip["images"] == 8 and ip["mapped"] == 8
    assert _positive(ip["images_per_s"]) and _positive(ip["ms_per_image"])
    split = ip["ms_per_image_split"]
    assert set(split) == {"read", "mask_source", "augment"}
    assert all(_positive(v) for v in split.values())
    # the split accounts for the whole call (read is the remainder), no double counting
    assert abs(sum(split.values()) - ip["ms_per_image"]) < 1e-6 * ip["ms_per_image"] + 1e-9

    loaders = res["dataloader"]
    assert [r["workers"] for r in loaders] == [0, 2]
    for r in loaders:
        assert r["images"] == 8
        for key in ("images_per_s", "images_per_s_per_worker", "first_batch_s", "seconds"):
            assert _positive(r[key]), (key, r)
        assert _positive(r["efficiency_vs_in_process"])
        assert r["images_per_s_per_worker"] == r["images_per_s"] / max(r["workers"], 1)
    # 4 batches: enough after the first for 0 workers (2 in flight), not for 2 (4 in flight)
    assert _positive(loaders[0]["steady_images_per_s"])
    assert loaders[1]["steady_images_per_s"] is None
    assert not list(tmp_path.glob("output*"))  # nothing written into the working directory


def test_bootstrap_source_without_round_is_flagged(tiny_data_root: Path, tmp_path: Path) -> None:
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(tiny_data_root))
    cmd = [sys.executable, str(SCRIPT), "--num-images", "2", "--crop-size", "32"]
    cmd += ["--workers", "0", "--target-images-per-s", "1e6"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["mask_source"] == "bootstrap"  # the config default
    assert any("no round" in n for n in res["notes"])
    # a million images/s needs more than one worker at any realistic per-worker rate
    assert res["workers_needed_for_target"] > 1
