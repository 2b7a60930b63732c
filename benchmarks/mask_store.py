#!/usr/bin/env python
"""A mask round at COCO scale: the packed store vs the per-image PNG layout it replaced.

    nice .venv/bin/python benchmarks/mask_store.py --out benchmarks/results/mask_store.json
    .venv/bin/python benchmarks/mask_store.py --images 5000          # a quick look

For each layout, in one run on the same maps: the round's write (every ``MaskStore.write`` plus
``finish_round``), its files and bytes on disk (apparent and allocated), ``verify_round``, a
full pass of reads in a shuffled order through a fresh store (as a loader worker), and the
per-sample read cost, the two layouts timed in turns (``--chunk`` reads each) so a drifting
machine load hits both alike. Page cache: both rounds were just written, so reads come from
memory on both (the case of a node that holds the round; a cold network file system adds one
metadata round trip per PNG and none per packed map).

Maps: ``--height`` x ``--width`` uint8 (default 60x80: a COCO-size image at stride 8), segment
maps (nearest of 2-40 seed points under a smooth noise field, ids renumbered in order of first
appearance as the round runner does), not noise; ``--distinct`` of them are generated and
reused round-robin (the write and read costs do not depend on which map repeats).

JSON to stdout (and ``--out``), with ``load_average`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cyborgs.masks.store import MaskStore, encode_label_map  # noqa: E402
from cyborgs.utils.atomic import atomic_write_bytes  # noqa: E402


def segment_map(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    k = int(rng.integers(2, 41))
    pts = rng.uniform(0, 1, (k, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    d = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    # ragged boundaries, as k-means on features gives: a smooth noise field per segment
    noise = rng.normal(0, 1, (k, (h + 7) // 8, (w + 7) // 8)).astype(np.float32)
    noise = noise.repeat(8, 1).repeat(8, 2)[:, :h, :w].transpose(1, 2, 0)
    lab = (d + 2.0 * noise).argmin(-1)
    _, first = np.unique(lab, return_index=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance
    ids = np.unique(lab, return_inverse=True)[1].reshape(h, w)
    return order[ids].astype(np.uint8)


def disk_usage(d: str) -> dict:
    files, apparent, allocated, dirs = 0, 0, 0, 0
    for dirpath, dirnames, names in os.walk(d):
        dirs += len(dirnames)
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return {"files": files, "directories": dirs, "bytes": apparent, "bytes_allocated": allocated}


def write_png_round(store: MaskStore, maps, n: int) -> float:
    """The earlier layout, as its ``write`` did it (a temp file renamed per map, no fsync)."""
    store.begin_round(0)
    made = set()
    for i in range(n):
        path = store._path(0, i)
        sub = os.path.dirname(path)
        if sub not in made:
            os.makedirs(sub, exist_ok=True)
            made.add(sub)
        atomic_write_bytes(path, encode_label_map(maps[i % len(maps)]), fsync=False)
    t = time.perf_counter()
    store.finish_round(0, {"source": "benchmark"})
    return time.perf_counter() - t


def write_packed_round(store: MaskStore, maps, n: int) -> float:
    store.begin_round(0)
    for i in range(n):
        store.write(0, i, maps[i % len(maps)])
    t = time.perf_counter()
    store.finish_round(0, {"source": "benchmark"})  # rank 0's share: index, crc32s
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=118287, help="maps per round (COCO train2017)")
    ap.add_argument("--height", type=int, default=60)
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument(
        "--png-images",
        type=int,
        default=None,
        help="maps of the PNG round (default --images; fewer keeps a loaded machine's run short)",
    )
    ap.add_argument("--distinct", type=int, default=2048)
    ap.add_argument("--sample-reads", type=int, default=20000, help="reads per layout, in turns")
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--layouts", default="packed,png")
    ap.add_argument("--dir", default=None, help="where to write (default: a new temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    load_before = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    maps = [segment_map(rng, args.height, args.width) for _ in range(args.distinct)]
    gen_s = time.perf_counter() - t0
    base = tempfile.mkdtemp(prefix="mask_store_bench_", dir=args.dir)
    layouts = [s for s in args.layouts.split(",") if s]
    res: dict = {
        "images": args.images,
        "map_hw": [args.height, args.width],
        "distinct_maps": args.distinct,
        "segments_mean": float(np.mean([int(m.max()) + 1 for m in maps])),
        "raw_bytes_per_map": args.height * args.width,
        "generate_s": gen_s,
        "cpu_count": os.cpu_count(),
        "layouts": {},
    }
    stores = {}
    try:
        for layout in layouts:
            store = MaskStore(os.path.join(base, layout))
            writer = write_packed_round if layout == "packed" else write_png_round
            n = args.images if layout == "packed" else (args.png_images or args.images)
            t, c = time.perf_counter(), time.process_time()
            finish_s = writer(store, maps, n)
            write_s, write_cpu = time.perf_counter() - t, time.process_time() - c
            t = time.perf_counter()
            problems = store.verify_round(0)
            verify_s = time.perf_counter() - t
            assert problems == [], problems
            ids = list(range(n))
            random.Random(args.seed).shuffle(ids)
            reader = MaskStore(store.root)  # a fresh store, as a loader worker has
            t, c = time.perf_counter(), time.process_time()
            for i in ids:
                reader.read(i, round_id=0)
            read_s, read_cpu = time.perf_counter() - t, time.process_time() - c
            for i in ids[:200]:  # the store is lossless
                assert np.array_equal(reader.read(i, round_id=0), maps[i % len(maps)])
            res["layouts"][layout] = {
                "images": n,
                "write_s": write_s,
                "finish_round_s": finish_s,
                "write_cpu_s": write_cpu,
                "write_maps_per_s": n / write_s,
                "write_cpu_ms_per_map": 1e3 * write_cpu / n,
                "verify_round_s": verify_s,
                "full_read_pass_s": read_s,
                "full_read_pass_cpu_s": read_cpu,
                "read_maps_per_s": n / read_s,
                "read_cpu_us_per_map": 1e6 * read_cpu / n,
                **disk_usage(store.round_dir(0)),
                "bytes_per_map": store.manifest(0)["bytes_per_image"],
            }
            stores[layout] = reader
        # per-sample reads, the layouts in turns
        rr = random.Random(args.seed + 1)
        times = {k: [] for k in stores}
        done = 0
        n_common = min(args.images, args.png_images or args.images)
        while done < args.sample_reads:
            chunk = [rr.randrange(n_common) for _ in range(args.chunk)]
            for layout, st in stores.items():
                for i in chunk:
                    t = time.perf_counter()
                    st.read(i, round_id=0)
                    times[layout].append(time.perf_counter() - t)
            done += args.chunk
        for layout, ts in times.items():
            a = np.asarray(ts) * 1e6
            res["layouts"][layout]["read_us"] = {
                "median": float(np.median(a)),
                "mean": float(a.mean()),
                "p90": float(np.percentile(a, 90)),
                "n": len(a),
            }
        if {"packed", "png"} <= set(stores):
            p, q = res["layouts"]["packed"], res["layouts"]["png"]
            res["packed_vs_png"] = {
                "read_median_ratio": p["read_us"]["median"] / q["read_us"]["median"],
                "read_cpu_per_map_ratio": p["read_cpu_us_per_map"] / q["read_cpu_us_per_map"],
                "write_cpu_per_map_ratio": p["write_cpu_ms_per_map"] / q["write_cpu_ms_per_map"],
                "files_per_map_ratio": (p["files"] / p["images"]) / (q["files"] / q["images"]),
                "bytes_allocated_per_map_ratio": (p["bytes_allocated"] / p["images"])
                / (q["bytes_allocated"] / q["images"]),
            }
            res["target_read_no_slower_than_png"] = p["read_us"]["median"] <= q["read_us"]["median"]
    finally:
        shutil.rmtree(base)  # a directory this run made
    res["load_average"] = {"before": load_before, "after": os.getloadavg()}
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())


if __name__ == "__main__":
    main()
