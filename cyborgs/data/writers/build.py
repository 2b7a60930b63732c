"""Generate one set of scenes and write every on-disk layout under a root (presets, DONE marker).

The whole tree is first written to a staging folder inside the root, then each top-level layout
is moved into place, then ``DONE`` (preset, seed, generator version) is written last: a root
without ``DONE`` is incomplete, and re-running with the arguments recorded in ``DONE`` is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cyborgs.data.synthetic import generate_scenes
from cyborgs.data.writers.cityscapes import write_cityscapes
from cyborgs.data.writers.coco import write_coco
from cyborgs.data.writers.coco_stuff import write_coco_stuff
from cyborgs.data.writers.common import SceneRecord, encode_jpeg, write_json
from cyborgs.data.writers.imagenet import write_imagenet
from cyborgs.data.writers.lvis import write_lvis
from cyborgs.data.writers.voc import write_voc

__all__ = ["Preset", "PRESETS", "LAYOUTS", "DONE_FILE", "GENERATOR_VERSION", "build_demo_data"]

logger = logging.getLogger(__name__)

# Bump when the generator or a writer changes its output, so old trees are not reused.
GENERATOR_VERSION = 1
DONE_FILE = "DONE"
_INCOMPLETE_FILE = "INCOMPLETE"
_STAGING = ".staging"
LAYOUTS = ("coco", "lvis", "VOC2007", "VOC2012", "cityscapes", "coco_stuff_10k", "imagenet")


@dataclass(frozen=True)
class Preset:
    num_train: int
    num_val: int
    height: tuple[int, int]  # inclusive range of scene heights
    width: tuple[int, int]
    crop_size: int  # side of the ImageNet-style crops


PRESETS: dict[str, Preset] = {
    # tests: generated once per session in about a second
    "tiny": Preset(num_train=24, num_val=8, height=(64, 96), width=(80, 128), crop_size=48),
    # demos / smoke trainings: a few hundred images, under a minute on one core
    "demo": Preset(num_train=400, num_val=100, height=(112, 160), width=(128, 192), crop_size=64),
}


def _read_done(root: Path) -> dict | None:
    path = root / DONE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{path} is not a valid DONE marker ({e}); re-run with --force") from e


def build_demo_data(
    root: str | os.PathLike, preset: str = "tiny", seed: int = 0, force: bool = False
) -> Path:
    """Write all layouts for ``preset`` and ``seed`` under ``root``; returns the root path.

    A root already holding this preset/seed/version is left alone unless ``force``. A root holding
    other data (a different DONE, or layout folders with no marker) is only overwritten with
    ``force``, so a real DETECTRON2_DATASETS root is never clobbered by accident.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; expected one of {sorted(PRESETS)}")
    root = Path(root)
    want = {"preset": preset, "seed": int(seed), "version": GENERATOR_VERSION}
    done = _read_done(root)
    if done == want and not force:
        logger.info("%s already holds %s; nothing to do", root, want)
        return root
    if not force:
        if done is not None:
            raise RuntimeError(
                f"{root} already holds demo data {done}, not {want}; pass --force to replace it"
            )
        existing = [n for n in LAYOUTS if (root / n).exists()]
        if existing and not (root / _INCOMPLETE_FILE).exists():
            raise RuntimeError(
                f"{root} already contains {existing} not written by make_demo_data; "
                "pass --force to overwrite them"
            )

    p = PRESETS[preset]
    staging = root / _STAGING
    if staging.exists():
        shutil.rmtree(staging)  # left over from an interrupted run
    staging.mkdir(parents=True)
    records = []
    scenes = generate_scenes(p.num_train + p.num_val, seed, p.height, p.width)
    for i, scene in enumerate(scenes):
        split = "train" if i < p.num_train else "val"
        records.append(SceneRecord(i, split, scene, encode_jpeg(scene.image)))
    splits = {s: [r for r in records if r.split == s] for s in ("train", "val")}

    coco = write_coco(staging, splits)
    write_lvis(staging, coco)
    write_voc(staging, splits)
    write_cityscapes(staging, splits)
    write_coco_stuff(staging, splits)
    write_imagenet(staging, splits, p.crop_size, seed)

    # swap the layouts in; INCOMPLETE marks the window in which the root is half-replaced
    (root / DONE_FILE).unlink(missing_ok=True)
    write_json(root / _INCOMPLETE_FILE, want)
    for name in LAYOUTS:
        if (root / name).exists():
            shutil.rmtree(root / name)
        os.replace(staging / name, root / name)
    shutil.rmtree(staging)
    write_json(root / DONE_FILE, want)
    (root / _INCOMPLETE_FILE).unlink()
    logger.info("wrote %s demo data (seed %d) to %s", preset, seed, root)
    return root
