"""TensorBoard view of a bootstrap round: a few fixed images with their masks, and K per group.

The same images are shown after every round (evenly spaced through the data set, chosen once),
so TensorBoard's image slider shows the masks evolving. Everything goes through detectron2's
``EventStorage`` (``put_image`` / ``put_histogram``), which its ``TensorboardXWriter`` writes at
the next write period.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cyborgs.masks.store import MaskStore
from cyborgs.utils.mask_vis import mask_grid

__all__ = ["VIS_IMAGES", "VIS_SIZE", "put_round_visuals", "visual_dicts"]

logger = logging.getLogger(__name__)

VIS_IMAGES = 4  # rows of the grid
VIS_SIZE = 128  # shorter side of each image in the grid (pixels)


def visual_dicts(dicts: Sequence[dict], n: int = VIS_IMAGES) -> list[dict]:
    """``n`` dataset dicts evenly spaced through ``dicts`` (deterministic: same every round)."""
    m = len(dicts)
    if m == 0 or n <= 0:
        return []
    return [dicts[i * m // min(n, m)] for i in range(min(n, m))]


def image_tag(dataset_name: str) -> str:
    return f"bootstrap/masks/{dataset_name}"


def put_round_visuals(
    storage: Any,
    dataset_name: str,
    store: MaskStore,
    round_id: int,
    dicts: Sequence[dict],
    manifest: dict,
) -> None:
    """Put the image | mask grid of ``dicts`` for ``round_id`` (tag ``bootstrap/masks/<name>``)
    and the histogram of K per group (``bootstrap/k/<name>``) into ``storage``. Images that
    cannot be read are left out with a warning (visuals never stop training)."""
    from .round import load_resized_image

    images: dict[Any, np.ndarray] = {}
    for d in dicts:
        try:
            images[d["image_id"]] = load_resized_image(d, VIS_SIZE)
        except Exception as e:  # noqa: BLE001 - any unreadable file: skip it, keep training
            logger.warning(f"TensorBoard mask grid: skipping {d.get('file_name')}: {e}")
    shown = [d for d in dicts if d["image_id"] in images and store.has(d["image_id"], round_id)]
    if shown:
        grid = mask_grid(store, shown, [round_id], lambda d: images[d["image_id"]])
        storage.put_image(image_tag(dataset_name), torch.from_numpy(grid).permute(2, 0, 1))
    k = [float(v) for v in manifest.get("k_per_group", [])]
    if k:
        bins = int(max(1, min(256, max(k) - min(k) + 1)))
        storage.put_histogram(f"bootstrap/k/{dataset_name}", torch.tensor(k), bins=bins)
