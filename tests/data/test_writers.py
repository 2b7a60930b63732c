import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic
from detectron2.data.datasets.coco import load_sem_seg
from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances
from lvis import LVIS
from PIL import Image
from pycocotools.coco import COCO

from cyborgs.data.synthetic import THING_CLASSES, THING_SPECS, generate_scenes
from cyborgs.data.writers import PRESETS, build_demo_data
from cyborgs.data.writers.coco_stuff import semantic_to_coco_stuff
from cyborgs.data.writers.common import mask_to_polygons

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def scenes():
    # the scenes behind the tiny preset (seed 0), in file order: index i -> COCO id i + 1
    return list(generate_scenes(TINY.num_train + TINY.num_val, 0, TINY.height, TINY.width))


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_coco_loads_and_matches_scenes(tiny_data_root, scenes):
    for split, n, offset in (("train", TINY.num_train, 0), ("val", TINY.num_val, TINY.num_train)):
        api = COCO(str(tiny_data_root / f"coco/annotations/instances_{split}2017.json"))
        assert len(api.getImgIds()) == n
        assert [c["name"] for c in api.loadCats(sorted(api.getCatIds()))] == list(THING_CLASSES)
        ious = []
        for img in api.loadImgs(api.getImgIds()):
            scene = scenes[img["id"] - 1]
            assert img["id"] - 1 >= offset
            path = tiny_data_root / f"coco/{split}2017" / img["file_name"]
            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) == (scene.width, scene.height)
            anns = api.loadAnns(api.getAnnIds(imgIds=img["id"]))
            assert len(anns) == len(scene.instances)
            for ann, inst in zip(anns, scene.instances, strict=True):
                assert ann["iscrowd"] == 0 and ann["area"] == inst.area
                x, y, w, h = ann["bbox"]
                assert (x, y, x + w, y + h) == inst.bbox
                m = api.annToMask(ann).astype(bool)
                ys, xs = np.nonzero(m)
                # the polygon stays inside its box and covers the visible mask well
                assert xs.min() >= x and ys.min() >= y and xs.max() < x + w and ys.max() < y + h
                ious.append((m & inst.mask).sum() / (m | inst.mask).sum())
        assert min(ious) > 0.9 and np.mean(ious) > 0.98


def test_lvis_loads(tiny_data_root):
    train = LVIS(str(tiny_data_root / "lvis/lvis_v1_train.json"))
    val = LVIS(str(tiny_data_root / "lvis/lvis_v1_val.json"))
    cats = train.load_cats(None)
    assert sorted(c["id"] for c in cats) == list(range(1, len(THING_CLASSES) + 1))
    assert {c["frequency"] for c in cats} == {"f", "c", "r"}
    for c in cats:
        imgs = {a["image_id"] for a in train.load_anns(train.get_ann_ids(cat_ids=[c["id"]]))}
        assert c["image_count"] == len(imgs) and c["synonyms"] == [c["name"]]
    for api in (train, val):
        for img in api.load_imgs(None):
            present = {
                a["category_id"] for a in api.load_anns(api.get_ann_ids(img_ids=[img["id"]]))
            }
            assert not present & set(img["neg_category_ids"])
            assert set(img["not_exhaustive_category_ids"]) <= present
            folder = img["coco_url"].split("/")[-2]
            assert (tiny_data_root / "coco" / folder / img["coco_url"].split("/")[-1]).is_file()


def test_voc_loads_with_detectron2_reader(tiny_data_root, scenes):
    seen, difficult = set(), []
    for year, split in (("2007", "trainval"), ("2012", "trainval"), ("2007", "test")):
        dirname = tiny_data_root / f"VOC{year}"
        dicts = load_voc_instances(str(dirname), split, CLASS_NAMES)
        assert dicts
        for d in dicts:
            index = int(d["image_id"].split("_")[-1]) - 1
            scene = scenes[index]
            assert (d["height"], d["width"]) == (scene.height, scene.width)
            boxes = [tuple(a["bbox"]) for a in d["annotations"]]
            assert boxes == [tuple(float(v) for v in i.bbox) for i in scene.instances]
            cats = [CLASS_NAMES[a["category_id"]] for a in d["annotations"]]
            assert cats == [THING_SPECS[i.category_id].voc_name for i in scene.instances]
            seen.add(d["image_id"])
        # per-class classification lists agree with the xml difficult flags
        for cls in CLASS_NAMES:
            lines = (dirname / f"ImageSets/Main/{cls}_{split}.txt").read_text().split("\n")
            for line in filter(None, lines):
                fid, flag = line.split()
                xml = (dirname / f"Annotations/{fid}.xml").read_text()
                objs = [o for o in xml.split("<object>")[1:] if f"<name>{cls}</name>" in o]
                diffs = ["<difficult>1</difficult>" in o for o in objs]
                difficult += diffs
                expect = -1 if not objs else (0 if all(diffs) else 1)
                assert int(flag) == expect, (cls, fid)
    assert len(seen) == len(scenes)  # 07 trainval + 12 trainval + 07 test cover every scene
    assert 0 < np.mean(difficult) < 0.5


def test_cityscapes_loads_and_label_maps_agree(tiny_data_root, scenes):
    by_train = {c["trainId"]: c["id"] for c in CITYSCAPES_CATEGORIES}
    for split in ("train", "val"):
        dicts = load_cityscapes_semantic(
            str(tiny_data_root / f"cityscapes/leftImg8bit/{split}"),
            str(tiny_data_root / f"cityscapes/gtFine/{split}"),
        )
        assert len(dicts) == (TINY.num_train if split == "train" else TINY.num_val)
        for d in dicts:
            train_ids = np.asarray(Image.open(d["sem_seg_file_name"]))
            label_ids = np.asarray(Image.open(d["sem_seg_file_name"].replace("TrainIds", "Ids")))
            inst_ids = np.asarray(
                Image.open(d["sem_seg_file_name"].replace("labelTrainIds", "instanceIds"))
            )
            assert train_ids.shape == (d["height"], d["width"])
            assert set(np.unique(train_ids)) <= set(range(19)) | {255}
            expect = np.vectorize(lambda t: by_train.get(int(t), 0))(train_ids)
            assert np.array_equal(label_ids, expect)
            # instance ids: label_id * 1000 + k on classes with instances, else the label id
            has_inst = inst_ids >= 1000
            assert np.array_equal(inst_ids[has_inst] // 1000, label_ids[has_inst])
            assert np.array_equal(inst_ids[~has_inst], label_ids[~has_inst])
            index = int(os.path.basename(d["file_name"]).split("_")[2])
            assert (has_inst.sum() > 0) == any(
                THING_SPECS[i.category_id].cityscapes_name
                in ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
                for i in scenes[index].instances
            )


def test_coco_stuff_loads_and_matches_semantic(tiny_data_root, scenes):
    lut = semantic_to_coco_stuff()
    for folder in ("train2014", "test2014"):
        base = tiny_data_root / "coco_stuff_10k"
        dicts = load_sem_seg(
            str(base / "annotations" / folder),
            str(base / "images" / folder),
            gt_ext="_labelTrainIds.png",
            image_ext=".jpg",
        )
        assert dicts
        for d in dicts:
            label = np.asarray(Image.open(d["sem_seg_file_name"]))
            index = int(os.path.basename(d["file_name"])[-16:-4]) - 1
            assert label.dtype == np.uint8
            assert np.array_equal(label, lut[scenes[index].semantic])
            assert set(np.unique(label)) <= set(range(171)) | {255}


def test_imagenet_tree_and_subsets(tiny_data_root):
    base = tiny_data_root / "imagenet"
    assert sorted(os.listdir(base / "train")) == sorted(THING_CLASSES)
    one = (base / "subsets/1percent.txt").read_text().split()
    ten = (base / "subsets/10percent.txt").read_text().split()
    assert set(one) <= set(ten) and len(one) >= len(THING_CLASSES) - 2
    for name in ten:
        cls = name.split("_")[0]
        with Image.open(base / "train" / cls / name) as im:
            assert im.size == (TINY.crop_size, TINY.crop_size)
    assert sum(len(os.listdir(base / "val" / c)) for c in THING_CLASSES) > 0


def test_same_seed_identical_bytes_different_seed_differs(tmp_path, tiny_data_root):
    a = build_demo_data(tmp_path / "a", "tiny", seed=0)
    b = build_demo_data(tmp_path / "b", "tiny", seed=1)
    assert _tree_hash(a) == _tree_hash(tiny_data_root)
    assert _tree_hash(a) != _tree_hash(b)


def test_done_marker_noop_and_refusals(tmp_path):
    root = build_demo_data(tmp_path / "r", "tiny", seed=3)
    done = json.loads((root / "DONE").read_text())
    assert done["preset"] == "tiny" and done["seed"] == 3
    probe = root / "coco/annotations/instances_train2017.json"
    before = probe.stat().st_mtime_ns
    build_demo_data(root, "tiny", seed=3)  # same arguments: nothing is rewritten
    assert probe.stat().st_mtime_ns == before
    with pytest.raises(RuntimeError, match="--force"):
        build_demo_data(root, "tiny", seed=4)
    # an interrupted run (no DONE) with our layouts present is recoverable without --force
    (root / "DONE").unlink()
    (root / "INCOMPLETE").write_text("{}")
    build_demo_data(root, "tiny", seed=4)
    assert json.loads((root / "DONE").read_text())["seed"] == 4
    assert not (root / "INCOMPLETE").exists() and not (root / ".staging").exists()
    # a foreign root with a 'coco' folder is not clobbered
    foreign = tmp_path / "foreign"
    (foreign / "coco").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="not written by make_demo_data"):
        build_demo_data(foreign, "tiny", seed=0)
    with pytest.raises(ValueError, match="unknown preset"):
        build_demo_data(tmp_path / "x", "huge")


def test_mask_to_polygons_fallback_for_lines():
    m = np.zeros((10, 10), dtype=bool)
    m[2, 1:8] = True  # a one-pixel line has no area polygon
    polys = mask_to_polygons(m)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
