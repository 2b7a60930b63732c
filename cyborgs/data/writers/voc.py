"""Pascal VOC layout: ``VOC2007`` (trainval + test) and ``VOC2012`` (trainval), each with
``JPEGImages``, ``Annotations/*.xml``, ``ImageSets/Main/{split}.txt`` and the per-class
classification lists ``ImageSets/Main/<cls>_{split}.txt`` (1 / -1 / 0 = difficult only).

detectron2's ``load_voc_instances`` and ``PascalVOCDetectionEvaluator`` hard-code the 20 VOC
class names, so thing classes are written under their ``voc_name``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from cyborgs.data.synthetic import THING_SPECS, Instance, Scene
from cyborgs.data.writers.common import SceneRecord, write_bytes, write_text

__all__ = ["VOC_CLASS_NAMES", "voc_file_id", "is_difficult", "voc_splits", "write_voc"]


def voc_file_id(year: str, index: int) -> str:
    # VOC2007 ids are "000005"; VOC2012 ids are "2012_000005"
    return f"{index + 1:06d}" if year == "2007" else f"{year}_{index + 1:06d}"


def is_difficult(inst: Instance, scene: Scene) -> bool:
    """Small or mostly hidden objects are flagged difficult (VOC annotators did the same)."""
    small = inst.area < max(64, 0.008 * scene.height * scene.width)
    return bool(small or inst.visible_fraction < 0.25)


def voc_splits(splits: dict[str, list[SceneRecord]]) -> dict[tuple[str, str], list[SceneRecord]]:
    """(year, split) -> scenes: VOC2007 trainval = first half of the train scenes, VOC2012
    trainval = the second half, VOC2007 test = the val scenes (the VOC07+12 protocol)."""
    train = splits["train"]
    half = (len(train) + 1) // 2
    return {
        ("2007", "trainval"): train[:half],
        ("2012", "trainval"): train[half:],
        ("2007", "test"): splits["val"],
    }


def _xml(year: str, file_id: str, scene: Scene) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = f"VOC{year}"
    ET.SubElement(ann, "filename").text = file_id + ".jpg"
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "CYBORGS synthetic"
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(scene.width)
    ET.SubElement(size, "height").text = str(scene.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for inst in scene.instances:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = THING_SPECS[inst.category_id].voc_name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(inst.truncated))
        ET.SubElement(obj, "difficult").text = str(int(is_difficult(inst, scene)))
        box = ET.SubElement(obj, "bndbox")
        x0, y0, x1, y1 = inst.bbox
        # VOC boxes are 1-based inclusive pixel indices: pixel columns x0..x1-1 -> x0+1..x1
        for key, val in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, key).text = str(int(val))
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8") + b"\n"


def write_voc(root: Path, splits: dict[str, list[SceneRecord]]) -> None:
    for (year, split), records in voc_splits(splits).items():
        base = root / f"VOC{year}"
        ids = []
        flags = {c: [] for c in VOC_CLASS_NAMES}
        for rec in records:
            fid = voc_file_id(year, rec.index)
            ids.append(fid)
            write_bytes(base / "JPEGImages" / f"{fid}.jpg", rec.jpeg)
            write_bytes(base / "Annotations" / f"{fid}.xml", _xml(year, fid, rec.scene))
            easy, hard = set(), set()
            for inst in rec.scene.instances:
                name = THING_SPECS[inst.category_id].voc_name
                (hard if is_difficult(inst, rec.scene) else easy).add(name)
            for c in VOC_CLASS_NAMES:
                flag = 1 if c in easy else (0 if c in hard else -1)
                flags[c].append(f"{fid} {flag:2d}")
        main = base / "ImageSets" / "Main"
        write_text(main / f"{split}.txt", ids)
        for c in VOC_CLASS_NAMES:
            write_text(main / f"{c}_{split}.txt", flags[c])
