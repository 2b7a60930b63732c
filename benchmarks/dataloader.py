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
label maps in a bootstrap mask round, read through the real "bootstrap" mask source (the
mapper takes its stored map, ``label_map``, and samples each view's mask from it).
``--dataset`` / ``--config-file`` benchmark a registered set with the config's mask source.

Per path:
1. In process with ``--threads`` torch threads (1 = what a loader worker gets): the real
   ``TwoViewDatasetMapper`` over ``--num-images`` samples, ms per two-view sample split into
   ``decode`` (the mapper's reader), ``geometry`` (crop boxes/flips + image crop/resize/flip),
   ``mask`` (mask source + mask crop/resize), ``photometric`` (CPU path: the ops; device path:
   drawing the parameters) and ``other`` (the rest of the call), in wall time
   (``ms_per_sample_split``) and in this thread's CPU time (``cpu_ms_per_sample_split``,
   ``cpu_samples_per_s``: what one worker costs whatever else loads the machine). The paths
   take turns ``--interleave-chunk`` samples at a time, so a drifting machine load hits all
   alike while each runs back to back as in a worker. Unless
   ``--no-before``, the device path as it was before the loader speed-up runs in the same
   rotation (``device_before``: ``legacy_device_map``; ``views_identical_to_device`` checks
   that the new path hands out the same views).
2. Through ``torch.utils.data.DataLoader`` for each ``--workers`` count, with the workers'
   CPU seconds read from /proc (``cpu_images_per_s_per_worker``; start-up included), the
   device path as before too (``device_before.dataloader``).
For the device path also the device time of the batched photometric ops on ``--device``
(``--batch-images`` images per view batch, CUDA-synchronised), the decode options measured on
the same files in CPU ms (detectron2's reader, the validating PIL reader, the mapper's
``read_image_tensor``, torchvision.io.decode_jpeg, PIL's decode alone, PIL draft at 1/2 and
1/4 scale) with the share of samples whose two crops would allow a 1/2- or 1/4-scale draft
decode (rule: every crop side >= factor x the view size, so the reduced image still covers the
view and the resize only downsamples), and the crop+resize options per view (torch uint8 /
float kernels, PIL crop+resize, PIL ``resize(box=...)`` with and without ``reducing_gap``).

JSON goes to stdout (and ``--out``); ``device_vs_cpu`` holds the per-worker ratios measured in
this run, ``targets`` the issue's (>= 200 device-path samples/s per worker, >= 4x the CPU path),
``load_average`` the machine's load before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList
from detectron2.data.build import trivial_batch_collator
from PIL import Image

from cyborgs.data.device_augment import apply_photometric, stack_photometric
from cyborgs.data.image_io import read_image as cyborgs_read_image
from cyborgs.data.image_io import read_image_tensor
from cyborgs.engine.setup import setup_pretrain_cfg
from cyborgs.masks.bootstrap import BootstrapMaskSource
from cyborgs.masks.registry import build_mask_source
from cyborgs.masks.store import MaskStore
from cyborgs.pretrain_data import augment as augment_mod
from cyborgs.pretrain_data import two_view_mapper as mapper_mod
from cyborgs.pretrain_data.augment import TwoViewAugment, ViewAugment
from cyborgs.pretrain_data.pretrain_loader import SkippingMapDataset, pretrain_dataset_dicts
from cyborgs.pretrain_data.two_view_mapper import TwoViewDatasetMapper

PATHS = ("cpu", "device")
MASK_STRIDE = 8  # bootstrap maps are at res3 resolution: 60x80 for a 480x640 image
TARGET_PER_WORKER = 200.0
TARGET_SPEEDUP = 4.0


class _Timed:
    """Wraps a callable and accumulates its wall time and this thread's CPU time (seconds)."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds, self.cpu_seconds = fn, 0.0, 0.0

    def __call__(self, *args, **kwargs):
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.cpu_seconds += time.thread_time() - c0

    def __get__(self, obj, objtype=None):
        # Also usable in place of a method on a class: bind the instance like a function.
        return self if obj is None else functools.partial(self, obj)


class _TimedSource:
    """A mask source with its calls timed; offers ``label_map`` only if the source does (the
    mapper looks for it)."""

    def __init__(self, source) -> None:
        self.source = source
        self.call = _Timed(source)
        if hasattr(source, "label_map"):
            self.label_map = _Timed(source.label_map)

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    def timers(self) -> list[_Timed]:
        return [self.call, *([self.label_map] if hasattr(self, "label_map") else [])]


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


def loader_cfg(args: argparse.Namespace, store_dir: str, device_aug: bool) -> CfgNode:
    """The run's config through the suite's one setup (no schedule: nothing trains here)."""
    opts = list(args.opts or [])
    if args.dataset:
        opts += ["DATASETS.TRAIN", (args.dataset,)]
    if args.crop_size:
        opts += ["CYBORGS.AUG.CROP_SIZE", args.crop_size]
    if args.mask_source:
        opts += ["CYBORGS.MASKS.SOURCE", args.mask_source]
    if store_dir:
        opts += ["CYBORGS.MASKS.STORE_DIR", store_dir]
    opts += ["CYBORGS.AUG.DEVICE", "on" if device_aug else "off", "SEED", args.seed]
    cfg, _ = setup_pretrain_cfg(args.config_file or "", opts, world_size=1, schedule=False)
    return cfg


def _cycled(dicts: list[dict], n: int) -> list[dict]:
    return [dicts[i % len(dicts)] for i in range(n)]


# ---------------------------------------------------------------------------------- timing
@contextlib.contextmanager
def _stage_timers(mapper: TwoViewDatasetMapper, device_path: bool) -> Iterator[dict]:
    """Wrap the mapper's stages with timers (restored on exit)."""
    source = _TimedSource(mapper.mask_source)
    timers = {
        "decode": _Timed(mapper_mod.read_image_tensor),
        "mask_source": source.timers(),
        "mask_resize": _Timed(augment_mod.crop_resize_label_map),
        "image_resize": _Timed(augment_mod.crop_resize_image),
        "boxes": _Timed(ViewAugment.geometry),
    }
    photo_name = "draw_photometric" if device_path else "photometric"
    timers["photometric"] = _Timed(getattr(ViewAugment, photo_name))
    saved = (
        mapper_mod.read_image_tensor,
        augment_mod.crop_resize_label_map,
        augment_mod.crop_resize_image,
        ViewAugment.geometry,
        getattr(ViewAugment, photo_name),
        mapper.mask_source,
    )
    mapper_mod.read_image_tensor, mapper.mask_source = timers["decode"], source
    augment_mod.crop_resize_label_map = timers["mask_resize"]
    augment_mod.crop_resize_image = timers["image_resize"]
    ViewAugment.geometry = timers["boxes"]
    setattr(ViewAugment, photo_name, timers["photometric"])
    try:
        yield timers
    finally:
        mapper_mod.read_image_tensor = saved[0]
        augment_mod.crop_resize_label_map, augment_mod.crop_resize_image = saved[1], saved[2]
        ViewAugment.geometry = saved[3]
        setattr(ViewAugment, photo_name, saved[4])
        mapper.mask_source = saved[5]


STAGES = ("decode", "geometry", "mask", "photometric")


def _stage_seconds(t: dict, attr: str) -> dict[str, float]:
    """Seconds per stage (wall: ``attr="seconds"``, CPU: ``"cpu_seconds"``) of one call."""
    return {
        "decode": getattr(t["decode"], attr),
        "geometry": getattr(t["boxes"], attr) + getattr(t["image_resize"], attr),
        "mask": sum(getattr(x, attr) for x in t["mask_source"]) + getattr(t["mask_resize"], attr),
        "photometric": getattr(t["photometric"], attr),
    }


def _map_timed(mapper: TwoViewDatasetMapper, path: str, d: dict, rng) -> tuple:
    """One mapper call of ``path`` -> (output, wall stage seconds, CPU stage seconds, wall, CPU)."""
    with _stage_timers(mapper, path == "device") as t:
        c0, t0 = time.thread_time(), time.perf_counter()
        out = mapper(d, rng=rng)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return out, _stage_seconds(t, "seconds"), _stage_seconds(t, "cpu_seconds"), wall, cpu


def legacy_device_map(mapper: TwoViewDatasetMapper, d: dict, rng: np.random.Generator) -> tuple:
    """The device path as it was before the loader speed-up (commit 13ed754), step by step, for
    a before/after comparison in one run: PIL ``read_image`` (full decode, copies), the mask
    source's full-resolution map (stored map nearest-upsampled to the image) cropped with
    ``crop_resize_mask``, ``flip(-1)`` and ``.contiguous()`` on the channels_last view.
    Same draws from ``rng`` as the mapper. Returns what ``_map_timed`` returns."""
    wall = dict.fromkeys(STAGES, 0.0)
    cpu = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        c0, t0 = time.thread_time(), time.perf_counter()
        yield
        wall[name] += time.perf_counter() - t0
        cpu[name] += time.thread_time() - c0

    c_start, t_start = time.thread_time(), time.perf_counter()
    with stage("decode"):
        image = cyborgs_read_image(d["file_name"], max_aspect_ratio=mapper.max_aspect_ratio)
    with stage("mask"):
        mask = mapper.mask_source(d, image)
        mask_t = torch.as_tensor(np.asarray(mask))
    img_t = torch.from_numpy(image).permute(2, 0, 1)
    H, W = image.shape[:2]
    views = []
    for view in mapper.augment.views:
        size = int(view.size)
        with stage("geometry"):
            box, flip = view.geometry(H, W, rng)
            x0, y0, x1, y1 = box
            img = F.interpolate(
                img_t[:, y0:y1, x0:x1].unsqueeze(0),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
            img = (img.flip(-1) if flip else img).contiguous()
        with stage("mask"):
            m = augment_mod.crop_resize_mask(mask_t, box, flip, size).contiguous()
        with stage("photometric"):
            params = view.draw_photometric(rng)
        views.append(
            {
                "box": torch.tensor(box, dtype=torch.float32),
                "flip": flip,
                "photometric": params,
                "image": img,
                "mask": m,
            }
        )
    total_wall, total_cpu = time.perf_counter() - t_start, time.thread_time() - c_start
    out = {"file_name": d["file_name"], "image_id": d.get("image_id"), "views": views}
    return out, wall, cpu, total_wall, total_cpu


class LegacyDeviceMapper:
    """:func:`legacy_device_map` as a mapper (``mapper(d, rng=...)``), for the DataLoader."""

    def __init__(self, mapper: TwoViewDatasetMapper) -> None:
        self.mapper = mapper

    def __call__(self, d: dict, rng: np.random.Generator | None = None) -> dict:
        return legacy_device_map(self.mapper, d, rng)[0]


def _same_views(a: dict, b: dict) -> bool:
    """Two mapper outputs hold the same views (boxes, flips, images, masks, parameters)."""
    for u, v in zip(a["views"], b["views"], strict=True):
        if u["flip"] != v["flip"] or u.get("photometric") != v.get("photometric"):
            return False
        for k in ("box", "image", "mask"):
            if not torch.equal(torch.as_tensor(u[k]), torch.as_tensor(v[k])):
                return False
    return True


def measure_in_process(
    mappers: dict[str, TwoViewDatasetMapper],
    dicts: list[dict],
    warmup: int,
    seed: int,
    chunk: int = 16,
) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Mapper calls per path (per-position generators, as in training), with the stage split.

    The paths take turns ``chunk`` samples at a time (and which goes first rotates), so on a
    machine whose load drifts all see the same load and their ratios stay meaningful, while
    each path still runs back to back as in a loader worker instead of a ~70 ms CPU-path
    sample flushing the caches between every two ~4.5 ms device-path ones (chunk 1; two idle
    runs gave 4.65 ms with chunk 1 and 4.27 with 16, a gap within their run-to-run noise).
    Wall time and this thread's CPU time are both recorded (CPU time is what a worker costs
    whatever the machine's load). Path ``device_before`` (``--before``) is
    :func:`legacy_device_map`.
    """

    def call(path: str, d: dict, rng) -> tuple:
        if path == "device_before":
            return legacy_device_map(mappers[path], d, rng)
        return _map_timed(mappers[path], path, d, rng)

    for i, d in enumerate(dicts[:warmup]):  # lazy imports / allocator growth
        for p in mappers:
            call(p, d, np.random.default_rng([seed, 1, i]))  # not a timed position
    acc = {p: dict.fromkeys((*STAGES, "total"), 0.0) for p in mappers}
    cpu_acc = {p: dict.fromkeys((*STAGES, "total"), 0.0) for p in mappers}
    outputs: dict[str, list[dict]] = {p: [] for p in mappers}
    per_sample_cpu: dict[str, list[float]] = {p: [] for p in mappers}
    order = list(mappers)
    identical = 0
    for c, start in enumerate(range(0, len(dicts), chunk)):
        positions = range(start, min(start + chunk, len(dicts)))
        k = c % len(order)
        per_sample: dict[str, list] = {}
        for path in order[k:] + order[:k]:
            per_sample[path] = []
            for i in positions:
                rng = np.random.default_rng([seed, i])
                out, wall, cpu, total_wall, total_cpu = call(path, dicts[i], rng)
                for s in STAGES:
                    acc[path][s] += wall[s]
                    cpu_acc[path][s] += cpu[s]
                acc[path]["total"] += total_wall
                cpu_acc[path]["total"] += total_cpu
                per_sample_cpu[path].append(total_cpu)
                per_sample[path].append(out)
                if out is not None and path != "device_before":
                    outputs[path].append(out)
        if "device_before" in per_sample and "device" in per_sample:
            for a, b in zip(per_sample["device_before"], per_sample["device"], strict=True):
                identical += a is not None and b is not None and _same_views(a, b)
    n = len(dicts)
    results = {}
    for path, a in acc.items():
        if path != "device_before" and not outputs[path]:
            raise RuntimeError("no image could be mapped (all unreadable?); check the data set")
        split = {k: a[k] for k in STAGES}
        split["other"] = max(a["total"] - sum(split.values()), 0.0)
        c = cpu_acc[path]
        cpu_split = {k: c[k] for k in STAGES}
        cpu_split["other"] = max(c["total"] - sum(cpu_split.values()), 0.0)
        results[path] = {
            "samples": n,
            "mapped": len(outputs[path]) if path != "device_before" else n,
            "seconds": a["total"],
            "samples_per_s": n / a["total"],
            "ms_per_sample": 1e3 * a["total"] / n,
            "ms_per_sample_split": {k: 1e3 * v / n for k, v in split.items()},
            "cpu_seconds": c["total"],
            "cpu_samples_per_s": n / c["total"],
            "cpu_ms_per_sample": 1e3 * c["total"] / n,
            "cpu_ms_per_sample_split": {k: 1e3 * v / n for k, v in cpu_split.items()},
            # the median sample: less sensitive than the mean to samples slowed by a
            # neighbour's burst (cache and memory contention inflate CPU time too)
            "cpu_ms_per_sample_median": 1e3 * float(np.median(per_sample_cpu[path])),
            "cpu_samples_per_s_median": 1.0 / float(np.median(per_sample_cpu[path])),
        }
    if "device_before" in results:
        results["device_before"]["views_identical_to_device"] = identical / n
    return results, outputs


def _proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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
    worker_cpu = None
    c0 = time.thread_time()
    it = iter(loader)
    pids = [w.pid for w in getattr(it, "_workers", [])]  # private: None if it changes
    for batch in it:
        images += len(batch)
        if first is None:
            first = time.perf_counter() - t0
            first_batch_images = len(batch)
        if images >= len(dicts):  # the last batch: read the workers' CPU before they exit
            if workers == 0:
                worker_cpu = time.thread_time() - c0
            elif pids and len(pids) == workers:
                cpus = [_proc_cpu_seconds(p) for p in pids]
                worker_cpu = None if None in cpus else sum(cpus)
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
        # CPU seconds of the worker processes (start-up included; 10 ms clock ticks), and the
        # rate one worker gives per CPU-second: what it would give on a core of its own.
        "worker_cpu_s": worker_cpu,
        "cpu_images_per_s_per_worker": images / worker_cpu if worker_cpu else None,
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


def draft_applicable_fraction(
    dicts: list[dict], augment: TwoViewAugment, seed: int, factor: int
) -> float:
    """Share of samples whose JPEG could be decoded at 1/``factor`` scale (PIL ``draft``, the
    DCT scaling of libjpeg) without any view upsampling: both views' crops, scaled by
    1/``factor``, must still cover the view size on both sides, i.e. every crop side
    >= ``factor`` x the view size (the same crop boxes as training: per-sample streams)."""
    ok = 0
    for i, d in enumerate(dicts):
        rng = np.random.default_rng([seed, i])
        h, w = int(d["height"]), int(d["width"])
        fits = True
        for view in augment.views:
            (x0, y0, x1, y1), _ = view.geometry(h, w, rng)
            view.draw_photometric(rng)
            fits &= min(x1 - x0, y1 - y0) >= factor * int(view.size)
        ok += fits
    return ok / len(dicts)


def _interleaved_cpu_ms(options: dict[str, Callable], args_list: list, repeats: int) -> dict:
    """CPU ms per call of each option, the options alternating call by call (same load)."""
    out: dict = {}
    cpu = dict.fromkeys(options, 0.0)
    live = dict(options)
    for name, fn in options.items():  # warm-up; a failing option is reported, not fatal
        try:
            fn(args_list[0])
        except Exception as e:
            out[name] = f"failed: {type(e).__name__}: {e}"
            live.pop(name)
    for _ in range(repeats):
        for a in args_list:
            for name, fn in live.items():
                c0 = time.thread_time()
                fn(a)
                cpu[name] += time.thread_time() - c0
    n = repeats * len(args_list)
    out.update({name: 1e3 * cpu[name] / n for name in live})
    return out


def measure_decode_options(
    dicts: list[dict], augment: TwoViewAugment, seed: int, repeats: int = 3
) -> dict:
    """CPU ms per image of each decoder on the same files (interleaved); share of samples that
    would allow a 1/2 or 1/4 scale draft decode (see ``draft_applicable_fraction``)."""
    from detectron2.data.detection_utils import read_image
    from torchvision.io import decode_jpeg, read_file

    def pil_load(path: str) -> Image.Image:
        with Image.open(path) as im:
            im.load()
            return im

    def pil_draft(factor: int) -> Callable:
        def fn(path: str) -> np.ndarray:
            with Image.open(path) as im:
                im.draft("RGB", (im.width // factor, im.height // factor))
                return np.asarray(im.convert("RGB"))

        return fn

    options = {
        "detectron2_read_image": lambda p: read_image(p, format="RGB"),
        "cyborgs_read_image": cyborgs_read_image,  # the validating PIL reader (array)
        "cyborgs_read_image_tensor": read_image_tensor,  # the mapper's reader
        "torchvision_decode_jpeg": lambda p: decode_jpeg(read_file(p)),
        "pil_open_load": pil_load,  # PIL's decode alone, no array
        "pil_draft_half": pil_draft(2),
        "pil_draft_quarter": pil_draft(4),
    }
    out = _interleaved_cpu_ms(options, [d["file_name"] for d in dicts], repeats)
    out["half_draft_applicable_fraction"] = draft_applicable_fraction(dicts, augment, seed, 2)
    out["quarter_draft_applicable_fraction"] = draft_applicable_fraction(dicts, augment, seed, 4)
    return out


def measure_geometry_options(
    dicts: list[dict], augment: TwoViewAugment, seed: int, repeats: int = 3
) -> dict:
    """CPU ms per view of crop + resize (+ flip) options on the decoded images and the training
    crop boxes, interleaved; max |difference| to the torch uint8 kernel (the device path's).

    ``pil_box_reducing_gap``: PIL's ``resize(box=..., reducing_gap=2)`` first reduces by an
    integer box filter (JPEG-draft-like approximation), so its pixels differ more."""
    size = int(augment.views[0].size)
    cases = []
    for i, d in enumerate(dicts):
        image = read_image_tensor(d["file_name"])
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        rng = np.random.default_rng([seed, i])
        for view in augment.views:
            box, flip = view.geometry(int(image.shape[1]), int(image.shape[2]), rng)
            view.draw_photometric(rng)
            cases.append((image, pil, box, flip))

    def pil_out(im: Image.Image, flip: bool) -> torch.Tensor:
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()

    bil = Image.BILINEAR
    options = {
        "torch_uint8_interpolate": lambda c: augment_mod.crop_resize_image(
            c[0], c[2], c[3], size, True
        ),
        "torch_float_interpolate": lambda c: augment_mod.crop_resize_image(
            c[0], c[2], c[3], size, False
        ),
        "pil_crop_resize": lambda c: pil_out(c[1].crop(c[2]).resize((size, size), bil), c[3]),
        "pil_resize_box": lambda c: pil_out(c[1].resize((size, size), bil, box=c[2]), c[3]),
        "pil_resize_box_reducing_gap": lambda c: pil_out(
            c[1].resize((size, size), bil, box=c[2], reducing_gap=2.0), c[3]
        ),
    }
    out = _interleaved_cpu_ms(options, cases, repeats)
    diffs = {}
    for name, fn in options.items():
        if isinstance(out.get(name), float):
            d = max(
                int((fn(c).int() - options["torch_uint8_interpolate"](c).int()).abs().max())
                for c in cases
            )
            diffs[name] = d
    out["max_abs_diff_to_torch_uint8"] = diffs
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
            cfg = loader_cfg(args, "" if gen_dicts is not None else store, path == "device")
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
        timed = dict(mappers)
        if "device" in mappers and args.before:
            timed["device_before"] = mappers["device"]  # legacy_device_map with its source
        in_proc, outputs = measure_in_process(
            timed, dicts, min(args.warmup, len(dicts)), args.seed, args.interleave_chunk
        )
        per_path = {
            p: {
                "aug_device": cfgs[p].CYBORGS.AUG.DEVICE,
                "in_process": in_proc[p],
                "dataloader": [],
            }
            for p in paths
        }
        before_loader = []
        for w in args.workers:  # each worker count for all paths back to back
            for p in paths:
                r = measure_loader(mappers[p], dicts, w, args.batch_size)
                r["efficiency_vs_in_process"] = r["images_per_s"] / (
                    in_proc[p]["samples_per_s"] * max(w, 1)
                )
                per_path[p]["dataloader"].append(r)
            if "device_before" in in_proc:
                legacy = LegacyDeviceMapper(mappers["device"])
                before_loader.append(measure_loader(legacy, dicts, w, args.batch_size))
        if "device" in per_path:
            with _threads(args.device_threads):
                per_path["device"]["device_photometric"] = measure_device_photometric(
                    outputs["device"], args.device, args.batch_images, args.repeats
                )
            option_dicts = _cycled(all_dicts, min(len(all_dicts), args.num_images))
            per_path["device"]["decode_options_ms"] = measure_decode_options(
                option_dicts, mappers["device"].augment, args.seed
            )
            per_path["device"]["geometry_options_ms_per_view"] = measure_geometry_options(
                option_dicts, mappers["device"].augment, args.seed
            )
        if "device_before" in in_proc:
            before, after = in_proc["device_before"], in_proc["device"]
            out["device_before"] = {
                "what": "the device path's mapper before the loader speed-up (legacy_device_map)",
                "in_process": before,
                "dataloader": before_loader,
                "after_vs_before_cpu": before["cpu_ms_per_sample"] / after["cpu_ms_per_sample"],
                "after_vs_before_wall": before["ms_per_sample"] / after["ms_per_sample"],
            }
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

        def cpu_rate_ratio(a: dict, b: dict) -> float | None:
            ra, rb = a["cpu_images_per_s_per_worker"], b["cpu_images_per_s_per_worker"]
            return rb / ra if ra and rb else None

        out["device_vs_cpu"] = {
            "in_process_per_worker": dev["in_process"]["samples_per_s"]
            / cpu["in_process"]["samples_per_s"],
            "in_process_per_worker_cpu": dev["in_process"]["cpu_samples_per_s"]
            / cpu["in_process"]["cpu_samples_per_s"],
            "dataloader_per_worker": [
                {
                    "workers": a["workers"],
                    "ratio": b["images_per_s"] / a["images_per_s"],
                    "ratio_cpu": cpu_rate_ratio(a, b),
                }
                for a, b in zip(cpu["dataloader"], dev["dataloader"], strict=True)
            ],
        }
    if "device" in per_path:
        ip = per_path["device"]["in_process"]
        rate = ip["cpu_samples_per_s"]
        targets = {
            "device_samples_per_s_per_worker": TARGET_PER_WORKER,
            "basis": "CPU time of the mapper in one process (thread_time): the CPU side of one "
            "worker, whatever else loads the machine; the wall-time rate is beside it",
            "device_per_worker_measured": rate,
            "device_per_worker_wall": ip["samples_per_s"],
            "device_per_worker_median_sample": ip["cpu_samples_per_s_median"],
            "device_per_worker_met": rate >= TARGET_PER_WORKER,
        }
        if "device_vs_cpu" in out:
            ratio = out["device_vs_cpu"]["in_process_per_worker_cpu"]
            targets.update(speedup_vs_cpu=TARGET_SPEEDUP, speedup_measured=ratio)
            targets["speedup_wall"] = out["device_vs_cpu"]["in_process_per_worker"]
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
        "--interleave-chunk",
        type=int,
        default=16,
        help="in-process samples each path maps before the next path's turn (default 16)",
    )
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
        "--no-before",
        dest="before",
        action="store_false",
        help="skip the device path as it was before the loader speed-up (device_before)",
    )
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
    if args.interleave_chunk < 1:
        p.error("--interleave-chunk must be >= 1")
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
    from report import emit  # benchmarks/ is the script's directory

    emit(run(args), "benchmarks/dataloader.py", argv, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
