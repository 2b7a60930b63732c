"""Box annotations of transfer training sets, checked before training.

detectron2 trains on what it is given: a NaN or 1e30 box becomes a zero or meaningless
``loss_box_reg`` with exit 0, a box of negative width is dropped without a word (clipped to the
image, then removed by ``filter_empty_instances``), and an annotation without ``bbox`` stops the
run mid-training with ``KeyError: 'bbox'``. Here every annotation of a training set is checked
first:

* errors (:class:`AnnotationError`, naming the file, the annotation id and the field): a
  missing ``bbox``, ``category_id`` (or ``image_id``) field; a ``bbox`` that is not four
  numbers; a non-finite coordinate; an inverted box (negative width or height); a huge box,
  reaching beyond an edge of its image by more than the image's own size (no rounding error
  does that); a ``category_id`` not among the file's categories, an ``image_id`` not among its
  images;
* a counted warning: boxes of zero width or height, or empty once clipped to the image --
  detectron2's own convention is to drop those (``filter_empty_instances``), so they stay.

COCO-style JSON files (COCO, LVIS: metadata ``json_file``) are read as they are on disk, so the
annotation ``id`` can be named (detectron2's loaders drop it); other detection sets (VOC) are
checked on their dataset dicts, naming the image file and the annotation's index in it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["AnnotationError", "check_detection_annotations"]

logger = logging.getLogger(__name__)

# Problems listed in one error (the count is always complete).
MAX_LISTED = 10
# detectron2's Boxes.nonempty threshold in filter_empty_instances.
_EMPTY = 1e-5


class AnnotationError(ValueError):
    """Annotations that cannot train: every message names the file, annotation and field."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _box_problem(bbox: Any, xyxy: bool, size: tuple[Any, Any] | None) -> tuple[str | None, bool]:
    """``(error, degenerate)`` of one box: ``[x, y, width, height]`` (``xyxy``: ``[x0, y0, x1,
    y1]``) in an image of ``size`` = (width, height) when known."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        what = "four corners [x0, y0, x1, y1]" if xyxy else "[x, y, width, height]"
        return f"= {_short(bbox)}: expected 4 numbers {what}", False
    if not all(math.isfinite(v) for v in bbox):
        return f"= {_short(bbox)} is not finite", False
    x0, y0, a, b = (float(v) for v in bbox)
    x1, y1 = (a, b) if xyxy else (x0 + a, y0 + b)
    if x1 < x0 or y1 < y0:
        kind = "x1 < x0 or y1 < y0" if xyxy else "negative width or height"
        return f"= {_short(bbox)} is inverted ({kind})", False
    if size is not None and all(_is_number(v) and v > 0 for v in size):
        w, h = size
        if x0 < -w or y0 < -h or x1 > 2 * w or y1 > 2 * h:
            return (
                f"= {_short(bbox)} reaches beyond its {w}x{h} image by more than the image's size",
                False,
            )
        # clipped to the image as detectron2's mapper does, then its emptiness test
        cw = min(x1, w) - max(x0, 0.0)
        ch = min(y1, h) - max(y0, 0.0)
        return None, not (cw > _EMPTY and ch > _EMPTY)
    return None, not (x1 - x0 > _EMPTY and y1 - y0 > _EMPTY)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _coco_problems(json_file: str) -> Iterator[tuple[str | None, str | None]]:
    """``(error, None)`` or ``(None, degenerate annotation)`` for each finding in a COCO-style
    file."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        yield f"{json_file}: unreadable annotation file ({type(e).__name__}: {e})", None
        return
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        yield f"{json_file}: no 'annotations' list (not a COCO-style annotation file)", None
        return
    images = {
        img.get("id"): (img.get("width"), img.get("height"))
        for img in data.get("images") or []
        if isinstance(img, dict)
    }
    cats = {c.get("id") for c in data.get("categories") or [] if isinstance(c, dict)}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            yield f"{json_file}: annotations[{i}] is a {type(ann).__name__}, not an object", None
            continue
        where = f"{json_file}: annotation id {ann['id']!r}" if "id" in ann else (
            f"{json_file}: annotations[{i}] (no 'id')"
        )  # fmt: skip
        missing = [k for k in ("image_id", "bbox", "category_id") if k not in ann]
        if missing:
            yield f"{where} has no {', '.join(repr(k) for k in missing)} field", None
            continue
        if ann["image_id"] not in images:
            yield f"{where}: field 'image_id' = {ann['image_id']!r} is not in 'images'", None
            continue
        if cats and ann["category_id"] not in cats:
            yield (
                f"{where}: field 'category_id' = {ann['category_id']!r} is not in 'categories'",
                None,
            )
            continue
        error, degenerate = _box_problem(ann["bbox"], False, images[ann["image_id"]])
        if error:
            yield f"{where}: field 'bbox' {error}", None
        elif degenerate and not ann.get("iscrowd", 0):
            yield None, f"id {ann['id']!r}" if "id" in ann else f"annotations[{i}]"


def _dict_problems(name: str, dicts: Iterable[dict]) -> Iterator[tuple[str | None, str | None]]:
    """The same findings for dataset dicts (sets without a COCO-style file, e.g. VOC)."""
    for d in dicts:
        image = d.get("file_name", d.get("image_id", "?"))
        size = (d.get("width"), d.get("height"))
        for k, ann in enumerate(d.get("annotations") or []):
            where = f"data set '{name}', image {image}: annotation #{k}"
            missing = [f for f in ("bbox", "bbox_mode", "category_id") if f not in ann]
            if missing:
                yield f"{where} has no {', '.join(repr(f) for f in missing)} field", None
                continue
            try:
                xyxy = BoxMode(ann["bbox_mode"]) == BoxMode.XYXY_ABS
                if not xyxy and BoxMode(ann["bbox_mode"]) != BoxMode.XYWH_ABS:
                    continue  # relative / rotated boxes: not ours to judge
            except ValueError:
                yield f"{where}: field 'bbox_mode' = {ann['bbox_mode']!r} is no BoxMode", None
                continue
            error, degenerate = _box_problem(ann["bbox"], xyxy, size)
            if error:
                yield f"{where}: field 'bbox' {error}", None
            elif degenerate and not ann.get("iscrowd", 0):
                yield None, f"image {image} #{k}"


def check_detection_annotations(names: Iterable[str]) -> int:
    """Check the box annotations of the data sets ``names`` (module docstring).

    Returns:
        the number of degenerate boxes detectron2 will drop (each set with some gets one
        warning naming the first few).

    Raises:
        AnnotationError listing up to :data:`MAX_LISTED` problems and their total count.
    """
    dropped = 0
    for name in names:
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file", None)
        if isinstance(json_file, str) and json_file.endswith(".json"):
            findings, source = _coco_problems(json_file), json_file
        elif meta.get("thing_classes", None) is not None:
            findings, source = _dict_problems(name, DatasetCatalog.get(name)), "dataset dicts"
        else:
            continue  # no boxes (semantic segmentation, classification)
        errors: list[str] = []
        degenerate: list[str] = []
        for error, where in findings:
            if error:
                errors.append(error)
            else:
                degenerate.append(where)
        if errors:
            more = f"; ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
            raise AnnotationError(
                f"data set '{name}': {len(errors)} annotation(s) cannot train (fix or remove "
                "them): " + "; ".join(errors[:MAX_LISTED]) + more
            )
        if degenerate:
            dropped += len(degenerate)
            logger.warning(
                f"data set '{name}' ({source}): {len(degenerate)} box(es) of zero width or "
                "height (after clipping to the image) are dropped in training, as detectron2 "
                f"does (filter_empty_instances): {', '.join(degenerate[:MAX_LISTED])}"
                + (", ..." if len(degenerate) > MAX_LISTED else "")
            )
    return dropped
