#!/usr/bin/env python
"""Install detectron2 v0.6 (pure Python) and lvis 0.5.3 as patched wheels (METHOD.md §7).

detectron2 is not on the package index under its own name. ``pb1-detectron2==0.6`` is an
sdist whose Python sources equal the official v0.6 tag but which lacks the C++ sources, so a
plain ``pip install`` fails; lvis 0.5.3 (which detectron2's LVIS evaluator calls) uses NumPy's
removed ``np.float``. For each of the two this script:

1. downloads the pinned archive through pip (the registry, no other host) and checks its sha256;
2. applies the checked-in unified diff ``tools/patches/<name>.patch`` with ``git apply``
   (which fails on any hunk that does not match exactly: a different archive is refused);
3. builds a wheel with ``pip wheel``; its version carries a local label keyed by the archive's
   sha256 and the patch's bytes (``0.6+cyborgs.<key>``), and the wheel is cached under
   ``--cache`` by that key;
4. installs it with ``pip install --no-deps``: pip writes its own records, ``pip uninstall``
   and ``pip check`` work, and no installed package is ever edited in place.

An importable detectron2 that this script did not build (e.g. a source build of the official
repository, with its compiled ops) is used untouched. A second run with nothing changed only
compares installed versions and takes well under a second.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

PATCH_DIR = Path(__file__).resolve().parent / "patches"
LOCAL_LABEL = "cyborgs"
# Written by an earlier version of this script, which copied detectron2 into site-packages.
LEGACY_MARKER = "_cyborgs_install.json"


@dataclass(frozen=True)
class PatchedSource:
    """A registry archive, the checked-in diff applied to it, and how its wheel is versioned.

    ``archive_root`` is the folder inside the archive whose contents form the source tree
    ("" for a wheel); ``skip`` names top-level entries of that tree that are not sources
    (stale egg-info of the sdist, the wheel's own dist-info). ``suffix_env`` is the variable
    the (patched) setup.py appends to its version.
    """

    dist: str
    version: str
    requirement: str
    archive: str
    sha256: str
    patch: str
    archive_root: str
    skip: tuple[str, ...]
    suffix_env: str

    @property
    def patch_path(self) -> Path:
        return PATCH_DIR / self.patch

    def key(self) -> str:
        """12 hex digits identifying (archive, patch): the wheel's cache key and local label."""
        digest = hashlib.sha256(self.sha256.encode())
        digest.update(self.patch_path.read_bytes())
        return digest.hexdigest()[:12]

    def wheel_version(self) -> str:
        return f"{self.version}+{LOCAL_LABEL}.{self.key()}"

    def wheel_name(self) -> str:
        return f"{self.dist}-{self.wheel_version()}-py3-none-any.whl"


DETECTRON2 = PatchedSource(
    dist="detectron2",
    version="0.6",
    requirement="pb1-detectron2==0.6",
    archive="pb1-detectron2-0.6.tar.gz",
    sha256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29",
    patch="detectron2-0.6.patch",
    archive_root="pb1-detectron2-0.6",
    skip=("pb1_detectron2.egg-info", "PKG-INFO"),
    suffix_env="D2_VERSION_SUFFIX",  # upstream setup.py's own hook
)
LVIS = PatchedSource(
    dist="lvis",
    version="0.5.3",
    requirement="lvis==0.5.3",
    # the sdist cannot be built (it reads a requirements.txt it does not ship): see the patch
    archive="lvis-0.5.3-py3-none-any.whl",
    sha256="4f07153330df342b3161fafb46641ce7c02864113a8ddf0d6ffab6b02407bef0",
    patch="lvis-0.5.3.patch",
    archive_root="",
    skip=("lvis-0.5.3.dist-info",),
    suffix_env="LVIS_VERSION_SUFFIX",
)
SOURCES = (DETECTRON2, LVIS)


def log(msg: str) -> None:
    print(f"[install_detectron2] {msg}", flush=True)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip(*args: str, quiet: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", *(("-q",) if quiet else ()), *args]
    subprocess.run(cmd, check=True)


def fetch(source: PatchedSource, cache: Path) -> Path:
    """The pinned archive under ``cache/archives``, downloaded through pip if missing."""
    folder = cache / "archives"
    target = folder / source.archive
    if not target.exists() or sha256_of(target) != source.sha256:
        folder.mkdir(parents=True, exist_ok=True)
        if source.archive.endswith(".whl"):
            how = ["--only-binary", ":all:"]
        else:
            # pip prepares the unpatched sdist's metadata before saving it, and its setup.py
            # imports torch: without build isolation it finds this environment's torch.
            how = ["--no-binary", ":all:", "--no-build-isolation"]
        log(f"downloading {source.requirement}")
        pip("download", "--no-deps", *how, "-d", str(folder), source.requirement)
    digest = sha256_of(target)
    if digest != source.sha256:
        raise SystemExit(
            f"[install_detectron2] {target}: sha256 {digest} != pinned {source.sha256}. "
            "The registry served a different file; refusing to build it."
        )
    return target


def extract(source: PatchedSource, archive: Path, dest: Path) -> None:
    """Unpack the archive's source tree (without ``source.skip``) into ``dest``."""
    prefix = f"{source.archive_root}/" if source.archive_root else ""

    def wanted(name: str) -> str | None:
        if not name.startswith(prefix):
            return None
        rel = name[len(prefix) :]
        return None if not rel or rel.split("/")[0] in source.skip else rel

    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = wanted(info.filename)
                if rel and not info.is_dir():
                    out = dest / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(info))
    else:
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                rel = wanted(m.name)
                if rel:
                    m.name = rel
                    members.append(m)
            tar.extractall(dest, members=members, filter="data")


def apply_patch(patch: Path, tree: Path) -> None:
    """``git apply`` the patch inside ``tree``; any hunk that does not match is an error."""
    env = dict(os.environ)
    # never let git find an enclosing repository (it would resolve paths against its root)
    env["GIT_CEILING_DIRECTORIES"] = str(tree.parent)
    result = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", str(patch)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(
            f"[install_detectron2] {patch} does not apply to the pinned sources: "
            f"{result.stderr.strip()}"
        )


def build_wheel(source: PatchedSource, cache: Path) -> Path:
    """The patched wheel of ``source``, built once per (archive sha256, patch) key and cached."""
    out_dir = cache / "wheels"
    wheel = out_dir / source.wheel_name()
    if wheel.exists():
        return wheel
    archive = fetch(source, cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"cyborgs-build-{source.dist}-") as tmp:
        tree = Path(tmp) / "src"
        tree.mkdir()
        extract(source, archive, tree)
        apply_patch(source.patch_path, tree)
        log(f"building {source.wheel_name()}")
        env = {**os.environ, source.suffix_env: f"+{LOCAL_LABEL}.{source.key()}"}
        built = Path(tmp) / "dist"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
            + ["-w", str(built), str(tree)],
            check=True,
            env=env,
        )
        produced = sorted(built.glob("*.whl"))
        if [p.name for p in produced] != [wheel.name]:
            raise SystemExit(
                f"[install_detectron2] pip built {[p.name for p in produced]}, expected "
                f"{wheel.name}"
            )
        partial = wheel.with_name(wheel.name + ".partial")
        shutil.copyfile(produced[0], partial)
        os.replace(partial, wheel)  # the cache never holds a half-written wheel
    return wheel


def build_wheels(cache: Path) -> list[Path]:
    """Both patched wheels (detectron2, lvis), from the cache when already built."""
    return [build_wheel(source, cache) for source in SOURCES]


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def users_own_detectron2() -> str | None:
    """Location of an importable detectron2 this script did not build, else None."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    location = Path(list(spec.submodule_search_locations)[0])
    version = installed_version("detectron2") or ""
    ours = f"+{LOCAL_LABEL}." in version or (location / LEGACY_MARKER).exists()
    return None if ours else str(location)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(".cache/patched-wheels"),
        help="downloaded archives and built wheels, keyed by sha256 (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild and reinstall the patched wheels"
    )
    args = parser.parse_args(argv)
    own = users_own_detectron2()
    if own is not None:
        log(f"using the detectron2 already importable at {own} (left untouched)")
    for source in SOURCES:
        if source is DETECTRON2 and own is not None:
            continue
        if installed_version(source.dist) == source.wheel_version() and not args.force:
            log(f"{source.dist} {source.wheel_version()} already installed")
            continue
        if args.force:
            (args.cache / "wheels" / source.wheel_name()).unlink(missing_ok=True)
        wheel = build_wheel(source, args.cache)
        pip("install", "--no-deps", "--force-reinstall", str(wheel))
        log(f"installed {wheel.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
