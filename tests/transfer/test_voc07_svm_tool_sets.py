"""tools/voc07_svm.py refuses a detection set before extracting any feature."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from detectron2.data import MetadataCatalog

import cyborgs.data.datasets  # noqa: F401  (registers the demo_* sets)


def load_tool():
    path = Path(__file__).resolve().parents[2] / "tools" / "voc07_svm.py"
    spec = importlib.util.spec_from_file_location("_tool_voc07_svm_sets", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_registered_cls_sets_pass_and_detection_sets_do_not():
    for name in ("voc_2007_cls_trainval", "voc_2007_cls_test", "demo_voc_2007_cls_trainval"):
        assert MetadataCatalog.get(name).get("evaluator_type") == "voc_cls"
    tool = load_tool()
    tool.check_classification_sets(
        {"--train": "voc_2007_cls_trainval", "--test": "voc_2007_cls_test"}
    )
    with pytest.raises(ValueError, match="voc_2007_cls_trainval"):
        tool.check_classification_sets({"--train": "voc_2007_trainval"})


@pytest.mark.parametrize("flag", ["--train", "--test"])
def test_detection_set_refused_before_features(flag, tiny_data_root, tmp_path, monkeypatch):
    tool = load_tool()

    def never(*a, **k):
        raise AssertionError("features extracted / model built for a detection set")

    monkeypatch.setattr(tool, "build_pretrained_resnet", never)
    monkeypatch.setattr(tool, "extract_features", never)
    weights = tmp_path / "w.pkl"
    weights.write_bytes(b"")
    sets = {"--train": "demo_voc_2007_cls_trainval", "--test": "demo_voc_2007_cls_test"}
    sets[flag] = "demo_voc_2007_trainval" if flag == "--train" else "demo_voc_2007_test"
    argv = ["--weights", str(weights), "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    for k, v in sets.items():
        argv += [k, v]
    with pytest.raises(ValueError) as err:
        tool.main(argv)
    msg = str(err.value)
    assert f"{flag} {sets[flag]} is not a VOC classification set" in msg
    assert "pascal_voc" in msg and "voc_2007_cls_trainval" in msg and "voc_2007_cls_test" in msg
    assert not (tmp_path / "out").exists()
