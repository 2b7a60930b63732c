"""Tests for the vMF clustering-consistency loss (paper eq. 3-4, METHOD.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cyborgs.modeling.losses.vmf_clustering import VMFClusteringLoss, squared_distance, vmf_nll


def test_vmf_nll_hand_computed():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    # kappa = 10. logits: (10, 0), (6, 8), (-10, 0).
    expected = torch.tensor(
        [math.log1p(math.exp(-10)), math.log1p(math.exp(-2)), math.log1p(math.exp(10))]
    )
    torch.testing.assert_close(vmf_nll(feats, protos, labels, 10.0), expected)
    # Features and prototypes are normalised inside: scale does not matter.
    torch.testing.assert_close(vmf_nll(3 * feats, 2 * protos, labels, 10.0), expected)


def test_vmf_nll_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    feats, protos = torch.randn(7, 5, generator=g), torch.randn(3, 5, generator=g)
    labels = torch.randint(0, 3, (7,), generator=g)
    got = vmf_nll(feats, protos, labels, 4.0)
    for n in range(7):
        y = feats[n] / feats[n].norm()
        logits = [4.0 * float(y @ (p / p.norm())) for p in protos]
        ref = -logits[labels[n]] + math.log(sum(math.exp(v) for v in logits))
        assert abs(got[n].item() - ref) < 1e-5


def test_sign_features_on_their_prototype_score_best():
    # The paper's +kappa: a feature equal to its prototype has the lowest loss, its antipode
    # the highest. The authors' code (-kappa) would order these the other way round.
    protos = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.arange(4)
    on = vmf_nll(protos, protos, labels, 10.0)
    anti = vmf_nll(-protos, protos, labels, 10.0)
    assert torch.all(on < anti)


def test_gradient_step_moves_features_towards_their_prototype():
    # 2-D, orthogonal prototypes, features in the first quadrant: a step must raise the cosine
    # to the assigned prototype for every feature.
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    angles = torch.linspace(0.1, 1.4, 6)
    feats = torch.stack([angles.cos(), angles.sin()], dim=1).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    vmf_nll(feats, protos, labels, 10.0).sum().backward()
    new = feats.detach() - 0.01 * feats.grad
    cos_before = F.normalize(feats.detach(), dim=1)[torch.arange(6), labels]
    cos_after = F.normalize(new, dim=1)[torch.arange(6), labels]
    assert torch.all(cos_after > cos_before)


def test_gradient_step_random_high_dim():
    g = torch.Generator().manual_seed(2)
    protos = torch.randn(5, 16, generator=g)
    feats = torch.randn(50, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (50,), generator=g)
    before = vmf_nll(feats, protos, labels, 10.0)
    before.sum().backward()
    new = feats.detach() - 1e-3 * feats.grad
    # Each feature's own NLL falls and, on average, it turns towards its prototype.
    assert torch.all(vmf_nll(new, protos, labels, 10.0) < before.detach())
    mu = F.normalize(protos, dim=1)[labels]
    cos = lambda f: (F.normalize(f, dim=1) * mu).sum(1)  # noqa: E731
    assert cos(new).mean() > cos(feats.detach()).mean()


def test_euclidean_variant_hand_computed():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[0.6, 0.8], [2.0, 0.0]])
    got = squared_distance(feats, protos, torch.tensor([0, 0]))
    torch.testing.assert_close(got, torch.tensor([0.16 + 0.64, 0.0]))


# ----------------------------------------------------------------- module on synthetic views
# A 64x64 "feature image" with two regions: direction e0 left of x = 32, e1 right of it.
D = 8


def _feature_image_view(box, size, flip):
    """A view's feature map: the region direction at each cell centre of the crop."""
    x0, y0, x1, y1 = box
    xs = x0 + (torch.arange(size) + 0.5) * (x1 - x0) / size
    region = (xs >= 32).long()
    if flip:
        region = region.flip(0)
    f = F.one_hot(region, D).float().T  # [D, w]
    return f[:, None, :].expand(D, size, size).clone()


def _synthetic_batch(flips=((False, True), (True, False))):
    # Crops whose intersection x-range [16, 48] is split by the region border at a bin edge;
    # view 2 spans exactly that range, so a wrong view-2 flip flag mirrors the sampled grid.
    boxes = torch.tensor(
        [[[0, 0, 48, 48], [16, 8, 48, 56]], [[16, 4, 64, 60], [16, 0, 48, 64]]], dtype=torch.float32
    )
    views = [
        torch.stack([_feature_image_view(boxes[b, a].tolist(), 12, flips[b][a]) for b in range(2)])
        for a in range(2)
    ]
    return views, boxes, torch.tensor(flips)


def test_module_values_on_separated_clusters():
    views, boxes, flips = _synthetic_batch()
    loss = VMFClusteringLoss(kappa=10.0, num_clusters=2, inter_grid=4)
    out = loss((views[0], views[1]), (views[0], views[1]), boxes, flips)
    # Prototypes are exactly e0 and e1; every location sits on its own (orthogonal) prototype:
    # d = log(1 + e^-10) per location, two intra and two inter terms.
    d = math.log1p(math.exp(-10))
    assert abs(out["intra"].item() - 2 * d) < 1e-6
    assert abs(out["inter"].item() - 2 * d) < 1e-6
    assert abs(out["total"].item() - 4 * d) < 1e-6


def test_inter_labels_follow_geometry():
    """A wrong flip flag misaligns the views: each sampled feature meets the other region's
    prototype, d = log(1 + e^10) ~ 10 per term; intra is unaffected."""
    views, boxes, flips = _synthetic_batch()
    loss = VMFClusteringLoss(kappa=10.0, num_clusters=2, inter_grid=4)
    wrong = flips.clone()
    wrong[:, 1] = ~wrong[:, 1]
    out = loss((views[0], views[1]), (views[0], views[1]), boxes, wrong)
    assert abs(out["intra"].item() - 2 * math.log1p(math.exp(-10))) < 1e-6
    assert abs(out["inter"].item() - 2 * math.log1p(math.exp(10))) < 1e-4


def test_intra_matches_independent_reference_with_noisy_online():
    views, boxes, flips = _synthetic_batch()
    g = torch.Generator().manual_seed(0)
    online = [v + 0.3 * torch.randn(v.shape, generator=g) for v in views]
    out = VMFClusteringLoss(kappa=10.0, num_clusters=2, inter_grid=4)(
        tuple(online), tuple(views), boxes, flips
    )
    # Reference: prototypes e0, e1 (target clusters), labels = region of each target location.
    protos = torch.eye(D)[:2]
    ref = 0.0
    for v in range(2):
        terms = []
        for b in range(2):
            for i in range(12):
                for j in range(12):
                    y = F.normalize(online[v][b, :, i, j], dim=0)
                    lab = int(views[v][b, :, i, j].argmax())
                    logits = [10.0 * float(y @ p) for p in protos]
                    terms.append(math.log(sum(math.exp(x) for x in logits)) - logits[lab])
        ref += sum(terms) / len(terms)
    assert abs(out["intra"].item() - ref) < 1e-4


def test_no_overlap_gives_zero_inter_and_grads_only_to_online():
    views, _, flips = _synthetic_batch()
    boxes = torch.tensor(
        [[[0, 0, 20, 20], [30, 30, 60, 60]], [[0, 0, 10, 64], [10, 0, 64, 64]]], dtype=torch.float32
    )
    g = torch.Generator().manual_seed(1)
    online = tuple(
        (v + 0.3 * torch.randn(v.shape, generator=g)).requires_grad_(True) for v in views
    )
    target = tuple(v.clone().requires_grad_(True) for v in views)
    out = VMFClusteringLoss(num_clusters=2)(online, target, boxes, flips)
    assert out["inter"].item() == 0.0
    assert torch.equal(out["total"], out["intra"] + out["inter"])
    out["total"].backward()
    assert all(t.grad is None for t in target)
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in online)


def test_gradient_step_lowers_total_and_k_override():
    views, boxes, flips = _synthetic_batch()
    g = torch.Generator().manual_seed(2)
    online = [(v + 0.5 * torch.randn(v.shape, generator=g)).requires_grad_(True) for v in views]
    target = [v + 0.1 * torch.randn(v.shape, generator=g) for v in views]
    loss = VMFClusteringLoss(kappa=10.0, num_clusters=2, inter_grid=4)
    before = loss(tuple(online), tuple(target), boxes, flips)["total"]
    before.backward()
    stepped = tuple((o - 0.05 * o.grad).detach() for o in online)
    after = loss(stepped, tuple(target), boxes, flips)["total"]
    assert after < before
    # K = 1: a single prototype, the posterior is 1 everywhere.
    one = loss(tuple(online), tuple(target), boxes, flips, num_clusters=1)
    assert one["total"].item() == pytest.approx(0.0, abs=1e-6)


def test_euclidean_module_and_bad_arguments():
    views, boxes, flips = _synthetic_batch()
    out = VMFClusteringLoss(num_clusters=2, distance="euclidean", inter_grid=4)(
        tuple(views), tuple(views), boxes, flips
    )
    assert out["total"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"distance must be one of \['euclidean', 'vmf'\]"):
        VMFClusteringLoss(distance="cosine")
    with pytest.raises(ValueError, match="shapes"):
        VMFClusteringLoss()((views[0], views[1]), (views[0], views[1][:, :4]), boxes, flips)


def test_explicit_seed_makes_prototypes_independent_of_call_history():
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 4, 4) for _ in range(2)]
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 40.0, 40.0]]] * 2)
    flips = torch.zeros(2, 2, dtype=torch.bool)
    fresh = VMFClusteringLoss(num_clusters=3, kmeans_iters=0)
    used = VMFClusteringLoss(num_clusters=3, kmeans_iters=0)
    for _ in range(3):  # advance the internal counter: a resumed run's loss has not seen these
        used(tuple(feats), tuple(feats), boxes, flips)
    a = fresh(tuple(feats), tuple(feats), boxes, flips, seed=7)["total"]
    b = used(tuple(feats), tuple(feats), boxes, flips, seed=7)["total"]
    assert torch.equal(a, b)
    c = fresh(tuple(feats), tuple(feats), boxes, flips)["total"]  # counter 0, not seed 7
    d = fresh(tuple(feats), tuple(feats), boxes, flips, seed=7)["total"]
    assert torch.equal(d, a) and not torch.equal(c, a)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_target_features_give_a_nan_term_not_a_kmeans_crash(bad):
    """k-means++ on NaN/inf features dies in torch.multinomial; the loss returns NaN terms
    instead, which the trainer's finite-loss check reports with its message."""
    views, boxes, flips = _synthetic_batch()
    target = (views[0].clone(), views[1])
    target[0][1, :, 3, 5] = bad
    online = tuple(v.clone().requires_grad_(True) for v in views)
    out = VMFClusteringLoss(kappa=10.0, num_clusters=2, inter_grid=4)(online, target, boxes, flips)
    assert all(torch.isnan(out[k]) for k in ("intra", "inter", "total"))
    assert out["total"].requires_grad  # still a graph term, like every loss the model returns


def test_distance_registry_entries_are_the_named_functions():
    from cyborgs.modeling.losses.vmf_clustering import get_vmf_distance

    g = torch.Generator().manual_seed(0)
    feats, protos = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(
        get_vmf_distance("vmf")(feats, protos, labels, 5.0), vmf_nll(feats, protos, labels, 5.0)
    )
    torch.testing.assert_close(
        get_vmf_distance("euclidean")(feats, protos, labels, 5.0),
        squared_distance(feats, protos, labels),
    )
