"""Mask sources: where the segmentation masks that ground the contrastive loss come from.

Importing this package registers every built-in source in ``MASK_SOURCE_REGISTRY``.
"""

# registration: each module registers its source
from . import bootstrap, felzenszwalb, grid, ground_truth, selective_search, whole  # noqa: F401
from .registry import MASK_SOURCE_REGISTRY, build_mask_source, mask_source_names

__all__ = ["MASK_SOURCE_REGISTRY", "build_mask_source", "mask_source_names"]
