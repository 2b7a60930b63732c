"""vMF clustering-consistency loss (paper §3.4, eq. 3-4; METHOD.md §4).

    d(mu_c, y) = -log softmax_c'(kappa * mu_c'^T y)[c]          y, mu unit vectors

with the PAPER's sign (+kappa): minimising d pulls y towards its assigned prototype. (The
authors' code has the opposite sign and pushes features away from their cluster.)

Per view v in {1, 2}: prototypes P_v = spherical k-means of the detached TARGET features of that
view over all locations of all images of the local batch; every target location is labelled
with its nearest prototype. The ONLINE features are scored (they carry the gradient):

    intra = mean_loc d(P_1[l1], y1_online) + mean_loc d(P_2[l2], y2_online)
    inter = mean_cells [ d(P_2[l2'], y1_online') + d(P_1[l1'], y2_online') ]

where the primed quantities are both views sampled at the same image locations on a common
grid over their crop intersection (``corresponding_grids``) and l1', l2' are the labels of the
sampled TARGET features. Images whose crops do not overlap add no inter cells. Means run over
locations and images (eq. 3's 1/HW, then the batch mean); total = intra + inter.

Euclidean variant (Table 2f, ``distance="euclidean"``): d = ||mu_c - y||^2 on unit vectors,
the plain squared distance to the assigned prototype. A softmax over -kappa||mu_c' - y||^2 is
NOT used: on unit vectors it equals the vMF softmax with 2 kappa (||mu - y||^2 = 2 - 2 mu^T y
and the constant cancels), so it would not be a different loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cyborgs.clustering import spherical_kmeans
from cyborgs.config.registries import VMF_DISTANCE_REGISTRY
from cyborgs.modeling.correspondence import corresponding_grids

__all__ = [
    "VMFClusteringLoss",
    "VMF_DISTANCE_REGISTRY",
    "get_vmf_distance",
    "vmf_nll",
    "squared_distance",
]

logger = logging.getLogger(__name__)


def _check(features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor) -> None:
    if features.dim() != 2 or prototypes.dim() != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"features [N, D] and prototypes [K, D] expected, got {tuple(features.shape)} and "
            f"{tuple(prototypes.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [N={features.shape[0]}], got {tuple(labels.shape)}")


def vmf_nll(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, kappa: float
) -> torch.Tensor:
    """Per-feature vMF-mixture posterior NLL (paper eq. 4).

    Args:
        features: Tensor[N, D] (L2-normalised here).
        prototypes: Tensor[K, D] (L2-normalised here; treated as constants by callers that
            pass detached prototypes).
        labels: LongTensor[N], assigned prototype per feature.
        kappa: concentration κ > 0.

    Returns:
        Tensor[N]: -log softmax_c(κ μ_c^T y)[label].
    """
    _check(features, prototypes, labels)
    if kappa <= 0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    y = F.normalize(features.float(), dim=1)
    mu = F.normalize(prototypes.float(), dim=1)
    log_post = torch.log_softmax(kappa * (y @ mu.T), dim=1)
    return -log_post.gather(1, labels.long()[:, None]).squeeze(1)


def squared_distance(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Euclidean variant (Table 2f): ||μ_label - y||^2 on unit vectors, Tensor[N].

    ``kappa`` is accepted for a common signature and ignored.
    """
    _check(features, prototypes, labels)
    y = F.normalize(features.float(), dim=1)
    mu = F.normalize(prototypes.float(), dim=1)
    return (y - mu[labels.long()]).pow(2).sum(dim=1)


VMF_DISTANCE_REGISTRY.__doc__ = """
Registry for the per-feature distance of the clustering-consistency loss, one entry per value of
``CYBORGS.VMF.DISTANCE``: a function registered under its own name, called as

    distance(features: Tensor[N, D], prototypes: Tensor[K, D], labels: LongTensor[N], kappa: float)
        -> Tensor[N]

(features and prototypes of any norm; ``labels`` the prototype assigned to each feature).
"""


@VMF_DISTANCE_REGISTRY.register()
def vmf(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, kappa: float
) -> torch.Tensor:
    """``CYBORGS.VMF.DISTANCE: vmf`` (paper eq. 4): :func:`vmf_nll`."""
    return vmf_nll(features, prototypes, labels, kappa)


@VMF_DISTANCE_REGISTRY.register()
def euclidean(
    features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, kappa: float
) -> torch.Tensor:
    """``CYBORGS.VMF.DISTANCE: euclidean`` (Table 2f): :func:`squared_distance`, κ ignored."""
    return squared_distance(features, prototypes, labels, kappa)


def get_vmf_distance(name: str) -> Callable[..., torch.Tensor]:
    """The registered distance ``name`` (``VMF_DISTANCE_REGISTRY`` contract). Raises
    ValueError naming the registered distances for an unknown ``name``."""
    if name not in VMF_DISTANCE_REGISTRY:
        known = sorted(n for n, _ in VMF_DISTANCE_REGISTRY)
        raise ValueError(f"distance must be one of {known}, got {name!r}")
    return VMF_DISTANCE_REGISTRY.get(name)


def _locations(feat: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B*h*w, C]."""
    return feat.permute(0, 2, 3, 1).reshape(-1, feat.shape[1])


def _nearest(feat: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    return (F.normalize(feat.float(), dim=1) @ prototypes.float().T).argmax(dim=1)


class VMFClusteringLoss(nn.Module):
    """Clustering consistency between online features and target-feature prototypes (eq. 3).

    Args:
        kappa: vMF concentration κ (paper: 10).
        num_clusters: K of the per-view spherical k-means (paper warm-up: 8).
        kmeans_iters: Lloyd iterations per view and step.
        inter_grid: side g of the common grid over the crop intersection (inter terms).
        distance: "vmf" (paper eq. 4) or "euclidean" (Table 2f; see the module docstring).
        kmeans_backend: backend of ``spherical_kmeans`` ("torch" runs on the features' device).

    Forward:
        online: (Tensor[B, C, h, w], Tensor[B, C, h', w']), online features of views 1 and 2.
        target: same shapes, target-encoder features (detached here).
        boxes: Tensor[B, 2, 4], crop boxes (x0, y0, x1, y1) of the views in image pixels.
        flips: BoolTensor[B, 2], horizontal flip per view.
        num_clusters: overrides ``self.num_clusters`` for this call (warm-up K vs later K).
        seed: seed of the k-means init (the training step); default: an internal call counter.

    Returns:
        {"intra": Tensor[], "inter": Tensor[], "total": Tensor[]}; "inter" is a zero (attached
        to the online features) when no image's crops overlap. All three are NaN when the
        target features are not finite (k-means is skipped; the trainer's check reports it).
    """

    def __init__(
        self,
        kappa: float = 10.0,
        num_clusters: int = 8,
        kmeans_iters: int = 10,
        inter_grid: int = 7,
        distance: str = "vmf",
        kmeans_backend: str = "torch",
    ) -> None:
        super().__init__()
        if kappa <= 0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        self._distance_fn = get_vmf_distance(distance)
        if inter_grid < 1:
            raise ValueError(f"inter_grid must be >= 1, got {inter_grid}")
        self.kappa = float(kappa)
        self.num_clusters = int(num_clusters)
        self.kmeans_iters = int(kmeans_iters)
        self.inter_grid = int(inter_grid)
        self.distance = distance
        self.kmeans_backend = kmeans_backend
        # Seed of the k-means init when forward() gets none: advanced every call so inits differ
        # between steps yet a run is reproducible. Trainers pass the step instead, which also
        # survives a resume (this counter is not in any state_dict).
        self._calls = 0

    def _d(self, feats: torch.Tensor, protos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._distance_fn(feats, protos, labels, self.kappa)

    def forward(
        self,
        online: tuple[torch.Tensor, torch.Tensor],
        target: tuple[torch.Tensor, torch.Tensor],
        boxes: torch.Tensor,
        flips: torch.Tensor,
        num_clusters: int | None = None,
        seed: int | None = None,
    ) -> dict[str, torch.Tensor]:
        if len(online) != 2 or len(target) != 2:
            raise ValueError("online and target must be (view 1, view 2) pairs of feature maps")
        for o, t in zip(online, target, strict=True):
            if o.dim() != 4 or o.shape != t.shape:
                raise ValueError(
                    f"online {tuple(o.shape)} and target {tuple(t.shape)} features of a view "
                    f"must be equal [B, C, h, w] shapes"
                )
        k = self.num_clusters if num_clusters is None else int(num_clusters)
        if k < 1:
            raise ValueError(f"num_clusters must be >= 1, got {k}")
        if seed is None:
            seed = self._calls
            self._calls += 1

        target = tuple(t.detach() for t in target)
        # k-means++ refuses NaN/inf features with an error that does not name the step; a
        # NaN term instead reaches the trainer's finite-loss check before backward, which
        # stops every rank together and names the term, the step and the last good checkpoint.
        # (One host sync, like the one at the end of the k-means++ seeding.)
        if not bool(torch.stack([torch.isfinite(t).all() for t in target]).all()):
            logger.warning(
                f"vMF loss: the target features are not finite before k-means (step seed "
                f"{seed}): the term is NaN"
            )
            nan = (online[0].sum() + online[1].sum()).float() * float("nan")
            return {"intra": nan, "inter": nan, "total": nan}
        prototypes, intra = [], []
        for v in range(2):
            locations = _locations(target[v])
            protos, labels = spherical_kmeans(
                locations,
                min(k, locations.shape[0]),  # METHOD.md §4: K capped at the locations available
                iters=self.kmeans_iters,
                seed=seed * 2 + v,
                backend=self.kmeans_backend,
            )
            protos = protos.float()
            prototypes.append(protos)
            intra.append(self._d(_locations(online[v]), protos, labels).mean())

        g = self.inter_grid
        on1, on2, valid = corresponding_grids(online[0], online[1], boxes, flips, g)
        tg1, tg2, _ = corresponding_grids(target[0], target[1], boxes, flips, g)
        if bool(valid.any()):
            on1, on2, tg1, tg2 = (x[valid] for x in (on1, on2, tg1, tg2))
            # Labels of the TARGET samples at the same image locations, each under its view's P.
            lab1 = _nearest(_locations(tg1), prototypes[0])
            lab2 = _nearest(_locations(tg2), prototypes[1])
            inter = (
                self._d(_locations(on1), prototypes[1], lab2).mean()
                + self._d(_locations(on2), prototypes[0], lab1).mean()
            )
        else:
            inter = (online[0].sum() + online[1].sum()).float() * 0.0

        intra_sum = intra[0] + intra[1]
        return {"intra": intra_sum, "inter": inter, "total": intra_sum + inter}
