"""COCO-Stuff-10k in mmsegmentation's layout: ``coco_stuff_10k/images/{train2014,test2014}/*.jpg``
and ``coco_stuff_10k/annotations/{train2014,test2014}/*_labelTrainIds.png``.

Labels use the standard 171-class train-id space (0..79 the COCO things, 80..170 the COCO-Stuff
stuff classes, 255 ignore), so the real data set and the twin share metadata. Synthetic classes
map onto it through ``coco_stuff_name``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from cyborgs.data.synthetic import STUFF_SPECS, THING_SPECS
from cyborgs.data.writers.common import SceneRecord, encode_png, write_bytes

__all__ = [
    "COCO_STUFF_171_CLASSES",
    "COCO_STUFF_SPLITS",
    "coco_stuff_stem",
    "semantic_to_coco_stuff",
    "write_coco_stuff",
]

# fmt: off
_STUFF_91 = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill",
    "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad",
    "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other",
    "wood",
)
# fmt: on
_COCO_THINGS_80 = tuple(
    c["name"] for c in sorted(COCO_CATEGORIES, key=lambda c: c["id"]) if c["isthing"]
)
COCO_STUFF_171_CLASSES: tuple[str, ...] = _COCO_THINGS_80 + _STUFF_91
assert len(COCO_STUFF_171_CLASSES) == 171

COCO_STUFF_SPLITS = {"train": "train2014", "val": "test2014"}


def semantic_to_coco_stuff() -> np.ndarray:
    """Lookup table [256] uint8: synthetic semantic index -> 171-class train id (255 ignore)."""
    lut = np.full(256, 255, dtype=np.uint8)
    names = [s.coco_stuff_name for s in THING_SPECS] + [s.coco_stuff_name for s in STUFF_SPECS]
    for i, name in enumerate(names):
        lut[i] = COCO_STUFF_171_CLASSES.index(name)
    return lut


def coco_stuff_stem(rec: SceneRecord) -> tuple[str, str]:
    folder = COCO_STUFF_SPLITS[rec.split]
    return folder, f"COCO_{folder}_{rec.index + 1:012d}"


def write_coco_stuff(root: Path, splits: dict[str, list[SceneRecord]]) -> None:
    lut = semantic_to_coco_stuff()
    base = root / "coco_stuff_10k"
    for records in splits.values():
        for rec in records:
            folder, stem = coco_stuff_stem(rec)
            write_bytes(base / "images" / folder / f"{stem}.jpg", rec.jpeg)
            label = lut[rec.scene.semantic]
            write_bytes(
                base / "annotations" / folder / f"{stem}_labelTrainIds.png", encode_png(label)
            )
