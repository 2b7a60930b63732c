"""Every demo detection config builds, loads a converted R18 backbone and trains one step
(the segmentation twins: test_train_net_seg_configs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cyborgs.transfer.preflight import preflight
from cyborgs.transfer.setup import get_transfer_cfg
from cyborgs.transfer.trainer import TransferTrainer

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"
DEMO_CONFIGS = [
    "demo_voc_det_C4.yaml",
    "demo_coco_mask_rcnn_FPN.yaml",
    "demo_lvis_v1_mask_rcnn_FPN.yaml",
]


def one_step_cfg(config: str, weights: str, out: str):
    return get_transfer_cfg(
        CONFIGS / config,
        [
            "MODEL.WEIGHTS", weights,
            "OUTPUT_DIR", out,
            "SOLVER.MAX_ITER", 1,
            "SOLVER.IMS_PER_BATCH", 2,
            "TEST.PRECISE_BN.ENABLED", False,
            "DATALOADER.NUM_WORKERS", 0,
        ],
    )  # fmt: skip


@pytest.mark.parametrize("config", DEMO_CONFIGS)
def test_demo_config_trains_one_step(config, tiny_data_root, r18_converted_pkl, tmp_path):
    cfg = one_step_cfg(config, r18_converted_pkl, str(tmp_path))
    preflight(cfg)
    cfg.DATASETS.TEST = ()  # evaluation has its own tests
    trainer = TransferTrainer(cfg)
    trainer.resume_or_load(resume=False)  # raises unless every backbone tensor loaded
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.iter == 1  # one step done (iter is max_iter after the loop)
    losses = trainer.storage.latest()
    assert "total_loss" in losses and torch.isfinite(torch.tensor(losses["total_loss"][0]))
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "one SGD step changed nothing"
    # FREEZE_AT 0 (MoCo / VirTex detection protocol): the stem's conv is fine-tuned too
    assert any(k.endswith("stem.conv1.weight") for k in changed), changed


def test_missing_weights_and_data_fail_before_training(tiny_data_root, tmp_path):
    cfg = one_step_cfg("demo_voc_det_C4.yaml", str(tmp_path / "nope.pkl"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tools/convert_to_detectron2.py"):
        preflight(cfg)
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        preflight(cfg)
    cfg.DATASETS.TRAIN = ("no_such_dataset",)
    with pytest.raises(KeyError, match="'no_such_dataset' is not registered"):
        preflight(cfg)


def test_num_classes_mismatch_is_caught(tiny_data_root, r18_converted_pkl, tmp_path):
    cfg = one_step_cfg("demo_coco_mask_rcnn_FPN.yaml", r18_converted_pkl, str(tmp_path))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    with pytest.raises(ValueError, match="NUM_CLASSES is 80 but data set 'demo_coco_2017_train'"):
        preflight(cfg)
