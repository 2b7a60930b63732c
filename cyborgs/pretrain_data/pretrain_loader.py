"""The pretraining data loader: unlabeled dicts -> batches of two-view items, bad images skipped.

Position-addressable, so that the batch of iteration ``i`` is a pure function of
``(seed, i, masks)``, whatever ``DATALOADER.NUM_WORKERS`` is and however often the loader was
rebuilt (resume, or a restart after a bootstrap round):

* The sample stream is an infinite sequence of epochs; epoch ``e`` is the permutation
  ``np.random.default_rng([seed, e]).permutation(n)``, so global stream position ``p`` is image
  ``perm(p // n)[p % n]`` -- addressable without replaying the stream (detectron2's
  ``TrainingSampler`` draws its permutations from one running torch generator, so starting at
  position ``p`` would need all previous permutations).
* Global position of sample ``j`` of iteration ``i`` on rank ``r``:
  ``i * IMS_PER_BATCH + r * (IMS_PER_BATCH / world_size) + j``.
* Each sample's augmentation draws from ``np.random.default_rng([seed, position])`` (the mapper
  takes ``rng=``), not from a per-worker stream.
* Workers split the stream by *batch* (worker ``w`` of ``W`` builds local batches
  ``w, w + W, ...``) and the DataLoader returns workers' batches round-robin, i.e. in order;
  detectron2's loader splits by *sample*, which makes batch composition depend on ``W``.

``SkippingMapDataset`` replaces detectron2's ``MapDataset``: v0.6's retry path calls
``random.sample`` on a set, which Python >= 3.11 rejects, and it does not report what it
skipped. Every returned item carries ``"skipped_files"`` (the files that failed for it), so the
trainer can count skips with any number of workers. The replacement image of a failed one is
drawn from ``default_rng([seed, position, 1])``: also a function of the position.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.utils import comm

from cyborgs.data.image_folder import register_image_folder_from_cfg

from .two_view_mapper import TwoViewDatasetMapper

__all__ = [
    "PositionalBatchStream",
    "SkippingMapDataset",
    "build_pretrain_train_loader",
    "epoch_permutation",
    "index_at_position",
    "pretrain_dataset_dicts",
    "pretrain_dataset_size",
]

logger = logging.getLogger(__name__)


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the images in sample-stream epoch ``epoch``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(size))


def index_at_position(seed: int, position: int, size: int) -> int:
    """Dataset index at global stream position ``position`` (no replay needed)."""
    return int(epoch_permutation(seed, position // size, size)[position % size])


def _accepts_rng(mapper: Callable[..., Any]) -> bool:
    """Whether ``mapper(d, rng=...)`` is allowed (user mappers may take the dict only)."""
    try:
        params = inspect.signature(mapper).parameters
    except (TypeError, ValueError):
        return False
    return "rng" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class SkippingMapDataset(torchdata.Dataset):
    """``mapper(dataset[i])``; when it returns None, map random other indices instead.

    Args:
        dataset: indexable of dataset dicts.
        mapper: returns a dict, or None for an item to skip (e.g. an unreadable image). When it
            accepts ``rng=``, :meth:`map_at` passes the position's augmentation generator.
        max_consecutive_failures: give up with a clear error after this many failures in a row
            (a data set that is mostly broken should stop the run, not spin forever).
        seed: base seed of the per-position generators.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Callable[..., dict | None],
        max_consecutive_failures: int = 100,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.max_consecutive_failures = int(max_consecutive_failures)
        self._seed = int(seed)
        self._mapper_takes_rng = _accepts_rng(mapper)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        # Plain map-style access: the index doubles as the position.
        return self.map_at(int(idx), int(idx))

    def map_at(self, position: int, idx: int) -> dict:
        """Map image ``idx`` as global stream position ``position`` (seeds its randomness)."""
        skipped: list[str] = []
        cur = int(idx)
        # One augmentation generator per position: a failed read consumes none of it, so the
        # replacement image is augmented as the original would have been.
        aug_rng = np.random.default_rng([self._seed, int(position)])
        retry_rng: np.random.Generator | None = None
        while True:
            item = self.dataset[cur]
            out = self.mapper(item, rng=aug_rng) if self._mapper_takes_rng else self.mapper(item)
            if out is not None:
                out["skipped_files"] = skipped
                return out
            name = item.get("file_name") if isinstance(item, dict) else None
            skipped.append(str(name or f"index {cur}"))
            if len(skipped) >= self.max_consecutive_failures:
                raise RuntimeError(
                    f"{len(skipped)} images in a row could not be loaded (last: {skipped[-1]}); "
                    "check the pretraining data set (DATASETS.TRAIN)"
                )
            if retry_rng is None:
                retry_rng = np.random.default_rng([self._seed, int(position), 1])
            cur = int(retry_rng.integers(len(self.dataset)))


class PositionalBatchStream(torchdata.IterableDataset):
    """Infinite stream of this rank's local batches, starting at iteration ``start_iter``.

    Yields lists of ``local_batch`` mapped items; local batch ``b`` (counted from the start) is
    iteration ``start_iter + b`` and holds global positions ``(start_iter + b) * global_batch
    + rank * local_batch + j``. With DataLoader workers, worker ``w`` of ``W`` yields batches
    ``b = w, w + W, ...``; the DataLoader's round-robin then returns them in order.
    """

    def __init__(
        self,
        dataset: SkippingMapDataset,
        *,
        seed: int,
        global_batch: int,
        rank: int,
        world_size: int,
        start_iter: int = 0,
    ) -> None:
        if global_batch <= 0 or global_batch % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({global_batch}) must be a positive multiple of the "
                f"number of processes ({world_size})"
            )
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.dataset = dataset
        self.seed = int(seed)
        self.global_batch = int(global_batch)
        self.local_batch = self.global_batch // int(world_size)
        self.rank = int(rank)
        self.start_iter = int(start_iter)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def positions(self, iteration: int) -> list[int]:
        """Global stream positions of this rank's samples at ``iteration``."""
        first = iteration * self.global_batch + self.rank * self.local_batch
        return list(range(first, first + self.local_batch))

    def _index(self, position: int) -> int:
        n = len(self.dataset)
        epoch = position // n
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, epoch_permutation(self.seed, epoch, n))
        return int(self._perm_cache[1][position % n])

    def batch_at(self, iteration: int) -> list[dict]:
        return [self.dataset.map_at(p, self._index(p)) for p in self.positions(iteration)]

    def __iter__(self) -> Iterator[list[dict]]:
        info = torchdata.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        it = self.start_iter + wid
        while True:
            yield self.batch_at(it)
            it += nw


def _as_is(batch: list[dict]) -> list[dict]:
    # Module level (picklable); batches are already lists of item dicts.
    return batch


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


def build_pretrain_train_loader(
    cfg, mapper: Callable[..., dict | None] | None = None, start_iter: int = 0
) -> torchdata.DataLoader:
    """Infinite loader of lists of ``IMS_PER_BATCH / world_size`` two-view items whose first
    batch is iteration ``start_iter`` (global sample ``start_iter * IMS_PER_BATCH``); see the
    module docstring for why batch ``i`` depends only on (seed, i, masks).

    ``cfg.SEED < 0`` draws a seed shared by all ranks (the trainer always passes its data seed).
    """
    dicts = pretrain_dataset_dicts(cfg)
    if mapper is None:
        mapper = TwoViewDatasetMapper(cfg, is_train=True)
    seed = int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())
    dataset = SkippingMapDataset(DatasetFromList(dicts, copy=False), mapper, seed=seed)
    stream = PositionalBatchStream(
        dataset,
        seed=seed,
        global_batch=int(cfg.SOLVER.IMS_PER_BATCH),
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
        start_iter=int(start_iter),
    )
    num_workers = int(cfg.DATALOADER.NUM_WORKERS)
    logger.info(
        f"Pretraining on {len(dataset)} images from {list(cfg.DATASETS.TRAIN)}, from iteration "
        f"{start_iter} ({num_workers} workers)"
    )
    return torchdata.DataLoader(
        stream,
        batch_size=None,  # the stream yields whole batches
        collate_fn=_as_is,
        num_workers=num_workers,
        # Workers' torch seeds come from this generator rather than the global RNG, so building
        # and iterating the loader leaves the training RNG streams untouched.
        generator=torch.Generator().manual_seed(seed),
    )
