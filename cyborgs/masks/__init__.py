"""Mask sources: where the segmentation masks that ground the contrastive loss come from."""

from .registry import MASK_SOURCE_REGISTRY, build_mask_source, register_mask_source

__all__ = ["MASK_SOURCE_REGISTRY", "build_mask_source", "register_mask_source"]
