"""Transfer protocols (METHOD.md §6): weight conversion, detection / segmentation heads, evaluators,
VOC07 SVMs, ImageNet semi-supervised fine-tuning and the results table.

Importing this package registers ``Res5ROIHeadsExtraNorm`` (ROI_HEADS_REGISTRY), ``FCNHead`` and
``LinearProbeHead`` (SEM_SEG_HEADS_REGISTRY), and the ``build_dilated_resnet_backbone`` /
``build_frozen_block_backbone`` backbones (BACKBONE_REGISTRY).
"""

from cyborgs.transfer import dilated_resnet, roi_heads, sem_seg  # noqa: F401  (registration)
from cyborgs.transfer.config import add_transfer_config

__all__ = ["add_transfer_config"]
