"""Register the data sets detectron2 does not know, and ``demo_*`` twins of every benchmark.

Importing this module registers (idempotently):

* real data under ``$DETECTRON2_DATASETS`` (default ``datasets``): ``coco_2017_train_unlabeled``,
  ``coco_stuff_10k_sem_seg_{train,test}``, ``voc_2007_cls_{trainval,test}``,
  ``imagenet_train_{1,10}percent``, ``imagenet_val``. COCO, LVIS, VOC detection and Cityscapes
  are detectron2 built-ins and are not registered again.
* synthetic twins under ``$CYBORGS_DEMO_DATASETS`` (default ``datasets/demo``, written by
  ``tools/make_demo_data.py``): ``demo_coco_2017_{train,val,train_unlabeled}``,
  ``demo_voc_{2007_trainval,2012_trainval,2007_test}``, ``demo_lvis_v1_{train,val}``,
  ``demo_cityscapes_fine_sem_seg_{train,val}``, ``demo_coco_stuff_10k_sem_seg_{train,test}``,
  ``demo_voc_2007_cls_{trainval,test}``, ``demo_imagenet_{train_1percent,train_10percent,val}``.

Both environment variables are read when a data set or a path in its metadata is used, not at
import, so setting them any time before first use works.

Dicts of the sets added here:
  unlabeled: ``{file_name, image_id, height, width}`` (COCO ids are the int file stems);
  VOC classification: ``{file_name, image_id, height, width, labels, difficult}`` where
  ``labels[c]`` is 1 when class c has a non-difficult instance, and ``difficult[c]`` is 1 when
  class c has only difficult instances (VOC's flag 0; excluded from the test mAP);
  ImageNet: ``{file_name, image_id, label}``; ``label`` indexes ``thing_classes`` (class folders
  in sorted order).
"""

from __future__ import annotations

import functools
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from detectron2.data.datasets.coco import load_coco_json, load_sem_seg
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES
from detectron2.data.datasets.pascal_voc import load_voc_instances

from cyborgs.data.image_ids import check_unique_image_ids
from cyborgs.data.image_sizes import read_image_sizes, warn_unreadable
from cyborgs.data.synthetic import THING_CLASSES
from cyborgs.data.writers.coco import coco_category_ids
from cyborgs.data.writers.coco_stuff import COCO_STUFF_171_CLASSES

__all__ = [
    "demo_root",
    "real_root",
    "register_all",
    "load_unlabeled_images",
    "load_voc_cls",
    "load_imagenet",
    "DEMO_DATASETS",
    "REAL_DATASETS",
]

logger = logging.getLogger(__name__)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")


def demo_root() -> str:
    return os.getenv("CYBORGS_DEMO_DATASETS", "datasets/demo")


def real_root() -> str:
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def _path(kind: str, rel: str) -> str:
    root = demo_root() if kind == "demo" else real_root()
    # a trailing "/" survives: detectron2's LVIS reader concatenates image_root + split folder
    return os.path.join(root, rel)


def _require(kind: str, name: str, path: str, layout: str) -> None:
    """Raise a clear error when a data set's file or folder is missing."""
    if os.path.exists(path):
        return
    if kind == "demo":
        root = demo_root()
        how = f"generate it with: python tools/make_demo_data.py --root {root} --preset demo"
        if os.path.isdir(root) and not os.path.exists(os.path.join(root, "DONE")):
            how = f"{root} has no DONE marker (an interrupted run?); re-run: " + how + " --force"
        raise FileNotFoundError(
            f"data set '{name}': {path} not found (CYBORGS_DEMO_DATASETS={root}); {how}"
        )
    raise FileNotFoundError(
        f"data set '{name}': {path} not found (DETECTRON2_DATASETS={real_root()}). "
        f"Expected layout under the root: {layout}"
    )


class _LazyMetadata(Metadata):
    """Metadata whose path-valued attributes are computed on access (from the env vars), so the
    data roots need not be known at import time."""

    def __getattr__(self, key: str) -> Any:
        lazy = self.__dict__.get("_lazy")
        if lazy is not None and key in lazy:
            return lazy[key]()
        return super().__getattr__(key)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "_lazy"}
        d.update({k: f() for k, f in self.__dict__.get("_lazy", {}).items()})
        return d


def _register(
    name: str,
    loader: Callable[[], list[dict]],
    lazy: dict[str, Callable[[], Any]],
    **meta: Any,
) -> None:
    if name in DatasetCatalog.list():
        return  # idempotent: a second import or call keeps the first registration
    DatasetCatalog.register(name, loader)
    m = _LazyMetadata(name=name)
    object.__setattr__(m, "_lazy", dict(lazy))
    m.set(**meta)
    MetadataCatalog[name] = m


# ---------------------------------------------------------------------------------------------
# loaders of the formats detectron2 has no reader for


def load_unlabeled_images(image_root: str) -> list[dict]:
    """Every image file directly in ``image_root`` (sorted), sizes read from the headers (cached
    across runs: :mod:`cyborgs.data.image_sizes`). A file with an unreadable header stays in
    the list with height and width 0 (one warning names them all): the pretraining loader and
    the bootstrap rounds skip, name and count it instead of the registration failing."""
    names = sorted(f for f in os.listdir(image_root) if f.endswith(_IMAGE_EXTS))
    if not names:
        raise FileNotFoundError(f"no images (*.jpg, *.png) found in {image_root}")
    out, bad = [], []
    for f, size in zip(names, read_image_sizes(image_root, names), strict=True):
        path = os.path.join(image_root, f)
        if isinstance(size, str):
            bad.append((path, size))
            size = (0, 0)  # kept: the loaders skip it when it fails to read, and count it
        stem = os.path.splitext(f)[0]
        out.append(
            {
                "file_name": path,
                "image_id": int(stem) if stem.isdigit() else stem,
                "height": size[1],
                "width": size[0],
            }
        )
    if len(bad) == len(out):
        raise FileNotFoundError(f"no readable image in {image_root}: {bad[0][0]}: {bad[0][1]}")
    check_unique_image_ids(out)  # "5.jpg", "0005.jpg" and "5.png" would all be image 5
    warn_unreadable(image_root, bad)
    return out


def load_voc_cls(
    dirname: str, split: str, class_names: tuple[str, ...] = VOC_CLASS_NAMES
) -> list[dict]:
    """VOC classification dicts from ``ImageSets/Main/<cls>_<split>.txt`` (1 / -1 / 0)."""
    main = os.path.join(dirname, "ImageSets", "Main")
    with open(os.path.join(main, f"{split}.txt")) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    flags = np.full((len(ids), len(class_names)), -1, dtype=np.int64)
    row = {fid: i for i, fid in enumerate(ids)}
    for c, cls in enumerate(class_names):
        path = os.path.join(main, f"{cls}_{split}.txt")
        with open(path) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("1", "-1", "0") or parts[0] not in row:
                    raise ValueError(
                        f"{path}:{n}: expected '<id in {split}.txt> <1|-1|0>', got {line.strip()!r}"
                    )
                flags[row[parts[0]], c] = int(parts[1])
    out = []
    for fid, f in zip(ids, flags, strict=True):
        size = ET.parse(os.path.join(dirname, "Annotations", fid + ".xml")).find("size")
        out.append(
            {
                "file_name": os.path.join(dirname, "JPEGImages", fid + ".jpg"),
                "image_id": fid,
                "height": int(size.find("height").text),
                "width": int(size.find("width").text),
                "labels": (f == 1).astype(int).tolist(),
                "difficult": (f == 0).astype(int).tolist(),
            }
        )
    return out


def _class_folders(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def load_imagenet(
    split_root: str, class_names: list[str], subset_file: str | None = None
) -> list[dict]:
    """ImageNet-style tree ``split_root/<class>/*``; with ``subset_file`` only the listed train
    files (SimCLR lists: ``n01440764_10026.JPEG``, class = text before the first "_"; a line
    with a "/" is taken as ``<class>/<file>``)."""
    index = {c: i for i, c in enumerate(class_names)}
    if subset_file is None:
        rels = [
            f"{c}/{f}"
            for c in class_names
            if os.path.isdir(os.path.join(split_root, c))
            for f in sorted(os.listdir(os.path.join(split_root, c)))
            if f.endswith(_IMAGE_EXTS)
        ]
    else:
        with open(subset_file) as f:
            lines = [line.strip() for line in f if line.strip()]
        rels = [ln if "/" in ln else f"{ln.split('_')[0]}/{ln}" for ln in lines]
    out = []
    for rel in rels:
        cls = rel.split("/")[0]
        path = os.path.join(split_root, rel)
        if cls not in index or (subset_file is not None and not os.path.isfile(path)):
            raise FileNotFoundError(
                f"{subset_file}: entry '{rel}' has no image at {path} (class '{cls}')"
            )
        out.append({"file_name": path, "image_id": rel, "label": index[cls]})
    return out


# ---------------------------------------------------------------------------------------------
# registration


def _checked(kind: str, name: str, rels: list[str], layout: str, fn: Callable, *args: Any):
    """Resolve ``rels`` under the root now, check they exist, then call ``fn(*paths, *args)``."""
    paths = [_path(kind, r) for r in rels]
    for p in paths:
        _require(kind, name, p, layout)
    return fn(*paths, *args)


def _sem_seg_pairs(gt_root: str, image_root: str) -> list[dict]:
    # load_sem_seg pairs images and labels by sorted order; verify each pair really matches
    dicts = load_sem_seg(gt_root, image_root, gt_ext="_labelTrainIds.png", image_ext=".jpg")
    for d in dicts:
        stem = os.path.basename(d["file_name"])[: -len(".jpg")]
        if os.path.basename(d["sem_seg_file_name"]) != stem + "_labelTrainIds.png":
            raise ValueError(
                f"{gt_root}: label {d['sem_seg_file_name']} paired with {d['file_name']}"
            )
    return dicts


def _lvis_checked(json_file: str, image_root: str, name: str) -> list[dict]:
    # dataset_name=None: detectron2 would otherwise install the 1203 real LVIS class names
    dicts = load_lvis_json(json_file, image_root)
    from lvis import LVIS

    names = [
        c["name"] for c in sorted(LVIS(json_file).dataset["categories"], key=lambda c: c["id"])
    ]
    if names != list(MetadataCatalog.get(name).thing_classes):
        raise ValueError(
            f"{json_file}: categories {names} differ from the registered thing_classes"
        )
    return dicts


_LAYOUT = {
    "unlabeled": "coco/train2017/*.jpg",
    "coco_stuff": "coco_stuff_10k/images/{train2014,test2014}/*.jpg and "
    "coco_stuff_10k/annotations/{train2014,test2014}/*_labelTrainIds.png (mmsegmentation's "
    "tools/convert_datasets/coco_stuff10k.py)",
    "voc_cls": "VOC2007/{JPEGImages,Annotations,ImageSets/Main/<cls>_{trainval,test}.txt}",
    "imagenet": "imagenet/{train,val}/<wnid>/*.JPEG and SimCLR's imagenet/subsets/"
    "{1percent,10percent}.txt",
    "coco": "coco/{train2017,val2017} and coco/annotations/instances_{train,val}2017.json",
    "voc": "VOC2007, VOC2012 with JPEGImages, Annotations, ImageSets/Main",
    "lvis": "lvis/lvis_v1_{train,val}.json over coco/{train2017,val2017}",
    "cityscapes": "cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/",
}


def _register_family(kind: str) -> list[str]:
    """The sets shared by the real root and the demo root (``kind`` = "real" or "demo")."""
    pre = "demo_" if kind == "demo" else ""
    P = functools.partial(_path, kind)
    names = []

    def reg(name, rels, layout, fn, extra_args, lazy, **meta):
        full = pre + name
        loader = functools.partial(_checked, kind, full, rels, _LAYOUT[layout], fn, *extra_args)
        _register(full, loader, lazy, **meta)
        names.append(full)

    reg(
        "coco_2017_train_unlabeled",
        ["coco/train2017"],
        "unlabeled",
        load_unlabeled_images,
        (),
        {"image_root": functools.partial(P, "coco/train2017")},
    )
    for split, folder in (("train", "train2014"), ("test", "test2014")):
        gt, img = f"coco_stuff_10k/annotations/{folder}", f"coco_stuff_10k/images/{folder}"
        reg(
            f"coco_stuff_10k_sem_seg_{split}",
            [gt, img],
            "coco_stuff",
            _sem_seg_pairs,
            (),
            {"sem_seg_root": functools.partial(P, gt), "image_root": functools.partial(P, img)},
            stuff_classes=list(COCO_STUFF_171_CLASSES),
            ignore_label=255,
            evaluator_type="sem_seg",
        )
    for split in ("trainval", "test"):
        reg(
            f"voc_2007_cls_{split}",
            ["VOC2007"],
            "voc_cls",
            load_voc_cls,
            (split,),
            {"dirname": functools.partial(P, "VOC2007")},
            thing_classes=list(VOC_CLASS_NAMES),
            year=2007,
            split=split,
            evaluator_type="voc_cls",
        )
    if kind == "demo":
        in_lazy: dict[str, Callable] = {}
        in_classes: dict[str, Any] = {"thing_classes": sorted(THING_CLASSES)}
    else:  # the real class list is the sorted wnid folders, read when first asked for
        in_lazy = {"thing_classes": lambda: _class_folders(_path("real", "imagenet/train"))}
        in_classes = {}

    def classes() -> list[str]:
        return in_classes.get("thing_classes") or in_lazy["thing_classes"]()

    for subset in ("1percent", "10percent"):
        sub = f"imagenet/subsets/{subset}.txt"
        reg(
            f"imagenet_train_{subset}",
            ["imagenet/train", sub],
            "imagenet",
            lambda root, subset_file: load_imagenet(root, classes(), subset_file),
            (),
            {"image_root": functools.partial(P, "imagenet/train"), **in_lazy},
            evaluator_type="imagenet_cls",
            **in_classes,
        )
    reg(
        "imagenet_val",
        ["imagenet/val"],
        "imagenet",
        lambda root: load_imagenet(root, classes()),
        (),
        {"image_root": functools.partial(P, "imagenet/val"), **in_lazy},
        evaluator_type="imagenet_cls",
        **in_classes,
    )
    return names


def _register_demo_builtin_twins() -> list[str]:
    """Twins of detectron2's built-in COCO / VOC / LVIS / Cityscapes sets, read with
    detectron2's own readers."""
    P = functools.partial(_path, "demo")
    names = []

    def reg(name, rels, layout, fn, extra_args, lazy, **meta):
        loader = functools.partial(_checked, "demo", name, rels, _LAYOUT[layout], fn, *extra_args)
        _register(name, loader, lazy, **meta)
        names.append(name)

    coco_meta = {
        "thing_classes": list(THING_CLASSES),
        "thing_dataset_id_to_contiguous_id": {c: i for i, c in enumerate(coco_category_ids())},
        "evaluator_type": "coco",
    }
    for split in ("train", "val"):
        js, img = f"coco/annotations/instances_{split}2017.json", f"coco/{split}2017"
        name = f"demo_coco_2017_{split}"
        reg(
            name,
            [js, img],
            "coco",
            load_coco_json,
            (name,),
            {"json_file": functools.partial(P, js), "image_root": functools.partial(P, img)},
            **coco_meta,
        )
    for year, split in (("2007", "trainval"), ("2012", "trainval"), ("2007", "test")):
        reg(
            f"demo_voc_{year}_{split}",
            [f"VOC{year}"],
            "voc",
            load_voc_instances,
            (split, VOC_CLASS_NAMES),
            {"dirname": functools.partial(P, f"VOC{year}")},
            thing_classes=list(VOC_CLASS_NAMES),
            year=int(year),
            split=split,
            evaluator_type="pascal_voc",
        )
    for split in ("train", "val"):
        js = f"lvis/lvis_v1_{split}.json"
        name = f"demo_lvis_v1_{split}"
        reg(
            name,
            [js, "coco/"],
            "lvis",
            _lvis_checked,
            (name,),
            {"json_file": functools.partial(P, js), "image_root": functools.partial(P, "coco/")},
            thing_classes=list(THING_CLASSES),
            evaluator_type="lvis",
        )
    cs_meta = _get_builtin_metadata("cityscapes")
    for split in ("train", "val"):
        img, gt = f"cityscapes/leftImg8bit/{split}/", f"cityscapes/gtFine/{split}/"
        reg(
            f"demo_cityscapes_fine_sem_seg_{split}",
            [img, gt],
            "cityscapes",
            load_cityscapes_semantic,
            (),
            {"image_dir": functools.partial(P, img), "gt_dir": functools.partial(P, gt)},
            ignore_label=255,
            # METHOD.md §6.3: detectron2's Cityscapes evaluator is broken; use SemSegEvaluator
            evaluator_type="sem_seg",
            **cs_meta,
        )
    return names


REAL_DATASETS: list[str] = []
DEMO_DATASETS: list[str] = []


def register_all() -> None:
    """Register every set (idempotent; called at import)."""
    if REAL_DATASETS:
        return
    REAL_DATASETS.extend(_register_family("real"))
    DEMO_DATASETS.extend(_register_demo_builtin_twins())
    DEMO_DATASETS.extend(_register_family("demo"))


register_all()
