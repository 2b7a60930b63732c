"""An image folder as an unlabeled pretraining set ("cyborgs_image_folder").

Every image under the root (recursive, sorted) becomes ``{"file_name", "image_id", "height",
"width"}`` with ``image_id`` = the path relative to the root (POSIX separators; stable, so mask
stores can key on it). Sizes come from the image headers, cached across runs
(:mod:`cyborgs.data.image_sizes`).

What is left out, each kind named in one warning:

* outputs of the suite: the run's ``OUTPUT_DIR`` and ``CYBORGS.MASKS.STORE_DIR`` when they lie
  inside the folder, and any directory that is recognisably another run or mask store (it holds
  the files of one of :data:`OUTPUT_MARKERS`, or is a mask round ``round_NNNN`` of 2-hex-digit
  shards or with a ``manifest.json``). Skipped rather than refused: keeping runs beside the images is a
  reasonable layout, and skipping keeps the image set of a resumed run equal to the first
  run's (a round's mask PNGs would otherwise become training images);
* anything but a regular file (a FIFO, device or socket named ``*.jpg``), never opened.

Images of more than ``max_pixels`` pixels (``CYBORGS.DATA.MAX_IMAGE_PIXELS``, from the header)
are handled like unreadable ones: named in one warning, kept with size 0, and skipped (and
counted) unread by the loaders, whose readers apply the same cap before decoding.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog

from cyborgs.data.image_io import DEFAULT_MAX_IMAGE_PIXELS, display_path, file_kind
from cyborgs.data.image_sizes import MAX_NAMED, read_image_sizes, warn_unreadable
from cyborgs.data.image_sizes import warn_once as _warn_once

__all__ = [
    "IMAGE_FOLDER_DATASET",
    "OUTPUT_MARKERS",
    "load_image_folder",
    "register_image_folder",
    "register_image_folder_from_cfg",
]

logger = logging.getLogger(__name__)


def _warn(message: str) -> None:
    _warn_once(message, __name__)  # once per process: the set is loaded several times per run


IMAGE_FOLDER_DATASET = "cyborgs_image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Files a run or mask store of the suite writes at its top level: a directory holding all the
# files of one entry is an output, never a source of images. ``last_checkpoint``: a training
# run (detectron2's pointer); ``current.json``: a mask store (cyborgs.masks.store);
# ``config.yaml`` with ``args.json``: a pretraining run before its first checkpoint.
OUTPUT_MARKERS: tuple[tuple[str, ...], ...] = (
    ("last_checkpoint",),
    ("current.json",),
    ("config.yaml", "args.json"),
)
_ROUND_DIR = re.compile(r"^round_\d{4,}$")
_SHARD_DIR = re.compile(r"^[0-9a-f]{2}$")


def _is_output_dir(path: str, name: str, excluded: set[str]) -> bool:
    """Whether the directory ``path`` (base name ``name``) is an output of the suite."""
    if os.path.realpath(path) in excluded:
        return True
    try:
        entries = os.listdir(path)
    except OSError:
        return False  # os.walk reports nothing for it either
    names = set(entries)
    if any(names.issuperset(marker) for marker in OUTPUT_MARKERS):
        return True
    if _ROUND_DIR.match(name):  # a mask round: shards ab/<key>.png, manifest.json last
        return "manifest.json" in entries or (
            bool(entries) and all(_SHARD_DIR.match(e) for e in entries if not e.startswith("."))
        )
    return False


def _walk_images(
    root: str, exclude: Iterable[str] = ()
) -> tuple[list[str], list[str], list[tuple[str, str]], list[str], list[tuple[str, str]]]:
    """Relative POSIX paths of the regular image files under ``root`` (symlinks followed,
    sorted); the directories left out because a symlink leads back into a directory already
    walked (a loop, or a second way into the same directory); the files left out as ``(path,
    first path)`` because they are the same file as an earlier one (reached through a symlink);
    the directories left out as outputs of the suite (``exclude``, or recognised as such); and
    the non-regular files left out as ``(path, what it is)``."""
    excluded = {os.path.realpath(p) for p in exclude if p}
    seen_dirs = {os.path.realpath(root)}
    pruned: list[str] = []
    outputs: list[str] = []
    special: list[tuple[str, str]] = []
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in seen_dirs:
                pruned.append(full)
            elif _is_output_dir(full, d, excluded):
                outputs.append(full)
            else:
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep  # os.walk descends only into these (top-down walk)
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                full = os.path.join(dirpath, f)
                try:
                    mode = os.stat(full).st_mode
                except OSError:
                    mode = stat.S_IFREG  # gone or a dangling link: the size reader names it
                if not stat.S_ISREG(mode):
                    special.append((full, file_kind(mode)))
                    continue
                paths.append(os.path.relpath(full, root).replace(os.sep, "/"))
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
    return unique, pruned, duplicates, outputs, special


def _named(items: list[str]) -> str:
    more = f", and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return ", ".join(display_path(p) for p in items[:MAX_NAMED]) + more


def load_image_folder(
    root: str, *, exclude: Iterable[str] = (), max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> list[dict]:
    """Pretraining dicts for every image file under ``root``.

    Symlinks are followed, but a directory is walked once: a symlink loop (or a second link
    into the same directory) is cut and named in a warning, and a file reached twice is kept
    once (its first path in sorted order). A file with an unreadable header stays in the list
    with height and width 0, named in one warning, so the loaders skip and count it.
    Directories in ``exclude`` (the run's outputs) and those recognised as outputs of the suite
    and non-regular files are left out, each kind named in one warning; images above
    ``max_pixels`` pixels (0: no limit) count as unreadable (module docstring).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"CYBORGS.DATA.IMAGE_FOLDER={display_path(root)!r} is not a directory"
        )
    paths, pruned, duplicates, outputs, special = _walk_images(root, exclude)
    shown = display_path(root)
    if pruned:
        _warn(
            f"Image folder {shown}: {len(pruned)} symlinked director(y/ies) lead back into "
            f"directories already walked (a symlink loop or a second link) and were not walked "
            f"again: {_named(pruned)}"
        )
    if duplicates:
        named = ", ".join(
            f"{display_path(d)} (= {display_path(f)})" for d, f in duplicates[:MAX_NAMED]
        )
        _warn(
            f"Image folder {shown}: {len(duplicates)} file(s) reached through symlinks are the "
            f"same file as another path and were left out: {named}"
        )
    if outputs:
        _warn(
            f"Image folder {shown}: {len(outputs)} director(y/ies) are outputs of CYBORGS runs "
            f"(OUTPUT_DIR, a mask store, a run or mask round of another run) and were not "
            f"taken as training images: {_named(outputs)}"
        )
    if special:
        _warn(
            f"Image folder {shown}: {len(special)} file(s) are not regular files and were left "
            "out unopened: "
            + "; ".join(f"{display_path(p)} ({k})" for p, k in special[:MAX_NAMED])
            + (f"; and {len(special) - MAX_NAMED} more" if len(special) > MAX_NAMED else "")
        )
    dicts, bad = [], []
    for rel, size in zip(paths, read_image_sizes(root, paths, max_pixels), strict=True):
        path = os.path.join(root, *rel.split("/"))
        if isinstance(size, str):
            bad.append((path, size))
            size = (0, 0)  # kept: the loaders skip it when it fails to read, and count it
        dicts.append({"file_name": path, "image_id": rel, "height": size[1], "width": size[0]})
    if len(bad) == len(dicts):
        raise FileNotFoundError(
            f"CYBORGS.DATA.IMAGE_FOLDER={display_path(root)!r} holds no readable image "
            f"({', '.join(IMAGE_EXTENSIONS)}) of at most CYBORGS.DATA.MAX_IMAGE_PIXELS="
            f"{max_pixels} pixels; {len(bad)} unreadable or too large, {len(special)} not "
            "regular files"
        )
    warn_unreadable(root, bad)
    return dicts


def register_image_folder(
    name: str,
    root: str,
    *,
    exclude: Iterable[str] = (),
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> None:
    """Register ``name`` as the images under ``root``, without the directories in ``exclude``
    and images above ``max_pixels`` (re-registers if any of them changed)."""
    root = os.path.abspath(os.path.expanduser(root))
    exclude = tuple(sorted(os.path.abspath(os.path.expanduser(p)) for p in exclude if p))
    max_pixels = int(max_pixels)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("image_root"), meta.get("exclude"), meta.get("max_pixels")) == (
            root,
            exclude,
            max_pixels,
        ):
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name, lambda: load_image_folder(root, exclude=exclude, max_pixels=max_pixels)
    )
    MetadataCatalog.get(name).set(
        image_root=root, exclude=exclude, max_pixels=max_pixels, evaluator_type="none"
    )


def register_image_folder_from_cfg(cfg) -> str | None:
    """Register ``cyborgs_image_folder`` from ``cfg.CYBORGS.DATA.IMAGE_FOLDER`` when set; the
    run's ``OUTPUT_DIR`` and ``CYBORGS.MASKS.STORE_DIR`` are never taken as images."""
    root = cfg.CYBORGS.DATA.IMAGE_FOLDER
    if not root:
        if IMAGE_FOLDER_DATASET in cfg.DATASETS.TRAIN:
            raise ValueError(
                f"DATASETS.TRAIN names {IMAGE_FOLDER_DATASET!r} but CYBORGS.DATA.IMAGE_FOLDER is empty"
            )
        return None
    register_image_folder(
        IMAGE_FOLDER_DATASET,
        root,
        exclude=(cfg.OUTPUT_DIR, cfg.CYBORGS.MASKS.STORE_DIR),
        max_pixels=cfg.CYBORGS.DATA.MAX_IMAGE_PIXELS,
    )
    return IMAGE_FOLDER_DATASET
