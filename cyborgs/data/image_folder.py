"""An image folder as an unlabeled pretraining set ("cyborgs_image_folder").

Every image under the root (recursive, sorted) becomes ``{"file_name", "image_id", "height",
"width"}`` with ``image_id`` = the path relative to the root (POSIX separators; stable, so mask
stores can key on it). Sizes come from the image headers, cached across runs
(:mod:`cyborgs.data.image_sizes`).
"""

from __future__ import annotations

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from cyborgs.data.image_sizes import read_image_sizes

__all__ = [
    "IMAGE_FOLDER_DATASET",
    "load_image_folder",
    "register_image_folder",
    "register_image_folder_from_cfg",
]

logger = logging.getLogger(__name__)

IMAGE_FOLDER_DATASET = "cyborgs_image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_image_folder(root: str) -> list[dict]:
    """Pretraining dicts for every image file under ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CYBORGS.DATA.IMAGE_FOLDER={root!r} is not a directory")
    paths = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                paths.append(rel)
    paths.sort()  # one global order over relative paths, whatever the walk order
    dicts, bad = [], []
    for rel, size in zip(paths, read_image_sizes(root, paths), strict=True):
        path = os.path.join(root, *rel.split("/"))
        if isinstance(size, str):
            logger.warning(f"Skipping unreadable image {path} in the image folder: {size}")
            bad.append(path)
            continue
        dicts.append({"file_name": path, "image_id": rel, "height": size[1], "width": size[0]})
    if not dicts:
        raise FileNotFoundError(
            f"CYBORGS.DATA.IMAGE_FOLDER={root!r} holds no readable image "
            f"({', '.join(IMAGE_EXTENSIONS)}); {len(bad)} unreadable"
        )
    if bad:
        logger.warning(f"{len(bad)} unreadable image(s) left out of {root}")
    return dicts


def register_image_folder(name: str, root: str) -> None:
    """Register ``name`` as the images under ``root`` (re-registers if the root changed)."""
    root = os.path.abspath(os.path.expanduser(root))
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("image_root") == root:
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_image_folder(root))
    MetadataCatalog.get(name).set(image_root=root, evaluator_type="none")


def register_image_folder_from_cfg(cfg) -> str | None:
    """Register ``cyborgs_image_folder`` from ``cfg.CYBORGS.DATA.IMAGE_FOLDER`` when set."""
    root = cfg.CYBORGS.DATA.IMAGE_FOLDER
    if not root:
        if IMAGE_FOLDER_DATASET in cfg.DATASETS.TRAIN:
            raise ValueError(
                f"DATASETS.TRAIN names {IMAGE_FOLDER_DATASET!r} but CYBORGS.DATA.IMAGE_FOLDER is empty"
            )
        return None
    register_image_folder(IMAGE_FOLDER_DATASET, root)
    return IMAGE_FOLDER_DATASET
