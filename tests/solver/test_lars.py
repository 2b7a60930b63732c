"""LARS: one and two steps against hand-computed updates; param groups from a model."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from cyborgs.config import add_cyborgs_config
from cyborgs.solver.lars import LARS, build_lars_optimizer, lars_param_groups


def _norm(t: list[float]) -> float:
    return math.sqrt(sum(x * x for x in t))


def test_lars_one_step_matches_hand_computation() -> None:
    w0 = [3.0, 4.0]  # ||w|| = 5
    g0 = [0.6, 0.8]  # ||g|| = 1
    b0 = [1.0, -2.0]
    gb = [0.5, 0.5]
    w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))  # 2-D: adapted
    b = nn.Parameter(torch.tensor(b0, dtype=torch.float64))  # 1-D: excluded
    lr, wd, trust, m = 0.5, 0.1, 1e-3, 0.9
    opt = LARS(
        [
            {"params": [w], "lars_exclude": False, "weight_decay": wd},
            {"params": [b], "lars_exclude": True, "weight_decay": wd},
        ],
        lr=lr,
        momentum=m,
        trust_coefficient=trust,
    )
    w.grad = torch.tensor([g0], dtype=torch.float64)
    b.grad = torch.tensor(gb, dtype=torch.float64)
    opt.step()
    # adapted LR = 1e-3 * 5 / (1 + 0.1 * 5) = 1/300
    local = trust * 5.0 / (1.0 + wd * 5.0)
    assert local == pytest.approx(1.0 / 300.0)
    exp_w = [wi - lr * local * (gi + wd * wi) for wi, gi in zip(w0, g0, strict=True)]
    assert w.detach()[0].tolist() == pytest.approx(exp_w, rel=1e-12)
    # excluded: plain SGD step, no weight decay despite the group's wd
    exp_b = [bi - lr * gi for bi, gi in zip(b0, gb, strict=True)]
    assert b.detach().tolist() == pytest.approx(exp_b, rel=1e-12)

    # second step: momentum buffer = m * d1 + d2, with the trust ratio recomputed
    w1 = list(exp_w)
    g1 = [0.1, -0.3]
    w.grad = torch.tensor([g1], dtype=torch.float64)
    b.grad = torch.tensor(gb, dtype=torch.float64)
    opt.step()
    d1 = [local * (gi + wd * wi) for wi, gi in zip(w0, g0, strict=True)]
    local2 = trust * _norm(w1) / (_norm(g1) + wd * _norm(w1))
    d2 = [local2 * (gi + wd * wi) for wi, gi in zip(w1, g1, strict=True)]
    exp_w2 = [wi - lr * (m * a + c) for wi, a, c in zip(w1, d1, d2, strict=True)]
    assert w.detach()[0].tolist() == pytest.approx(exp_w2, rel=1e-12)
    exp_b2 = [bi - lr * (m * gi + gi) for bi, gi in zip(exp_b, gb, strict=True)]
    assert b.detach().tolist() == pytest.approx(exp_b2, rel=1e-12)


def test_lars_zero_weight_uses_unit_trust_ratio() -> None:
    w = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=0.0)
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    opt.step()
    # ||w|| = 0 would make the ratio 0 and freeze the layer forever; ratio 1 moves it.
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.1, dtype=torch.float64))


def test_param_groups_exclude_bias_and_norm_and_frozen() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    frozen = nn.Linear(2, 2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    model.add_module("target", frozen)
    groups = lars_param_groups(model, base_lr=0.2, weight_decay=1.5e-6)
    adapted, excluded = groups
    assert not adapted["lars_exclude"] and excluded["lars_exclude"]
    assert {p.ndim for p in adapted["params"]} == {4, 2}
    assert all(p.ndim == 1 for p in excluded["params"])
    assert len(excluded["params"]) == 4  # conv bias, BN weight+bias, linear bias
    assert excluded["weight_decay"] == 0.0 and adapted["weight_decay"] == 1.5e-6
    ids = {id(p) for g in groups for p in g["params"]}
    assert not ids & {id(p) for p in frozen.parameters()}


def test_build_from_cfg() -> None:
    cfg = add_cyborgs_config(get_cfg())
    cfg.SOLVER.BASE_LR = 0.3
    model = nn.Linear(3, 3)
    opt = build_lars_optimizer(cfg, model)
    assert isinstance(opt, LARS)
    assert opt.param_groups[0]["trust_coefficient"] == cfg.SOLVER.LARS_TRUST_COEFFICIENT
    assert opt.param_groups[0]["lr"] == 0.3
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(build_lars_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "adamw"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_lars_optimizer(cfg, model)


def _reference_lars(params, grads_per_step, lr, momentum, wd, trust, eps=1e-9):
    """Plain per-parameter loop: the update rule, written out independently."""
    ws = [p.detach().clone() for p in params]
    bufs = [None] * len(ws)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if g is None:
                continue
            wn, gn = ws[i].norm(), g.norm()
            ratio = trust * wn / (gn + wd * wn + eps) if wn > 0 and gn > 0 else 1.0
            d = (g + wd * ws[i]) * ratio
            bufs[i] = d.clone() if bufs[i] is None else bufs[i] * momentum + d
            ws[i] = ws[i] - lr * bufs[i]
    return ws


def test_late_joining_parameter_keeps_the_others_momentum() -> None:
    # The predictor gets no gradient during the vMF warm-up; when it joins, the backbone's
    # momentum buffers must keep accumulating, not restart.
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(2, 5))
    steps = [
        [torch.randn(4, 3), None],
        [torch.randn(4, 3), torch.randn(2, 5)],
        [torch.randn(4, 3), torch.randn(2, 5)],
    ]
    expected = _reference_lars([a, b], steps, lr=0.5, momentum=0.9, wd=1e-2, trust=1e-3)
    opt = LARS([a, b], lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=1e-3, eps=1e-9)
    for grads in steps:
        for p, g in zip((a, b), grads, strict=True):
            p.grad = None if g is None else g.clone()
        opt.step()
    torch.testing.assert_close(a.detach(), expected[0])
    torch.testing.assert_close(b.detach(), expected[1])
