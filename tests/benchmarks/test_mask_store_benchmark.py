"""Smoke test of benchmarks/mask_store.py: both layouts, lossless, files counted, cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_packed_and_png_rounds_are_measured_and_removed(tmp_path: Path) -> None:
    out = tmp_path / "res.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mask_store.py"), "--images", "120",
           "--png-images", "40", "--distinct", "8", "--sample-reads", "40", "--chunk", "20",
           "--dir", str(tmp_path), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    packed, png = res["layouts"]["packed"], res["layouts"]["png"]
    assert (packed["images"], png["images"]) == (120, 40)
    assert packed["files"] == 3  # part, index, manifest
    assert png["files"] == 41  # a PNG per map + manifest
    assert packed["read_us"]["n"] == png["read_us"]["n"] == 40
    assert set(res["packed_vs_png"]) >= {"read_median_ratio", "files_per_map_ratio"}
    assert list(tmp_path.iterdir()) == [out]  # its temp rounds are gone
