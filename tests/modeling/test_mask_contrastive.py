"""MaskContrastiveLoss against METHOD.md §2, DetCon's ``byol_nce_detcon`` normalisation.

The reference below is written from METHOD.md §2's text, one anchor at a time, and shares nothing
with the vectorised implementation: per direction a -> o, anchor (b, a, i) has
ce = -sum_pos (1/n_pos) log softmax over its candidates and weight w = [n_pos > 0] / area
(area = slots of the same image and view with the same id); each direction is the mean of
w * ce over ALL B*M anchors; the loss is the SUM of the two directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cyborgs.modeling.losses import MaskContrastiveLoss


def reference_loss(pred, target, ids, tau):
    """METHOD.md §2.4, in float64 torch ops so that autograd gives the reference gradient."""
    B, _, M, _ = pred.shape
    q = F.normalize(pred.double(), dim=-1)
    t = F.normalize(target.double().detach(), dim=-1)
    total = q.new_zeros(())
    for a in range(2):  # direction a -> o
        o = 1 - a
        direction = q.new_zeros(())
        for b in range(B):
            for i in range(M):
                m = int(ids[b, a, i])
                candidates, positives = [], []
                for b2 in range(B):
                    for v in range(2):
                        for j in range(M):
                            if b2 == b and v == a and int(ids[b2, v, j]) == m:
                                continue  # same image, same view, same id: not a candidate
                            logit = q[b, a, i] @ t[b2, v, j] / tau
                            candidates.append(logit)
                            if b2 == b and v == o and int(ids[b2, v, j]) == m:
                                positives.append(logit)
                if not positives:
                    continue  # w = 0; the anchor still counts in the B*M denominator
                area = sum(int(ids[b, a, j]) == m for j in range(M))
                lse = torch.logsumexp(torch.stack(candidates), dim=0)
                ce = sum(lse - p for p in positives) / len(positives)
                direction = direction + ce / area
        total = total + direction / (B * M)
    return total


def _reference_value_and_grad(pred, target, ids, tau):
    p = pred.detach().double().requires_grad_(True)
    loss = reference_loss(p, target, ids, tau)
    loss.backward()
    return loss.detach(), p.grad


def _implementation_value_and_grad(pred, target, ids, tau):
    p = pred.detach().double().requires_grad_(True)
    loss = MaskContrastiveLoss(temperature=tau)(p, target.double(), ids)
    loss.backward()
    return loss.detach(), p.grad


def _random_inputs(B=3, S=4, D=5, num_ids=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, 2, S, D, generator=g)
    target = torch.randn(B, 2, S, D, generator=g)
    ids = torch.randint(0, num_ids, (B, 2, S), generator=g)
    return pred, target, ids


def test_hand_computed_case_repeated_and_missing_ids():
    """B = 1, M = 3, tau = 0.5 (logit = 2 cos). View 0 ids [5, 5, 7]; view 1 ids [5, 9, 9].

    Online predictions: view 0 (e1, e2, e1), view 1 (e1, e2, e2).
    Targets:            view 0 (e1, e1, e2), view 1 (e1, e2, -e1).

    Direction 0 -> 1:
      (0, 0) id 5, area 2: candidates t1[0..2] and t0[2] (t0[0], t0[1] share id 5: excluded);
        logits 2, 0, -2, 0; positive t1[0]: ce = log(e^2 + 2 + e^-2) - 2.
      (0, 1) id 5, area 2: logits 0, 2, 0, 2; positive t1[0]: ce = log(2 + 2 e^2).
      (0, 2) id 7: absent in view 1, w = 0 (but counted in the 3 anchors).
      loss_0->1 = (ce00 / 2 + ce01 / 2) / 3.
    Direction 1 -> 0:
      (1, 0) id 5, area 1: candidates t0[0..2] and t1[1], t1[2]; logits 2, 2, 0, 0, -2;
        positives t0[0], t0[1] (n_pos 2): ce = log(2 e^2 + 2 + e^-2) - 2.
      (1, 1), (1, 2) id 9: absent in view 0, w = 0.
      loss_1->0 = ce10 / 3.
    loss = loss_0->1 + loss_1->0 = 0.78836...
    """
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    pred = torch.stack([torch.stack([e1, e2, e1]), torch.stack([e1, e2, e2])])[None]
    target = torch.stack([torch.stack([e1, e1, e2]), torch.stack([e1, e2, -e1])])[None]
    ids = torch.tensor([[[5, 5, 7], [5, 9, 9]]])
    e = math.e
    ce00 = math.log(e**2 + 2 + e**-2) - 2
    ce01 = math.log(2 + 2 * e**2)
    ce10 = math.log(2 * e**2 + 2 + e**-2) - 2
    expected = (ce00 / 2 + ce01 / 2) / 3 + ce10 / 3
    assert abs(expected - 0.788358) < 1e-6  # the number, written out
    got = MaskContrastiveLoss(temperature=0.5)(pred.double(), target.double(), ids)
    assert abs(got.item() - expected) < 1e-12
    assert abs(reference_loss(pred, target, ids, 0.5).item() - expected) < 1e-12
    # float32 inputs give the float32 value of the same number.
    assert abs(MaskContrastiveLoss(temperature=0.5)(pred, target, ids).item() - expected) < 1e-6


CASES = {
    # name: (B, M, D, number of ids, seed, tau)
    "repeated_ids": (3, 6, 5, 3, 0, 0.1),  # ids sampled several times per view
    "missing_ids": (3, 4, 5, 8, 1, 0.1),  # many anchors without a positive
    "single_image": (1, 5, 4, 3, 2, 0.1),  # B = 1: every negative is from the same image
    "many_ids": (2, 16, 8, 256, 3, 0.1),  # the paper's 16 slots, ids up to 255
    "paper_slots": (4, 16, 8, 6, 4, 0.1),  # 16 slots, few ids: large areas
    "temperature": (2, 6, 5, 2, 5, 0.5),
}


def _case(name):
    B, M, D, n_ids, seed, tau = CASES[name]
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(B, 2, M, D, generator=g, dtype=torch.float64)
    target = torch.randn(B, 2, M, D, generator=g, dtype=torch.float64)
    ids = torch.randint(0, n_ids, (B, 2, M), generator=g)
    return pred, target, ids, tau


def test_value_and_gradient_match_the_definition():
    for name in CASES:
        pred, target, ids, tau = _case(name)
        ref, ref_grad = _reference_value_and_grad(pred, target, ids, tau)
        got, grad = _implementation_value_and_grad(pred, target, ids, tau)
        assert abs(got.item() - ref.item()) < 1e-6, (name, got.item(), ref.item())
        cos = F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0).item()
        assert cos > 0.99999, (name, cos)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_cases_exercise_what_they_claim():
    """Guard the random cases: repeated ids and missing ids do occur where named."""
    _, _, ids, _ = _case("repeated_ids")
    area = (ids[..., :, None] == ids[..., None, :]).sum(-1)
    assert (area > 1).any()
    _, _, ids, _ = _case("missing_ids")
    present_other = (ids[:, 0, :, None] == ids[:, 1, None, :]).any(-1)
    assert (~present_other).any() and present_other.any()


def test_directions_are_summed_not_averaged():
    """With one id per image in both views, every anchor has w = 1 and the loss is the SUM of
    the two directions' means: twice the per-anchor mean."""
    pred, target, _, _ = _case("single_image")
    ids = torch.zeros(1, 2, pred.shape[2], dtype=torch.long)
    ids[:, :, 1:] = torch.arange(1, pred.shape[2])  # distinct ids, the same in both views
    got = MaskContrastiveLoss(temperature=0.1)(pred, target, ids).item()
    per_anchor = []
    q, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    for a in range(2):
        for i in range(pred.shape[2]):
            logits = (
                torch.cat(
                    [
                        q[0, a, i] @ t[0, 1 - a].T,
                        (q[0, a, i] @ t[0, a].T)[torch.arange(pred.shape[2]) != i],
                    ]
                )
                / 0.1
            )
            per_anchor.append((torch.logsumexp(logits, 0) - logits[i]).item())
    mean_anchor = sum(per_anchor) / len(per_anchor)
    assert abs(got - 2 * mean_anchor) < 1e-9


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
