"""ImageNet-style classification tree: ``imagenet/{train,val}/<class>/<class>_<n>_<k>.JPEG`` of
object-centric crops (one folder per thing class), plus SimCLR-style subset lists
``imagenet/subsets/{1percent,10percent}.txt``: one train file name per line, e.g.
``disc_000003_1.JPEG``; as in SimCLR's lists the class folder is the part before the first "_".
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cyborgs.data.synthetic import THING_CLASSES, Instance, Scene
from cyborgs.data.writers.common import SceneRecord, encode_jpeg, write_bytes, write_text

__all__ = ["SUBSETS", "crop_instance", "write_imagenet"]

SUBSETS = {"1percent": 0.01, "10percent": 0.10}
assert all("_" not in c for c in THING_CLASSES), "class folders must not contain '_'"


def _usable(inst: Instance, scene: Scene) -> bool:
    # big and mostly visible: the crop should show one recognisable object
    big = inst.area >= max(48, 0.004 * scene.height * scene.width)
    return bool(big and inst.visible_fraction >= 0.5)


def crop_instance(scene: Scene, inst: Instance, size: int) -> np.ndarray:
    """A square crop around the instance with some context (edge-padded at the image border),
    resized to ``size`` x ``size``."""
    x0, y0, x1, y1 = inst.bbox
    side = int(np.ceil(1.4 * max(x1 - x0, y1 - y0)))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    left, top = cx - side // 2, cy - side // 2
    pad = side
    padded = cv2.copyMakeBorder(scene.image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    crop = padded[top + pad : top + pad + side, left + pad : left + pad + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def write_imagenet(
    root: Path, splits: dict[str, list[SceneRecord]], crop_size: int, seed: int
) -> None:
    base = root / "imagenet"
    train_files: dict[str, list[str]] = {c: [] for c in THING_CLASSES}
    for folder in ("train", "val"):
        for cls in THING_CLASSES:
            # every class folder exists, even without a usable crop, so class indices are stable
            (base / folder / cls).mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        folder = "train" if split == "train" else "val"
        for rec in records:
            for k, inst in enumerate(rec.scene.instances):
                if not _usable(inst, rec.scene):
                    continue
                cls = THING_CLASSES[inst.category_id]
                name = f"{cls}_{rec.index:06d}_{k}.JPEG"
                write_bytes(
                    base / folder / cls / name,
                    encode_jpeg(crop_instance(rec.scene, inst, crop_size)),
                )
                if folder == "train":
                    train_files[cls].append(name)
    # class-balanced subsets, each class keeps at least one image; the 1% list is part of the 10%
    rng = np.random.default_rng([seed, 2012])
    order = {c: list(rng.permutation(sorted(f))) for c, f in train_files.items()}
    for subset, frac in SUBSETS.items():
        lines = []
        for cls in THING_CLASSES:
            files = order[cls]
            if files:
                lines += sorted(files[: max(1, round(frac * len(files)))])
        write_text(base / "subsets" / f"{subset}.txt", lines)
