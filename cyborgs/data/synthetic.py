"""Deterministic generator of small COCO-like scenes: textured stuff regions plus occluding things.

Every scene is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, index)``, so
scene ``i`` does not depend on how many scenes are generated around it, and the same seed gives
the same pixels on every machine (only numpy and OpenCV arithmetic, no threads).

Grouping pixels without labels must be non-trivial but learnable: each thing class has a shape,
a colour family and a texture; several classes share neighbouring hues (red disc, orange egg, pink
crescent, brown blob) so colour alone does not separate them, while shape + texture does. Each
instance jitters hue, saturation, value, texture scale/phase, size and rotation.

Label spaces of one scene:
    ``semantic``: index into ``SEMANTIC_CLASSES`` = ``THING_CLASSES + STUFF_CLASSES`` (uint8);
    ``instance_map``: 0 = no thing, ``i + 1`` = ``instances[i]`` (int32, painting order, later
    instances occlude earlier ones).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "ThingSpec",
    "StuffSpec",
    "THING_SPECS",
    "STUFF_SPECS",
    "THING_CLASSES",
    "STUFF_CLASSES",
    "SEMANTIC_CLASSES",
    "Instance",
    "Scene",
    "generate_scene",
    "generate_scenes",
]


@dataclass(frozen=True)
class ThingSpec:
    name: str
    shape: str
    hue: float  # colour family, HSV hue in [0, 1)
    sat: float
    val: float
    texture: str
    # Names in the fixed vocabularies of formats whose readers hard-code their classes.
    voc_name: str  # one of detectron2's 20 Pascal VOC CLASS_NAMES
    cityscapes_name: str  # a Cityscapes category with a train id
    coco_stuff_name: str  # one of the 171 COCO-Stuff classes


@dataclass(frozen=True)
class StuffSpec:
    name: str
    hue: float
    sat: float
    val: float
    texture: str
    place: str  # "top" (upper region) or "bottom" (ground regions)
    cityscapes_name: str | None  # None: Cityscapes "unlabeled" (train id 255, ignored)
    coco_stuff_name: str


# fmt: off
THING_SPECS: tuple[ThingSpec, ...] = (
    ThingSpec("disc",      "circle",    0.00, 0.75, 0.80, "plain",    "bird",      "traffic light", "bird"),
    ThingSpec("block",     "square",    0.60, 0.70, 0.75, "checker",  "bus",       "bus",           "bus"),
    ThingSpec("wedge",     "triangle",  0.12, 0.80, 0.85, "stripes",  "boat",      "traffic sign",  "boat"),
    ThingSpec("star",      "star",      0.82, 0.65, 0.80, "dots",     "cat",       "person",        "cat"),
    ThingSpec("horseshoe", "arc",       0.31, 0.70, 0.65, "stripes",  "horse",     "rider",         "horse"),
    ThingSpec("egg",       "ellipse",   0.08, 0.80, 0.85, "gradient", "bottle",    "pole",          "bottle"),
    ThingSpec("cross",     "cross",     0.50, 0.75, 0.80, "plain",    "aeroplane", "bicycle",       "airplane"),
    ThingSpec("diamond",   "diamond",   0.78, 0.65, 0.75, "checker",  "car",       "car",           "car"),
    ThingSpec("hexagon",   "hexagon",   0.27, 0.70, 0.70, "dots",     "chair",     "truck",         "chair"),
    ThingSpec("crescent",  "crescent",  0.97, 0.70, 0.80, "gradient", "dog",       "motorcycle",    "dog"),
    ThingSpec("bar",       "bar",       0.63, 0.70, 0.70, "stripes",  "bicycle",   "train",         "bicycle"),
    ThingSpec("blob",      "blob",      0.06, 0.60, 0.45, "noise",    "cow",       "fence",         "cow"),
)

STUFF_SPECS: tuple[StuffSpec, ...] = (
    StuffSpec("sky",     0.58, 0.35, 0.92, "sky",     "top",    "sky",        "sky-other"),
    StuffSpec("wall",    0.07, 0.25, 0.62, "bricks",  "top",    "building",   "wall-brick"),
    StuffSpec("foliage", 0.30, 0.55, 0.38, "noise",   "top",    "vegetation", "tree"),
    StuffSpec("grass",   0.27, 0.60, 0.55, "fine",    "bottom", "terrain",    "grass"),
    StuffSpec("water",   0.55, 0.60, 0.50, "waves",   "bottom", None,         "water-other"),
    StuffSpec("road",    0.00, 0.00, 0.40, "fine",    "bottom", "road",       "road"),
    StuffSpec("sand",    0.11, 0.40, 0.80, "noise",   "bottom", "sidewalk",   "sand"),
)
# fmt: on

THING_CLASSES: tuple[str, ...] = tuple(s.name for s in THING_SPECS)
STUFF_CLASSES: tuple[str, ...] = tuple(s.name for s in STUFF_SPECS)
SEMANTIC_CLASSES: tuple[str, ...] = THING_CLASSES + STUFF_CLASSES
_TOP_STUFF = [i for i, s in enumerate(STUFF_SPECS) if s.place == "top"]
_BOTTOM_STUFF = [i for i, s in enumerate(STUFF_SPECS) if s.place == "bottom"]


@dataclass
class Instance:
    category_id: int  # index into THING_CLASSES
    mask: np.ndarray  # bool [H, W], the visible part
    bbox: tuple[
        int, int, int, int
    ]  # x0, y0, x1, y1 of the visible mask, pixel edges (x1 exclusive)
    area: int  # visible pixels
    full_area: int  # pixels of the whole shape inside the image, before occlusion
    truncated: bool  # the shape is cut by the image border

    @property
    def visible_fraction(self) -> float:
        return self.area / max(self.full_area, 1)


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3] RGB
    instance_map: np.ndarray  # int32 [H, W]
    semantic: np.ndarray  # uint8 [H, W], index into SEMANTIC_CLASSES
    instances: list[Instance] = field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


# ---------------------------------------------------------------------------------------------
# textures: fields in [-1, 1] over the whole image; the caller keeps the pixels it needs


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(-1.0, 1.0)


def _texture(
    kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, period: float
) -> np.ndarray:
    h, w = yy.shape
    theta = rng.uniform(0.0, math.pi)
    phase = rng.uniform(0.0, 2 * math.pi)
    k = 2 * math.pi / max(period, 2.0)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    across = -xx * math.sin(theta) + yy * math.cos(theta)
    if kind == "plain":
        return 0.25 * _smooth_noise(rng, h, w, period)
    if kind == "stripes":
        return np.sin(k * along + phase)
    if kind == "checker":
        return np.sign(np.sin(k * along + phase) * np.sin(k * across + phase)) * 0.9
    if kind == "dots":
        spots = np.cos(k * along + phase) * np.cos(k * across + phase)
        return np.where(spots > 0.5, 1.0, -0.6)
    if kind == "gradient":
        span = max(h, w)
        return np.clip((along - along.mean()) / (0.5 * span) * 2.0, -1.0, 1.0)
    if kind == "noise":
        return _smooth_noise(rng, h, w, period / 2)
    if kind == "fine":
        return 0.6 * _smooth_noise(rng, h, w, 2.0) + 0.3 * _smooth_noise(rng, h, w, 8.0)
    if kind == "waves":
        return np.sin(k * yy + 2.0 * np.sin(xx * k / 3 + phase))
    if kind == "sky":
        return np.clip(yy / max(h, 1) * 4.0 - 1.0, -1.0, 1.0) + 0.15 * _smooth_noise(
            rng, h, w, 12.0
        )
    if kind == "bricks":
        row = np.floor(yy / (period / 2))
        offset = (row % 2) * period / 2
        mortar = ((yy % (period / 2)) < 1.0) | (((xx + offset) % period) < 1.0)
        return np.where(mortar, 1.0, -0.3) + 0.2 * _smooth_noise(rng, h, w, 4.0)
    raise ValueError(f"unknown texture '{kind}'")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _paint(
    rng: np.random.Generator,
    kind: str,
    hue: float,
    sat: float,
    val: float,
    yy: np.ndarray,
    xx: np.ndarray,
    period: float,
) -> np.ndarray:
    """Two-tone colour field [H, W, 3] in [0, 1]: a base colour mixed with a darker, greyer second
    colour of the same family by the texture."""
    base = _hsv(hue + rng.normal(0, 0.03), sat + rng.normal(0, 0.08), val + rng.normal(0, 0.08))
    second = _hsv(hue + rng.normal(0, 0.02), sat * 0.55, val * 0.55)
    mix = (_texture(kind, rng, yy, xx, period) + 1.0) / 2.0 * 0.8
    return base * (1.0 - mix[..., None]) + second * mix[..., None]


# ---------------------------------------------------------------------------------------------
# shapes: predicates on object coordinates (u, v), the shape spans roughly [-1, 1]


def _regular_polygon(u: np.ndarray, v: np.ndarray, n: int, offset: float) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for i in range(n):
        phi = 2 * math.pi * i / n + offset
        inside &= u * math.cos(phi) + v * math.sin(phi) <= math.cos(math.pi / n)
    return inside


def _shape(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    if kind == "circle":
        return rho <= 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if kind == "triangle":
        return _regular_polygon(u, v, 3, math.pi / 2)
    if kind == "hexagon":
        return _regular_polygon(u, v, 6, 0.0)
    if kind == "diamond":
        return np.abs(u) / 0.65 + np.abs(v) <= 1.0
    if kind == "star":
        return rho <= 0.4 + 0.6 * ((np.cos(5 * phi) + 1) / 2) ** 2
    if kind == "arc":
        # a ring with a gap: COCO polygons cannot hold holes, so the shape has none
        return (rho <= 1.0) & (rho >= 0.55) & (np.abs(phi) >= 0.6)
    if kind == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1.0
    if kind == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if kind == "crescent":
        return (rho <= 1.0) & ((u - 0.5) ** 2 + v**2 > 0.85**2)
    if kind == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.22)
    if kind == "blob":
        a, b = rng.uniform(0, 2 * math.pi, size=2)
        return rho <= 0.75 + 0.15 * np.sin(3 * phi + a) + 0.1 * np.sin(5 * phi + b)
    raise ValueError(f"unknown shape '{kind}'")


# ---------------------------------------------------------------------------------------------
# scene layout


def _stuff_layout(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Stuff index map [H, W]: one upper region over one or two ground regions, wavy borders."""
    h, w = yy.shape
    top = int(rng.choice(_TOP_STUFF))
    bottoms = rng.choice(_BOTTOM_STUFF, size=2, replace=False)
    horizon = rng.uniform(0.3, 0.6) * h
    amp, freq, ph = rng.uniform(0.02, 0.08) * h, rng.uniform(0.5, 2.5), rng.uniform(0, 6.3)
    upper = yy < horizon + amp * np.sin(2 * math.pi * freq * xx / w + ph)
    stuff = np.where(upper, top, int(bottoms[0]))
    if rng.random() < 0.6:
        # a slanted wavy border splits the ground between two stuff classes
        x0, slope = rng.uniform(0.25, 0.75) * w, rng.uniform(-0.8, 0.8)
        right = xx > x0 + slope * (yy - h) + 0.05 * w * np.sin(yy / max(h, 1) * 9 + ph)
        stuff = np.where(~upper & right, int(bottoms[1]), stuff)
    return stuff.astype(np.int64)


def _place_shape(
    rng: np.random.Generator, cat: int, yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, dict]:
    h, w = yy.shape
    # log-uniform size: a few big objects, many small ones (COCO-like scale spread)
    radius = math.exp(rng.uniform(math.log(0.07), math.log(0.3))) * min(h, w)
    cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(0.05, 1.05) * h
    theta = rng.uniform(0, 2 * math.pi)
    # mild anisotropic stretch
    sx = radius * rng.uniform(0.85, 1.15)
    sy = radius * rng.uniform(0.85, 1.15)
    dx, dy = xx - cx, yy - cy
    u = (dx * math.cos(theta) + dy * math.sin(theta)) / sx
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / sy
    mask = _shape(THING_SPECS[cat].shape, u, v, rng)
    # truncated: the shape continues beyond the border (bounding circle leaves the image)
    reach = 1.2 * max(sx, sy)
    truncated = bool(cx - reach < 0 or cy - reach < 0 or cx + reach > w or cy + reach > h)
    return mask, {"radius": radius, "truncated": truncated}


def generate_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: tuple[int, int] = (3, 12),
    min_area: int | None = None,
) -> Scene:
    """Draw one scene. ``num_objects`` is the inclusive range of kept thing instances (fewer only
    when placements keep failing). Instances whose visible area is below ``min_area`` (default
    ``max(16, 0.002 * H * W)``) or below 10% of their unoccluded area are dropped before painting,
    so no unlabeled thing pixels exist."""
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    lo, hi = num_objects
    if not 1 <= lo <= hi:
        raise ValueError(f"num_objects must be an increasing pair >= 1, got {num_objects}")
    if min_area is None:
        min_area = max(16, int(0.002 * height * width))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    target = int(rng.integers(lo, hi + 1))
    shapes: list[tuple[int, np.ndarray, dict]] = []
    kept: list[int] = []
    for _ in range(4 * hi):
        if len(kept) >= target:
            break
        cat = int(rng.integers(len(THING_SPECS)))
        mask, info = _place_shape(rng, cat, yy, xx)
        if mask.sum() < min_area:
            continue
        shapes.append((cat, mask, info))
        kept = _visible_instances(shapes, kept + [len(shapes) - 1], min_area)

    instance_map = np.zeros((height, width), dtype=np.int32)
    for j, idx in enumerate(kept):
        instance_map[shapes[idx][1]] = j + 1

    stuff = _stuff_layout(rng, yy, xx)
    semantic = (stuff + len(THING_SPECS)).astype(np.uint8)
    canvas = np.zeros((height, width, 3), dtype=np.float64)
    for s in np.unique(stuff):
        spec = STUFF_SPECS[int(s)]
        colour = _paint(rng, spec.texture, spec.hue, spec.sat, spec.val, yy, xx, 10.0)
        sel = stuff == s
        canvas[sel] = colour[sel]

    instances: list[Instance] = []
    for j, idx in enumerate(kept):
        cat, full, info = shapes[idx]
        spec = THING_SPECS[cat]
        visible = instance_map == j + 1
        period = max(3.0, info["radius"] * rng.uniform(0.5, 0.8))
        colour = _paint(rng, spec.texture, spec.hue, spec.sat, spec.val, yy, xx, period)
        canvas[visible] = colour[visible]
        semantic[visible] = cat
        ys, xs = np.nonzero(visible)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        instances.append(
            Instance(cat, visible, bbox, int(visible.sum()), int(full.sum()), info["truncated"])
        )

    # camera: global gain, mild blur (anti-aliasing of shape edges) and sensor noise
    img = canvas * rng.uniform(0.85, 1.15) * 255.0
    img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0.6)
    img = img + rng.normal(0.0, 3.0, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Scene(image=image, instance_map=instance_map, semantic=semantic, instances=instances)


def _visible_instances(
    shapes: list[tuple[int, np.ndarray, dict]], order: list[int], min_area: int
) -> list[int]:
    """Indices of ``order`` (painting order) that stay visible enough once later shapes are drawn.
    Dropping a shape only uncovers others, so one pass is enough."""
    h, w = shapes[0][1].shape
    owner = np.full((h, w), -1, dtype=np.int64)
    for idx in order:
        owner[shapes[idx][1]] = idx
    keep = []
    for idx in order:
        area = int((owner == idx).sum())
        if area >= min_area and area >= 0.1 * shapes[idx][1].sum():
            keep.append(idx)
    return keep


def generate_scenes(
    num: int,
    seed: int,
    height: tuple[int, int],
    width: tuple[int, int],
    start: int = 0,
    num_objects: tuple[int, int] = (3, 12),
) -> Iterator[Scene]:
    """Yield scenes ``start .. start + num - 1`` of the stream defined by ``seed``; sizes are drawn
    uniformly from the inclusive ``height`` and ``width`` ranges."""
    for i in range(start, start + num):
        rng = np.random.default_rng([seed, i])
        h = int(rng.integers(height[0], height[1] + 1))
        w = int(rng.integers(width[0], width[1] + 1))
        yield generate_scene(rng, h, w, num_objects=num_objects)
