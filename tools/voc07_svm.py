#!/usr/bin/env python
"""VOC07 classification with per-class linear SVMs on frozen res5 features (VirTex protocol).

    tools/voc07_svm.py --weights backbone.pkl --output-dir out/voc07_svm
        [--train voc_2007_cls_trainval --test voc_2007_cls_test --resize 256 --crop 224]

Writes OUTPUT_DIR/metrics_final.json ({"voc07_cls": {"mAP": ..., "AP-<class>": ...}}).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from protocol_run import begin, finish

from cyborgs.transfer.image_data import build_pretrained_resnet
from cyborgs.transfer.preflight import check_datasets
from cyborgs.transfer.voc07_svm import extract_features, voc07_svm_map


def check_classification_sets(sets: dict[str, str]) -> None:
    """Refuse, before any feature is extracted, a set without per-image class labels (e.g. the
    detection set voc_2007_trainval where voc_2007_cls_trainval was meant)."""
    for flag, name in sets.items():
        kind = MetadataCatalog.get(name).get("evaluator_type", None)
        if kind != "voc_cls":
            raise ValueError(
                f"{flag} {name} is not a VOC classification set (evaluator_type {kind!r}, "
                "expected 'voc_cls'): the SVMs need per-image labels; use voc_2007_cls_trainval "
                "/ voc_2007_cls_test (demo: demo_voc_2007_cls_trainval / demo_voc_2007_cls_test)"
            )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="converted backbone .pkl")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--train", default="voc_2007_cls_trainval")
    p.add_argument("--test", default="voc_2007_cls_test")
    p.add_argument("--resize", type=int, default=256, help="shorter side (VirTex: 256)")
    p.add_argument("--crop", type=int, default=224, help="center crop (VirTex: 224)")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    begin(args.weights)
    check_datasets([args.train, args.test])
    check_classification_sets({"--train": args.train, "--test": args.test})
    model = build_pretrained_resnet(args.weights, args.depth).to(args.device)
    names = list(MetadataCatalog.get(args.train).thing_classes)
    feats, labels, difficult = {}, {}, {}
    for split, name in (("train", args.train), ("test", args.test)):
        dicts = DatasetCatalog.get(name)
        feats[split] = extract_features(
            model, dicts, args.resize, args.crop, args.batch_size, args.num_workers
        )
        labels[split] = np.array([d["labels"] for d in dicts])
        difficult[split] = np.array([d["difficult"] for d in dicts])
    res = voc07_svm_map(feats["train"], labels["train"], feats["test"], labels["test"],
                        difficult["test"], names)  # fmt: skip
    config = f"resize {args.resize}, crop {args.crop}, res5 GAP, LinearSVC"
    record = finish(args.output_dir, "voc07_svm", config, args.weights, args.train, args.test,
                    {"voc07_cls": res})  # fmt: skip
    print(f"VOC07 SVM mAP: {res['mAP']:.2f}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
