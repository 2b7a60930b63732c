"""Checks run before any training: data sets, their files, the weight file, class counts, the
training boxes (:mod:`cyborgs.transfer.annotations`).

A transfer run can take a day; a typo in a path should cost seconds, not a crash at the first
evaluation or -- worse -- a silently random-initialised backbone.
"""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from cyborgs.engine.weights_io import checkpoint_format
from cyborgs.transfer.annotations import check_detection_annotations

# Metadata attributes that name files or folders a data set reads (detectron2 built-ins and
# cyborgs.data.datasets both use these names).
_PATH_ATTRS = ("json_file", "image_root", "dirname", "sem_seg_root", "image_dir", "gt_dir")

_PREPARE = (
    "Prepare the data under $DETECTRON2_DATASETS as detectron2's datasets/README.md describes "
    "(or, for demo_* sets, run tools/make_demo_data.py --root $CYBORGS_DEMO_DATASETS)."
)


def check_datasets(names: list[str] | tuple[str, ...]) -> None:

    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise KeyError(f"data set '{name}' is not registered. {_PREPARE}")
        meta = MetadataCatalog.get(name)
        for attr in _PATH_ATTRS:
            path = meta.get(attr, None)
            if isinstance(path, str) and path and not os.path.exists(path):
                raise FileNotFoundError(
                    f"data set '{name}': {attr} {path} does not exist. {_PREPARE}"
                )


def check_num_classes(cfg) -> None:
    """NUM_CLASSES must equal the training set's class count (else heads mis-shape silently)."""
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            classes, key = meta.get("stuff_classes", None), "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
            n = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        else:
            classes, key = meta.get("thing_classes", None), "MODEL.ROI_HEADS.NUM_CLASSES"
            n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        if classes is not None and len(classes) != n:
            raise ValueError(f"{key} is {n} but data set '{name}' has {len(classes)} classes")


def check_weights(cfg, eval_only: bool) -> None:
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if eval_only or not cfg.TRANSFER.CHECK_BACKBONE_LOADED:
            return
        raise ValueError(
            "MODEL.WEIGHTS is empty: set it to the converted backbone "
            "(tools/convert_to_detectron2.py CKPT OUT.pkl), or pass "
            "TRANSFER.CHECK_BACKBONE_LOADED False to train from random init on purpose"
        )
    if weights.startswith(("detectron2://", "http://", "https://", "catalog://")):
        return  # fetched by detectron2's PathManager
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights} does not exist: convert the pretraining checkpoint first "
            "(tools/convert_to_detectron2.py CKPT OUT.pkl)"
        )
    checkpoint_format(weights)  # a text / image / empty file: "not a checkpoint", before training


def preflight(cfg, eval_only: bool = False, resume: bool = False) -> None:
    check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_num_classes(cfg)
    check_weights(cfg, eval_only)
    if not eval_only and cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
        # boxes that would train silently to a zero loss or fail mid-run (annotations.py)
        check_detection_annotations(cfg.DATASETS.TRAIN)
