#!/usr/bin/env python3
"""The offline GPU check behind ``tools/dev/gpu_check.sh BUNDLE_DIR RESULTS_DIR``.

On a CUDA machine with Python and PyTorch preinstalled and no network: installs the wheels of
``tools/dev/offline_bundle.py`` into a temporary prefix (``pip install --no-index --no-deps
--target``: nothing is fetched or built; the preinstalled torch stays in use), puts the
suite's checkout on ``PYTHONPATH`` (pure Python) and runs, each with its own timeout and all
within ``BUDGET_S`` (8 minutes on one H100/H200), in this order:

* ``imports``: everything the checks import, and CUDA visible to torch;
* ``gpu_tests``: the ``gpu``-marked tests (pytest -m gpu), NCCL test excepted;
* ``ddp_nccl``: one NCCL DDP step of the real trainer (tests/engine/test_nccl_ddp.py);
* ``pretrain_step``: ``benchmarks/pretrain_step.py`` on CUDA, R50 @ 224, batch 64, bf16 +
  channels_last, with overhead share, peak fraction and the targets;
* ``bootstrap``: ``benchmarks/bootstrap.py``, a bootstrap round with R50 and GPU k-means on
  the 400 training images of the ``demo`` preset;
* ``dataloader``: ``benchmarks/dataloader.py --path device --device cuda``, 1 worker and one
  per core (up to 16).

The pass/fail checks come first, the benchmarks last. The torch/CUDA probe, the install and
every check have a timeout, and these add up to at most ``BUDGET_S``, so a slow check never
eats the time of the ones after it.

Writes ``RESULTS_DIR/<check>.json`` (status, seconds, the benchmark's own JSON under
``result``), ``<check>.log`` and ``summary.json``. Exit status: 0 when every check passed,
1 when one failed or timed out, 2 for bad arguments, a bundle that is not one, no CUDA or a
hung torch/CUDA probe, 128 + the signal number on SIGINT/SIGTERM (the running check's process
group is killed and ``summary.json`` still written, marking it ``interrupted`` and the rest not
run). Missed performance targets are reported (``summary.json`` ``targets``), not failures: the checks
prove the CUDA path runs. Stdlib only: it runs before the bundle is installed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# tools/ on the path, as Python puts it there for the scripts in it: the tools' modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repo_paths import REPO_ROOT as REPO  # noqa: E402

BUDGET_S = 480.0
# Importing torch and initialising CUDA takes seconds on a healthy machine; a hung driver or
# GPU must fail the run, not block it.
PROBE_TIMEOUT_S = 60.0
INSTALL_TIMEOUT_S = 45.0  # pip unpacking ~40 MiB of wheels, no network
LOADER_MAX_WORKERS = 16
NCCL_TEST = "tests/engine/test_nccl_ddp.py"
USAGE = "usage: tools/dev/gpu_check.sh BUNDLE_DIR RESULTS_DIR"

IMPORTS = """
import importlib, json, sys
mods = sys.argv[1:]
missing = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:
        missing.append(f"{m}: {type(e).__name__}: {e}")
import torch
cuda = torch.cuda.is_available()
print(json.dumps({"missing": missing, "cuda": cuda, "torch": torch.__version__,
                  "device": torch.cuda.get_device_name() if cuda else None}))
sys.exit(1 if missing or not cuda else 0)
"""
# What the checks import from the bundle and the checkout (the manifest adds the expected ones).
IMPORT_NAMES = ["detectron2.engine", "fvcore", "iopath", "yacs", "omegaconf", "pycocotools.mask"]
IMPORT_NAMES += ["scipy.optimize", "pytest", "cyborgs.modeling", "cyborgs.engine.trainer"]


class UsageError(Exception):
    """Bad arguments, a folder that is not a bundle, no CUDA, or a torch/CUDA probe that hangs:
    exit status 2 (before anything is written to the results folder)."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM to the driver. A BaseException so that ``except Exception`` (a check
    whose output cannot be judged) does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass
class Check:
    name: str
    timeout_s: float
    command: list[str]
    raw_json: Path | None = None  # the benchmark's own JSON output
    precondition: str | None = None  # set: the check fails with this message, not run


def fail(msg: str) -> None:
    raise UsageError(msg)


def read_manifest(bundle: Path) -> dict:
    if not bundle.is_dir():
        fail(f"{bundle}: no such bundle folder (build one with tools/dev/offline_bundle.py)")
    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        fail(
            f"{bundle}: not a bundle, it has no manifest.json (tools/dev/offline_bundle.py writes it)"
        )
    try:
        meta = json.loads(manifest.read_text())
        wheels = [bundle / w["file"] for w in meta["wheels"]]
    except (ValueError, KeyError, TypeError) as e:
        fail(f"{manifest}: unreadable bundle manifest ({e})")
    absent = [w.name for w in wheels if not w.is_file()]
    if absent:
        fail(f"{bundle}: wheels listed in manifest.json are missing: {absent}")
    return meta


def check_python(python: str, meta: dict) -> dict:
    """torch importable and CUDA visible in ``python``; the bundle's Python version matches."""
    probe = (
        "import json, sys; import torch; print(json.dumps({'py': '%d.%d' % sys.version_info[:2],"
        " 'torch': torch.__version__, 'cuda': torch.cuda.is_available()}))"
    )
    try:
        res = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        fail(
            f"{python} took over {PROBE_TIMEOUT_S:.0f} s to import torch and check CUDA: a hung "
            "GPU driver or device? (check nvidia-smi)"
        )
    if res.returncode != 0:
        fail(f"{python} cannot import torch (PyTorch must be preinstalled): {res.stderr[-500:]}")
    try:
        info = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        fail(f"{python}: unreadable torch/CUDA probe output: {res.stdout[-500:]!r}")
    if not info["cuda"]:
        fail(
            f"CUDA is not available to torch {info['torch']} in {python}: run this on a CUDA "
            "machine (set PYTHON to the interpreter that has a CUDA build of torch)"
        )
    if info["py"] != meta.get("python"):
        fail(
            f"the bundle was built for Python {meta.get('python')}, {python} is {info['py']}: "
            f"rebuild it with tools/dev/offline_bundle.py --python {info['py']}"
        )
    return info


def gpu_test_files() -> list[str]:
    files = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel != NCCL_TEST and "pytest.mark.gpu" in path.read_text():
            files.append(rel)
    return files


def run_command(cmd: list[str], timeout_s: float, log: Path, env: dict) -> tuple[int | None, float]:
    """Run in its own process group (killed whole on timeout); returns (rc or None, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        except BaseException:
            # Interrupted: its own session does not get the driver's signal, so without this
            # it would keep running (and holding the GPU) after the driver is gone.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return rc, time.perf_counter() - start


def tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def judge(check: Check, rc: int | None, log: Path) -> tuple[str, str | None, dict | None]:
    """(status, error, the benchmark's JSON) of a finished check."""
    if rc is None:
        return "timeout", f"over its {check.timeout_s:.0f} s timeout (see {log.name})", None
    result = None
    if check.name == "imports":
        lines = tail(log).strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if rc != 0 and result is not None:
            return "failed", f"missing: {result['missing']}, CUDA: {result['cuda']}", result
    if check.raw_json is not None and check.raw_json.is_file():
        try:
            result = json.loads(check.raw_json.read_text())
        except ValueError as e:
            return "failed", f"{check.raw_json.name} is not JSON ({e})", None
    if rc != 0:
        return "failed", f"exit status {rc}: {tail(log, 600)}", result
    if check.name in ("gpu_tests", "ddp_nccl"):
        text = tail(log, 4000)
        if not re.search(r"\b[1-9]\d* passed", text):
            return "failed", f"no test passed: {text[-600:]}", result
    if check.raw_json is not None and result is None:
        return "failed", f"{check.raw_json.name} was not written", result
    if check.name == "pretrain_step":
        for r in result["results"]:
            if r["precision"] != {"bf16_autocast": True, "channels_last": True}:
                return "failed", f"{r['setting']} ran without bf16 + channels_last", result
    return "passed", None, result


def loader_workers() -> list[int]:
    """1 worker (the per-worker rate) and one per core, up to ``LOADER_MAX_WORKERS``."""
    n = min(os.cpu_count() or 1, LOADER_MAX_WORKERS)
    return [1, n] if n > 1 else [1]


def build_checks(python: str, results: Path, work: Path, meta: dict) -> list[Check]:
    raw = results / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    workers = loader_workers()
    # dataloader.py gives a steady rate only with more batches (of 4) than the 2 per worker
    # in flight: 144 images for 16 workers.
    loader_images = max(96, 4 * (2 * max(workers) + 4))
    # Timeouts: with the probe and the install they add up to BUDGET_S (480 s).
    checks = [
        Check(
            "imports",
            30,
            [python, "-c", IMPORTS, *IMPORT_NAMES, *(e["import"] for e in meta["expected"])],
        ),
        Check("gpu_tests", 110, [*pytest, "-m", "gpu", *gpu_test_files()]),
        # Right after the tests: pass/fail like them, so the benchmarks never squeeze it.
        Check("ddp_nccl", 50, [*pytest, "-m", "gpu", NCCL_TEST]),
        Check(
            "pretrain_step",
            70,
            [python, "benchmarks/pretrain_step.py", "--device", "cuda", "--batch", "64"]
            + ["--only", "r50", "--out", str(raw / "pretrain_step.json")],
            raw / "pretrain_step.json",
        ),
        # The demo preset's 400 images (generated here, ~20 s): with tiny's 24 the round is
        # mostly warm-up and start-up, and its "outside the forward" share means nothing.
        Check(
            "bootstrap",
            75,
            [python, "benchmarks/bootstrap.py", "--depth", "50", "--device", "cuda"]
            + ["--preset", "demo", "--data-root", str(work / "data")]
            + ["--output", str(raw / "bootstrap.json")],
            raw / "bootstrap.json",
        ),
        Check(
            "dataloader",
            40,
            [python, "benchmarks/dataloader.py", "--path", "device", "--device", "cuda"]
            + ["--workers", ",".join(map(str, workers)), "--num-images", str(loader_images)]
            + ["--out", str(raw / "dataloader.json")],
            raw / "dataloader.json",
        ),
    ]
    loader = REPO / "benchmarks" / "dataloader.py"
    if not loader.is_file() or "--path" not in loader.read_text():
        next(c for c in checks if c.name == "dataloader").precondition = (
            "benchmarks/dataloader.py has no --path option: the device-augmentation data "
            "loader benchmark is not in this checkout"
        )
    return checks


def install_bundle(python: str, bundle: Path, meta: dict, site: Path, results: Path) -> dict:
    wheels = [str(bundle / w["file"]) for w in meta["wheels"]]
    cmd = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir"]
    cmd += ["--disable-pip-version-check", "--target", str(site), *wheels]
    log = results / "install.log"
    rc, seconds = run_command(cmd, INSTALL_TIMEOUT_S, log, dict(os.environ))
    status = "passed" if rc == 0 else ("timeout" if rc is None else "failed")
    error = None if rc == 0 else f"pip install --target failed: {tail(log, 600)}"
    return {"check": "install", "status": status, "returncode": rc, "seconds": seconds,
            "timeout_s": INSTALL_TIMEOUT_S, "command": cmd, "log": log.name, "error": error,
            "result": {"wheels": len(wheels), "prefix": str(site)}}  # fmt: skip


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def targets_of(records: dict[str, dict]) -> dict:
    out = {}
    step = (records.get("pretrain_step") or {}).get("result") or {}
    for r in step.get("results", []):
        out[f"pretrain_step {r['setting']} batch {r['batch']}"] = r.get("targets")
    boot = (records.get("bootstrap") or {}).get("result") or {}
    if "targets" in boot:
        out["bootstrap"] = boot["targets"]
    return out


def _interrupt(signum: int, frame) -> None:
    # A second signal while the driver cleans up must not cut the summary short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def new_record(check: Check) -> dict:
    return {"check": check.name, "command": check.command, "log": f"{check.name}.log",
            "timeout_s": check.timeout_s, "returncode": None, "seconds": 0.0,
            "result": None}  # fmt: skip


def run_check(check: Check, rec: dict, left: float, results: Path, env: dict) -> None:
    check.timeout_s = min(check.timeout_s, left)
    rec["timeout_s"] = check.timeout_s
    print(f"[gpu_check] {check.name} (timeout {check.timeout_s:.0f} s)", flush=True)
    log = results / f"{check.name}.log"
    rc, seconds = run_command(check.command, check.timeout_s, log, env)
    try:
        status, error, result = judge(check, rc, log)
    except Exception as e:  # e.g. a benchmark JSON without a key judge reads
        what = check.raw_json.name if check.raw_json is not None else f"{check.name}.log"
        status, result = "failed", None
        error = f"cannot judge {what} (malformed output?): {type(e).__name__}: {e}"
        try:  # keep what the benchmark wrote: the record shows what is wrong with it
            result = json.loads(check.raw_json.read_text()) if check.raw_json else None
        except (OSError, ValueError):
            pass
    rec.update(status=status, error=error, returncode=rc, seconds=seconds, result=result)


def run(bundle: Path, results: Path, python: str) -> int:
    deadline = time.monotonic() + BUDGET_S
    meta = read_manifest(bundle)
    info = check_python(python, meta)
    results.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    checks: list[Check] = []
    current: str | None = None  # the step running when a signal comes
    started = 0.0
    interrupted: int | None = None
    old_handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with tempfile.TemporaryDirectory(prefix="cyborgs-gpu-check-") as tmp:
            work = Path(tmp)
            site = work / "site"
            checks = build_checks(python, results, work, meta)
            current, started = "install", time.monotonic()
            records["install"] = install_bundle(python, bundle, meta, site, results)
            write_json(results / "install.json", records["install"])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")])
            env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
            for check in checks:
                current, started = check.name, time.monotonic()
                left = deadline - time.monotonic()
                rec = new_record(check)
                if records["install"]["status"] != "passed":
                    rec.update(status="failed", error="not run: the bundle did not install")
                elif check.precondition:
                    rec.update(status="failed", error=check.precondition)
                elif left < 5:
                    rec.update(status="failed", error=f"not run: the {BUDGET_S:.0f} s budget is spent")  # fmt: skip
                else:
                    run_check(check, rec, left, results, env)
                records[check.name] = rec
                write_json(results / f"{check.name}.json", rec)
                print(f"[gpu_check] {check.name}: {rec['status']}"
                      + (f" -- {rec['error'][:300]}" if rec.get("error") else ""), flush=True)  # fmt: skip
            current = None
    except Interrupted as e:
        interrupted = e.signum
    finally:
        # On a signal and on a driver error alike: summary.json is always written, with the
        # step that was running and the ones never reached.
        if current is not None:
            why = (
                f"interrupted by {signal.Signals(interrupted).name}"
                if interrupted
                else "the driver failed (see its traceback)"
            )
            seconds = time.monotonic() - started
            for step in ["install", *(c.name for c in checks)]:
                if step in records:
                    continue
                check = next((c for c in checks if c.name == step), Check(step, 0, []))
                rec = new_record(check)
                if step == current:
                    rec.update(status="interrupted", seconds=seconds,
                               error=f"{why} after {seconds:.0f} s; its processes were killed")  # fmt: skip
                else:
                    rec.update(status="failed", error=f"not run: {why}")
                records[step] = rec
                write_json(results / f"{step}.json", rec)
        summary = write_summary(records, info, bundle, results, interrupted)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    passed = summary["passed"]
    print(
        f"[gpu_check] {'all checks passed' if passed else 'FAILED: ' + ', '.join(summary['failed'])}"
    )
    print(f"[gpu_check] results in {results.resolve()} (summary.json, one JSON + log per check)")
    if interrupted:
        return 128 + interrupted
    return 0 if passed else 1


def write_summary(records: dict, info: dict, bundle: Path, results: Path, interrupted) -> dict:
    try:
        targets = targets_of(records)
    except Exception as e:  # a malformed benchmark JSON (its check has failed already)
        targets = {"error": f"{type(e).__name__}: {e}"}
    summary = {
        "passed": not interrupted and all(r["status"] == "passed" for r in records.values()),
        "interrupted": signal.Signals(interrupted).name if interrupted else None,
        "device": (records.get("imports", {}).get("result") or {}).get("device"),
        "torch": info["torch"],
        "python": platform.python_version(),
        "bundle": str(bundle),
        "budget_s": BUDGET_S,
        "checks": {
            k: {"status": r["status"], "seconds": round(r["seconds"], 1), "error": r.get("error")}
            for k, r in records.items()
        },  # fmt: skip
        "targets": targets,
        "failed": [k for k, r in records.items() if r["status"] != "passed"],
    }
    write_json(results / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    python = os.environ.get("PYTHON", sys.executable)
    try:
        # Absolute: the checks run with the checkout as their working directory.
        if os.sep in python:
            python = os.path.abspath(python)
        return run(Path(argv[0]).resolve(), Path(argv[1]).resolve(), python)
    except UsageError as e:
        print(f"[gpu_check] error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
