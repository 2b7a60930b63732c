"""Fixed mask sources computed once into the mask-store format, then read like a round.

Heuristic masks (Felzenszwalb, selective search) and the ground-truth oracle never change, so
they are computed a single time per data set and parameter set into
``store_root(cfg, "<source>-<hash of params>", dataset)`` as round 0 and read back (nearest
upsampled) by ``StoredMaskSource``. Computation is sharded over distributed ranks and spread
over ``DATALOADER.NUM_WORKERS`` processes; each writes its own files, rank 0 writes the
manifest after a barrier, so a crash leaves no usable partial cache (the next run recomputes).

Bad images: ``fn`` reads with :func:`cyborgs.data.image_io.read_image` and raises its
``BadImageError``; such an image gets no map, is named in a warning and is counted and listed
in the manifest (``skipped_images``, ``skipped_files``), and the rest is computed. The sources
read with no aspect-ratio limit, so one cache serves any ``CYBORGS.DATA.MAX_ASPECT_RATIO`` (the
training mapper applies the limit before it asks for a mask).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cyborgs.data.image_io import MAX_LISTED_SKIPPED, BadImageError
from cyborgs.utils.progress import Progress

from .cell_grid import CellCentre
from .registry import check_source_image
from .store import MaskStore, check_unique_image_ids, store_root

__all__ = ["StoredMaskSource", "precompute_masks", "cached_mask_source", "params_tag"]

logger = logging.getLogger(__name__)


class StoredMaskSource:
    """Reads a precomputed round (default 0) of ``root``; picklable for loader workers."""

    def __init__(self, root: str, name: str, round_id: int = 0):
        self.store, self.name, self.round_id = MaskStore(root), name, round_id

    def __call__(self, dataset_dict: dict, image: np.ndarray) -> np.ndarray:
        check_source_image(image, self.name)
        return self.store.read(
            dataset_dict["image_id"], out_hw=image.shape[:2], round_id=self.round_id
        )

    def label_map(self, dataset_dict: dict, image_hw: tuple[int, int]) -> np.ndarray:
        """The stored map at its own resolution; nearest-upsampled to ``image_hw`` it is what
        ``__call__`` returns (the two-view mapper crops views from it directly)."""
        return self.store.read(dataset_dict["image_id"], round_id=self.round_id)

    def gridded_label_map(
        self, dataset_dict: dict, image_hw: tuple[int, int]
    ) -> tuple[np.ndarray, CellCentre]:
        """``label_map`` and its round's cell centre (None for fixed sources: nearest)."""
        return self.store.read_placed(dataset_dict["image_id"], round_id=self.round_id)


class _Job(torch.utils.data.Dataset):
    def __init__(self, items, fn, store, round_id):
        self.items, self.fn, self.store, self.round_id = items, fn, store, round_id

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            label_map = self.fn(item)
        except BadImageError as e:
            logger.warning(f"precompute: skipping bad image {e.path}: {e.reason}")
            return {"bytes": 0, "skipped": f"{e.path}: {e.reason}"}
        nbytes = self.store.write(self.round_id, item["image_id"], label_map)
        return {"bytes": nbytes, "skipped": ""}


def _cache_problems(store: MaskStore) -> list[str]:
    """Why the cache (round 0, current) cannot be used as it is; empty: it can."""
    problem = store.pointer_problem()
    if problem:
        return [problem]
    if store.current_round() != 0:
        return ["no complete cache"]
    return store.verify_round(0)


def params_tag(params: dict) -> str:
    """Short stable hash of the parameters, so a changed setting never reads a stale cache."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def precompute_masks(
    fn: Callable[[dict], np.ndarray],
    items: Sequence[dict],
    store: MaskStore,
    *,
    name: str,
    params: dict | None = None,
    num_workers: int = 0,
    world_size: int = 1,
    rank: int = 0,
    synchronize: Callable[[], None] = lambda: None,
    all_gather: Callable[[Any], list] = lambda x: [x],
) -> dict[str, Any]:
    """Write ``fn(item)`` (uint8 label map) for every item (dicts with ``image_id``) into round
    0 of ``store`` and make it current. All ranks call it (``synchronize`` is the barrier,
    ``all_gather`` collects every rank's skipped files for the manifest). Items whose ``fn``
    raises ``BadImageError`` are skipped (see the module docstring)."""
    t0 = time.perf_counter()
    check_unique_image_ids(items)
    if rank == 0:
        # recomputing on purpose: readers see no round meanwhile
        store.begin_round(0, replace_current=True)
    synchronize()
    shard = list(items)[rank::world_size]
    loader = torch.utils.data.DataLoader(
        _Job(shard, fn, store, 0), batch_size=None, num_workers=num_workers
    )
    nbytes, skipped = 0, []
    progress = Progress(len(shard), f"precomputing {name} masks (rank {rank}/{world_size})", logger)
    for r in loader:
        nbytes += int(r["bytes"])
        if r["skipped"]:
            skipped.append(str(r["skipped"]))
        progress.update()
    progress.close(summary=False)  # the summary line below
    if skipped:
        logger.warning(
            f"precomputing {name} masks: {len(skipped)} bad image(s) skipped: "
            + "; ".join(skipped[:20])
            + (" ..." if len(skipped) > 20 else "")
        )
    all_skipped = [f for part in all_gather(skipped) for f in part]
    synchronize()
    manifest = None
    if rank == 0:
        manifest = store.finish_round(
            0,
            {
                "source": name,
                "params": params or {},
                "epoch": -1,
                "iteration": -1,
                "skipped_images": len(all_skipped),
                "skipped_files": all_skipped[:MAX_LISTED_SKIPPED],
            },
        )
    synchronize()
    dt = time.perf_counter() - t0
    logger.info(
        "precomputed %s masks for %d images into %s in %.1fs", name, len(shard), store.root, dt
    )
    return {
        "images": len(shard) - len(skipped),
        "skipped_images": len(skipped),
        "bytes": nbytes,
        "time_s": dt,
        "manifest": manifest,
    }


def cached_mask_source(
    cfg,
    dataset_name: str,
    name: str,
    params: dict,
    fn: Callable[[dict], np.ndarray],
    items: Callable[[], Sequence[dict]],
) -> StoredMaskSource:
    """A reader of the cached masks of source ``name`` for ``dataset_name``, computing them
    first (all ranks together) when no complete cache exists. ``items`` is called only then."""
    from detectron2.utils import comm

    root = store_root(cfg, f"{name}-{params_tag(params)}", dataset_name)
    store = MaskStore(root)
    # Rank 0 decides for all (a damaged cache is recomputed, never half-used).
    problems = _cache_problems(store) if comm.is_main_process() else []
    problems = comm.all_gather(problems)[0]
    if problems:
        if store.rounds():  # a cache existed: say why it is rebuilt
            logger.warning(f"recomputing the {name} mask cache {root}: {problems}")
        precompute_masks(
            fn,
            items(),
            store,
            name=name,
            params=params,
            num_workers=int(cfg.DATALOADER.NUM_WORKERS),
            world_size=comm.get_world_size(),
            rank=comm.get_rank(),
            synchronize=comm.synchronize,
            all_gather=comm.all_gather,
        )
    return StoredMaskSource(root, name)
