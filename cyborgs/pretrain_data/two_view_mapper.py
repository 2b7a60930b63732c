"""Dataset dict -> two augmented views with their masks, crop boxes and flips (DESIGN.md).

Images are read with :func:`cyborgs.data.image_io.read_image_tensor` (``read_image``'s checks
and pixels, libjpeg-turbo straight into a tensor for plain JPEGs). One it refuses (unreadable,
truncated, zero-size, aspect ratio above ``CYBORGS.DATA.MAX_ASPECT_RATIO``, ...), or one whose
stored mask is missing or corrupt (``MaskFileError``), is logged (naming the file and the
reason) and the mapper returns ``None``;
``pretrain_loader.SkippingMapDataset`` then maps another image and records the skipped file
in the returned item's ``"skipped_files"`` so the trainer can count skips across workers.

Masks: a source that stores its maps at a lower resolution may offer
``source.gridded_label_map(dataset_dict, (H, W)) -> (np.ndarray[h, w] uint8, cell centre)``
or ``source.label_map(dataset_dict, (H, W))`` (cell centre None), the stored map whose
placement on (H, W) (``cyborgs.masks.cell_grid.upsample_label_map``) is what
``source(dataset_dict, image)`` returns; the mapper then samples each view's mask from it
directly (``augment.crop_resize_label_map``: the same view masks without building the
full-resolution map). Other sources are called as ``source(dataset_dict, image)``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.utils import comm

from cyborgs.data.image_io import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_IMAGE_PIXELS,
    BadImageError,
    display_path,
    read_image_tensor,
)

from ..masks.registry import build_mask_source
from ..masks.store import MaskFileError
from .augment import TwoViewAugment

__all__ = ["TwoViewDatasetMapper"]

logger = logging.getLogger(__name__)


class TwoViewDatasetMapper:
    """Map ``{"file_name", "image_id", ...}`` to ``{"image_id", "height", "width", "views"}``.

    Randomness: the pretraining loader passes ``rng=`` per sample
    (``default_rng([SEED, stream position])``, see ``pretrain_loader``), which makes a batch
    independent of the number of workers and of loader restarts. Called without ``rng``, the
    mapper uses its own generator per process and data-loader worker, seeded from ``seed``
    (cfg.SEED), the worker id and the rank, created lazily in the worker (after the fork) so
    workers never share a stream; ``seed=None`` draws fresh entropy.
    """

    @configurable
    def __init__(
        self,
        *,
        augment: TwoViewAugment,
        mask_source,
        seed: int | None = None,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        """
        Args:
            augment: the two-view BYOL augmentation.
            mask_source: ``source(dataset_dict, image) -> np.ndarray[H, W] uint8`` (the
                MASK_SOURCE_REGISTRY contract), optionally with ``label_map`` (module
                docstring).
            seed: base seed of the augmentation RNG.
            max_aspect_ratio: images beyond it are skipped (``CYBORGS.DATA.MAX_ASPECT_RATIO``).
            max_pixels: images above it are skipped undecoded (``CYBORGS.DATA.MAX_IMAGE_PIXELS``).
        """
        self.augment = augment
        self.mask_source = mask_source
        self.seed = seed
        self.max_aspect_ratio = float(max_aspect_ratio)
        self.max_pixels = int(max_pixels)
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: str | None = None) -> dict:
        if not is_train:
            raise ValueError("TwoViewDatasetMapper is for pretraining only (is_train=True)")
        if dataset_name is None:
            names = list(cfg.DATASETS.TRAIN)
            if len(names) != 1:
                # Mask stores and image ids are per data set; one source cannot serve several.
                raise ValueError(
                    f"DATASETS.TRAIN must name exactly one pretraining set for the two-view "
                    f"mapper (mask stores are per data set), got {names}"
                )
            dataset_name = names[0]
        return {
            "augment": TwoViewAugment.from_config(cfg),
            "mask_source": build_mask_source(cfg, dataset_name),
            "seed": int(cfg.SEED) if cfg.SEED >= 0 else None,
            "max_aspect_ratio": float(cfg.CYBORGS.DATA.MAX_ASPECT_RATIO),
            "max_pixels": int(cfg.CYBORGS.DATA.MAX_IMAGE_PIXELS),
        }

    def rng(self) -> np.random.Generator:
        """This process/worker's generator (re-created after a fork)."""
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), info.id if info is not None else -1)
        if self._rng is None or self._rng_owner != owner:
            if self.seed is None:
                self._rng = np.random.default_rng()
            else:
                self._rng = np.random.default_rng([self.seed, owner[1] + 1, comm.get_rank()])
            self._rng_owner = owner
        return self._rng

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict | None:
        file_name = dataset_dict.get("file_name")
        if file_name is None:
            raise KeyError(
                f"pretraining dataset dict needs 'file_name' (DESIGN.md), got keys {sorted(dataset_dict)}"
            )
        try:
            image = read_image_tensor(
                file_name, max_aspect_ratio=self.max_aspect_ratio, max_pixels=self.max_pixels
            )
        except BadImageError as e:
            logger.warning(f"Skipping bad image {display_path(e.path)}: {e.reason}")
            return None
        hw = tuple(int(v) for v in image.shape[-2:])
        gridded = getattr(self.mask_source, "gridded_label_map", None)
        label_map = getattr(self.mask_source, "label_map", None)
        cell_centre = None
        try:
            if gridded is not None:
                mask, cell_centre = gridded(dataset_dict, hw)
            elif label_map is not None:
                mask = label_map(dataset_dict, hw)
            else:  # [3, H, W] over HWC memory: the [H, W, 3] array without a copy
                mask = self.mask_source(dataset_dict, image.permute(1, 2, 0).numpy())
        except MaskFileError as e:
            # A stored map deleted or damaged mid-run: skipped and counted like a bad image
            # until the next round rewrites it (on resume BootstrapHook verifies the round).
            logger.warning(f"Skipping image {file_name}: its mask is unavailable: {e}")
            return None
        low_res = gridded is not None or label_map is not None
        if low_res:
            ok = isinstance(mask, np.ndarray) and mask.ndim == 2 and min(mask.shape) >= 1
            expected = "a non-empty 2-D np.ndarray (a label map of the image)"
        else:
            ok = isinstance(mask, np.ndarray) and mask.shape == hw
            expected = f"an np.ndarray of the image's shape {hw}"
        if not ok:
            raise ValueError(
                f"mask source {type(self.mask_source).__name__} returned "
                f"{getattr(mask, 'shape', type(mask))} for {file_name}; expected {expected}"
            )
        views = self.augment(
            image,
            mask,
            rng if rng is not None else self.rng(),
            low_res_mask=low_res,
            cell_centre=cell_centre,
        )
        return {
            "file_name": file_name,
            "image_id": dataset_dict.get("image_id"),
            "height": hw[0],
            "width": hw[1],
            "views": views,
        }
