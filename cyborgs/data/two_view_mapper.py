"""Dataset dict -> two augmented views with their masks, crop boxes and flips (DESIGN.md).

An unreadable or corrupt image is logged (naming the file) and the mapper returns ``None``;
``pretrain_loader.SkippingMapDataset`` then maps another image and records the skipped file
in the returned item's ``"skipped_files"`` so the trainer can count skips across workers.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..masks.registry import build_mask_source
from .augment import TwoViewAugment

__all__ = ["TwoViewDatasetMapper", "IMAGE_READ_ERRORS", "read_rgb_fast"]

logger = logging.getLogger(__name__)

# What PIL / detectron2's reader raise on missing, truncated or corrupt files.
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_rgb_fast(file_name: str) -> np.ndarray:
    """The image as uint8 [H, W, 3] RGB: the same pixels as detectron2's
    ``read_image(file_name, format="RGB")`` (EXIF orientation applied), one copy fewer.

    detectron2 always calls ``convert("RGB")``, which copies an image that is RGB already;
    here the decoded buffer is used as is (a read-only array). PIL decodes JPEGs with
    libjpeg-turbo; ``benchmarks/dataloader.py`` compares it with torchvision.io.decode_jpeg and
    PIL's draft (DCT-scaled) mode. Used by the device-augmentation path, where decoding is
    most of a worker's time. Raises what :data:`IMAGE_READ_ERRORS` lists on bad files.
    """
    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        image = utils._apply_exif_orientation(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        else:
            image.load()
        return np.asarray(image)


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
    def __init__(self, *, augment: TwoViewAugment, mask_source, seed: int | None = None) -> None:
        """
        Args:
            augment: the two-view BYOL augmentation.
            mask_source: ``source(dataset_dict, image) -> np.ndarray[H, W] uint8`` (the
                MASK_SOURCE_REGISTRY contract).
            seed: base seed of the augmentation RNG.
        """
        self.augment = augment
        self.mask_source = mask_source
        self.seed = seed
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

    def read_image(self, file_name: str) -> np.ndarray:
        """Decode ``file_name`` to uint8 [H, W, 3] RGB: :func:`read_rgb_fast` on the
        device-augmentation path (decoding is most of a worker's time there), detectron2's
        reader otherwise. Same pixels either way."""
        if self.augment.photometric_on_device:
            return read_rgb_fast(file_name)
        return utils.read_image(file_name, format="RGB")

    def __call__(self, dataset_dict: dict, rng: np.random.Generator | None = None) -> dict | None:
        file_name = dataset_dict.get("file_name")
        if file_name is None:
            raise KeyError(
                f"pretraining dataset dict needs 'file_name' (DESIGN.md), got keys {sorted(dataset_dict)}"
            )
        try:
            image = self.read_image(file_name)
        except IMAGE_READ_ERRORS as e:
            logger.warning(f"Skipping unreadable image {file_name}: {type(e).__name__}: {e}")
            return None
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            logger.warning(f"Skipping image {file_name} with unusable shape {image.shape}")
            return None
        mask = self.mask_source(dataset_dict, image)
        if not isinstance(mask, np.ndarray) or mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask source {type(self.mask_source).__name__} returned "
                f"{getattr(mask, 'shape', type(mask))} for {file_name}; expected an np.ndarray "
                f"of the image's shape {image.shape[:2]}"
            )
        views = self.augment(image, mask, rng if rng is not None else self.rng())
        return {
            "file_name": file_name,
            "image_id": dataset_dict.get("image_id"),
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "views": views,
        }
