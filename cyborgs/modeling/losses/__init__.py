"""Losses of the CYBORGS pretrainer: mask contrastive (METHOD.md §2) and vMF clustering (§4)."""

from .mask_contrastive import MaskContrastiveLoss
from .vmf_clustering import VMFClusteringLoss, squared_distance, vmf_nll

__all__ = ["MaskContrastiveLoss", "VMFClusteringLoss", "squared_distance", "vmf_nll"]
