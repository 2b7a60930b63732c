#!/usr/bin/env python
"""Two-view images/s of the pretraining data path, per data-loader worker (sizes NUM_WORKERS).

    .venv/bin/python benchmarks/dataloader.py --num-images 64 --out dataloader.json
    .venv/bin/python benchmarks/dataloader.py --config-file pretrain_configs/demo_R18.yaml \
        --mask-source felzenszwalb --workers 0,1,2,4 --target-images-per-s 400

1. In-process: the real ``TwoViewDatasetMapper`` (cyborgs/data/two_view_mapper.py) over
   ``--num-images`` dataset dicts with one torch thread (what a loader worker gets), timing its
   mask source and augmentation through wrappers; ``read`` is the rest of the call (image
   decode, checks). This is the rate ONE worker can sustain.
2. Through ``torch.utils.data.DataLoader`` (with ``SkippingMapDataset``, as in training) for
   each ``--workers`` count: overall images/s including worker start-up, the time to the first
   batch, and the steady rate after it.

JSON goes to stdout (and ``--out``). Fixed mask sources (felzenszwalb, selective_search,
ground_truth) are precomputed once per data set on build (``mask_source_build_s``); pass
``--store-dir`` to reuse a run's cache. "bootstrap" without a round yields all-zero masks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetFromList
from detectron2.data.build import trivial_batch_collator

import cyborgs.data.datasets  # noqa: F401  (registers demo_* and real pretraining sets)
from cyborgs.config import add_cyborgs_config
from cyborgs.data.pretrain_loader import SkippingMapDataset, pretrain_dataset_dicts
from cyborgs.data.two_view_mapper import TwoViewDatasetMapper

DEFAULT_DATASET = "demo_coco_2017_train_unlabeled"


class _Timed:
    """Wraps a callable and accumulates its wall time (seconds)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def build_cfg(args: argparse.Namespace, store_dir: str) -> CfgNode:
    cfg = get_cfg()
    add_cyborgs_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if args.dataset or not args.config_file:
        cfg.DATASETS.TRAIN = (args.dataset or DEFAULT_DATASET,)
    if args.crop_size:
        cfg.CYBORGS.AUG.CROP_SIZE = args.crop_size
    if args.mask_source:
        cfg.CYBORGS.MASKS.SOURCE = args.mask_source
    if store_dir:
        cfg.CYBORGS.MASKS.STORE_DIR = store_dir
    cfg.SEED = args.seed
    return cfg


def _cycled(dicts: list[dict], n: int) -> list[dict]:
    # Small data sets (the tiny preset has 24 images) still give n timed samples.
    return [dicts[i % len(dicts)] for i in range(n)]


def measure_in_process(mapper: TwoViewDatasetMapper, dicts: list[dict], warmup: int) -> dict:
    """Sequential mapper calls; per-stage split from wrappers around the mapper's parts."""
    mask_t, aug_t = _Timed(mapper.mask_source), _Timed(mapper.augment)
    mapper.mask_source, mapper.augment = mask_t, aug_t
    for d in dicts[:warmup]:  # first calls pay lazy imports / allocator growth
        mapper(d)
    mask_t.seconds = aug_t.seconds = 0.0
    mapped = 0
    t0 = time.perf_counter()
    for d in dicts:
        mapped += mapper(d) is not None
    total = time.perf_counter() - t0
    if mapped == 0:
        raise RuntimeError("no image could be mapped (all unreadable?); check the data set")
    n = len(dicts)
    read = max(total - mask_t.seconds - aug_t.seconds, 0.0)
    return {
        "images": n,
        "mapped": mapped,
        "seconds": total,
        "images_per_s": n / total,
        "ms_per_image": 1e3 * total / n,
        "ms_per_image_split": {
            "read": 1e3 * read / n,
            "mask_source": 1e3 * mask_t.seconds / n,
            "augment": 1e3 * aug_t.seconds / n,
        },
    }


def measure_loader(
    mapper: TwoViewDatasetMapper, dicts: list[dict], workers: int, batch_size: int
) -> dict:
    """One pass over ``dicts`` through a fresh DataLoader (start-up included, then excluded)."""
    dataset = SkippingMapDataset(DatasetFromList(dicts, copy=False), mapper)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=trivial_batch_collator,
    )
    first = None
    images = 0
    first_batch_images = 0
    for batch in loader:
        images += len(batch)
        if first is None:
            first = time.perf_counter() - t0
            first_batch_images = len(batch)
    total = time.perf_counter() - t0
    rest_images, rest_s = images - first_batch_images, total - first
    # Each worker prefetches 2 batches (torch default), all made while the first one is; the
    # rate after the first batch means something only with more batches than that.
    in_flight = 2 * max(workers, 1)
    enough = math.ceil(images / batch_size) > in_flight + 1
    steady = rest_images / rest_s if enough and rest_s > 0 else None
    ips = images / total
    return {
        "workers": workers,
        "images": images,
        "seconds": total,
        "images_per_s": ips,
        # workers=0 maps in the main process: one "worker" all the same.
        "images_per_s_per_worker": ips / max(workers, 1),
        "first_batch_s": first,
        # None: too few batches (use --num-images > (2 * workers + 1) * batch_size).
        "steady_images_per_s": steady,
    }


@contextlib.contextmanager
def _store_dir(args: argparse.Namespace) -> Iterator[str]:
    """--store-dir, or the config's own store when a config is given, else a temp dir."""
    if args.store_dir or args.config_file:
        yield args.store_dir
        return
    with tempfile.TemporaryDirectory(prefix="cyborgs_bench_masks_") as d:
        yield d


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    with _store_dir(args) as store_dir:
        cfg = build_cfg(args, store_dir)
        dataset_name = cfg.DATASETS.TRAIN[0]
        all_dicts = pretrain_dataset_dicts(cfg)
        t0 = time.perf_counter()
        mapper = TwoViewDatasetMapper(cfg, is_train=True, dataset_name=dataset_name)
        build_s = time.perf_counter() - t0
        dicts = _cycled(all_dicts, args.num_images)

        in_proc = measure_in_process(
            TwoViewDatasetMapper(cfg, is_train=True, dataset_name=dataset_name),
            dicts,
            warmup=min(args.warmup, len(dicts)),
        )
        loaders = [measure_loader(mapper, dicts, w, args.batch_size) for w in args.workers]

    single = in_proc["images_per_s"]
    for r in loaders:
        # 1.0 = each worker as fast as the in-process mapper; lower = start-up / IPC / contention.
        r["efficiency_vs_in_process"] = r["images_per_s"] / (single * max(r["workers"], 1))
    notes = []
    source = cfg.CYBORGS.MASKS.SOURCE
    if source == "bootstrap" and getattr(mapper.mask_source, "current_round", lambda: 0)() is None:
        notes.append(
            "bootstrap store has no round: masks are all zeros, so mask_source time is a lower "
            "bound; pass --store-dir <OUTPUT_DIR>/masks of a run with rounds for the real cost"
        )
    out = {
        "benchmark": "dataloader",
        "dataset": dataset_name,
        "dataset_images": len(all_dicts),
        "mask_source": source,
        "mask_source_build_s": build_s,
        "crop_size": int(cfg.CYBORGS.AUG.CROP_SIZE),
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "in_process": in_proc,
        "dataloader": loaders,
        "notes": notes,
    }
    if args.target_images_per_s:
        # Workers needed if each keeps the measured in-process rate (an optimistic bound; check
        # efficiency_vs_in_process at that worker count).
        out["target_images_per_s"] = args.target_images_per_s
        out["workers_needed_for_target"] = math.ceil(args.target_images_per_s / single)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", default="", help="pretraining config (else defaults)")
    p.add_argument(
        "--dataset", default="", help=f"registered pretraining set (default {DEFAULT_DATASET})"
    )
    p.add_argument("--crop-size", type=int, default=0, help="CYBORGS.AUG.CROP_SIZE (0: config)")
    p.add_argument("--mask-source", default="", help="CYBORGS.MASKS.SOURCE (empty: config)")
    p.add_argument("--store-dir", default="", help="CYBORGS.MASKS.STORE_DIR to read/cache masks")
    p.add_argument("--num-images", type=int, default=64, help="images timed per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed in-process calls first")
    p.add_argument(
        "--workers",
        default="0,1,2",
        type=lambda s: [int(w) for w in s.split(",") if w.strip()],
        help="comma-separated DataLoader worker counts (default 0,1,2)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target-images-per-s",
        type=float,
        default=0.0,
        help="training rate to feed (e.g. from benchmarks/pretrain_step.py): adds the workers needed",
    )
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.num_images < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--num-images, --batch-size and --threads must be >= 1")
    if not args.workers or min(args.workers) < 0:
        p.error("--workers must list counts >= 0, e.g. 0,1,2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
