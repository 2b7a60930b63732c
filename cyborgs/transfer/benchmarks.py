"""The benchmarks of Table 1 and the appendix: their config / tool and data sets (SPEC §6).

``python -m cyborgs.transfer.benchmarks check [--demo] NAME ...`` verifies, before anything
trains, that every data set the chosen benchmarks read is registered and on disk.
"""

from __future__ import annotations

import argparse
import sys

TABLE1 = ["voc07_svm", "in1pct", "in10pct", "voc_det", "coco_inst"]
APPENDIX = ["lvis", "cityscapes", "coco_stuff_fcn", "coco_stuff_probe"]

# name -> (train_net config or tool, full-size data sets); demo twins prefix "demo_".
BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "voc07_svm": ("tools/voc07_svm.py", ("voc_2007_cls_trainval", "voc_2007_cls_test")),
    "in1pct": ("tools/semi_supervised.py", ("imagenet_train_1percent", "imagenet_val")),
    "in10pct": ("tools/semi_supervised.py", ("imagenet_train_10percent", "imagenet_val")),
    "voc_det": ("voc_det_R50_C4_24k.yaml",
                ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test")),
    "coco_inst": ("coco_mask_rcnn_R50_FPN_2x.yaml", ("coco_2017_train", "coco_2017_val")),
    "lvis": ("lvis_v1_mask_rcnn_R50_FPN.yaml", ("lvis_v1_train", "lvis_v1_val")),
    "cityscapes": ("cityscapes_fcn_R50_dilated.yaml",
                   ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val")),
    "coco_stuff_fcn": ("coco_stuff10k_fcn_R50.yaml",
                       ("coco_stuff_10k_sem_seg_train", "coco_stuff_10k_sem_seg_test")),
    "coco_stuff_probe": ("coco_stuff10k_linear_probe.yaml",
                         ("coco_stuff_10k_sem_seg_train", "coco_stuff_10k_sem_seg_test")),
}  # fmt: skip

DEMO_CONFIGS = {
    "voc_det": "demo_voc_det_C4.yaml",
    "coco_inst": "demo_coco_mask_rcnn_FPN.yaml",
    "lvis": "demo_lvis_v1_mask_rcnn_FPN.yaml",
    "cityscapes": "demo_cityscapes_fcn_dilated.yaml",
    "coco_stuff_fcn": "demo_coco_stuff10k_fcn.yaml",
    "coco_stuff_probe": "demo_coco_stuff10k_linear_probe.yaml",
}


def datasets(name: str, demo: bool) -> list[str]:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return [("demo_" if demo else "") + d for d in BENCHMARKS[name][1]]


def config(name: str, demo: bool) -> str:
    return DEMO_CONFIGS[name] if demo else BENCHMARKS[name][0]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=["check", "config"])
    p.add_argument("names", nargs="+")
    p.add_argument("--demo", action="store_true")
    args = p.parse_args(argv)
    if args.command == "config":
        print(config(args.names[0], args.demo))
        return 0
    from cyborgs.transfer.preflight import check_datasets

    for name in args.names:
        check_datasets(datasets(name, args.demo))
    print(f"data sets present for: {' '.join(args.names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
