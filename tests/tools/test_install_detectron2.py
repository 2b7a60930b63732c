"""The detectron2 / lvis installer: checked-in patches on pinned archives, wheels built by pip."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import install_detectron2 as inst  # tools/ (tests/conftest.py)
import pytest

ROOT = Path(__file__).resolve().parents[2]

ARCHIVES = ROOT / ".cache" / "patched-wheels" / "archives"
# NumPy removed these aliases of Python builtins in 1.24.
NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|object|str|long)\b(?![_\d])")


def _ours_installed() -> bool:
    return (
        inst.users_own_detectron2() is None and importlib.util.find_spec("detectron2") is not None
    )


def _cached_archives(tmp_path: Path) -> Path:
    """A cache holding the pinned archives (from make install's cache; no download here)."""
    missing = [s.archive for s in inst.SOURCES if not (ARCHIVES / s.archive).is_file()]
    if missing:
        pytest.skip(f"pinned archives not cached by make install: {missing}")
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    for s in inst.SOURCES:
        shutil.copy(ARCHIVES / s.archive, cache / "archives" / s.archive)
    return cache


def _wheel_texts(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n: zf.read(n).decode() for n in zf.namelist() if n.endswith((".py", "METADATA"))}


def test_patches_apply_to_the_pinned_archives_and_pip_builds_pure_wheels(tmp_path):
    cache = _cached_archives(tmp_path)
    d2, lvis = inst.build_wheels(cache)
    assert d2.name == f"detectron2-0.6+cyborgs.{inst.DETECTRON2.key()}-py3-none-any.whl"
    assert lvis.name == f"lvis-0.5.3+cyborgs.{inst.LVIS.key()}-py3-none-any.whl"
    files = _wheel_texts(d2)
    code = "\n".join(t for n, t in files.items() if n.endswith(".py"))
    assert "Image.LINEAR" not in code and "pkg_resources" not in code
    # no module imports the compiled ops unconditionally (only _missing_ops, inside a try)
    assert not re.search(r"^from detectron2 import _C$", code, re.M)
    assert not NUMPY_ALIAS.search(code)
    assert "detectron2/_missing_ops.py" in files
    with zipfile.ZipFile(d2) as zf:
        names = zf.namelist()
    assert "detectron2/model_zoo/configs/Base-RCNN-FPN.yaml" in names
    assert not any(n.endswith((".so", ".cpp", ".cu")) for n in names)
    assert {n.split("/")[0] for n in names} == {
        "detectron2",
        d2.name.split("-py3")[0] + ".dist-info",
    }
    (meta,) = [t for n, t in files.items() if n.endswith("METADATA")]
    assert "Name: detectron2\n" in meta and "black" not in meta
    assert "Requires-Dist: iopath<0.1.10,>=0.1.7" in meta
    lvis_files = _wheel_texts(lvis)
    assert not NUMPY_ALIAS.search(lvis_files["lvis/eval.py"])
    assert "opencv-python" not in next(t for n, t in lvis_files.items() if n.endswith("METADATA"))
    # a second call is served from the cache, keyed by archive sha256 + patch bytes
    stamp = d2.stat().st_mtime_ns
    assert inst.build_wheel(inst.DETECTRON2, cache) == d2 and d2.stat().st_mtime_ns == stamp


def test_a_patch_that_does_not_match_names_the_patch(tmp_path):
    tree = tmp_path / "src"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "m.py").write_text("x = 2\n")
    patch = tmp_path / "p.patch"
    patch.write_text(
        "diff --git a/pkg/m.py b/pkg/m.py\n--- a/pkg/m.py\n+++ b/pkg/m.py\n"
        "@@ -1 +1 @@\n-x = 1\n+x = 3\n"
    )
    with pytest.raises(SystemExit, match="p.patch does not apply"):
        inst.apply_patch(patch, tree)
    assert (tree / "pkg" / "m.py").read_text() == "x = 2\n"  # untouched


def test_an_archive_with_another_sha256_is_refused(tmp_path, monkeypatch):
    (tmp_path / "archives").mkdir()
    (tmp_path / "archives" / inst.DETECTRON2.archive).write_bytes(b"not the sdist")
    monkeypatch.setattr(inst, "pip", lambda *a, **k: None)  # the "registry" serves the same
    with pytest.raises(SystemExit, match="refusing to build it"):
        inst.fetch(inst.DETECTRON2, tmp_path)


def test_the_cache_key_follows_the_patch_bytes(tmp_path, monkeypatch):
    key = inst.DETECTRON2.key()
    patch = tmp_path / inst.DETECTRON2.patch
    patch.write_bytes(inst.DETECTRON2.patch_path.read_bytes() + b"\n")
    monkeypatch.setattr(inst, "PATCH_DIR", tmp_path)
    assert inst.DETECTRON2.key() != key and len(inst.DETECTRON2.key()) == 12


def test_a_users_own_detectron2_is_used_untouched(monkeypatch, capsys):
    monkeypatch.setattr(inst, "users_own_detectron2", lambda: "/opt/detectron2/detectron2")
    monkeypatch.setattr(inst, "installed_version", lambda dist: inst.LVIS.wheel_version())

    def no_build(*a, **k):
        raise AssertionError("nothing may be built or installed")

    monkeypatch.setattr(inst, "build_wheel", no_build)
    monkeypatch.setattr(inst, "pip", no_build)
    assert inst.main([]) == 0
    assert "/opt/detectron2/detectron2 (left untouched)" in capsys.readouterr().out


def test_second_run_is_a_no_op(monkeypatch, capsys):
    if not _ours_installed():
        pytest.skip("detectron2 here is not the one tools/install_detectron2.py builds")
    if importlib.metadata.version("detectron2") != inst.DETECTRON2.wheel_version():
        pytest.skip("the installed patched wheel is older than the patch: run make install")

    def no_pip(*a, **k):
        raise AssertionError("an up-to-date install must not run pip")

    monkeypatch.setattr(inst, "pip", no_pip)
    monkeypatch.setattr(inst, "build_wheel", no_pip)
    assert inst.main([]) == 0
    assert capsys.readouterr().out.count("already installed") == 2


def test_installed_by_pip_with_its_own_record():
    if not _ours_installed():
        pytest.skip("detectron2 here is not the one tools/install_detectron2.py builds")
    for source in inst.SOURCES:
        dist = importlib.metadata.distribution(source.dist)
        assert dist.version == source.wheel_version(), "run make install"
        assert (dist.read_text("INSTALLER") or "").strip() == "pip"
        record = dist.read_text("RECORD") or ""
        assert f"{source.dist}/__init__.py," in record


def test_detectron2_modules_import_and_model_zoo_configs_resolve():
    import detectron2.evaluation  # noqa: F401
    import detectron2.modeling  # noqa: F401
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert Path(path).is_file()


def test_missing_compiled_ops_raise_a_clear_error_only_when_called():
    if not _ours_installed() or importlib.util.find_spec("detectron2._C") is not None:
        pytest.skip("an official detectron2 build with compiled ops is installed")
    import torch
    from detectron2.layers import deform_conv, nms_rotated, rotated_boxes

    msg = "detectron2 was built without its C\\+\\+ ops"
    with pytest.raises(RuntimeError, match=msg + ".*nms_rotated"):
        nms_rotated(torch.zeros(2, 5), torch.ones(2), 0.5)
    with pytest.raises(RuntimeError, match=msg + ".*box_iou_rotated"):
        rotated_boxes.pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5))
    with pytest.raises(RuntimeError, match=msg):
        deform_conv._C.deform_conv_forward  # noqa: B018


def test_lvis_evaluation_has_no_removed_numpy_alias():
    import lvis.eval

    assert not NUMPY_ALIAS.search(Path(lvis.eval.__file__).read_text())


@pytest.mark.slow
def test_pip_check_finds_nothing_broken():
    res = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
