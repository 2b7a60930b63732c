"""tools/run_demo.sh is quiet: stage lines, a progress line, the summary; full logs in files.

The stages' programs are replaced by a stub interpreter (PYTHON) that prints hundreds of lines
like the real tools, so this checks the script's own behaviour in seconds.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STUB = r"""#!/usr/bin/env bash
out=""; prev=""
for a in "$@"; do [ "$prev" = OUTPUT_DIR ] && out=$a; prev=$a; done
case "$*" in
  *pretrain_net.py*)
    mkdir -p "$out"; touch "$out/model_final.pth"
    for i in $(seq 1 300); do echo "config line $i"; done
    echo "  - Build settings: CXX_FLAGS= -Wno-error=old-style-cast, BETA: 1"  # no progress
    echo "[11/30 19:27:17 d2.utils.events]:  eta: 0:00:48  iter: 2  total_loss: 5.7"
    sleep 2
    echo "[11/30 19:27:19] d2.utils.events INFO:  eta: 0:00:01  iter: 77  total_loss: 5.1" ;;
  *plot_training.py*)
    if [ -n "${FAIL_PLOT:-}" ]; then echo "Traceback: matplotlib exploded"; exit 3; fi
    echo plotted ;;
  *convert_and_finetune.py*)  # CKPT OUTDIR ...: its tools' output, then the collected table
    for i in $(seq 1 400); do echo "loaded weight $i"; done
    mkdir -p "$3"; echo "| VOC07 SVM | 12.3 |" > "$3/results.md" ;;
  *) echo "stub: $*" ;;
esac
"""


def _run(tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess:
    stub = tmp_path / "fakepy"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PYTHON=str(stub), DEMO_BENCHMARKS="voc07_svm", **env_extra)
    return subprocess.run(
        ["bash", str(REPO / "tools" / "run_demo.sh"), str(tmp_path / "data"), str(tmp_path / "o")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_quiet_output_full_logs_and_timings(tmp_path: Path) -> None:
    res = _run(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    logs = tmp_path / "o" / "logs"
    assert len(out.splitlines()) < 40, out
    for n, name in enumerate(("pretrain", "masks", "plot", "transfer"), start=1):
        assert f"[demo {n}/5, " in out and f"log: {logs / name}.log" in out
    assert "config line" not in out and "loaded weight" not in out
    assert "config line 300" in (logs / "pretrain.log").read_text()
    assert "loaded weight 400" in (logs / "transfer.log").read_text()
    # one progress line of the pretraining stage, without the logger prefix
    assert re.search(r"^  eta: 0:00:(48|01)  iter: (2|77)", out, re.M), out
    assert "| VOC07 SVM | 12.3 |" in out
    timings = out[out.index("Stage timings") :]
    for name in ("pretrain", "masks", "plot", "transfer", "total"):
        assert re.search(rf"^  {name} +\d+s$", timings, re.M), timings


def test_failing_stage_prints_its_log_tail(tmp_path: Path) -> None:
    res = _run(tmp_path, FAIL_PLOT="1")
    assert res.returncode == 3
    log = tmp_path / "o" / "logs" / "plot.log"
    assert "FAILED (exit 3)" in res.stderr and "Traceback: matplotlib exploded" in res.stderr
    assert f"full log: {log}" in res.stderr
    assert "[demo 4/5" not in res.stdout  # stopped at the failure
