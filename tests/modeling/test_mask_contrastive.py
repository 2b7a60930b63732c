"""Tests for MaskContrastiveLoss against a plain-loop reference of DetCon's byol_nce_detcon."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cyborgs.modeling.losses import MaskContrastiveLoss


def reference_loss(pred, target, ids, tau):
    """Loops over anchors with explicit positive / negative sets (single process)."""
    B, _, S, _ = pred.shape
    q = F.normalize(pred.double(), dim=-1)
    t = F.normalize(target.double(), dim=-1)
    losses = []
    for b in range(B):
        for a in range(2):
            for s in range(S):
                m = int(ids[b, a, s])
                positives, entries = [], []
                for b2 in range(B):
                    for a2 in range(2):
                        for s2 in range(S):
                            same = b2 == b and int(ids[b2, a2, s2]) == m
                            if same and a2 == a:
                                continue  # same image, same view, same id: excluded
                            logit = float(q[b, a, s] @ t[b2, a2, s2]) / tau
                            entries.append(logit)
                            if same:
                                positives.append(logit)
                if not positives:
                    continue  # id absent in the other view: no loss
                lse = math.log(sum(math.exp(e) for e in entries))
                losses.append(sum(lse - p for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def _random_inputs(B=3, S=4, D=5, num_ids=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, 2, S, D, generator=g)
    target = torch.randn(B, 2, S, D, generator=g)
    ids = torch.randint(0, num_ids, (B, 2, S), generator=g)
    return pred, target, ids


def test_hand_computed_case():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    pred = e1.expand(2, 2, 1, 2).clone()
    target = torch.stack([torch.stack([e1, e1]), torch.stack([e2, -e1])])[:, :, None, :]
    ids = torch.zeros(2, 2, 1, dtype=torch.long)
    # Anchor (image 0, view 0): own-view entry excluded; positive cos 1, negatives cos 0 and -1.
    l00 = -math.log(math.exp(10) / (math.exp(10) + 1 + math.exp(-10)))
    l01 = l00  # symmetric
    # Image 1, view 0: positive is -e1 (cos -1), negatives image 0's two e1's (cos 1).
    l10 = -math.log(math.exp(-10) / (math.exp(-10) + 2 * math.exp(10)))
    # Image 1, view 1: positive e2 (cos 0), same two negatives.
    l11 = -math.log(1 / (1 + 2 * math.exp(10)))
    expected = (l00 + l01 + l10 + l11) / 4
    got = MaskContrastiveLoss(temperature=0.1)(pred, target, ids)
    assert abs(got.item() - expected) < 1e-4 * expected


def test_matches_loop_reference_random():
    loss_fn = MaskContrastiveLoss(temperature=0.1)
    for seed in range(4):
        pred, target, ids = _random_inputs(seed=seed)
        expected = reference_loss(pred, target, ids, 0.1)
        got = loss_fn(pred, target, ids)
        assert got.shape == ()
        assert abs(got.item() - expected) < 1e-4 * max(1.0, expected), (seed, got, expected)


def test_temperature_and_repeated_positives():
    # Few ids -> many ids sampled several times -> multi-positive anchors.
    pred, target, ids = _random_inputs(B=2, S=6, num_ids=2, seed=5)
    got = MaskContrastiveLoss(temperature=0.5)(pred, target, ids)
    assert abs(got.item() - reference_loss(pred, target, ids, 0.5)) < 1e-4


def test_anchor_without_positive_carries_no_loss():
    pred, target, ids = _random_inputs(B=2, S=3, seed=1)
    ids[0, 0] = torch.tensor([7, 1, 1])
    ids[0, 1] = torch.tensor([1, 2, 2])  # id 7 of (image 0, view 0, slot 0) absent in view 1
    pred.requires_grad_(True)
    loss_fn = MaskContrastiveLoss()
    loss = loss_fn(pred, target, ids)
    loss.backward()
    assert torch.all(pred.grad[0, 0, 0] == 0)
    moved = pred.detach().clone()
    moved[0, 0, 0] = torch.randn(pred.shape[-1])
    assert torch.allclose(loss_fn(moved, target, ids), loss)


def test_no_positive_anywhere_is_zero_not_nan():
    pred, target, _ = _random_inputs(B=2, S=3)
    ids = torch.zeros(2, 2, 3, dtype=torch.long)
    ids[:, 1] = 1  # the two views never share an id
    pred.requires_grad_(True)
    loss = MaskContrastiveLoss()(pred, target, ids)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_same_view_same_id_entries_are_excluded():
    """An anchor's row ignores targets of its own image and view with its id.

    Each anchor's loss depends only on its own prediction, so the gradient with respect to that
    prediction isolates its softmax row: changing an excluded target entry leaves it unchanged,
    changing a genuine negative does not.
    """
    pred, target, ids = _random_inputs(B=2, S=3, seed=2)
    ids[0, 0] = torch.tensor([4, 4, 0])
    ids[0, 1] = torch.tensor([4, 1, 2])
    loss_fn = MaskContrastiveLoss()

    def grad_of_anchor(tgt):
        p = pred.clone().requires_grad_(True)
        loss_fn(p, tgt, ids).backward()
        return p.grad[0, 0, 0]

    base = grad_of_anchor(target)
    excluded = target.clone()
    # Aligned with the anchor: the largest possible effect, were the entry in the softmax.
    excluded[0, 0, 1] = pred[0, 0, 0]  # same image, view and id 4
    assert torch.allclose(grad_of_anchor(excluded), base, atol=1e-6)
    negative = target.clone()
    negative[0, 0, 2] = pred[0, 0, 0]  # same image and view, other id: a negative
    assert not torch.allclose(grad_of_anchor(negative), base, atol=1e-4)


def test_gradients_flow_only_to_pred():
    pred, target, ids = _random_inputs()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    MaskContrastiveLoss()(pred, target, ids).backward()
    assert target.grad is None
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_gradient_step_lowers_loss():
    pred, target, ids = _random_inputs(seed=3)
    pred.requires_grad_(True)
    loss_fn = MaskContrastiveLoss()
    loss = loss_fn(pred, target, ids)
    loss.backward()
    with torch.no_grad():
        assert loss_fn(pred - 1e-2 * pred.grad, target, ids) < loss
