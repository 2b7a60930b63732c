"""The detectron2 installer: mends applied exactly, missing ops fail only when called."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import install_detectron2 as inst  # noqa: E402

sys.path.pop(0)


def _ours() -> dict | None:
    found = inst.existing_detectron2()
    assert found is not None, "detectron2 must be importable after make install"
    return found[1]


def test_detectron2_modules_import_and_model_zoo_configs_resolve():
    import detectron2.evaluation  # noqa: F401
    import detectron2.modeling  # noqa: F401
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    assert Path(path).is_file()


def test_missing_compiled_ops_raise_only_when_called():
    if _ours() is None or importlib.util.find_spec("detectron2._C") is not None:
        pytest.skip("an official detectron2 build with compiled ops is installed")
    from detectron2.layers import deform_conv, rotated_boxes

    with pytest.raises(RuntimeError, match="pb1-detectron2"):
        deform_conv._C.deform_conv_forward  # noqa: B018
    with pytest.raises(RuntimeError, match="no C\\+\\+ sources"):
        rotated_boxes.pairwise_iou_rotated(None, None)


def test_installed_tree_has_no_unmended_breakage():
    marker = _ours()
    if marker is None:
        pytest.skip("detectron2 was not installed by tools/install_detectron2.py")
    import detectron2

    pkg = Path(detectron2.__file__).parent
    text = "\n".join(p.read_text() for p in pkg.rglob("*.py"))
    assert "Image.LINEAR" not in text
    assert "import pkg_resources" not in text and "pkg_resources." not in text
    assert "from detectron2 import _C\n" not in text
    assert not inst.NUMPY_ALIAS.search(text)
    assert marker["sha256"] == inst.SDIST_SHA256


def test_second_run_is_a_no_op(capsys):
    marker = _ours()
    if marker is None:
        pytest.skip("detectron2 was not installed by tools/install_detectron2.py")
    import detectron2

    marker_file = Path(detectron2.__file__).parent / inst.MARKER
    before = marker_file.stat().st_mtime_ns
    assert inst.main([]) == 0
    assert "already installed" in capsys.readouterr().out
    assert marker_file.stat().st_mtime_ns == before


def _fake_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "detectron2"
    for rel, old, _new, expected in inst.LITERAL_MENDS:
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = path.read_text() if path.exists() else ""
        path.write_text(existing + "x = 1\n" + old * (expected or 1))
    (pkg / "other.py").write_text("a = np.bool\nb = np.bool_\nc = np.int64(3)\nd = np.float\n")
    return pkg


def test_mends_replace_each_pattern_and_only_numpy_aliases(tmp_path):
    pkg = _fake_package(tmp_path)
    applied = inst.apply_mends(pkg)
    assert len(applied) == len(inst.LITERAL_MENDS) + 1
    assert (pkg / "other.py").read_text() == "a = bool\nb = np.bool_\nc = np.int64(3)\nd = float\n"
    mended = (pkg / "layers/deform_conv.py").read_text()
    assert "load_compiled_ops()" in mended and "from detectron2 import _C\n" not in mended
    assert (pkg / "_missing_ops.py").is_file()


def test_a_missing_pattern_names_the_file(tmp_path):
    pkg = _fake_package(tmp_path)
    (pkg / "layers/rotated_boxes.py").write_text("# upstream changed\n")
    with pytest.raises(SystemExit, match="rotated_boxes.py: expected 1 occurrence"):
        inst.apply_mends(pkg)


def test_dist_info_record_lists_every_file(tmp_path):
    site = tmp_path
    (site / "detectron2" / "sub").mkdir(parents=True)
    (site / "detectron2" / "__init__.py").write_text("")
    (site / "detectron2" / "sub" / "m.py").write_text("x = 1\n")
    inst.write_dist_info(site, "detectron2")
    record = (site / "detectron2-0.6.dist-info" / "RECORD").read_text().splitlines()
    names = {row.split(",")[0] for row in record}
    assert {"detectron2/__init__.py", "detectron2/sub/m.py"} <= names
    assert "detectron2-0.6.dist-info/METADATA" in names
    meta = (site / "detectron2-0.6.dist-info" / "METADATA").read_text()
    assert "Name: detectron2" in meta
    json.dumps(record)  # plain strings only


def test_lvis_eval_has_no_removed_numpy_alias():
    import lvis.eval

    assert not inst.NUMPY_ALIAS.search(Path(lvis.eval.__file__).read_text())
    assert inst.mend_numpy_aliases_in("lvis") == 0  # idempotent: nothing left to mend
