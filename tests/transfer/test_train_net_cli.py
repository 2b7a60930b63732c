"""tools/train_net.py end to end on the tiny demo data: train, evaluate, metrics_final.json."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from cyborgs.transfer.convert import convert_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_net_cli_writes_final_metrics(tiny_data_root, tmp_path):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.RESNETS.OUT_FEATURES = "BN", ["res5"]
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    torch.save({"model": {"backbone." + k: v for k, v in state.items()}}, tmp_path / "c.pth")
    convert_checkpoint(str(tmp_path / "c.pth"), str(tmp_path / "w.pkl"))
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file",
         "transfer_configs/demo_coco_mask_rcnn_FPN.yaml", "MODEL.WEIGHTS", str(tmp_path / "w.pkl"),
         "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.NUM_ITER", "2",
         "DATALOADER.NUM_WORKERS", "0"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    # the backbone proof (cyborgs logger) reaches train_net's log file
    assert "Backbone check:" in (out / "log.txt").read_text()
    rec = json.loads((out / "metrics_final.json").read_text())
    assert rec["protocol"] == "coco_inst" and rec["datasets"]["test"] == ["demo_coco_2017_val"]
    assert set(rec["results"]) == {"bbox", "segm"} and "AP50" in rec["results"]["segm"]
    # a missing weight file fails before training, naming what to prepare
    bad = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file",
         "transfer_configs/demo_coco_mask_rcnn_FPN.yaml", "MODEL.WEIGHTS", str(tmp_path / "no.pkl"),
         "OUTPUT_DIR", str(tmp_path / "bad")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "convert_to_detectron2.py" in bad.stderr
    assert not (tmp_path / "bad" / "metrics_final.json").exists()


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net_cli", ROOT / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)  # its sibling modules: tools/ (tests/conftest.py)
    return train_net


def test_train_net_setup_gives_the_cyborgs_logger_a_handler(tmp_path):
    """default_setup configures detectron2's and fvcore's loggers only; the backbone check
    logs through ``cyborgs.transfer.trainer``, so train_net must give ``cyborgs`` a handler."""
    train_net = _train_net()
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(ROOT / "transfer_configs" / "demo_coco_mask_rcnn_FPN.yaml"),
         "OUTPUT_DIR", str(tmp_path)]
    )  # fmt: skip
    cyborgs_logger = logging.getLogger("cyborgs")
    saved = (list(cyborgs_logger.handlers), cyborgs_logger.propagate, cyborgs_logger.level)
    try:
        train_net.setup(args)
        logging.getLogger("cyborgs.transfer.trainer").info("Backbone check: probe 1234")
        for h in cyborgs_logger.handlers:  # a console handler of an earlier test may be closed
            if not getattr(getattr(h, "stream", None), "closed", False):
                h.flush()
        assert "Backbone check: probe 1234" in (tmp_path / "log.txt").read_text()
    finally:  # setup_logger turns propagation off: give other tests' caplog its records back
        cyborgs_logger.handlers[:] = saved[0]
        cyborgs_logger.propagate, cyborgs_logger.level = saved[1], saved[2]


def _refused(train_net, argv: list[str], capsys) -> str:
    """train_net's cli must exit 2 before launching, with one ``error:`` line (returned)."""
    try:
        rc = train_net.cli(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("where", ["file", "base"])
def test_python_tag_in_a_transfer_config_runs_nothing(where, tmp_path, monkeypatch, capsys):
    """detectron2's merge_from_file would hand a ``!!python/...`` tag to yaml.unsafe_load and
    create the marker; train_net refuses it in one line, before writing anything."""
    train_net = _train_net()
    monkeypatch.setattr(train_net, "launch_from_args", lambda *a: pytest.fail("launched"))
    marker = tmp_path / "marker"
    evil = f'SEED: !!python/object/apply:builtins.open ["{marker}", "w"]\n'
    demo = ROOT / "transfer_configs" / "demo_voc_det_C4.yaml"
    cfg = tmp_path / "cfg.yaml"
    holder = cfg if where == "file" else tmp_path / "base.yaml"
    if where == "file":
        cfg.write_text(f"{evil}_BASE_: {demo}\n")
    else:
        holder.write_text(evil)
        cfg.write_text(f"_BASE_: [{demo}, base.yaml]\n")
    out = tmp_path / "out"
    line = _refused(train_net, ["--config-file", str(cfg), "OUTPUT_DIR", str(out)], capsys)
    assert line.startswith(f"error: {holder}: line 1, column 7: tag !!python/object/apply:")
    assert not marker.exists() and not out.exists()
    # an unknown key and a missing config: one line too
    cfg.write_text(f"_BASE_: {demo}\nSOLVER:\n  BASE_LRR: 0.1\n")
    line = _refused(train_net, ["--config-file", str(cfg), "OUTPUT_DIR", str(out)], capsys)
    assert str(cfg) in line and "SOLVER.BASE_LRR" in line
    line = _refused(train_net, ["--config-file", "nope.yaml", "OUTPUT_DIR", str(out)], capsys)
    assert "config file not found: nope.yaml" in line
    assert not out.exists()


def test_a_bare_config_name_reaches_default_setup_as_its_file(tmp_path):
    """``--config-file demo_voc_det_C4.yaml`` (a name under transfer_configs/) is resolved for
    the config and for detectron2's default_setup, which reads and logs the file."""
    train_net = _train_net()
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", "demo_voc_det_C4.yaml", "OUTPUT_DIR", str(tmp_path), "SEED", "7"]
    )
    cyborgs_logger = logging.getLogger("cyborgs")
    saved = (list(cyborgs_logger.handlers), cyborgs_logger.propagate, cyborgs_logger.level)
    try:
        cfg = train_net.setup(args)
    finally:
        cyborgs_logger.handlers[:] = saved[0]
        cyborgs_logger.propagate, cyborgs_logger.level = saved[1], saved[2]
    assert args.config_file == "demo_voc_det_C4.yaml"  # recorded as given
    assert cfg.SEED == 7 and cfg.DATASETS.TEST == ("demo_voc_2007_test",)
    log = (tmp_path / "log.txt").read_text()
    assert str(ROOT / "transfer_configs" / "demo_voc_det_C4.yaml") in log


@pytest.mark.parametrize(
    "bbox, expected",
    [
        ([1.0, 2.0, float("nan"), 3.0], "annotation id 7: field 'bbox' = [1.0, 2.0, nan, 3.0] is not finite"),
        (None, "annotation id 7 has no 'bbox' field"),
    ],
)  # fmt: skip
def test_untrainable_boxes_are_one_line_before_anything_is_written(
    bbox, expected, tmp_path, monkeypatch, capsys
):
    """A box that cannot train is refused by the command itself, in one ``error:`` line naming
    the file and the annotation, before default_setup writes config.yaml / log.txt into
    OUTPUT_DIR (it used to be a traceback after both were written)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    train_net = _train_net()
    monkeypatch.setattr(train_net, "launch_from_args", lambda *a: pytest.fail("launched"))
    ann = {"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 6.0}
    if bbox is not None:
        ann["bbox"] = bbox
    coco = {
        "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"}],
        "annotations": [ann],
        "categories": [{"id": 1, "name": "thing"}],
    }
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))  # NaN as JavaScript's literal, as json.dump writes it
    name = f"rev19_bad_boxes_{tmp_path.name}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    out = tmp_path / "out"
    try:
        line = _refused(
            train_net,
            ["--config-file", "demo_coco_mask_rcnn_FPN.yaml", "DATASETS.TRAIN", f'("{name}",)',
             "DATASETS.TEST", "()", "TRANSFER.CHECK_BACKBONE_LOADED", "False",
             "OUTPUT_DIR", str(out)],
            capsys,
        )  # fmt: skip
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert line.startswith("error: ") and str(json_file) in line and expected in line, line
    assert not out.exists()
