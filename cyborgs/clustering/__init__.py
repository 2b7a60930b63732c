"""Clustering used by mask bootstrapping (SPEC §3) and the vMF loss (SPEC §4)."""

from .kmeans import KMEANS_BACKENDS, register_kmeans_backend, spherical_kmeans

__all__ = ["KMEANS_BACKENDS", "register_kmeans_backend", "spherical_kmeans"]
