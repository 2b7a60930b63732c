"""The "whole" mask source: one mask covering the image (BYOL-like baseline, Fig. 5a)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .registry import MASK_SOURCE_REGISTRY, check_source_image

__all__ = ["WholeImageMask"]


class WholeImageMask:
    """Every pixel gets id 0, so each view pools one global feature (BYOL as a special case)."""

    @classmethod
    def from_config(cls, cfg, dataset_name: str) -> WholeImageMask:
        return cls()

    def __call__(self, dataset_dict: dict, image: np.ndarray) -> np.ndarray:
        check_source_image(image, "whole")
        return np.zeros(image.shape[:2], dtype=np.uint8)


@MASK_SOURCE_REGISTRY.register()
def whole(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    """``CYBORGS.MASKS.SOURCE: whole``. One mask over the whole image (:class:`WholeImageMask`)."""
    return WholeImageMask.from_config(cfg, dataset_name)
