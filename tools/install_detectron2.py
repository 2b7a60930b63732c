#!/usr/bin/env python
"""Install detectron2 v0.6 as pure Python into the running interpreter (SPEC §7).

detectron2 is not on the package index under its own name. ``pb1-detectron2==0.6`` is an
sdist whose Python sources equal the official v0.6 tag but which lacks the C++ sources, so
``pip install`` fails. This script:

1. leaves any importable detectron2 alone (an official source build with its ops, or a
   previous run of this script: it is idempotent and takes well under a second then);
2. downloads the sdist through pip (the registry, no other host), checks its sha256;
3. copies the ``detectron2`` package into site-packages, mending only what current
   libraries break: ``PIL.Image.LINEAR`` (Pillow >= 10), ``pkg_resources`` (setuptools >= 81),
   the NumPy aliases ``np.bool/np.int/np.float`` (NumPy >= 1.24), and the unconditional
   ``from detectron2 import _C`` in four modules, which becomes a proxy that raises a clear
   error only when a compiled op (deformable conv, rotated boxes, fast COCO eval) is called;
4. writes a ``detectron2-0.6.dist-info`` with a RECORD, so ``pip uninstall detectron2`` works;
5. mends the same NumPy aliases in ``lvis`` 0.5.3 (``lvis/eval.py`` uses ``np.float``), whose
   evaluation API detectron2's ``LVISEvaluator`` calls; idempotent, whichever detectron2 is used.

Every mend asserts how often its pattern occurs, so a different sdist fails loudly instead of
being half-mended. The copy goes to a temporary folder renamed into place: an interrupted run
never leaves a broken package behind.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
MARKER = "_cyborgs_install.json"

MISSING_OPS_MODULE = '''\
"""Stand-in for detectron2's compiled ``_C`` (written by the CYBORGS installer).

The registry sdist of detectron2 v0.6 carries no C++ sources. Everything the CYBORGS suite
uses (ResNet, C4/FPN Faster/Mask R-CNN, semantic heads, all evaluators with
``use_fast_impl=False``) is pure Python. The compiled ops are only needed by deformable
convolution, rotated boxes and the fast COCO evaluator; calling one of those raises here.
"""

HAS_COMPILED_OPS = False


class MissingCompiledOps:
    def __getattr__(self, name):
        raise RuntimeError(
            f"detectron2._C.{name} is not available: detectron2 was installed from the "
            "pb1-detectron2 sdist, which has no C++ sources (deformable conv, rotated boxes "
            "and the fast COCO evaluator need them). Build the official detectron2 from "
            "source to use them; the CYBORGS suite itself does not need them."
        )


def load_compiled_ops():
    try:
        from detectron2 import _C  # an official build placed beside this file

        return _C
    except ImportError:
        return MissingCompiledOps()
'''

C_IMPORT = "from detectron2 import _C\n"
C_IMPORT_MENDED = (
    "from detectron2._missing_ops import load_compiled_ops  # CYBORGS mend: no compiled ops\n"
    "\n_C = load_compiled_ops()\n"
)

PKG_RESOURCES_OLD = """    cfg_file = pkg_resources.resource_filename(
        "detectron2.model_zoo", os.path.join("configs", config_path)
    )"""
PKG_RESOURCES_NEW = """    cfg_file = os.path.join(  # CYBORGS mend: pkg_resources is gone in setuptools >= 81
        os.path.dirname(os.path.abspath(__file__)), "configs", config_path
    )"""

# (relative path, old, new, expected count). A count of None means "at least once".
LITERAL_MENDS: list[tuple[str, str, str, int | None]] = [
    ("data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", 1),
    ("model_zoo/model_zoo.py", "import pkg_resources\n", "", 1),
    ("model_zoo/model_zoo.py", PKG_RESOURCES_OLD, PKG_RESOURCES_NEW, 1),
    ("evaluation/fast_eval_api.py", C_IMPORT, C_IMPORT_MENDED, 1),
    ("layers/rotated_boxes.py", C_IMPORT, C_IMPORT_MENDED, 1),
    ("layers/deform_conv.py", C_IMPORT, C_IMPORT_MENDED, 1),
    ("layers/roi_align_rotated.py", C_IMPORT, C_IMPORT_MENDED, 1),
]
# NumPy removed these aliases of Python builtins in 1.24; they mean exactly the builtin.
NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|object|str|long)\b(?![_\d])")
NUMPY_BUILTIN = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "object": "object",
    "str": "str",
    "long": "int",
}


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def existing_detectron2() -> tuple[str, dict | None] | None:
    """(location, our marker or None) of an importable detectron2, or None."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    location = Path(list(spec.submodule_search_locations)[0])
    marker = location / MARKER
    return str(location), (json.loads(marker.read_text()) if marker.exists() else None)


def fetch_sdist(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / SDIST_FILE
    if not target.exists() or sha256_of(target) != SDIST_SHA256:
        # --no-build-isolation: pip prepares metadata with this venv's torch (setup.py imports
        # it); with isolation it would fail before saving the file.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-build-isolation",
            "--no-binary",
            ":all:",
            "-d",
            str(cache),
            f"{SDIST_NAME}=={SDIST_VERSION}",
        ]
        print("[install_detectron2]", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    digest = sha256_of(target)
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"[install_detectron2] {target}: sha256 {digest} != pinned {SDIST_SHA256}. "
            "The registry served a different file; refusing to install it."
        )
    return target


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apply_mends(pkg: Path) -> list[str]:
    applied = []
    for rel, old, new, expected in LITERAL_MENDS:
        path = pkg / rel
        text = path.read_text()
        count = text.count(old)
        if count == 0 or (expected is not None and count != expected):
            raise SystemExit(
                f"[install_detectron2] {path}: expected {expected} occurrence(s) of "
                f"{old.strip()!r}, found {count}; is this the pinned sdist?"
            )
        path.write_text(text.replace(old, new))
        applied.append(f"{rel}: {old.strip().splitlines()[0]!r}")
    (pkg / "_missing_ops.py").write_text(MISSING_OPS_MODULE)
    for path in sorted(pkg.rglob("*.py")):
        text = path.read_text()
        mended, n = NUMPY_ALIAS.subn(lambda m: NUMPY_BUILTIN[m.group(1)], text)
        if n:
            path.write_text(mended)
            applied.append(f"{path.relative_to(pkg)}: {n} NumPy alias(es)")
    return applied


def write_dist_info(site: Path, pkg_name: str) -> None:
    info = site / f"detectron2-{SDIST_VERSION}.dist-info"
    shutil.rmtree(info, ignore_errors=True)
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: detectron2\nVersion: {SDIST_VERSION}\n"
        "Summary: detectron2 v0.6 Python sources from the pb1-detectron2 sdist, mended by "
        "the CYBORGS installer (no compiled ops)\n"
    )
    (info / "INSTALLER").write_text("cyborgs-install-detectron2\n")
    rows = []
    for path in sorted((site / pkg_name).rglob("*")) + sorted(info.iterdir()):
        if path.is_file():
            rel = path.relative_to(site).as_posix()
            if path.name == "RECORD":
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest())
            rows.append(f"{rel},sha256={digest.rstrip(b'=').decode()},{path.stat().st_size}")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def install(cache: Path) -> None:
    sdist = fetch_sdist(cache)
    site = site_packages()
    with tempfile.TemporaryDirectory(dir=site, prefix=".detectron2-install-") as tmp:
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(f"{SDIST_NAME}-{SDIST_VERSION}/detectron2/")
            ]
            tar.extractall(tmp, members=members, filter="data")
        pkg = Path(tmp) / f"{SDIST_NAME}-{SDIST_VERSION}" / "detectron2"
        applied = apply_mends(pkg)
        (pkg / MARKER).write_text(
            json.dumps({"sdist": SDIST_FILE, "sha256": SDIST_SHA256, "mends": applied}, indent=1)
        )
        final = site / "detectron2"
        if final.exists():
            shutil.rmtree(final)
        os.replace(pkg, final)
    write_dist_info(site, "detectron2")
    print(
        f"[install_detectron2] installed detectron2 {SDIST_VERSION} (pure Python, "
        f"{len(applied)} mends) into {final}"
    )


def mend_numpy_aliases_in(module: str) -> int:
    """Replace removed NumPy aliases in an installed pure-Python package; returns the count."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return 0
    total = 0
    for path in sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.py")):
        text = path.read_text()
        mended, n = NUMPY_ALIAS.subn(lambda m: NUMPY_BUILTIN[m.group(1)], text)
        if n:
            tmp = path.with_suffix(".py.cyborgs-tmp")
            tmp.write_text(mended)
            os.replace(tmp, path)
            total += n
    if total:
        print(f"[install_detectron2] mended {total} removed NumPy alias(es) in {module}")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache/detectron2"),
        help="where the downloaded sdist is kept (default: %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reinstall even if this script installed detectron2 before",
    )
    args = parser.parse_args(argv)
    mend_numpy_aliases_in("lvis")
    found = existing_detectron2()
    if found is not None:
        location, marker = found
        if marker is None:
            print(
                f"[install_detectron2] using the detectron2 already importable at {location}"
                " (left untouched)"
            )
            return 0
        if marker.get("sha256") == SDIST_SHA256 and not args.force:
            print(f"[install_detectron2] detectron2 already installed at {location}")
            return 0
    install(args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
