"""Spherical k-means (cosine similarity on the unit sphere) with pluggable backends.

Used by mask bootstrapping (SPEC §3: FAISS, GPU index when CUDA is present) and by the vMF
clustering loss (SPEC §4: prototypes of the target features, every iteration, on GPU).

    centroids, labels = spherical_kmeans(x, k, iters=20, seed=0, backend="auto")

``x`` is L2-normalised inside; centroids are unit vectors; ``labels`` is the argmax cosine of
every point to the returned centroids (computed in torch for every backend, so the definition
does not depend on the backend). ``k`` is capped at the number of distinct (normalised) points,
so the returned centroids may be fewer than asked for. Backends live in ``KMEANS_BACKENDS``;
add one with ``register_kmeans_backend``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["spherical_kmeans", "register_kmeans_backend", "KMEANS_BACKENDS"]

# A backend takes unit-norm float32 points [N, D], distinct unit-norm initial centroids [k, D]
# (the k-means++ seeds, so k <= distinct points) and iters, and returns unit-norm centroids
# [k, D] on the points' device.
KmeansBackend = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
KMEANS_BACKENDS: dict[str, KmeansBackend] = {}


def register_kmeans_backend(name: str) -> Callable[[KmeansBackend], KmeansBackend]:
    def deco(fn: KmeansBackend) -> KmeansBackend:
        KMEANS_BACKENDS[name] = fn
        return fn

    return deco


def spherical_kmeans(
    x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the directions of ``x``.

    Args:
        x: Tensor[N, D], any norm (rows of zero norm stay zero and join the first centroid).
        k: number of clusters, capped at the number of distinct normalised points.
        iters: Lloyd iterations.
        seed: seeds the initialisation; a given (x, k, iters, seed, backend) gives the same
            result on the same device.
        backend: "torch", "faiss", "auto" (faiss if importable, except for CUDA
            data when faiss has no GPU support: then torch on the GPU) or a registered name.

    Returns:
        (centroids Tensor[k', D] unit-norm in x's dtype, labels LongTensor[N]) with
        k' = min(k, distinct points), both on x's device.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    name = _resolve_backend(backend, x.device)
    xn = F.normalize(x.detach().float(), dim=1)
    # k-means++ stops seeding when every point coincides with a seed, which caps k at the number
    # of distinct points (so every cluster can own one) without sorting the rows.
    gen = torch.Generator(device=xn.device).manual_seed(int(seed))
    init = _kmeans_pp_init(xn, min(int(k), xn.shape[0]), gen)
    centroids = KMEANS_BACKENDS[name](xn, init, int(iters))
    centroids = F.normalize(centroids.to(xn.device, torch.float32), dim=1)
    labels = (xn @ centroids.T).argmax(dim=1)
    return centroids.to(x.dtype), labels


def _faiss_has_gpu(faiss) -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        faiss = _faiss()
        if faiss is None:
            return "torch"
        # CUDA data with a CPU-only FAISS build (faiss-cpu): clustering on the GPU in torch
        # beats a device->host copy plus CPU k-means, which would dominate a bootstrap round.
        if device.type == "cuda" and not _faiss_has_gpu(faiss):
            return "torch"
        return "faiss"
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; known: {sorted(KMEANS_BACKENDS)}")
    if backend == "faiss" and _faiss() is None:
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    return backend


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


# ---------------------------------------------------------------------------- torch backend
# Squared chordal distances below this are the same point: float32 rounding leaves ~1e-7 of
# 2 - 2cos between a unit vector and a rescaled copy of it.
_SAME_POINT = 1e-6


def _chordal(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|x - c|^2 = 2 - 2cos of unit vectors, with same-point rounding set to exactly 0."""
    d = 2.0 - 2.0 * (c @ x.T)
    return torch.where(d < _SAME_POINT, torch.zeros_like(d), d)


def _kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn) with the chordal distance |x-c|^2 = 2 - 2cos.

    Each step draws 2 + log(k) candidates proportionally to the distance to the closest seed and
    keeps the one that lowers the potential most; plain k-means++ too often drops two seeds in
    one well-separated cluster. A point at distance 0 is never drawn, so the seeds are distinct,
    and seeding stops once every point coincides with a seed: min(k, distinct points) seeds.
    """
    N = x.shape[0]
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first = torch.randint(N, (1,), generator=gen, device=x.device)
    chosen = [first]
    closest = _chordal(x, x[first[0]])
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point coincides with a seed: no distinct point is left
            break
        cand = torch.multinomial(closest / total, trials, replacement=True, generator=gen)
        dist = torch.minimum(closest[None], _chordal(x, x[cand]))
        best = dist.sum(dim=1).argmin()
        chosen.append(cand[best : best + 1])
        closest = dist[best]
    return x[torch.cat(chosen)]


@register_kmeans_backend("torch")
def _torch_kmeans(x: torch.Tensor, init: torch.Tensor, iters: int) -> torch.Tensor:
    centroids, k = init, init.shape[0]
    labels = None
    for _ in range(iters):
        sims = x @ centroids.T
        best_sim, new_labels = sims.max(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, new_labels, x)
        counts = torch.bincount(new_labels, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel() > 0:
            # Re-seed empty clusters from the points farthest from their own centroid.
            far = torch.argsort(best_sim)[: empty.numel()]
            sums[empty] = x[far]
        centroids = F.normalize(sums, dim=1)
        if empty.numel() == 0 and labels is not None and torch.equal(labels, new_labels):
            break  # converged: the update above reproduced the same centroids
        labels = new_labels
    return centroids


# ---------------------------------------------------------------------------- faiss backend
_GPU_RESOURCES: dict[int, object] = {}


@register_kmeans_backend("faiss")
def _faiss_kmeans(x: torch.Tensor, init: torch.Tensor, iters: int) -> torch.Tensor:
    faiss = _faiss()
    N, D = x.shape
    k = init.shape[0]
    data = x.cpu().numpy()
    clus = faiss.Clustering(D, k)
    clus.niter = max(1, iters)
    clus.spherical = True  # renormalise centroids after every update
    clus.verbose = False
    # FAISS subsamples to 256 points per centroid by default (at k = 2 only 512 of a
    # bootstrap group's ~12k locations) and warns below 39; cluster all points, silently.
    clus.max_points_per_centroid = max(N // max(k, 1) + 1, 256)
    clus.min_points_per_centroid = 1
    # Seed FAISS with our k-means++ init (FAISS alone draws k random points, which often puts
    # two seeds in one cluster and misses another); centroids given before train() are used,
    # and with no subsampling FAISS draws no random numbers of its own.
    faiss.copy_array_to_vector(init.cpu().numpy().reshape(-1), clus.centroids)
    index = _faiss_index(faiss, D, x.device)
    clus.train(data, index)
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, D)
    return torch.from_numpy(centroids).to(x.device)


def _faiss_index(faiss, dim: int, device: torch.device):
    """Inner-product index, on a GPU when CUDA is present and FAISS has GPU support (SPEC §3).

    The GPU is x's own when x is on CUDA, else the current device: one rank, one GPU, rather
    than faiss.Kmeans(gpu=True), which would spread over every GPU of the machine.
    """
    use_gpu = torch.cuda.is_available() and _faiss_has_gpu(faiss)
    if not use_gpu:
        return faiss.IndexFlatIP(dim)
    dev = device.index if device.type == "cuda" and device.index is not None else None
    dev = torch.cuda.current_device() if dev is None else dev
    if dev not in _GPU_RESOURCES:  # creating resources is slow: one per device per process
        _GPU_RESOURCES[dev] = faiss.StandardGpuResources()
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = dev
    return faiss.GpuIndexFlatIP(_GPU_RESOURCES[dev], dim, cfg)
