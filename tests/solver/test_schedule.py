"""Epoch schedules: hand values for warm-up, cosine, step, EMA momentum; resume state."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg

from cyborgs.config import add_cyborgs_config
from cyborgs.solver.schedule import (
    EpochLRScheduler,
    build_epoch_lr_scheduler,
    ema_momentum,
    iters_per_epoch,
    resolve_epoch_schedule,
)


def test_iters_per_epoch_rounds_up() -> None:
    assert iters_per_epoch(118287, 64) == 1849  # COCO train2017 at batch 64
    assert iters_per_epoch(64, 64) == 1
    assert iters_per_epoch(65, 64) == 2
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        iters_per_epoch(10, 0)


def test_warmup_then_cosine_hand_values() -> None:
    s = EpochLRScheduler(max_iter=12, warmup_iters=4, kind="cosine")
    assert [s.at_iter(k) for k in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s.at_iter(4) == pytest.approx(1.0)
    assert s.at_iter(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert s.at_iter(8) == pytest.approx(0.5)
    assert s.at_iter(12) == pytest.approx(0.0, abs=1e-12)
    # fvcore interface: where = k / max_iter
    assert s(6 / 12) == pytest.approx(s.at_iter(6))


def test_step_schedule_from_epochs() -> None:
    cfg = add_cyborgs_config(get_cfg())
    cfg.SOLVER.EPOCHS = 10
    cfg.SOLVER.LR_WARMUP_EPOCHS = 1
    cfg.SOLVER.EPOCH_SCHEDULE = "step"
    cfg.SOLVER.STEP_EPOCHS = (6, 8)
    cfg.SOLVER.GAMMA = 0.1
    s = resolve_epoch_schedule(cfg, ipe=3)
    assert s.max_iter == 30 and s.warmup_iters == 3 and s.step_iters == [18, 24]
    vals = [s.at_iter(k) for k in (0, 2, 3, 17, 18, 23, 24, 29)]
    assert vals == pytest.approx([1 / 3, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_bad_keys_name_the_key() -> None:
    cfg = add_cyborgs_config(get_cfg())
    cfg.SOLVER.EPOCHS = 5
    cfg.SOLVER.LR_WARMUP_EPOCHS = 10
    with pytest.raises(ValueError, match="WARMUP_EPOCHS"):
        resolve_epoch_schedule(cfg, 2)
    cfg.SOLVER.LR_WARMUP_EPOCHS = 1
    cfg.SOLVER.EPOCH_SCHEDULE = "poly"
    with pytest.raises(ValueError, match="EPOCH_SCHEDULE"):
        resolve_epoch_schedule(cfg, 2)


def test_lr_multiplier_drives_optimizer_and_resumes() -> None:
    cfg = add_cyborgs_config(get_cfg())
    cfg.SOLVER.EPOCHS = 4
    cfg.SOLVER.LR_WARMUP_EPOCHS = 1
    cfg.SOLVER.BASE_LR = 0.2
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sch = build_epoch_lr_scheduler(cfg, opt, ipe=2)  # 8 iters, 2 warm-up
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    ref = EpochLRScheduler(8, 2)
    assert lrs == pytest.approx([0.2 * ref.at_iter(k) for k in range(8)])
    # state is plain (numbers and lists) and restores the position
    state = sch.state_dict()
    assert set(state) == {"base_lrs", "last_epoch"} and state["last_epoch"] == 8
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sch2 = build_epoch_lr_scheduler(cfg, opt2, ipe=2)
    sch2.load_state_dict(sch.state_dict())
    assert sch2.last_epoch == 8


def test_ema_momentum_cosine_and_constant() -> None:
    assert ema_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert ema_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert ema_momentum(0.996, 100, 100) == pytest.approx(1.0)
    assert ema_momentum(0.99, 25, 100) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    assert ema_momentum(0.996, 70, 100, "constant") == 0.996
    with pytest.raises(ValueError, match="EMA.SCHEDULE"):
        ema_momentum(0.996, 1, 10, "linear")
