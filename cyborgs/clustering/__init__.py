"""Clustering used by mask bootstrapping (METHOD.md §3) and the vMF loss (METHOD.md §4)."""

from . import backends  # noqa: F401  (registers the "torch" and "faiss" k-means backends)
from .kmeans import (
    KMEANS_BACKEND_REGISTRY,
    get_kmeans_backend,
    kmeans_backend_names,
    spherical_kmeans,
)

__all__ = [
    "KMEANS_BACKEND_REGISTRY",
    "get_kmeans_backend",
    "kmeans_backend_names",
    "spherical_kmeans",
]
