#!/usr/bin/env python
"""Two-view samples/s per data-loader worker: the CPU augmentation path vs the device path.

    .venv/bin/python benchmarks/dataloader.py --out dataloader.json           # both paths
    .venv/bin/python benchmarks/dataloader.py --path device --device cuda --out X.json
    .venv/bin/python benchmarks/dataloader.py --dataset demo_coco_2017_train_unlabeled \
        --mask-source grid --workers 0,1,2

Paths: ``cpu`` = CYBORGS.AUG.DEVICE "off" (every op per image in the worker), ``device`` =
"on" (the worker decodes, crops/resizes image and mask and draws the photometric parameters;
``cyborgs.data.device_augment`` applies the ops batched on ``--device``).

Data: by default ``--distinct-images`` COCO-size JPEGs (``--image-size`` 480x640, quality
``--jpeg-quality`` 90; synthetic scenes upsampled, with sensor-like noise so the files weigh
what COCO's do) are generated into a temp dir, with masks at COCO-size storage: 60x80 uint8
label maps in a bootstrap mask round, read through the real "bootstrap" mask source
(``MaskStore.read`` nearest-upsamples them to the image). ``--dataset`` / ``--config-file``
benchmark a registered set with the config's mask source instead.

Per path:
1. In process with ``--threads`` torch threads (1 = what a loader worker gets): the real
   ``TwoViewDatasetMapper`` over ``--num-images`` samples, ms per two-view sample split into
   ``decode`` (the mapper's reader), ``geometry`` (crop boxes/flips + image crop/resize/flip),
   ``mask`` (mask source + mask crop/resize), ``photometric`` (CPU path: the ops; device path:
   drawing the parameters) and ``other`` (the rest of the call). The two paths alternate
   sample by sample, so a drifting machine load hits both alike.
2. Through ``torch.utils.data.DataLoader`` for each ``--workers`` count (as before).
For the device path also the device time of the batched photometric ops on ``--device``
(``--batch-images`` images per view batch, CUDA-synchronised), and the decode options measured
on the same files (detectron2's reader, PIL as used, torchvision.io.decode_jpeg, PIL draft at
1/2 scale) with the share of samples whose two crops would allow a 1/2-scale draft decode.

JSON goes to stdout (and ``--out``); ``device_vs_cpu`` holds the per-worker ratios measured in
this run, ``targets`` the issue's (>= 200 device-path samples/s per worker, >= 4x the CPU path),
``load_average`` the machine's load before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetFromList
from detectron2.data.build import trivial_batch_collator
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.data import augment as augment_mod
from cyborgs.data import two_view_mapper as mapper_mod
from cyborgs.data.augment import TwoViewAugment, ViewAugment
from cyborgs.data.device_augment import apply_photometric, stack_photometric
from cyborgs.data.image_io import read_image as cyborgs_read_image
from cyborgs.data.pretrain_loader import SkippingMapDataset, pretrain_dataset_dicts
from cyborgs.data.two_view_mapper import TwoViewDatasetMapper
from cyborgs.masks.bootstrap import BootstrapMaskSource
from cyborgs.masks.registry import build_mask_source
from cyborgs.masks.store import MaskStore

PATHS = ("cpu", "device")
MASK_STRIDE = 8  # bootstrap maps are at res3 resolution: 60x80 for a 480x640 image
TARGET_PER_WORKER = 200.0
TARGET_SPEEDUP = 4.0


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

    def __get__(self, obj, objtype=None):
        # Also usable in place of a method on a class: bind the instance like a function.
        return self if obj is None else functools.partial(self, obj)


# ---------------------------------------------------------------------------------- data
def generate_coco_size_data(
    root: str, num: int, height: int, width: int, quality: int, seed: int
) -> tuple[list[dict], str, dict]:
    """``num`` JPEGs of height x width and a bootstrap mask round of (H/8, W/8) label maps.

    Scenes come from the synthetic generator at 1/4 size (fast), upsampled bicubically, plus
    Gaussian noise (sigma 18) that brings a quality-90 file to roughly COCO's ~150 KB.
    Returns (dataset dicts, mask store root, data description).
    """
    from cyborgs.data.synthetic import generate_scene

    img_dir = os.path.join(root, "images")
    store_root = os.path.join(root, "masks")
    os.makedirs(img_dir, exist_ok=True)
    store = MaskStore(store_root)
    store.begin_round(0)
    dicts, sizes = [], []
    mh, mw = max(1, height // MASK_STRIDE), max(1, width // MASK_STRIDE)
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        scene = generate_scene(rng, max(16, height // 4), max(16, width // 4))
        up = Image.fromarray(scene.image).resize((width, height), Image.BICUBIC)
        arr = np.asarray(up).astype(np.float32) + rng.normal(0.0, 18.0, (height, width, 3))
        path = os.path.join(img_dir, f"{i:06d}.jpg")
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
        sizes.append(os.path.getsize(path))
        ids = np.asarray(
            Image.fromarray(scene.instance_map.astype(np.int32)).resize((mw, mh), Image.NEAREST)
        )
        store.write(0, i, (ids % 256).astype(np.uint8))
        dicts.append({"file_name": path, "image_id": i, "height": height, "width": width})
    manifest = store.finish_round(0, {"source": "benchmark"})
    info = {
        "kind": "generated_coco_size",
        "distinct_images": num,
        "image_hw": [height, width],
        "jpeg_quality": quality,
        "mean_file_kb": float(np.mean(sizes)) / 1024,
        "mask_storage": f"{mh}x{mw} uint8 PNG label maps (bootstrap round)",
        "mask_bytes_per_image": manifest["bytes_per_image"],
    }
    return dicts, store_root, info


def build_cfg(args: argparse.Namespace, store_dir: str, device_aug: bool) -> CfgNode:
    cfg = get_cfg()
    add_cyborgs_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    if args.dataset:
        cfg.DATASETS.TRAIN = (args.dataset,)
    if args.crop_size:
        cfg.CYBORGS.AUG.CROP_SIZE = args.crop_size
    if args.mask_source:
        cfg.CYBORGS.MASKS.SOURCE = args.mask_source
    if store_dir:
        cfg.CYBORGS.MASKS.STORE_DIR = store_dir
    cfg.CYBORGS.AUG.DEVICE = "on" if device_aug else "off"
    cfg.SEED = args.seed
    return cfg


def _cycled(dicts: list[dict], n: int) -> list[dict]:
    return [dicts[i % len(dicts)] for i in range(n)]


# ---------------------------------------------------------------------------------- timing
@contextlib.contextmanager
def _stage_timers(mapper: TwoViewDatasetMapper, device_path: bool) -> Iterator[dict]:
    """Wrap the mapper's stages with timers (restored on exit)."""
    timers = {
        "decode": _Timed(mapper_mod.read_image),
        "mask_source": _Timed(mapper.mask_source),
        "mask_resize": _Timed(augment_mod.crop_resize_mask),
        "image_resize": _Timed(augment_mod.crop_resize_image),
        "boxes": _Timed(ViewAugment.geometry),
    }
    photo_name = "draw_photometric" if device_path else "photometric"
    timers["photometric"] = _Timed(getattr(ViewAugment, photo_name))
    saved = (
        mapper_mod.read_image,
        augment_mod.crop_resize_mask,
        augment_mod.crop_resize_image,
        ViewAugment.geometry,
        getattr(ViewAugment, photo_name),
    )
    mapper_mod.read_image, mapper.mask_source = timers["decode"], timers["mask_source"]
    augment_mod.crop_resize_mask = timers["mask_resize"]
    augment_mod.crop_resize_image = timers["image_resize"]
    ViewAugment.geometry = timers["boxes"]
    setattr(ViewAugment, photo_name, timers["photometric"])
    try:
        yield timers
    finally:
        mapper.mask_source = timers["mask_source"].fn
        mapper_mod.read_image = saved[0]
        augment_mod.crop_resize_mask, augment_mod.crop_resize_image = saved[1], saved[2]
        ViewAugment.geometry = saved[3]
        setattr(ViewAugment, photo_name, saved[4])


def measure_in_process(
    mappers: dict[str, TwoViewDatasetMapper], dicts: list[dict], warmup: int, seed: int
) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Mapper calls per path (per-position generators, as in training), with the stage split.

    The paths alternate sample by sample (and which goes first alternates too), so on a
    machine whose load drifts both see the same load and their ratio stays meaningful.
    """
    for i, d in enumerate(dicts[:warmup]):  # lazy imports / allocator growth
        for m in mappers.values():
            m(d, rng=np.random.default_rng([seed, 1, i]))  # not a timed position
    stages = ("decode", "geometry", "mask", "photometric")
    acc = {p: dict.fromkeys((*stages, "total"), 0.0) for p in mappers}
    outputs: dict[str, list[dict]] = {p: [] for p in mappers}
    order = list(mappers)
    for i, d in enumerate(dicts):
        for path in order if i % 2 == 0 else order[::-1]:
            mapper = mappers[path]
            with _stage_timers(mapper, path == "device") as t:
                t0 = time.perf_counter()
                out = mapper(d, rng=np.random.default_rng([seed, i]))
                acc[path]["total"] += time.perf_counter() - t0
            acc[path]["decode"] += t["decode"].seconds
            acc[path]["geometry"] += t["boxes"].seconds + t["image_resize"].seconds
            acc[path]["mask"] += t["mask_source"].seconds + t["mask_resize"].seconds
            acc[path]["photometric"] += t["photometric"].seconds
            if out is not None:
                outputs[path].append(out)
    n = len(dicts)
    results = {}
    for path, a in acc.items():
        if not outputs[path]:
            raise RuntimeError("no image could be mapped (all unreadable?); check the data set")
        split = {k: a[k] for k in stages}
        split["other"] = max(a["total"] - sum(split.values()), 0.0)
        results[path] = {
            "samples": n,
            "mapped": len(outputs[path]),
            "seconds": a["total"],
            "samples_per_s": n / a["total"],
            "ms_per_sample": 1e3 * a["total"] / n,
            "ms_per_sample_split": {k: 1e3 * v / n for k, v in split.items()},
        }
    return results, outputs


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


def measure_device_photometric(
    outputs: list[dict], device: str, batch_images: int, repeats: int
) -> dict:
    """Time ``apply_photometric`` on ``device`` for one batch per view (parameters as drawn)."""
    dev = torch.device(device)
    items = _cycled(outputs, batch_images)
    ms = []
    for v in range(2):
        views = [x["views"][v] for x in items]
        images = torch.stack([d["image"] for d in views]).to(dev)
        params = stack_photometric([d["photometric"] for d in views], dev)

        def once(images=images, params=params) -> None:
            apply_photometric(images, params)

        once()  # warm-up (kernels, allocator)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                once()
            end.record()
            torch.cuda.synchronize(dev)
            ms.append(start.elapsed_time(end) / repeats)
        else:
            t0 = time.perf_counter()
            for _ in range(repeats):
                once()
            ms.append(1e3 * (time.perf_counter() - t0) / repeats)
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_images": batch_images,
        "view_size": int(items[0]["views"][0]["image"].shape[-1]),
        "ms_per_batch": {"view1": ms[0], "view2": ms[1]},
        "ms_per_image": (ms[0] + ms[1]) / (2 * batch_images),
        "ms_per_two_view_sample": (ms[0] + ms[1]) / batch_images,
    }


def measure_decode_options(
    dicts: list[dict], augment: TwoViewAugment, seed: int, repeats: int = 1
) -> dict:
    """ms per image of each decoder on the same files; share of samples allowing a 1/2 draft."""
    from detectron2.data.detection_utils import read_image
    from torchvision.io import decode_jpeg, read_file

    def pil_draft(path: str) -> np.ndarray:
        with Image.open(path) as im:
            im.draft("RGB", (im.width // 2, im.height // 2))
            return np.asarray(im.convert("RGB"))

    options = {
        "detectron2_read_image": lambda p: read_image(p, format="RGB"),
        "cyborgs_read_image": cyborgs_read_image,  # the validating reader the mapper uses
        "torchvision_decode_jpeg": lambda p: decode_jpeg(read_file(p)),
        "pil_draft_half": pil_draft,
    }
    files = [d["file_name"] for d in dicts]
    out: dict = {}
    for name, fn in options.items():
        try:
            fn(files[0])
            t0 = time.perf_counter()
            for _ in range(repeats):
                for f in files:
                    fn(f)
            out[name] = 1e3 * (time.perf_counter() - t0) / (repeats * len(files))
        except Exception as e:  # e.g. not a JPEG: report, do not fail the benchmark
            out[name] = f"failed: {type(e).__name__}: {e}"
    # A 1/2-scale draft keeps >= 1 source pixel per view pixel only if both crops are at least
    # twice the view size on both sides.
    size = augment.views[0].size
    ok = 0
    for i, d in enumerate(dicts):
        rng = np.random.default_rng([seed, i])
        h, w = int(d["height"]), int(d["width"])
        fits = True
        for view in augment.views:
            (x0, y0, x1, y1), _ = view.geometry(h, w, rng)
            view.draw_photometric(rng)
            fits &= min(x1 - x0, y1 - y0) >= 2 * size
        ok += fits
    out["half_draft_applicable_fraction"] = ok / len(dicts)
    return out


@contextlib.contextmanager
def _data(args: argparse.Namespace) -> Iterator[tuple[list[dict] | None, str, dict]]:
    """Generated COCO-size data (default), or (None, store dir, info) for a registered set."""
    if args.dataset or args.config_file:
        if args.store_dir or args.config_file:
            yield None, args.store_dir, {"kind": "registered"}
            return
        # no store given: fixed sources cache their masks in a temp dir, not ./output
        with tempfile.TemporaryDirectory(prefix="cyborgs_bench_masks_") as d:
            yield None, d, {"kind": "registered"}
        return
    with tempfile.TemporaryDirectory(prefix="cyborgs_bench_data_") as d:
        h, w = args.image_size
        dicts, store_root, info = generate_coco_size_data(
            d, args.distinct_images, h, w, args.jpeg_quality, args.seed
        )
        yield dicts, store_root, info


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    paths = PATHS if args.path == "both" else (args.path,)
    out: dict = {"benchmark": "dataloader", "paths": {}}
    notes: list[str] = []
    with _data(args) as (gen_dicts, store, info):
        mappers, cfgs = {}, {}
        for path in paths:
            cfg = build_cfg(args, "" if gen_dicts is not None else store, path == "device")
            if gen_dicts is None:
                dataset_name = cfg.DATASETS.TRAIN[0]
                all_dicts = pretrain_dataset_dicts(cfg)
                t0 = time.perf_counter()
                mask_source = build_mask_source(cfg, dataset_name)
                out["mask_source_build_s"] = time.perf_counter() - t0  # precompute, if fixed
                source_name = cfg.CYBORGS.MASKS.SOURCE
            else:
                dataset_name, all_dicts = "generated", gen_dicts
                mask_source, source_name = BootstrapMaskSource(store), "bootstrap"
            mappers[path] = TwoViewDatasetMapper(
                augment=TwoViewAugment.from_config(cfg), mask_source=mask_source, seed=args.seed
            )
            cfgs[path] = cfg
        if (
            source_name == "bootstrap"
            and getattr(mask_source, "current_round", lambda: 0)() is None
        ):
            notes.append(
                "bootstrap store has no round: masks are all zeros, so mask time is a lower "
                "bound; pass --store-dir <OUTPUT_DIR>/masks of a run with rounds"
            )
        dicts = _cycled(all_dicts, args.num_images)
        in_proc, outputs = measure_in_process(
            mappers, dicts, min(args.warmup, len(dicts)), args.seed
        )
        per_path = {
            p: {
                "aug_device": cfgs[p].CYBORGS.AUG.DEVICE,
                "in_process": in_proc[p],
                "dataloader": [],
            }
            for p in paths
        }
        for w in args.workers:  # each worker count for both paths back to back
            for p in paths:
                r = measure_loader(mappers[p], dicts, w, args.batch_size)
                r["efficiency_vs_in_process"] = r["images_per_s"] / (
                    in_proc[p]["samples_per_s"] * max(w, 1)
                )
                per_path[p]["dataloader"].append(r)
        if "device" in per_path:
            with _threads(args.device_threads):
                per_path["device"]["device_photometric"] = measure_device_photometric(
                    outputs["device"], args.device, args.batch_images, args.repeats
                )
            per_path["device"]["decode_options_ms"] = measure_decode_options(
                _cycled(all_dicts, min(len(all_dicts), args.num_images)),
                mappers["device"].augment,
                args.seed,
            )
        out.update(
            dataset=dataset_name,
            data=info,
            dataset_images=len(all_dicts),
            mask_source=source_name,
            crop_size=int(cfg.CYBORGS.AUG.CROP_SIZE),
            num_images=args.num_images,
            batch_size=args.batch_size,
        )
    out["paths"] = per_path
    if len(per_path) == 2:
        cpu, dev = per_path["cpu"], per_path["device"]
        out["device_vs_cpu"] = {
            "in_process_per_worker": dev["in_process"]["samples_per_s"]
            / cpu["in_process"]["samples_per_s"],
            "dataloader_per_worker": [
                {"workers": a["workers"], "ratio": b["images_per_s"] / a["images_per_s"]}
                for a, b in zip(cpu["dataloader"], dev["dataloader"], strict=True)
            ],
        }
    if "device" in per_path:
        rate = per_path["device"]["in_process"]["samples_per_s"]
        targets = {
            "device_samples_per_s_per_worker": TARGET_PER_WORKER,
            "device_per_worker_measured": rate,
            "device_per_worker_met": rate >= TARGET_PER_WORKER,
        }
        if "device_vs_cpu" in out:
            ratio = out["device_vs_cpu"]["in_process_per_worker"]
            targets.update(speedup_vs_cpu=TARGET_SPEEDUP, speedup_measured=ratio)
            targets["speedup_met"] = ratio >= TARGET_SPEEDUP
        out["targets"] = targets
        if args.target_images_per_s:
            out["target_images_per_s"] = args.target_images_per_s
            out["workers_needed_for_target"] = math.ceil(args.target_images_per_s / rate)
    out.update(
        torch_threads=args.threads,
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        load_average={"before": list(load_before), "after": list(os.getloadavg())},
        notes=notes,
    )
    return out


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--path", choices=("cpu", "device", "both"), default="both")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the batched ops run"
    )
    p.add_argument("--config-file", default="", help="pretraining config (registered data set)")
    p.add_argument("--dataset", default="", help="registered pretraining set (default: generated)")
    p.add_argument("--distinct-images", type=int, default=16, help="generated JPEGs")
    p.add_argument(
        "--image-size",
        type=lambda s: [int(v) for v in s.split("x")],
        default=[480, 640],
        help="generated image HxW (default 480x640, COCO's typical size)",
    )
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--crop-size", type=int, default=0, help="CYBORGS.AUG.CROP_SIZE (0: config)")
    p.add_argument("--mask-source", default="", help="CYBORGS.MASKS.SOURCE (registered set only)")
    p.add_argument("--store-dir", default="", help="CYBORGS.MASKS.STORE_DIR (registered set only)")
    p.add_argument("--num-images", type=int, default=96, help="two-view samples timed per path")
    p.add_argument("--warmup", type=int, default=4, help="untimed in-process calls first")
    p.add_argument(
        "--workers",
        default="1",
        type=lambda s: [int(w) for w in s.split(",") if w.strip()],
        help="comma-separated DataLoader worker counts (default 1)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process mapper")
    p.add_argument(
        "--device-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for the batched ops with --device cpu",
    )
    p.add_argument("--batch-images", type=int, default=64, help="images per batched-op timing")
    p.add_argument("--repeats", type=int, default=5, help="timed batched-op repetitions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--target-images-per-s",
        type=float,
        default=0.0,
        help="training rate to feed: adds the device-path workers needed",
    )
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if min(args.num_images, args.batch_size, args.threads, args.batch_images, args.repeats) < 1:
        p.error("--num-images, --batch-size, --threads, --batch-images, --repeats must be >= 1")
    if args.distinct_images < 1 or len(args.image_size) != 2 or min(args.image_size) < 16:
        p.error("--distinct-images must be >= 1 and --image-size HxW at least 16x16")
    if not args.workers or min(args.workers) < 0:
        p.error("--workers must list counts >= 0, e.g. 0,1,2")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine")
    if (args.mask_source or args.store_dir) and not (args.dataset or args.config_file):
        p.error("--mask-source/--store-dir apply to a registered set (--dataset/--config-file)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        from cyborgs.utils.atomic import atomic_write_bytes

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
