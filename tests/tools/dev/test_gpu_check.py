"""tools/dev/gpu_check.sh / gpu_check.py on this CPU machine: arguments, bundle and CUDA errors,
and the driver's bookkeeping (install, one JSON per check, timeouts, summary, exit status)
with stand-in checks. The CUDA checks themselves run on a GPU machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gpu_check  # tools/dev/ (tests/conftest.py)
import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tools" / "dev" / "gpu_check.sh"
PY_VER = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120
    )


def _tiny_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel that pip installs offline."""
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    info = "tinypkg-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tinypkg/__init__.py", "VALUE = 7\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    return path


def _bundle(tmp_path: Path, python: str = "3.11") -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    wheel = _tiny_wheel(bundle)
    meta = {"python": python, "wheels": [{"file": wheel.name}], "expected": []}
    (bundle / "manifest.json").write_text(json.dumps(meta))
    return bundle


@pytest.mark.parametrize("args", [(), ("only-one",), ("a", "b", "c")])
def test_wrong_number_of_arguments_prints_usage(args):
    res = _run(*args)
    assert res.returncode == 2
    assert "usage: tools/dev/gpu_check.sh BUNDLE_DIR RESULTS_DIR" in res.stderr


def test_help_exits_zero():
    res = _run("--help")
    assert res.returncode == 0 and "BUNDLE_DIR RESULTS_DIR" in res.stdout


def test_missing_bundle_or_not_a_bundle_is_a_clear_error(tmp_path):
    res = _run(str(tmp_path / "nope"), str(tmp_path / "r"))
    assert res.returncode == 2 and "no such bundle folder" in res.stderr
    (tmp_path / "empty").mkdir()
    res = _run(str(tmp_path / "empty"), str(tmp_path / "r"))
    assert res.returncode == 2 and "has no manifest.json" in res.stderr
    bundle = _bundle(tmp_path)
    (bundle / "tinypkg-1.0-py3-none-any.whl").unlink()
    res = _run(str(bundle), str(tmp_path / "r"))
    assert res.returncode == 2 and "missing: ['tinypkg-1.0-py3-none-any.whl']" in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the no-CUDA error on a CPU machine"
)
def test_no_cuda_is_a_clear_error_before_anything_runs(tmp_path):
    res = _run(str(_bundle(tmp_path)), str(tmp_path / "r"))
    assert res.returncode == 2 and "CUDA is not available" in res.stderr
    assert not (tmp_path / "r").exists()


def test_bundle_for_another_python_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.subprocess, "run", _fake_probe)
    with pytest.raises(gpu_check.UsageError, match="built for Python 3.99"):
        gpu_check.check_python(sys.executable, {"python": "3.99"})


def _cuda_python(python, meta):
    return {"py": meta["python"], "torch": "x", "cuda": True}


def _fake_probe(cmd, **kwargs):
    py = PY_VER
    out = json.dumps({"py": py, "torch": "x", "cuda": True})
    return subprocess.CompletedProcess(cmd, 0, stdout=out + "\n", stderr="")


def test_driver_installs_the_bundle_and_records_every_check(tmp_path, monkeypatch, capsys):
    """Stand-in checks: one passes (and sees the installed bundle), one fails, one times out
    (its whole process group is killed), one lacks its precondition."""
    py = sys.executable
    bundle = _bundle(tmp_path, python=PY_VER)
    results = tmp_path / "results"
    marker = tmp_path / "grandchild-survived"
    checks = [
        gpu_check.Check("gpu_tests", 60, [py, "-c", "import tinypkg; print('3 passed')"]),
        gpu_check.Check("bootstrap", 60, [py, "-c", "import sys; sys.exit(3)"]),
        gpu_check.Check(
            "ddp_nccl",
            1,
            ["bash", "-c", f"(sleep 2; touch {marker}) & sleep 30"],
        ),
        gpu_check.Check("dataloader", 60, [py, "-c", "pass"], precondition="no --path option"),
    ]
    monkeypatch.setattr(gpu_check, "check_python", _cuda_python)
    monkeypatch.setattr(gpu_check, "build_checks", lambda *a: checks)
    assert gpu_check.run(bundle, results, py) == 1
    out = capsys.readouterr().out
    assert f"results in {results.resolve()}" in out
    summary = json.loads((results / "summary.json").read_text())
    status = {k: v["status"] for k, v in summary["checks"].items()}
    assert status == {"install": "passed", "gpu_tests": "passed", "bootstrap": "failed",
                      "ddp_nccl": "timeout", "dataloader": "failed"}  # fmt: skip
    assert summary["passed"] is False
    assert summary["failed"] == ["bootstrap", "ddp_nccl", "dataloader"]
    for name in status:
        rec = json.loads((results / f"{name}.json").read_text())
        assert rec["check"] == name and rec["status"] == status[name]
    assert "exit status 3" in json.loads((results / "bootstrap.json").read_text())["error"]
    assert "no --path option" in json.loads((results / "dataloader.json").read_text())["error"]
    time.sleep(2.5)
    assert not marker.exists(), "the timed-out check's child process was left running"


def test_a_bundle_that_does_not_install_fails_every_check(tmp_path, monkeypatch):
    py = sys.executable
    bundle = _bundle(tmp_path, python=PY_VER)
    (bundle / "tinypkg-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    monkeypatch.setattr(gpu_check, "check_python", _cuda_python)
    monkeypatch.setattr(
        gpu_check, "build_checks", lambda *a: [gpu_check.Check("gpu_tests", 9, [py, "-c", "1"])]
    )
    assert gpu_check.run(bundle, tmp_path / "r", py) == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["checks"]["install"]["status"] == "failed"
    assert summary["checks"]["gpu_tests"]["error"] == "not run: the bundle did not install"


def test_gpu_test_files_are_the_ones_with_gpu_marks():
    files = gpu_check.gpu_test_files()
    assert "tests/modeling/test_meta_arch.py" in files
    assert "tests/clustering/test_kmeans.py" in files
    assert gpu_check.NCCL_TEST not in files and (ROOT / gpu_check.NCCL_TEST).is_file()


def test_relative_paths_work_from_any_working_directory(tmp_path, monkeypatch):
    """The checks run in the checkout; BUNDLE_DIR and RESULTS_DIR given relative to another
    directory must still name the same folders there."""
    py = sys.executable
    _bundle(tmp_path, python=PY_VER)
    writer = "import json, sys, tinypkg; open(sys.argv[1], 'w').write(json.dumps({'results': []}))"

    def checks(python, results, work, meta):
        out = results / "raw" / "pretrain_step.json"
        out.parent.mkdir(parents=True)
        return [gpu_check.Check("pretrain_step", 60, [py, "-c", writer, str(out)], out)]

    monkeypatch.setattr(gpu_check, "check_python", _cuda_python)
    monkeypatch.setattr(gpu_check, "build_checks", checks)
    monkeypatch.setenv("PYTHON", py)
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main(["bundle", "results"]) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["passed"] is True and summary["bundle"] == str(tmp_path / "bundle")
    assert (tmp_path / "results" / "raw" / "pretrain_step.json").is_file()


def test_malformed_check_output_fails_that_check_and_the_rest_still_run(tmp_path, monkeypatch):
    py = sys.executable
    bundle = _bundle(tmp_path, python=PY_VER)
    results = tmp_path / "results"
    raw = results / "raw"
    raw.mkdir(parents=True)
    step = json.dumps({"results": [{"setting": "r50"}]})  # no "precision", no "batch"
    boot = json.dumps({"targets": {"outside_forward_share": {"pass": True}}})
    write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    checks = [
        # exit 1 with a JSON line that lacks "missing"
        gpu_check.Check("imports", 60, [py, "-c", "print('{\"cuda\": true}'); exit(1)"]),
        gpu_check.Check(
            "pretrain_step", 60, [py, "-c", write, str(raw / "step.json"), step], raw / "step.json"
        ),
        gpu_check.Check(
            "bootstrap", 60, [py, "-c", write, str(raw / "boot.json"), boot], raw / "boot.json"
        ),
    ]
    monkeypatch.setattr(gpu_check, "check_python", _cuda_python)
    monkeypatch.setattr(gpu_check, "build_checks", lambda *a: checks)
    assert gpu_check.run(bundle, results, py) == 1
    summary = json.loads((results / "summary.json").read_text())
    status = {k: v["status"] for k, v in summary["checks"].items()}
    assert status == {"install": "passed", "imports": "failed", "pretrain_step": "failed",
                      "bootstrap": "passed"}  # fmt: skip
    err = summary["checks"]["pretrain_step"]["error"]
    assert err.startswith("cannot judge step.json") and "KeyError: 'precision'" in err
    assert "KeyError: 'missing'" in summary["checks"]["imports"]["error"]
    rec = json.loads((results / "pretrain_step.json").read_text())
    assert rec["result"] == json.loads(step)  # kept, to show what is wrong with it
    assert "KeyError" in summary["targets"]["error"]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an unreaped one is dead all the same)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import gpu_check
py, pids = sys.executable, sys.argv[4]
sleeper = f"sleep 120 & echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; wait"
gpu_check.check_python = lambda python, meta: {"py": meta["python"], "torch": "x", "cuda": True}
gpu_check.build_checks = lambda *a: [
    gpu_check.Check("gpu_tests", 60, [py, "-c", "print('1 passed')"]),
    gpu_check.Check("ddp_nccl", 60, ["bash", "-c", sleeper]),
    gpu_check.Check("pretrain_step", 60, [py, "-c", "pass"]),
]
sys.exit(gpu_check.main(sys.argv[2:4]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_kills_the_running_check_and_still_writes_the_summary(tmp_path, sig):
    _bundle(tmp_path, python=PY_VER)
    pids = tmp_path / "pids"
    env = {**os.environ, "PYTHON": sys.executable}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(ROOT / "tools" / "dev"), "bundle", "results", str(pids)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not pids.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids.exists(), driver.communicate(timeout=30)[0] if driver.poll() else "no check"
        check_pids = [int(p) for p in pids.read_text().split()]
        driver.send_signal(sig)
        out = driver.communicate(timeout=30)[0]
    finally:
        driver.kill()
    assert driver.returncode == 128 + sig, out
    assert not any(_alive(p) for p in check_pids), "the interrupted check kept running"
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["passed"] is False and summary["interrupted"] == sig.name
    status = {k: v["status"] for k, v in summary["checks"].items()}
    assert status == {"install": "passed", "gpu_tests": "passed", "ddp_nccl": "interrupted",
                      "pretrain_step": "failed"}  # fmt: skip
    assert summary["checks"]["ddp_nccl"]["error"].startswith(f"interrupted by {sig.name}")
    rec = json.loads((tmp_path / "results" / "pretrain_step.json").read_text())
    assert rec["error"] == f"not run: interrupted by {sig.name}"


def test_a_hung_torch_probe_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gpu_check, "PROBE_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(gpu_check.UsageError, match="took over 1 s to import torch"):
        gpu_check.check_python(str(fake), {"python": PY_VER})
    assert time.monotonic() - start < 20


def test_check_order_and_timeouts_fit_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    checks = gpu_check.build_checks(
        sys.executable, tmp_path / "r", tmp_path / "w", {"expected": []}
    )
    names = [c.name for c in checks]
    # NCCL right after the other pass/fail tests: the benchmarks come last.
    assert names == ["imports", "gpu_tests", "ddp_nccl", "pretrain_step", "bootstrap", "dataloader"]
    total = gpu_check.PROBE_TIMEOUT_S + gpu_check.INSTALL_TIMEOUT_S
    assert total + sum(c.timeout_s for c in checks) <= gpu_check.BUDGET_S
    boot = checks[names.index("bootstrap")].command
    assert boot[boot.index("--preset") + 1] == "demo"  # 400 images, not tiny's 24
    loader = checks[names.index("dataloader")].command
    assert loader[loader.index("--workers") + 1] == "1,16"
    # more batches of 4 than the 2 per worker in flight, so the 16-worker rate is a steady one
    assert int(loader[loader.index("--num-images") + 1]) > (2 * 16 + 1) * 4
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert gpu_check.loader_workers() == [1]
