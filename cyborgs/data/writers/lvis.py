"""LVIS v1 layout over the COCO twin's images: ``lvis/lvis_v1_{train,val}.json``.

Images point into ``coco/{train2017,val2017}`` through ``coco_url`` (detectron2's
``load_lvis_json`` takes the split folder from it). Category ids are 1..N (detectron2 maps them
with ``id - 1``). LVIS's absolute frequency bins (r: 1-10 images, c: 11-100, f: >100) would put
every demo class in 'r', so the bins here are terciles of the train image count: the most
frequent third is 'f', the next 'c', the rest 'r'.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cyborgs.data.synthetic import THING_CLASSES
from cyborgs.data.writers.coco import coco_category_ids
from cyborgs.data.writers.common import write_json

__all__ = ["lvis_categories", "build_lvis_dict", "write_lvis"]


def lvis_categories(coco_train: dict[str, Any]) -> list[dict[str, Any]]:
    to_lvis = {cid: i + 1 for i, cid in enumerate(coco_category_ids())}
    inst = Counter(to_lvis[a["category_id"]] for a in coco_train["annotations"])
    imgs = Counter(
        cid
        for cid, _ in {
            (to_lvis[a["category_id"]], a["image_id"]) for a in coco_train["annotations"]
        }
    )
    order = sorted(range(1, len(THING_CLASSES) + 1), key=lambda c: (-imgs[c], c))
    third = len(order) / 3
    freq = {c: ("f" if r < third else "c" if r < 2 * third else "r") for r, c in enumerate(order)}
    return [
        {
            "id": i + 1,
            "name": name,
            "synonyms": [name],
            "def": f"a synthetic '{name}' shape",
            "synset": f"{name}.n.01",
            "frequency": freq[i + 1],
            "image_count": imgs[i + 1],
            "instance_count": inst[i + 1],
        }
        for i, name in enumerate(THING_CLASSES)
    ]


def build_lvis_dict(coco: dict[str, Any], categories: list[dict[str, Any]]) -> dict[str, Any]:
    to_lvis = {cid: i + 1 for i, cid in enumerate(coco_category_ids())}
    present: dict[int, set[int]] = {}
    for a in coco["annotations"]:
        present.setdefault(a["image_id"], set()).add(to_lvis[a["category_id"]])
    all_ids = [c["id"] for c in categories]
    images = []
    for img in coco["images"]:
        # federated labels: a few verified-absent classes, and rarely a present class whose
        # instances are flagged as not exhaustively annotated
        rng = np.random.default_rng([img["id"], 1203])
        here = sorted(present.get(img["id"], set()))
        absent = [c for c in all_ids if c not in here]
        neg = sorted(int(c) for c in rng.choice(absent, size=min(3, len(absent)), replace=False))
        not_exh = [c for c in here if rng.random() < 0.1]
        images.append(
            {
                "id": img["id"],
                "coco_url": img["coco_url"],
                "flickr_url": img["coco_url"],
                "height": img["height"],
                "width": img["width"],
                "license": img["license"],
                "date_captured": img["date_captured"],
                "neg_category_ids": neg,
                "not_exhaustive_category_ids": not_exh,
            }
        )
    annotations = [
        {
            "id": a["id"],
            "image_id": a["image_id"],
            "category_id": to_lvis[a["category_id"]],
            "segmentation": a["segmentation"],
            "area": a["area"],
            "bbox": a["bbox"],
        }
        for a in coco["annotations"]
    ]
    return {
        "info": coco["info"],
        "licenses": coco["licenses"],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_lvis(root: Path, coco_dicts: dict[str, dict[str, Any]]) -> None:
    categories = lvis_categories(coco_dicts["train"])
    for split in ("train", "val"):
        write_json(
            root / "lvis" / f"lvis_v1_{split}.json", build_lvis_dict(coco_dicts[split], categories)
        )
