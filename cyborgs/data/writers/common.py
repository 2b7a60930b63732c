"""Helpers shared by the format writers: byte-stable encoders, polygons, scene records."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from cyborgs.data.synthetic import Scene
from cyborgs.utils.atomic import atomic_write_bytes

__all__ = [
    "SceneRecord",
    "encode_jpeg",
    "encode_png",
    "write_bytes",
    "write_json",
    "write_text",
    "mask_to_polygons",
]

# Fixed encoder settings: the same pixels always give the same bytes (no timestamps, no EXIF).
JPEG_QUALITY = 92
PNG_COMPRESS_LEVEL = 1  # fast; PNG is lossless whatever the level


@dataclass
class SceneRecord:
    """One generated scene and where it belongs: ``index`` is unique over all splits and gives
    every format its file names and image ids; ``split`` is "train" or "val"."""

    index: int
    split: str
    scene: Scene
    jpeg: bytes  # the scene encoded once; every JPEG layout reuses these bytes


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(
        buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False
    )
    return buf.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H,W] / [H,W,3] or uint16 [H,W] (saved as 16-bit grey) to PNG bytes."""
    buf = io.BytesIO()
    if array.dtype not in (np.uint8, np.uint16):  # uint16 is saved in mode "I;16"
        raise TypeError(f"encode_png expects uint8 or uint16, got {array.dtype}")
    img = Image.fromarray(array)
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file and rename, so a reader never sees half a file."""
    # No fsync: the tree is staged and only marked DONE once complete (see build.py).
    atomic_write_bytes(path, data, fsync=False)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def write_text(path: Path, lines: list[str]) -> None:
    write_bytes(path, ("".join(line + "\n" for line in lines)).encode("utf-8"))


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons (flat x,y lists, >= 3 points each).

    Contours are traced on the mask upsampled 4x, so vertices lie 1/8 pixel inside the pixel
    edges: every mask pixel's centre is strictly inside the polygon and rasterising it (as
    pycocotools does) gives back the pixel set, small objects included. Holes are filled (COCO
    polygons cannot represent them). A mask whose contours are all degenerate falls back to the
    polygon of its tight box, so every instance keeps a valid segmentation.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("mask_to_polygons: empty mask")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    up = _UPSAMPLE
    crop = np.kron(mask[y0:y1, x0:x1].astype(np.uint8), np.ones((up, up), dtype=np.uint8))
    crop = np.pad(crop, 1)  # contours of objects touching the crop edge stay closed
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) < 3:
            continue
        pts = (c.reshape(-1, 2).astype(np.float64) - 1 + 0.5) / up + (x0, y0)
        polys.append([round(float(v), 3) for v in pts.reshape(-1)])
    if not polys:
        polys = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
    return polys


_UPSAMPLE = 4
