"""tools/dev/offline_bundle.py: wheels for the target platform, sdist-only packages built pure,
size budget, MANIFEST. pip is replaced by a fake here; the real build is a slow test."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import offline_bundle as ob  # tools/dev/ (tests/conftest.py)
import pytest

SDIST_ONLY = {"fvcore", "antlr4-python3-runtime"}


def _fake_wheel(path: Path, kib: int = 1) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("payload.bin", b"\0" * (kib * 1024))
    return path


class FakePip:
    """Records pip commands; "downloads" a wheel per spec, fails for sdist-only packages
    unless built with ``pip wheel``, whose output tag is ``built_tag``."""

    def __init__(self, built_tag: str = "py3-none-any", kib: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.built_tag, self.kib = built_tag, kib

    def __call__(self, args: list[str]) -> None:
        self.calls.append(args)
        spec = args[-1]
        name, version = spec.split("==")
        if args[0] == "download":
            if name in SDIST_ONLY:
                raise subprocess.CalledProcessError(1, args)
            out = Path(args[args.index("-d") + 1])
            _fake_wheel(
                out / f"{name.replace('-', '_')}-{version}-cp312-abi3-manylinux_2_17_x86_64.whl",
                self.kib,
            )
        elif args[0] == "wheel":
            out = Path(args[args.index("-w") + 1])
            _fake_wheel(out / f"{name.replace('-', '_')}-{version}-{self.built_tag}.whl", self.kib)


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    pip = FakePip()
    monkeypatch.setattr(ob, "run_pip", pip)
    monkeypatch.setattr(ob, "pinned_version", lambda name, pins: "1.0")
    d2 = _fake_wheel(tmp_path / "detectron2-0.6+cyborgs.abc-py3-none-any.whl", 2)
    monkeypatch.setattr(ob.install_detectron2, "build_wheel", lambda source, cache: d2)
    return pip


def test_bundle_holds_one_wheel_per_package_and_says_what_is_left_out(tmp_path, fake_env):
    out = tmp_path / "bundle"
    meta = ob.build(out, "3.12")
    files = sorted(p.name for p in out.glob("*.whl"))
    assert (
        len(files) == len(ob.BUNDLED) + 1 and "detectron2-0.6+cyborgs.abc-py3-none-any.whl" in files
    )
    # binary downloads target the named Python and manylinux x86-64; sdist-only ones are built
    downloads = [c for c in fake_env.calls if c[0] == "download"]
    assert len(downloads) == len(ob.BUNDLED)
    for c in downloads:
        assert "--only-binary=:all:" in c and c[c.index("--python-version") + 1] == "3.12"
        assert "cp312" in c and "manylinux_2_28_x86_64" in c and "manylinux_2_29_x86_64" not in c
    built = sorted(c[-1] for c in fake_env.calls if c[0] == "wheel")
    assert built == ["antlr4-python3-runtime==1.0", "fvcore==1.0"]
    # manifest: every wheel with its sha256; expected-on-machine and left-out groups named
    assert json.loads((out / "manifest.json").read_text()) == meta
    for w in meta["wheels"]:
        assert w["sha256"] == hashlib.sha256((out / w["file"]).read_bytes()).hexdigest()
    text = (out / "MANIFEST").read_text()
    assert "opencv-python-headless (import cv2)" in text and "scikit-learn:" in text
    assert {e["import"] for e in meta["expected"]} >= {"numpy", "PIL", "cv2"}
    assert not {e["dist"] for e in meta["left_out"]} & set(ob.BUNDLED)


def test_over_the_size_budget_fails_naming_the_largest_wheel(tmp_path, fake_env):
    fake_env.kib = 64
    with pytest.raises(SystemExit, match=r"over --max-mib 0\.5; largest: .*\(0\.1 MiB\)"):
        ob.build(tmp_path / "bundle", "3.12", max_mib=0.5)


def test_an_sdist_that_builds_a_platform_wheel_is_refused(tmp_path, fake_env):
    fake_env.built_tag = "cp311-cp311-linux_x86_64"
    with pytest.raises(SystemExit, match="not one pure-Python wheel"):
        ob.build(tmp_path / "bundle", "3.12")


def test_bad_arguments_are_named(tmp_path, fake_env):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SystemExit, match="is not empty"):
        ob.build(tmp_path / "full", "3.12")
    with pytest.raises(SystemExit, match="--python '312'"):
        ob.build(tmp_path / "b", "312")
    with pytest.raises(SystemExit):
        ob.main(["--out", str(tmp_path / "c")])  # --python is required


def test_versions_come_from_requirements_then_the_environment():
    pins = ob.requirement_pins()
    assert pins["fvcore"] == "0.1.5.post20221221" and pins["iopath"].startswith("0.1.")
    assert ob.pinned_version("Pycocotools", pins) == pins["pycocotools"]
    assert ob.pinned_version("pluggy", {}) == __import__("importlib.metadata").metadata.version(
        "pluggy"
    )
    with pytest.raises(SystemExit, match="no pin in requirements.txt"):
        ob.pinned_version("surely-not-installed-package", pins)


@pytest.mark.slow
def test_real_bundle_for_python_312_fits_the_budget(tmp_path):
    """Downloads about 40 MiB from the package index."""
    meta = ob.build(tmp_path / "bundle", "3.12")
    assert meta["total_mib"] <= 60
    names = [w["file"] for w in meta["wheels"]]
    assert any(
        n.startswith("detectron2-0.6+cyborgs.") and n.endswith("py3-none-any.whl") for n in names
    )
    assert all(n.endswith(("py3-none-any.whl", "x86_64.whl")) for n in names)
