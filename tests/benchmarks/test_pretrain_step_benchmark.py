"""benchmarks/pretrain_step.py smoke test: both phases timed, ratios in range, JSON written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pretrain_step_benchmark_reports_both_phases(tmp_path):
    out = tmp_path / "step.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "pretrain_step.py"), "--batch", "2",
           "--reps", "1", "--warmup", "1", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    (r18,) = [r for r in data["results"] if r["setting"] == "R18@64"]
    for phase in (r18, r18["contrastive_only"]):
        assert phase["step_s"]["min"] > 0 and phase["backbone_s"]["min"] > 0
        assert 0.0 <= phase["overhead_fraction"] < 1.0
        assert phase["meets_target"] == (phase["overhead_fraction"] <= 0.15)
    assert r18["images_per_s"] == 2 / r18["step_s"]["min"]
