"""Transfer training boxes are checked before training: broken ones are errors naming the file,
the annotation id and the field; degenerate ones (detectron2 drops them) a counted warning."""

from __future__ import annotations

import json
import logging

import pytest
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from cyborgs.transfer.annotations import AnnotationError, check_detection_annotations
from cyborgs.transfer.preflight import preflight

GOOD = [
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]},
    # reaches 0.5 px past the right edge (rounding): clipped by detectron2, not an error
    {"id": 2, "image_id": 1, "category_id": 3, "bbox": [70.0, 0.0, 30.5, 80.0]},
    {"id": 3, "image_id": 2, "category_id": 3, "bbox": [-1, -1, 5, 5], "iscrowd": 1},
]


def _register(tmp_path, name: str, annotations: list[dict]) -> str:
    """A COCO instances file with two 100x80 images and categories 1 and 3."""
    json_file = tmp_path / f"{name}.json"
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2)],
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
        "annotations": annotations,
    }
    json_file.write_text(json.dumps(data))  # allow_nan: NaN / Infinity written as Python does
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    return str(json_file)


def test_sound_annotations_pass(tmp_path) -> None:
    _register(tmp_path, "ann_good", GOOD)
    assert check_detection_annotations(["ann_good"]) == 0


@pytest.mark.parametrize(
    "bad, field, says",
    [
        ({"bbox": [10, 10, float("nan"), 20]}, "'bbox'", "not finite"),
        ({"bbox": [10, float("inf"), 5, 5]}, "'bbox'", "not finite"),
        ({"bbox": [1e30, 10, 5, 5]}, "'bbox'", "beyond its 100x80 image"),
        ({"bbox": [10, 10, 1e30, 5]}, "'bbox'", "beyond its 100x80 image"),
        ({"bbox": [50, 10, -20, 5]}, "'bbox'", "inverted (negative width or height)"),
        ({"bbox": [10, 10, 5]}, "'bbox'", "expected 4 numbers"),
        ({"bbox": [10, 10, "5", 5]}, "'bbox'", "expected 4 numbers"),
        ({"bbox": None}, "'bbox'", "expected 4 numbers"),
        ({"bbox": ...}, "'bbox' field", "has no"),
        ({"category_id": ...}, "'category_id' field", "has no"),
        ({"category_id": 2}, "'category_id' = 2", "not in 'categories'"),
        ({"image_id": 9}, "'image_id' = 9", "not in 'images'"),
    ],
)
def test_broken_box_is_an_error_naming_file_id_and_field(tmp_path, bad, field, says) -> None:
    ann = {"id": 77, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20]}
    ann.update({k: v for k, v in bad.items() if v is not ...})
    for k in [k for k, v in bad.items() if v is ...]:
        del ann[k]
    json_file = _register(tmp_path, "ann_bad", [*GOOD, ann])
    with pytest.raises(AnnotationError) as e:
        check_detection_annotations(["ann_bad"])
    msg = str(e.value)
    assert f"{json_file}: annotation id 77" in msg and field in msg and says in msg, msg
    assert "\n" not in msg and "annotation id 1" not in msg  # one line; only the bad one


def test_every_bad_annotation_is_counted_and_the_first_ones_listed(tmp_path) -> None:
    bad = [
        {"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]} for i in range(13)
    ]
    _register(tmp_path, "ann_many", [*GOOD, *bad])
    with pytest.raises(AnnotationError, match=r"13 annotation\(s\).*id 109.*and 3 more$"):
        check_detection_annotations(["ann_many"])


def test_degenerate_boxes_are_a_counted_warning(tmp_path, caplog) -> None:
    # zero width; zero height; non-empty but entirely left of the image (empty once clipped)
    degenerate = [
        {"id": 50, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},
        {"id": 51, "image_id": 2, "category_id": 3, "bbox": [10, 10, 5, 0.0]},
        {"id": 52, "image_id": 2, "category_id": 3, "bbox": [-20, 10, 15, 5]},
    ]
    _register(tmp_path, "ann_degenerate", [*GOOD, *degenerate])
    log = logging.getLogger("cyborgs.transfer.annotations")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="cyborgs.transfer.annotations"):
            assert check_detection_annotations(["ann_degenerate"]) == 3
    finally:
        log.removeHandler(caplog.handler)
    (msg,) = {r.getMessage() for r in caplog.records if "ann_degenerate" in r.getMessage()}
    assert "ann_degenerate.json): 3 box(es)" in msg and "filter_empty_instances" in msg
    assert msg.endswith(": id 50, id 51, id 52")


def test_sets_without_a_json_file_are_checked_on_their_dicts(tmp_path) -> None:
    name = "ann_voc_like"
    dicts = [
        {
            "file_name": str(tmp_path / "000005.jpg"),
            "image_id": "000005",
            "width": 100,
            "height": 80,
            "annotations": [
                {"bbox": [5, 5, 20, 20], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
                {"bbox": [30, 5, 20, 20], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
            ],
        }
    ]
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog.list():
            catalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a"])
    with pytest.raises(AnnotationError, match=r"000005\.jpg: annotation #1: field 'bbox'.*x1 < x0"):
        check_detection_annotations([name])
    dicts[0]["annotations"][1]["bbox"] = [30, 5, 50, 25]
    del dicts[0]["annotations"][0]["category_id"]
    with pytest.raises(AnnotationError, match=r"annotation #0 has no 'category_id' field"):
        check_detection_annotations([name])


def test_preflight_runs_the_check_on_training_sets_only(tmp_path) -> None:
    _register(tmp_path, "ann_train", [*GOOD, {"id": 9, "image_id": 1, "category_id": 1}])
    cfg = get_cfg()
    cfg.TRANSFER = CN({"CHECK_BACKBONE_LOADED": False})
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("ann_train",), ()
    with pytest.raises(AnnotationError, match="annotation id 9 has no 'bbox' field"):
        preflight(cfg)
    preflight(cfg, eval_only=True)  # evaluating trains nothing: not checked
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ("ann_train",)
    preflight(cfg)
