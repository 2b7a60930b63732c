"""Non-finite stop: the message names the term, the iteration, the last good checkpoint and
gives advice; a diverging real run (SOLVER.BASE_LR 1e30) stops with it in the vMF warm-up and in
the contrastive phase instead of dying inside k-means++."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.utils.env import seed_all_rng

from cyborgs.config import add_cyborgs_config
from cyborgs.engine.setup import finalize_pretrain_cfg
from cyborgs.utils.nonfinite import (
    NonFiniteLossError,
    check_finite_losses,
    finite_flag,
    last_good_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


def _touch(d: Path, *names: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_bytes(b"")


def test_last_good_checkpoint_predates_the_weights_that_diverged(tmp_path) -> None:
    # model_N.pth holds the weights after step N; step N + 1 runs on them. A non-finite value
    # at iteration 11 came from the weights of model_0000010.pth, so 9 is the last good one.
    _touch(tmp_path, "model_0000004.pth", "model_0000009.pth", "model_0000010.pth")
    _touch(tmp_path, "model_final.pth", "last_checkpoint", ".model_0000012.pth.x.tmp")
    assert last_good_checkpoint(str(tmp_path), 11) == str(tmp_path / "model_0000009.pth")
    assert last_good_checkpoint(str(tmp_path), 12) == str(tmp_path / "model_0000010.pth")
    assert last_good_checkpoint(str(tmp_path), 5) is None
    assert last_good_checkpoint(str(tmp_path / "nowhere"), 99) is None
    assert last_good_checkpoint(None, 99) is None


def test_message_names_term_iteration_checkpoint_and_advice(tmp_path) -> None:
    _touch(tmp_path, "model_0000004.pth", "model_0000010.pth")
    bad = {"loss_mask_contrastive": torch.tensor(1.5), "loss_vmf": torch.tensor(float("inf"))}
    with pytest.raises(NonFiniteLossError) as e:
        check_finite_losses(bad, 11, str(tmp_path))
    msg = str(e.value)
    assert "Non-finite loss at iteration 11: loss_vmf=inf" in msg
    assert "loss_mask_contrastive=1.5" in msg
    assert f"Last good checkpoint: {tmp_path / 'model_0000004.pth'}" in msg
    assert str(tmp_path / "last_checkpoint") in msg and "--resume" in msg
    assert "SOLVER.BASE_LR" in msg
    assert e.value.iteration == 11
    # no checkpoint old enough: say so
    with pytest.raises(NonFiniteLossError, match="No checkpoint in .* predates the divergence"):
        check_finite_losses(bad, 4, str(tmp_path))
    # the error can learn the output directory later (bootstrap rounds do not know it)
    late = NonFiniteLossError("Non-finite features", 11).with_output_dir(str(tmp_path))
    assert "model_0000004.pth" in str(late) and late.iteration == 11


def test_finite_flag_is_one_reduction() -> None:
    ok = {"a": torch.tensor(1.0), "b": torch.ones(3), "c": 2.0}
    assert finite_flag(ok).dim() == 0 and bool(finite_flag(ok))
    assert not bool(finite_flag({**ok, "b": torch.tensor([1.0, float("nan"), 0.0])}))
    assert not bool(finite_flag({**ok, "c": float("inf")}))


def _cfg(out: Path, phase: str) -> CfgNode:
    import cyborgs.data.datasets  # noqa: F401  (registers the demo_* sets)

    cfg = add_cyborgs_config(get_cfg())
    cfg.merge_from_file(str(REPO / "pretrain_configs" / "demo_R18.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "DATASETS.TRAIN", ("demo_coco_2017_train_unlabeled",),
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.EPOCHS", 2,
            "SOLVER.LR_WARMUP_EPOCHS", 0,
            "SOLVER.BASE_LR", 1e30,  # diverges within a few steps
            "SOLVER.CHECKPOINT_PERIOD", 100000,  # ~140 MB each: none in this test
            "CYBORGS.PROJECTOR_HIDDEN_DIM", 32,
            "CYBORGS.PROJECTOR_OUT_DIM", 16,
            "CYBORGS.AUG.CROP_SIZE", 32,
            "CYBORGS.MASKS.SOURCE", "grid",
            "CYBORGS.MASKS.GRID_SIZE", 2,
            # "vmf": the whole run is the vMF warm-up; "contrastive": no warm-up, both terms on
            "CYBORGS.WARMUP_EPOCHS", 2 if phase == "vmf" else 0,
            "CYBORGS.VMF.PERIOD_EPOCHS", 1,
            "OUTPUT_DIR", str(out),
            "SEED", 3,
        ]
    )  # fmt: skip
    finalize_pretrain_cfg(cfg, world_size=1)
    return cfg


@pytest.mark.parametrize("phase", ["vmf", "contrastive"])
def test_diverging_run_stops_with_the_message(tiny_data_root, tmp_path, phase) -> None:
    from cyborgs.engine.trainer import CyborgsTrainer

    seed_all_rng(0)
    t = CyborgsTrainer(_cfg(tmp_path / phase, phase))
    t.resume_or_load(resume=False)
    with pytest.raises(NonFiniteLossError) as e:  # not "invalid multinomial distribution"
        t.train()
    msg = str(e.value)
    assert f"Non-finite loss at iteration {e.value.iteration}: loss_" in msg
    assert 1 <= e.value.iteration < t.max_iter
    if phase == "vmf":
        assert "loss_vmf=nan" in msg and "loss_mask_contrastive" not in msg
    else:
        assert "loss_mask_contrastive" in msg
    assert "No checkpoint in" in msg and "SOLVER.BASE_LR" in msg
    # stopped before the update: no NaN reached the weights of the online encoder
    w = t.model.state_dict()["backbone.stem.conv1.weight"]
    assert not torch.isnan(w).any()
