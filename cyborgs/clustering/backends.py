"""The built-in k-means backends, registered under their config values "torch" and "faiss".

Each is a function named like its config value (``KMEANS_BACKEND_REGISTRY`` registers by name),
so this module binds neither the ``torch`` nor the ``faiss`` package to a name of its own:
it imports what it needs from torch by name and FAISS only when the "faiss" backend runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, cuda, from_numpy
from torch import device as Device

from .kmeans import KMEANS_BACKEND_REGISTRY, _faiss, _faiss_has_gpu

__all__: list[str] = []  # use them through KMEANS_BACKEND_REGISTRY / spherical_kmeans


@KMEANS_BACKEND_REGISTRY.register()
def torch(x: Tensor, init: Tensor, iters: int) -> Tensor:
    """Lloyd iterations in torch on x's device; an empty cluster is re-seeded from the points
    farthest from their own centroid. On the CPU it stops early once the labels repeat; on a
    GPU it runs all ``iters`` without a host sync (:func:`lloyd_without_sync`: the vMF loss
    clusters every step), which gives the same centroids, since an update after the labels
    repeat reproduces them."""
    if x.is_cuda:
        return lloyd_without_sync(x, init, iters)
    centroids, k = init, init.shape[0]
    labels = None
    for _ in range(iters):
        sims = x @ centroids.T
        best_sim, new_labels = sims.max(dim=1)
        sums = centroids.new_zeros(centroids.shape).index_add_(0, new_labels, x)
        counts = new_labels.bincount(minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel() > 0:
            # Re-seed empty clusters from the points farthest from their own centroid.
            far = best_sim.argsort()[: empty.numel()]
            sums[empty] = x[far]
        centroids = F.normalize(sums, dim=1)
        if empty.numel() == 0 and labels is not None and labels.equal(new_labels):
            break  # converged: the update above reproduced the same centroids
        labels = new_labels
    return centroids


def lloyd_without_sync(x: Tensor, init: Tensor, iters: int) -> Tensor:
    """The "torch" backend's Lloyd iterations, all ``iters`` of them, with no value read back
    to the host: counts by ``index_add_`` (CUDA ``bincount`` reads its maximum), and the i-th
    empty cluster (by index) re-seeded from the i-th farthest point, as the loop does, through
    a mask instead of a ``nonzero``."""
    centroids, k = init, init.shape[0]
    ones = x.new_ones(x.shape[0])
    for _ in range(iters):
        best_sim, labels = (x @ centroids.T).max(dim=1)
        sums = centroids.new_zeros(centroids.shape).index_add_(0, labels, x)
        empty = centroids.new_zeros(k).index_add_(0, labels, ones) == 0
        rank = (empty.cumsum(0) - 1).clamp(min=0)  # of each empty cluster among the empty ones
        far = best_sim.argsort()[rank]  # k <= N points: always in range
        sums = x[far].where(empty[:, None], sums)
        centroids = F.normalize(sums, dim=1)
    return centroids


_GPU_RESOURCES: dict[int, object] = {}


@KMEANS_BACKEND_REGISTRY.register()
def faiss(x: Tensor, init: Tensor, iters: int) -> Tensor:
    """FAISS spherical k-means from our k-means++ seeds, on a GPU index when CUDA is present and
    FAISS has GPU support (METHOD.md §3), else on the CPU."""
    lib = _faiss()
    if lib is None:
        raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
    N, D = x.shape
    k = init.shape[0]
    data = x.cpu().numpy()
    clus = lib.Clustering(D, k)
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
    lib.copy_array_to_vector(init.cpu().numpy().reshape(-1), clus.centroids)
    index = _faiss_index(lib, D, x.device)
    clus.train(data, index)
    centroids = lib.vector_to_array(clus.centroids).reshape(k, D)
    return from_numpy(centroids).to(x.device)


def _faiss_index(lib, dim: int, device: Device):
    """Inner-product index, on a GPU when CUDA is present and FAISS has GPU support (METHOD.md §3).

    The GPU is x's own when x is on CUDA, else the current device: one rank, one GPU, rather
    than faiss.Kmeans(gpu=True), which would spread over every GPU of the machine.
    """
    use_gpu = cuda.is_available() and _faiss_has_gpu(lib)
    if not use_gpu:
        return lib.IndexFlatIP(dim)
    dev = device.index if device.type == "cuda" and device.index is not None else None
    dev = cuda.current_device() if dev is None else dev
    if dev not in _GPU_RESOURCES:  # creating resources is slow: one per device per process
        _GPU_RESOURCES[dev] = lib.StandardGpuResources()
    cfg = lib.GpuIndexFlatConfig()
    cfg.device = dev
    return lib.GpuIndexFlatIP(_GPU_RESOURCES[dev], dim, cfg)
