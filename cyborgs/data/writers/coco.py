"""COCO 2017 instance layout: ``coco/{train2017,val2017}/*.jpg`` and
``coco/annotations/instances_{train,val}2017.json`` (polygons, iscrowd 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cyborgs.data.synthetic import THING_CLASSES
from cyborgs.data.writers.common import SceneRecord, mask_to_polygons, write_bytes, write_json

__all__ = ["COCO_SPLITS", "coco_category_ids", "coco_file_name", "build_coco_dict", "write_coco"]

COCO_SPLITS = {"train": "train2017", "val": "val2017"}
_DATE = "2017-01-01 00:00:00"  # fixed: outputs must not depend on the clock


def coco_category_ids() -> list[int]:
    """Dataset ids of THING_CLASSES. Like real COCO (which skips id 12) the ids have a gap, so
    readers must use ``thing_dataset_id_to_contiguous_id`` rather than ``id - 1``."""
    return [i + 1 if i < 6 else i + 2 for i in range(len(THING_CLASSES))]


def coco_file_name(index: int) -> str:
    return f"{index + 1:012d}.jpg"


def coco_categories() -> list[dict[str, Any]]:
    return [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, name in zip(coco_category_ids(), THING_CLASSES, strict=True)
    ]


def build_coco_dict(records: list[SceneRecord], folder: str) -> dict[str, Any]:
    """The instances json of one split; image id = scene index + 1, annotation ids unique."""
    cat_ids = coco_category_ids()
    images, annotations = [], []
    ann_id = 0
    for rec in records:
        s = rec.scene
        image_id = rec.index + 1
        name = coco_file_name(rec.index)
        images.append(
            {
                "id": image_id,
                "file_name": name,
                "height": s.height,
                "width": s.width,
                "license": 1,
                "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                "date_captured": _DATE,
            }
        )
        for inst in s.instances:
            ann_id = ann_id + 1
            x0, y0, x1, y1 = inst.bbox
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": cat_ids[inst.category_id],
                    "segmentation": mask_to_polygons(inst.mask),
                    "area": float(inst.area),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": "CYBORGS synthetic COCO twin",
            "version": "1.0",
            "year": 2017,
            "date_created": _DATE,
        },
        "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }


def write_coco(root: Path, splits: dict[str, list[SceneRecord]]) -> dict[str, dict[str, Any]]:
    """Write images + instances json per split under ``root/coco``; returns the json dicts (the
    LVIS writer builds on them)."""
    out = {}
    for split, folder in COCO_SPLITS.items():
        records = splits[split]
        for rec in records:
            write_bytes(root / "coco" / folder / coco_file_name(rec.index), rec.jpeg)
        d = build_coco_dict(records, folder)
        write_json(root / "coco" / "annotations" / f"instances_{folder}.json", d)
        out[split] = d
    return out
