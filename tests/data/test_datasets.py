import importlib
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import cyborgs.data.datasets as ds
from cyborgs.data.synthetic import THING_CLASSES

EVALUATORS = {
    "demo_coco_2017_train": "coco",
    "demo_coco_2017_val": "coco",
    "demo_voc_2007_trainval": "pascal_voc",
    "demo_voc_2012_trainval": "pascal_voc",
    "demo_voc_2007_test": "pascal_voc",
    "demo_lvis_v1_train": "lvis",
    "demo_lvis_v1_val": "lvis",
    "demo_cityscapes_fine_sem_seg_train": "sem_seg",
    "demo_cityscapes_fine_sem_seg_val": "sem_seg",
    "demo_coco_stuff_10k_sem_seg_train": "sem_seg",
    "demo_coco_stuff_10k_sem_seg_test": "sem_seg",
    "demo_voc_2007_cls_trainval": "voc_cls",
    "demo_voc_2007_cls_test": "voc_cls",
    "demo_imagenet_train_1percent": "imagenet_cls",
    "demo_imagenet_train_10percent": "imagenet_cls",
    "demo_imagenet_val": "imagenet_cls",
}


def test_every_demo_twin_registered_and_loads(tiny_data_root):
    assert set(EVALUATORS) | {"demo_coco_2017_train_unlabeled"} == set(ds.DEMO_DATASETS)
    for name in ds.DEMO_DATASETS:
        dicts = DatasetCatalog.get(name)
        assert dicts, name
        for d in dicts:
            assert os.path.isfile(d["file_name"]), name
            assert str(tiny_data_root) in d["file_name"]
            if "sem_seg_file_name" in d:
                assert os.path.isfile(d["sem_seg_file_name"])
        meta = MetadataCatalog.get(name)
        assert meta.get("evaluator_type") == EVALUATORS.get(name), name


def test_real_names_added_and_builtins_untouched():
    assert set(ds.REAL_DATASETS) == {
        "coco_2017_train_unlabeled",
        "coco_stuff_10k_sem_seg_train",
        "coco_stuff_10k_sem_seg_test",
        "voc_2007_cls_trainval",
        "voc_2007_cls_test",
        "imagenet_train_1percent",
        "imagenet_train_10percent",
        "imagenet_val",
    }
    # detectron2's built-in loaders stay as registered by detectron2
    assert "coco_2017_train" in DatasetCatalog.list()
    assert MetadataCatalog.get("coco_stuff_10k_sem_seg_train").ignore_label == 255
    assert len(MetadataCatalog.get("coco_stuff_10k_sem_seg_train").stuff_classes) == 171


def test_metadata(tiny_data_root):
    coco = MetadataCatalog.get("demo_coco_2017_train")
    assert coco.thing_classes == list(THING_CLASSES)
    assert sorted(coco.thing_dataset_id_to_contiguous_id.values()) == list(
        range(len(THING_CLASSES))
    )
    assert coco.json_file == os.path.join(
        str(tiny_data_root), "coco/annotations/instances_train2017.json"
    )
    assert coco.as_dict()["image_root"].endswith("coco/train2017")
    voc = MetadataCatalog.get("demo_voc_2007_test")
    assert (voc.year, voc.split, len(voc.thing_classes)) == (2007, "test", 20)
    assert os.path.isdir(voc.dirname)
    lvis = MetadataCatalog.get("demo_lvis_v1_val")
    assert lvis.thing_classes == list(THING_CLASSES) and os.path.isfile(lvis.json_file)
    cs = MetadataCatalog.get("demo_cityscapes_fine_sem_seg_train")
    assert len(cs.stuff_classes) == 19 and cs.ignore_label == 255


def test_lvis_twin_keeps_its_own_classes(tiny_data_root):
    dicts = DatasetCatalog.get("demo_lvis_v1_train")
    assert MetadataCatalog.get("demo_lvis_v1_train").thing_classes == list(THING_CLASSES)
    cats = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert cats <= set(range(len(THING_CLASSES)))


def test_voc_cls_agrees_with_detection_annotations(tiny_data_root):
    det = {d["image_id"]: d for d in DatasetCatalog.get("demo_voc_2007_test")}
    cls = DatasetCatalog.get("demo_voc_2007_cls_test")
    assert len(cls) == len(det)
    for d in cls:
        present = {a["category_id"] for a in det[d["image_id"]]["annotations"]}
        labels, difficult = np.array(d["labels"]), np.array(d["difficult"])
        assert not np.any(labels & difficult)
        assert set(np.nonzero(labels | difficult)[0]) == present


def test_imagenet_and_unlabeled(tiny_data_root):
    classes = MetadataCatalog.get("demo_imagenet_val").thing_classes
    for name in ("demo_imagenet_train_1percent", "demo_imagenet_val"):
        for d in DatasetCatalog.get(name):
            assert os.path.basename(os.path.dirname(d["file_name"])) == classes[d["label"]]
    ten = DatasetCatalog.get("demo_imagenet_train_10percent")
    one = DatasetCatalog.get("demo_imagenet_train_1percent")
    assert {d["image_id"] for d in one} <= {d["image_id"] for d in ten}
    unl = DatasetCatalog.get("demo_coco_2017_train_unlabeled")
    assert len({d["image_id"] for d in unl}) == len(unl)
    for d in unl:
        assert isinstance(d["image_id"], int)
        with Image.open(d["file_name"]) as im:
            assert im.size == (d["width"], d["height"])
    # the real name reads $DETECTRON2_DATASETS, which the fixture points at the tiny root too
    assert len(DatasetCatalog.get("coco_2017_train_unlabeled")) == len(unl)


def test_env_var_read_lazily_and_missing_data_explained(tiny_data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CYBORGS_DEMO_DATASETS", str(tmp_path / "nowhere"))
    assert MetadataCatalog.get("demo_coco_2017_val").json_file.startswith(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make_demo_data.py --root .*nowhere --preset demo"):
        DatasetCatalog.get("demo_coco_2017_val")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "real"))
    with pytest.raises(FileNotFoundError, match="coco_stuff_10k/images"):
        DatasetCatalog.get("coco_stuff_10k_sem_seg_train")
    with pytest.raises(FileNotFoundError, match="subsets"):
        DatasetCatalog.get("imagenet_train_1percent")


def test_incomplete_demo_root_says_so(tmp_path, monkeypatch):
    (tmp_path / "coco").mkdir()
    monkeypatch.setenv("CYBORGS_DEMO_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no DONE marker"):
        DatasetCatalog.get("demo_coco_2017_train")


def test_registration_idempotent():
    before = list(DatasetCatalog.list())
    ds.register_all()
    importlib.reload(ds)  # a second import registers nothing new and raises nothing
    assert sorted(DatasetCatalog.list()) == sorted(before)


def test_unlabeled_images_sharing_an_id_are_refused(tmp_path):
    """ "0005.png" and "5.jpg" are both image 5 (numeric stems become int ids, as COCO's file
    names do): the mask store keeps one map per id, so registration must refuse them."""
    for name in ("0005.png", "5.jpg", "7.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(ValueError, match=r"0005\.png and .*5\.jpg have the same image_id 5"):
        ds.load_unlabeled_images(str(tmp_path))
    (tmp_path / "0005.png").unlink()
    assert [d["image_id"] for d in ds.load_unlabeled_images(str(tmp_path))] == [5, 7]
