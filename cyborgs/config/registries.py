"""The registries whose names config values choose from, created here at the ground floor.

The packages that fill them (``cyborgs.masks``, ``cyborgs.clustering``, the vMF loss) register
their entries when imported (``import cyborgs`` imports them all); config validation lists the
registered names without importing those packages.
"""

from __future__ import annotations

from detectron2.utils.registry import Registry

__all__ = [
    "KMEANS_BACKEND_REGISTRY",
    "LOSS_TERM_REGISTRY",
    "MASK_SOURCE_REGISTRY",
    "VMF_DISTANCE_REGISTRY",
]

# CYBORGS.MASKS.SOURCE: factories ``f(cfg, dataset_name) -> MaskSource`` (cyborgs.masks.registry).
MASK_SOURCE_REGISTRY = Registry("MASK_SOURCE")
# CYBORGS.BOOTSTRAP.KMEANS_BACKEND / VMF.KMEANS_BACKEND (besides "auto"; cyborgs.clustering).
KMEANS_BACKEND_REGISTRY = Registry("KMEANS_BACKEND")
# CYBORGS.VMF.DISTANCE (cyborgs.modeling.losses.vmf_clustering).
VMF_DISTANCE_REGISTRY = Registry("VMF_DISTANCE")
# The pretrainer's loss terms (``cyborgs.modeling.loss_terms.LossTerm`` subclasses); validation
# checks each registered term's weight key (``weight_key``), so a new term needs no check of its own.
LOSS_TERM_REGISTRY = Registry("CYBORGS_LOSS_TERM")
LOSS_TERM_REGISTRY.__doc__ = """Loss terms of the pretrainer (``LossTerm`` subclasses)."""
