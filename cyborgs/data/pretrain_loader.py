"""The pretraining data loader: unlabeled dicts -> batches of two-view items, bad images skipped.

Built from detectron2's pieces (DatasetFromList, TrainingSampler, build_batch_data_loader)
with ``SkippingMapDataset`` in place of ``MapDataset``: detectron2 v0.6's retry path calls
``random.sample`` on a set, which Python >= 3.11 rejects, and it does not report what it
skipped. Here every returned item carries ``"skipped_files"`` (the files that failed, in this
worker, since the previous item), so the trainer can count skips with any number of workers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.data.build import build_batch_data_loader
from detectron2.data.samplers import TrainingSampler

from .image_folder import register_image_folder_from_cfg
from .two_view_mapper import TwoViewDatasetMapper

__all__ = [
    "SkippingMapDataset",
    "build_pretrain_train_loader",
    "pretrain_dataset_dicts",
    "pretrain_dataset_size",
]

logger = logging.getLogger(__name__)


class SkippingMapDataset(torchdata.Dataset):
    """``mapper(dataset[i])``; when it returns None, map random other indices instead.

    Args:
        dataset: indexable of dataset dicts.
        mapper: returns a dict, or None for an item to skip (e.g. an unreadable image).
        max_consecutive_failures: give up with a clear error after this many failures in a row
            (a data set that is mostly broken should stop the run, not spin forever).
    """

    def __init__(self, dataset, mapper, max_consecutive_failures: int = 100, seed: int = 0) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.max_consecutive_failures = int(max_consecutive_failures)
        self._seed = seed
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        skipped: list[str] = []
        cur = int(idx)
        while True:
            item = self.dataset[cur]
            out = self.mapper(item)
            if out is not None:
                out["skipped_files"] = skipped
                return out
            skipped.append(str(item.get("file_name", f"index {cur}")))
            if len(skipped) >= self.max_consecutive_failures:
                raise RuntimeError(
                    f"{len(skipped)} images in a row could not be loaded (last: {skipped[-1]}); "
                    "check the pretraining data set (DATASETS.TRAIN)"
                )
            if self._rng is None:
                self._rng = np.random.default_rng([self._seed, int(idx)])
            cur = int(self._rng.integers(len(self.dataset)))


def pretrain_dataset_dicts(cfg) -> list[dict]:
    """The unlabeled dicts of ``cfg.DATASETS.TRAIN`` (image folder registered when set)."""
    register_image_folder_from_cfg(cfg)
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: name the pretraining set(s)")
    # filter_empty=False: unlabeled dicts have no "annotations" to filter on.
    return get_detection_dataset_dicts(names, filter_empty=False)


def pretrain_dataset_size(cfg) -> int:
    """Number of pretraining images (for the epoch -> iteration conversion)."""
    return len(pretrain_dataset_dicts(cfg))


def build_pretrain_train_loader(cfg, mapper=None):
    """Infinite loader of lists of ``IMS_PER_BATCH / world_size`` two-view items."""
    dicts = pretrain_dataset_dicts(cfg)
    if mapper is None:
        mapper = TwoViewDatasetMapper(cfg, is_train=True)
    seed = int(cfg.SEED) if cfg.SEED >= 0 else None
    dataset = SkippingMapDataset(DatasetFromList(dicts, copy=False), mapper, seed=seed or 0)
    logger.info(f"Pretraining on {len(dataset)} images from {list(cfg.DATASETS.TRAIN)}")
    return build_batch_data_loader(
        dataset,
        TrainingSampler(len(dataset), seed=seed),
        cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
