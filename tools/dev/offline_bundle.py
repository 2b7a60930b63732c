#!/usr/bin/env python
"""Build the wheelhouse that ``tools/dev/gpu_check.sh`` installs on an offline CUDA machine.

    .venv/bin/python tools/dev/offline_bundle.py --python 3.12 --out bundle/ [--max-mib 60]

Run it where the package index is reachable, in the suite's environment (``make install``):
the patched pure-Python detectron2 wheel comes from ``tools/install_detectron2.py`` (its cache),
and a package's version is its pin in ``requirements.txt``, else the version installed here
(what the tests passed with). Every other wheel is downloaded for the named CPython and
manylinux x86-64 (``pip download --only-binary=:all: --python-version --platform``); a
package published only as an sdist (fvcore, antlr4-python3-runtime) is built here into a
wheel, which must be pure Python (``py3-none-any``).

The bundle holds what the GPU checks import beyond torch/torchvision. The CUDA image must
already have the larger binary packages the checks import (numpy, Pillow, opencv,
tensorboard: over the size budget, and on every PyTorch CUDA image we know); the suite's
requirements that the checks never import are left out. ``DIR/MANIFEST`` lists all three
groups; ``DIR/manifest.json`` is what ``gpu_check.sh`` reads. The bundle must stay within
``--max-mib`` (default 60 MiB): a build over it fails naming the largest wheels.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# tools/ on the path, as Python puts it there for the scripts in it: the tools' modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import install_detectron2  # noqa: E402
from repo_paths import REPO_ROOT as ROOT  # noqa: E402

# Imported by the GPU checks (beyond torch/torchvision), with what they need in turn.
BUNDLED: tuple[str, ...] = (
    "fvcore",
    "iopath",
    "portalocker",  # iopath
    "yacs",
    "termcolor",
    "tabulate",
    "cloudpickle",
    "tqdm",
    "pyyaml",  # fvcore, yacs, omegaconf
    "omegaconf",  # detectron2.config
    "antlr4-python3-runtime",  # omegaconf
    "pycocotools",
    "scipy",  # bootstrap mask quality (linear_sum_assignment); 35 MiB, the largest wheel
    "pytest",  # the gpu-marked tests; plugin autoload is off in gpu_check.sh
    "pluggy",
    "iniconfig",
    "packaging",
    "pygments",
)
# Imported by the checks, not bundled: (distribution, import name, why).
EXPECTED_ON_MACHINE: tuple[tuple[str, str, str], ...] = (
    ("numpy", "numpy", "a torch/torchvision dependency"),
    ("pillow", "PIL", "a torchvision dependency"),
    ("opencv-python-headless", "cv2", "its wheel alone is over 60 MiB (demo data, writers)"),
    ("tensorboard", "tensorboard", "the trainer's event writer; ~20 MiB with grpcio/protobuf"),
)
# Suite requirements the GPU checks never import: (distribution, what uses it).
LEFT_OUT: tuple[tuple[str, str], ...] = (
    ("lvis", "LVIS evaluation (transfer)"),
    ("faster-coco-eval", "COCO / LVIS evaluation (transfer)"),
    ("hydra-core", "detectron2 LazyConfig instantiation (unused by the suite)"),
    ("matplotlib", "plots and mask panels (tools/plot_training.py, visualize_masks.py)"),
    ("scikit-learn", "VOC07 SVM transfer protocol"),
    ("scikit-image", "Felzenszwalb masks"),
    ("faiss-cpu", "CPU FAISS; on CUDA without FAISS-GPU, k-means runs in torch on the GPU"),
    ("cityscapesscripts", "Cityscapes transfer"),
    ("pydensecrf2", "CRF mask refinement option"),
    ("ruff", "lint"),
)
SDIST_ONLY_HINT = "published only as an sdist"


def log(msg: str) -> None:
    print(f"[offline_bundle] {msg}", flush=True)


def run_pip(args: list[str]) -> None:
    """One pip command in this interpreter (tests replace this to avoid the network)."""
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def requirement_pins(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_version(name: str, pins: dict[str, str]) -> str:
    if canonical(name) in pins:
        return pins[canonical(name)]
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"[offline_bundle] {name}: no pin in requirements.txt and not installed in "
            f"{sys.prefix}; run this in the suite's environment (make install)"
        ) from None


def platform_args(python: str, glibc: str) -> list[str]:
    """pip download's target: CPython ``python`` on manylinux x86-64 up to glibc ``glibc``."""
    if not re.fullmatch(r"3\.\d+", python):
        raise SystemExit(f"[offline_bundle] --python {python!r}: expected e.g. 3.12")
    if not re.fullmatch(r"2\.\d+", glibc):
        raise SystemExit(f"[offline_bundle] --glibc {glibc!r}: expected e.g. 2.28")
    abi = "cp" + python.replace(".", "")
    args = ["--python-version", python, "--implementation", "cp", "--abi", abi, "--abi", "abi3"]
    args += ["--abi", "none"]
    tags = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    tags += [f"manylinux_2_{n}_x86_64" for n in range(5, int(glibc.split(".")[1]) + 1)]
    for tag in tags:
        args += ["--platform", tag]
    return args


def fetch_wheel(spec: str, out: Path, target: list[str]) -> Path:
    """The wheel of ``spec`` for the target platform in ``out``; sdist-only packages are built
    here and must come out pure Python."""
    before = set(out.glob("*.whl"))
    try:
        run_pip(["download", "--no-deps", "--only-binary=:all:", *target, "-d", str(out), spec])
    except subprocess.CalledProcessError:
        log(f"{spec}: no wheel for the target ({SDIST_ONLY_HINT}?); building it here")
        with tempfile.TemporaryDirectory() as tmp:
            run_pip(["wheel", "--no-deps", "--no-binary=:all:", "-w", tmp, spec])
            built = sorted(Path(tmp).glob("*.whl"))
            if len(built) != 1 or not built[0].name.endswith("-py3-none-any.whl"):
                raise SystemExit(
                    f"[offline_bundle] {spec}: building it gave {[p.name for p in built]}, "
                    "not one pure-Python wheel; it cannot be carried to another platform"
                ) from None
            shutil.copy(built[0], out / built[0].name)
    new = sorted(set(out.glob("*.whl")) - before)
    if len(new) != 1:
        raise SystemExit(f"[offline_bundle] {spec}: expected one new wheel, got {new}")
    return new[0]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(out: Path, meta: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(meta, indent=1) + "\n")
    lines = [
        f"CYBORGS offline bundle for CPython {meta['python']}, Linux x86-64 "
        f"(manylinux wheels for glibc <= {meta['glibc']}).",
        f"{len(meta['wheels'])} wheels, {meta['total_mib']:.1f} MiB (budget {meta['max_mib']}).",
        "Install: tools/dev/gpu_check.sh BUNDLE_DIR RESULTS_DIR (pip --no-index --no-deps --target).",
        "",
        "Bundled (imported by the GPU checks):",
        *(f"  {w['file']}  {w['mib']:.2f} MiB  sha256 {w['sha256']}" for w in meta["wheels"]),
        "",
        "Expected on the CUDA machine, not bundled (imported by the checks):",
        "  torch, torchvision (preinstalled by assumption)",
        *(f"  {e['dist']} (import {e['import']}): {e['why']}" for e in meta["expected"]),
        "",
        "Left out (suite requirements the GPU checks never import):",
        *(f"  {e['dist']}: {e['why']}" for e in meta["left_out"]),
        "",
    ]
    (out / "MANIFEST").write_text("\n".join(lines))


def build(
    out: Path,
    python: str,
    glibc: str = "2.28",
    max_mib: float = 60.0,
    cache: Path = ROOT / ".cache" / "patched-wheels",
) -> dict:
    """Fill ``out`` (created, must be empty or absent) and return the manifest."""
    target = platform_args(python, glibc)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"[offline_bundle] {out} is not empty; give a new folder")
    pins = requirement_pins()
    out.mkdir(parents=True, exist_ok=True)
    wheels = [
        Path(shutil.copy(install_detectron2.build_wheel(install_detectron2.DETECTRON2, cache), out))
    ]
    for name in BUNDLED:
        spec = f"{name}=={pinned_version(name, pins)}"
        log(f"fetching {spec}")
        wheels.append(fetch_wheel(spec, out, target))
    total = sum(p.stat().st_size for p in wheels) / 2**20
    if total > max_mib:
        largest = sorted(wheels, key=lambda p: -p.stat().st_size)[:3]
        raise SystemExit(
            f"[offline_bundle] the bundle is {total:.1f} MiB, over --max-mib {max_mib}; "
            "largest: "
            + ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in largest)
        )
    meta = {
        "python": python,
        "glibc": glibc,
        "max_mib": max_mib,
        "total_mib": total,
        "wheels": [
            {"file": p.name, "mib": p.stat().st_size / 2**20, "sha256": sha256_of(p)}
            for p in sorted(wheels)
        ],
        "expected": [{"dist": d, "import": i, "why": w} for d, i, w in EXPECTED_ON_MACHINE],
        "left_out": [{"dist": d, "why": w} for d, w in LEFT_OUT],
    }
    write_manifest(out, meta)
    log(f"{len(wheels)} wheels, {total:.1f} MiB in {out} (see {out / 'MANIFEST'})")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--python", required=True, help="target CPython version, e.g. 3.12")
    p.add_argument("--out", required=True, type=Path, help="new folder for the wheels")
    p.add_argument("--glibc", default="2.28", help="newest manylinux glibc tag to accept")
    p.add_argument("--max-mib", type=float, default=60.0, help="size budget (default 60)")
    args = p.parse_args(argv)
    build(args.out, args.python, args.glibc, args.max_mib)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())
