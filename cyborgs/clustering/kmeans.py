"""Spherical k-means (cosine similarity on the unit sphere) with pluggable backends.

Used by mask bootstrapping (METHOD.md §3: FAISS, GPU index when CUDA is present) and by the vMF
clustering loss (METHOD.md §4: prototypes of the target features, every iteration, on GPU).

    centroids, labels = spherical_kmeans(x, k, iters=20, seed=0, backend="auto")

``x`` is L2-normalised inside; centroids are unit vectors; ``labels`` is the argmax cosine of
every point to the returned centroids (computed in torch for every backend, so the definition
does not depend on the backend). ``k`` is capped at the number of distinct (normalised) points,
so the returned centroids may be fewer than asked for. Backends live in
``KMEANS_BACKEND_REGISTRY`` (the built-in "torch" and "faiss" in ``backends.py``); add one with
``@KMEANS_BACKEND_REGISTRY.register()`` on a function named like its config value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cyborgs.config.registries import KMEANS_BACKEND_REGISTRY

__all__ = [
    "KMEANS_BACKEND_REGISTRY",
    "get_kmeans_backend",
    "kmeans_backend_names",
    "spherical_kmeans",
]

KmeansBackend = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

KMEANS_BACKEND_REGISTRY.__doc__ = """
Registry for the Lloyd iterations of :func:`spherical_kmeans`, one entry per value of
``CYBORGS.BOOTSTRAP.KMEANS_BACKEND`` / ``CYBORGS.VMF.KMEANS_BACKEND`` ("auto" is not an entry:
it picks one). An entry is a function registered under its own name and called as

    backend(x: Tensor[N, D] float32 unit-norm, init: Tensor[k, D] float32 unit-norm, iters: int)
        -> Tensor[k, D] unit-norm centroids on x's device

where ``init`` holds k distinct k-means++ seeds (so k <= distinct points). A backend that needs
an optional package imports it when called, never at registration.
"""


def kmeans_backend_names() -> list[str]:
    """Registered backend names, sorted (the config also accepts "auto")."""
    return sorted(name for name, _ in KMEANS_BACKEND_REGISTRY)


def get_kmeans_backend(name: str) -> KmeansBackend:
    """The registered backend ``name`` (see ``KMEANS_BACKEND_REGISTRY`` for the contract).

    Raises ValueError naming the registered backends for an unknown ``name``.
    """
    if name not in KMEANS_BACKEND_REGISTRY:
        raise ValueError(f"unknown k-means backend {name!r}; known: {kmeans_backend_names()}")
    return KMEANS_BACKEND_REGISTRY.get(name)


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
    centroids = get_kmeans_backend(name)(xn, init, int(iters))
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
    get_kmeans_backend(backend)  # unknown name: the error lists the registered ones
    if backend == "faiss" and _faiss() is None:
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    return backend


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


# ------------------------------------------------------------------------- k-means++ seeding
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

    No host sync inside the loop (the vMF loss seeds up to 256 clusters per view every step on
    the GPU): once no distinct point is left, the remaining draws are made uniformly and
    dropped at the end, in the one sync, instead of breaking out on a host-side test.
    Non-finite points raise ``ValueError``.
    """
    N = x.shape[0]
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first = torch.randint(N, (1,), generator=gen, device=x.device)
    chosen, fresh = [first], [torch.ones(1, dtype=torch.bool, device=x.device)]
    closest = _chordal(x, x[first])[0]
    uniform = torch.ones_like(closest)
    for _ in range(1, k):
        total = closest.sum()
        left = total > 0  # False once every point coincides with a seed
        weights = torch.where(left, closest / total, uniform)
        cand = torch.multinomial(weights, trials, replacement=True, generator=gen)
        dist = torch.minimum(closest[None], _chordal(x, x[cand]))
        best = dist.sum(dim=1).argmin().view(1)
        chosen.append(cand.index_select(0, best))
        fresh.append(left.view(1))
        closest = dist.index_select(0, best)[0]
    # the one host sync: which seeds count, and whether every distance was finite (a NaN/inf
    # point makes every later total fail "> 0", which would pass for "no distinct point left")
    flags = torch.cat([*fresh, torch.isfinite(closest).all().view(1)]).cpu()
    if not flags[-1]:
        raise ValueError("k-means++ seeding: x holds non-finite values (NaN or inf)")
    return x[torch.cat(chosen)[flags[:-1].to(x.device)]]
