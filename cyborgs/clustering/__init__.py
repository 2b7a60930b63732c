"""Clustering used by mask bootstrapping (SPEC §3) and the vMF loss (SPEC §4)."""

from . import backends  # noqa: F401  (registers the "torch" and "faiss" k-means backends)
from .kmeans import (
    KMEANS_BACKEND_REGISTRY,
    get_kmeans_backend,
    kmeans_backend_names,
    spherical_kmeans,
)

# Names of the built-in backends, for config validation that iterates them (it predates the
# registry); kmeans_backend_names() also lists backends registered later.
KMEANS_BACKENDS: tuple[str, ...] = tuple(kmeans_backend_names())

__all__ = [
    "KMEANS_BACKEND_REGISTRY",
    "KMEANS_BACKENDS",
    "get_kmeans_backend",
    "kmeans_backend_names",
    "spherical_kmeans",
]
