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

from cyborgs.data.image_sizes import MAX_NAMED, read_image_sizes, warn_unreadable

__all__ = [
    "IMAGE_FOLDER_DATASET",
    "load_image_folder",
    "register_image_folder",
    "register_image_folder_from_cfg",
]

logger = logging.getLogger(__name__)

IMAGE_FOLDER_DATASET = "cyborgs_image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _walk_images(root: str) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Relative POSIX paths of the image files under ``root`` (symlinks followed, sorted), the
    directories left out because a symlink leads back into a directory already walked (a loop,
    or a second way into the same directory), and the files left out as ``(path, first path)``
    because they are the same file as an earlier one (reached through a symlink)."""
    seen_dirs = {os.path.realpath(root)}
    pruned: list[str] = []
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen_dirs:
                pruned.append(os.path.join(dirpath, d))
            else:
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep  # os.walk descends only into these (top-down walk)
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    paths.sort()  # one global order over relative paths, whatever the walk order
    first: dict[str, str] = {}
    unique, duplicates = [], []
    for rel in paths:
        real = os.path.realpath(os.path.join(root, rel))
        if real in first:
            duplicates.append((rel, first[real]))
        else:
            first[real] = rel
            unique.append(rel)
    return unique, pruned, duplicates


def load_image_folder(root: str) -> list[dict]:
    """Pretraining dicts for every image file under ``root``.

    Symlinks are followed, but a directory is walked once: a symlink loop (or a second link
    into the same directory) is cut and named in a warning, and a file reached twice is kept
    once (its first path in sorted order). A file with an unreadable header stays in the list
    with height and width 0, named in one warning, so the loaders skip and count it.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"CYBORGS.DATA.IMAGE_FOLDER={root!r} is not a directory")
    paths, pruned, duplicates = _walk_images(root)
    if pruned:
        logger.warning(
            f"Image folder {root}: {len(pruned)} symlinked director(y/ies) lead back into "
            f"directories already walked (a symlink loop or a second link) and were not walked "
            f"again: {', '.join(pruned[:MAX_NAMED])}"
        )
    if duplicates:
        named = ", ".join(f"{d} (= {f})" for d, f in duplicates[:MAX_NAMED])
        logger.warning(
            f"Image folder {root}: {len(duplicates)} file(s) reached through symlinks are the "
            f"same file as another path and were left out: {named}"
        )
    dicts, bad = [], []
    for rel, size in zip(paths, read_image_sizes(root, paths), strict=True):
        path = os.path.join(root, *rel.split("/"))
        if isinstance(size, str):
            bad.append((path, size))
            size = (0, 0)  # kept: the loaders skip it when it fails to read, and count it
        dicts.append({"file_name": path, "image_id": rel, "height": size[1], "width": size[0]})
    if len(bad) == len(dicts):
        raise FileNotFoundError(
            f"CYBORGS.DATA.IMAGE_FOLDER={root!r} holds no readable image "
            f"({', '.join(IMAGE_EXTENSIONS)}); {len(bad)} unreadable"
        )
    warn_unreadable(root, bad)
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
