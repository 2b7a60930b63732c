"""The "whole" mask source: one mask covering the image (BYOL-like baseline, Fig. 5a)."""

from __future__ import annotations

import numpy as np

from .registry import MASK_SOURCE_REGISTRY

__all__ = ["WholeImageMask"]


def _check_image(image: np.ndarray, source: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim < 2:
        raise ValueError(
            f"mask source {source!r} expects an image np.ndarray[H, W, 3], got "
            f"{type(image).__name__} with shape {getattr(image, 'shape', None)}"
        )


class WholeImageMask:
    """Every pixel gets id 0, so each view pools one global feature (BYOL as a special case)."""

    @classmethod
    def from_config(cls, cfg, dataset_name: str) -> WholeImageMask:
        return cls()

    def __call__(self, dataset_dict: dict, image: np.ndarray) -> np.ndarray:
        _check_image(image, "whole")
        return np.zeros(image.shape[:2], dtype=np.uint8)


# fvcore's ``register`` keys on ``__name__``; the registry's contract keys on the source name.
MASK_SOURCE_REGISTRY._do_register("whole", WholeImageMask)
