"""Cityscapes fine layout: ``cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
``cityscapes/gtFine/{train,val}/<city>/*_gtFine_{labelTrainIds,labelIds,instanceIds}.png`` plus
``*_gtFine_polygons.json`` (detectron2's semantic loader reads the image size from it).

Classes map onto the 19 train ids through ``cityscapes_name``; a stuff class without one (water)
is "unlabeled": train id 255, label id 0. Instance ids follow Cityscapes: ``label_id * 1000 + k``
for classes with instances, the label id elsewhere (16-bit PNG).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

from cyborgs.data.synthetic import STUFF_SPECS, THING_SPECS, Scene
from cyborgs.data.writers.common import (
    SceneRecord,
    encode_png,
    mask_to_polygons,
    write_bytes,
    write_json,
)

__all__ = ["CITIES", "semantic_to_train_id", "cityscapes_stem", "write_cityscapes"]

CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
_BY_NAME = {c["name"]: c for c in CITYSCAPES_CATEGORIES}


def _lookup(name: str | None) -> tuple[int, int, bool]:
    """(train id, label id, has instances) of a Cityscapes class name; None = unlabeled."""
    if name is None:
        return 255, 0, False
    c = _BY_NAME[name]
    return c["trainId"], c["id"], bool(c["isthing"])


_SEM_INFO = [_lookup(s.cityscapes_name) for s in THING_SPECS] + [
    _lookup(s.cityscapes_name) for s in STUFF_SPECS
]
_NAMES = [s.cityscapes_name for s in THING_SPECS] + [s.cityscapes_name for s in STUFF_SPECS]


def semantic_to_train_id() -> np.ndarray:
    """Lookup table [256] uint8: synthetic semantic index -> Cityscapes train id (255 = ignore)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for i, (train_id, _, _) in enumerate(_SEM_INFO):
        lut[i] = train_id
    return lut


def cityscapes_stem(rec: SceneRecord) -> tuple[str, str]:
    cities = CITIES[rec.split]
    city = cities[rec.index % len(cities)]
    return city, f"{city}_000000_{rec.index:06d}"


_LUT_TRAIN = semantic_to_train_id()
_LUT_LABEL = np.zeros(256, dtype=np.uint16)
for _i, (_, _label_id, _) in enumerate(_SEM_INFO):
    _LUT_LABEL[_i] = _label_id


def _label_maps(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train_ids = _LUT_TRAIN[scene.semantic]
    label_ids = _LUT_LABEL[scene.semantic]
    instance_ids = label_ids.copy()
    counters: dict[int, int] = {}
    for j, inst in enumerate(scene.instances):
        _, label_id, has_instances = _SEM_INFO[inst.category_id]
        if has_instances:
            k = counters.get(label_id, 0)
            counters[label_id] = k + 1
            instance_ids[scene.instance_map == j + 1] = label_id * 1000 + k
    return train_ids, label_ids.astype(np.uint8), instance_ids


def _polygons_json(scene: Scene) -> dict:
    objects = []
    # stuff regions first, then things in painting order (Cityscapes draws later over earlier)
    for sem in np.unique(scene.semantic):
        if sem < len(THING_SPECS):
            continue
        name = _NAMES[int(sem)] or "unlabeled"
        for poly in mask_to_polygons(scene.semantic == sem):
            objects.append({"label": name, "polygon": np.reshape(poly, (-1, 2)).tolist()})
    for inst in scene.instances:
        name = _NAMES[inst.category_id]
        for poly in mask_to_polygons(inst.mask):
            objects.append({"label": name, "polygon": np.reshape(poly, (-1, 2)).tolist()})
    return {"imgHeight": scene.height, "imgWidth": scene.width, "objects": objects}


def write_cityscapes(root: Path, splits: dict[str, list[SceneRecord]]) -> None:
    for split, records in splits.items():
        for rec in records:
            city, stem = cityscapes_stem(rec)
            img_dir = root / "cityscapes" / "leftImg8bit" / split / city
            gt_dir = root / "cityscapes" / "gtFine" / split / city
            write_bytes(img_dir / f"{stem}_leftImg8bit.png", encode_png(rec.scene.image))
            train_ids, label_ids, instance_ids = _label_maps(rec.scene)
            write_bytes(gt_dir / f"{stem}_gtFine_labelTrainIds.png", encode_png(train_ids))
            write_bytes(gt_dir / f"{stem}_gtFine_labelIds.png", encode_png(label_ids))
            write_bytes(gt_dir / f"{stem}_gtFine_instanceIds.png", encode_png(instance_ids))
            write_json(gt_dir / f"{stem}_gtFine_polygons.json", _polygons_json(rec.scene))
