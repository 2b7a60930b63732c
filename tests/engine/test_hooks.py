"""EMA momentum per iteration, loss-phase epochs, RNG-state round trip, non-finite stop."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from cyborgs.config import add_cyborgs_config
from cyborgs.engine.hooks import (
    EMAHook,
    LossScheduleHook,
    RNGStateHook,
    capture_rng_state,
    restore_rng_state,
)
from cyborgs.utils.nonfinite import NonFiniteLossError, check_finite_losses


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.momenta: list[float] = []
        self.contrastive_weight = -1.0
        self.vmf_weight = -1.0
        self.vmf_num_clusters = -1

    def update_target(self, momentum: float) -> None:
        self.momenta.append(momentum)


def _fake_trainer(max_iter: int, start_iter: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        model=_Model(), iter=start_iter, start_iter=start_iter, max_iter=max_iter
    )


def test_ema_hook_cosine_per_iteration() -> None:
    t = _fake_trainer(max_iter=4)
    h = EMAHook(0.99, "cosine")
    h.trainer = t
    with EventStorage() as storage:
        t.storage = storage
        h.before_train()
        for it in range(4):
            t.iter = storage.iter = it
            h.after_step()
        logged = [v for v, _ in storage.history("ema_momentum").values()]
    expected = [1 - 0.01 * (math.cos(math.pi * k / 4) + 1) / 2 for k in range(4)]
    assert t.model.momenta == pytest.approx(expected)
    assert logged == pytest.approx(expected)
    assert t.model.momenta[0] == pytest.approx(0.99)


def test_ema_hook_requires_update_target() -> None:
    h = EMAHook(0.996, "constant")
    h.trainer = SimpleNamespace(model=torch.nn.Linear(1, 1))
    with pytest.raises(AttributeError, match="update_target"):
        h.before_train()


def _schedule_cfg(warmup: int, period: int, k_sampling: str = "fixed", lam: float = 0.1):
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.WARMUP_EPOCHS = warmup
    cfg.CYBORGS.VMF.WARMUP_K = 8
    cfg.CYBORGS.VMF.K_SAMPLING = k_sampling
    cfg.CYBORGS.VMF.K = 5
    cfg.CYBORGS.BOOTSTRAP.K_MIN = 3
    cfg.CYBORGS.BOOTSTRAP.K_MAX = 6
    cfg.CYBORGS.VMF.LAMBDA = lam
    cfg.CYBORGS.VMF.PERIOD_EPOCHS = period
    cfg.CYBORGS.CONTRASTIVE_WEIGHT = 1.0
    return cfg


def test_loss_schedule_epochs() -> None:
    h = LossScheduleHook(_schedule_cfg(warmup=2, period=3), iters_per_epoch=4)
    # epochs 0,1 warm-up; then vMF at epochs divisible by 3 (3, 6), contrastive always
    table = {e: h.phase_at_epoch(e) for e in range(8)}
    assert [table[e].name for e in range(8)] == ["vmf_warmup"] * 2 + ["contrastive"] * 6
    assert [table[e].vmf_weight for e in range(8)] == [1, 1, 0, 0.1, 0, 0, 0.1, 0]
    assert [table[e].contrastive_weight for e in range(8)] == [0, 0] + [1.0] * 6
    assert [(table[e].vmf_k_min, table[e].vmf_k_max) for e in range(8)] == [(8, 8)] * 2 + [
        (5, 5)
    ] * 6
    assert h.phase_at_iter(7).epoch == 1 and h.phase_at_iter(8).epoch == 2

    t = _fake_trainer(max_iter=40)
    h.trainer = t
    seen = []
    with EventStorage() as storage:
        t.storage = storage
        for it in range(0, 14):
            t.iter = storage.iter = it
            h.before_step()
            m = t.model
            seen.append((h.warmup_just_ended, h.epoch_started, m.contrastive_weight, m.vmf_weight))
    assert [i for i, s in enumerate(seen) if s[0]] == [8]  # first step of epoch 2
    assert [i for i, s in enumerate(seen) if s[1]] == [0, 4, 8, 12]
    assert seen[7][2:] == (0.0, 1.0) and seen[8][2:] == (1.0, 0.0) and seen[12][2:] == (1.0, 0.1)


def test_vmf_k_drawn_per_step_after_warmup() -> None:
    """METHOD.md §4: after the warm-up K ~ U{BOOTSTRAP.K_MIN..K_MAX} for each step, seeded by the
    step alone: the same K at the same step in any process, whatever the global RNG did."""
    h = LossScheduleHook(_schedule_cfg(warmup=1, period=1, k_sampling="uniform"), 10)
    assert {h.vmf_k_at_iter(i) for i in range(10)} == {8}  # warm-up: VMF.WARMUP_K
    ks = [h.vmf_k_at_iter(i) for i in range(10, 410)]
    assert set(ks) == {3, 4, 5, 6}  # inclusive range, every value drawn
    assert all(abs(ks.count(k) / 400 - 0.25) < 0.08 for k in range(3, 7))  # ~uniform
    assert len(set(ks[:20])) > 1  # per step, not per epoch
    torch.manual_seed(123)
    random.seed(123)
    state = torch.get_rng_state()
    again = LossScheduleHook(_schedule_cfg(warmup=1, period=1, k_sampling="uniform"), 10)
    assert [again.vmf_k_at_iter(i) for i in range(409, 8, -1)] == ks[::-1] + [8]
    assert torch.equal(torch.get_rng_state(), state)  # the draw consumes no global RNG
    # The hook hands the drawn K to the model before each step.
    t = _fake_trainer(max_iter=40)
    h.trainer = t
    with EventStorage() as storage:
        t.storage = storage
        for it in (3, 17, 25):
            t.iter = storage.iter = it
            h.before_step()
            assert t.model.vmf_num_clusters == h.vmf_k_at_iter(it)
    # The fixed option keeps VMF.K at every step.
    fixed = LossScheduleHook(_schedule_cfg(warmup=1, period=1, k_sampling="fixed"), 10)
    assert {fixed.vmf_k_at_iter(i) for i in range(10, 60)} == {5}


def test_vmf_k_sampling_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="K_SAMPLING"):
        LossScheduleHook(_schedule_cfg(warmup=1, period=1, k_sampling="random"), 10)
    cfg = _schedule_cfg(warmup=1, period=1, k_sampling="uniform")
    cfg.CYBORGS.BOOTSTRAP.K_MIN, cfg.CYBORGS.BOOTSTRAP.K_MAX = 9, 4
    with pytest.raises(ValueError, match="K_MIN"):
        LossScheduleHook(cfg, 10)


def test_loss_schedule_lambda_zero_and_no_warmup() -> None:
    # LAMBDA 0 is the way to turn the vMF term off after the warm-up, whatever the period
    h = LossScheduleHook(_schedule_cfg(warmup=0, period=1, lam=0.0), iters_per_epoch=2)
    assert all(h.phase_at_epoch(e).vmf_weight == 0.0 for e in range(10))
    assert h.phase_at_epoch(0).name == "contrastive"
    t = _fake_trainer(max_iter=4)
    h.trainer = t
    with EventStorage() as storage:
        t.storage = storage
        h.before_step()
    assert h.warmup_just_ended  # iteration 0 when there is no warm-up
    # PERIOD_EPOCHS 0 (not a way to turn the term off: LAMBDA 0 is) is refused by the hook too
    with pytest.raises(ValueError, match="PERIOD_EPOCHS >= 1.*LAMBDA 0"):
        LossScheduleHook(_schedule_cfg(warmup=0, period=0), iters_per_epoch=2)


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    # drain more so the states really move
    [random.random() for _ in range(10)], np.random.rand(10), torch.rand(10)
    h = RNGStateHook()
    h.trainer = _fake_trainer(10)
    h.load_state_dict(state)
    h.before_train()
    b = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    assert a == b
    # the saved state survives a weights-only round trip through plain types
    saved = h.state_dict()
    assert len(saved["ranks"]) == 1  # one process: its own state, no gathering
    c = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(saved["ranks"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == c


def test_nonfinite_names_term_and_iteration() -> None:
    ok = {"loss_mask_contrastive": torch.tensor(1.0), "loss_vmf": torch.tensor(0.5)}
    check_finite_losses(ok, 3)
    bad = {"loss_mask_contrastive": torch.tensor(1.0), "loss_vmf": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLossError, match=r"iteration 17: loss_vmf=nan") as e:
        check_finite_losses(bad, 17)
    assert isinstance(e.value, FloatingPointError)
    assert "loss_mask_contrastive=1" in str(e.value)


@pytest.mark.gpu
def test_rng_state_round_trip_includes_every_cuda_generator():
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    drawn = torch.rand(4, device="cuda")
    torch.rand(7, device="cuda")  # move the generator on
    restore_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), drawn)
