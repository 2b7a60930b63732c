"""tools/train_net.py end to end on the tiny demo data: train, evaluate, metrics_final.json."""

from __future__ import annotations

import json
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
