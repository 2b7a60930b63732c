#!/usr/bin/env python
"""Render every stored bootstrap round as a PNG: one row per image, one column per round.

    tools/render_mask_rounds.py --store output/demo/pretrain/masks/bootstrap/<dataset> \
        --dataset demo_coco_2017_train_unlabeled --output vis/rounds --images 6

Writes ``round_XXXX.png`` (image | that round's masks, per row) for each complete round and
``all_rounds.png`` (image | round 1 | round 2 | ...), so a user can see the masks sharpen as
training goes on (paper Fig. 5b). Masks are the stored label maps put on the image's pixels
exactly as the data loader does (each pixel takes its nearest cell, placed by the round's
recorded cell centre: ``cyborgs.masks.cell_grid``); colours are per cluster id within one image.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from cyborgs.utils.mask_vis import colorize, mask_grid

__all__ = ["colorize", "main", "render"]


def render(store, dicts: list[dict], rounds: list[int], read_image) -> np.ndarray:
    """Grid [len(dicts) rows x (1 + len(rounds)) columns] of image and mask panels;
    ``read_image(path)`` returns RGB uint8."""
    return mask_grid(store, dicts, rounds, lambda d: read_image(d["file_name"]))


def save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    from cyborgs.utils.atomic import atomic_write

    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a mask store folder (has round_XXXX/)")
    parser.add_argument("--dataset", required=True, help="registered data set of the store")
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--images", type=int, default=6, help="rows (first N images)")
    args = parser.parse_args(argv)

    from detectron2.data import DatasetCatalog

    from cyborgs.data.image_io import read_image
    from cyborgs.masks.store import MaskStore

    store = MaskStore(args.store)
    rounds = [r for r in store.rounds() if store.is_complete(r)]
    if not rounds:
        print(f"{args.store}: no complete mask round to render", file=sys.stderr)
        return 1
    dicts = [d for d in DatasetCatalog.get(args.dataset) if store.has(d["image_id"], rounds[0])]
    dicts = dicts[: args.images]
    if not dicts:
        print(f"{args.store}: none of {args.dataset}'s images has a stored mask", file=sys.stderr)
        return 1
    os.makedirs(args.output, exist_ok=True)

    def rgb(path: str) -> np.ndarray:
        return read_image(path, max_aspect_ratio=0)  # it has a mask: render it

    written = []
    for r in rounds:
        path = os.path.join(args.output, f"round_{r:04d}.png")
        save_png(render(store, dicts, [r], rgb), path)
        written.append(path)
    path = os.path.join(args.output, "all_rounds.png")
    save_png(render(store, dicts, rounds, rgb), path)
    written.append(path)
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
