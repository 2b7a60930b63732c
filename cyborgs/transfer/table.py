"""The transfer benchmarks of Table 1 and the appendix (METHOD.md §6): the one table that the
convert-and-finetune driver runs and the results summary lays out. Adding a benchmark is adding an
entry to :data:`BENCHMARKS` (and, for ``train_net``, its config and demo twin): every fact the
driver and the summary need is a field of :class:`Benchmark`, and both look the table up when
they run (never a copy taken at import).

Each benchmark is evaluated either by a detectron2 transfer config (evaluator ``"train_net"``)
or by its own classification protocol: ``"voc07_svm"`` (:mod:`cyborgs.transfer.voc07_svm`) or
``"semi_supervised"`` (:mod:`cyborgs.transfer.semi_supervised`). Config names are file names in
the transfer config directory the caller resolves them against; the demo twin of a benchmark
reads the ``demo_`` data sets (and, for ``train_net``, its own small config).
"""

from __future__ import annotations

from dataclasses import dataclass

EVALUATORS = ("train_net", "voc07_svm", "semi_supervised")
TABLES = ("table1", "appendix")


@dataclass(frozen=True)
class Column:
    """One cell of the results table: ``results[task][metric]`` of the benchmark's runs."""

    header: str
    task: str
    metric: str  # "APr/APc/APf": a composite cell, one value per part
    paper: float | None = None  # the published CYBORGS row (Table 1)


@dataclass(frozen=True)
class Benchmark:
    name: str  # also the "protocol" its metrics_final.json records
    evaluator: str  # one of EVALUATORS
    datasets: tuple[str, ...]  # full-size; the demo twin prefixes each with "demo_"
    table: str  # one of TABLES
    columns: tuple[Column, ...]
    protocol: str  # what the reference protocol is, printed under the results table
    config: str = ""  # train_net: the full-size config file name
    demo_config: str = ""  # train_net: the demo twin's config file name
    subset: str = ""  # semi_supervised: the ImageNet subset
    # train_net linear probe: the block it reads as the paper names it (res3.2); the driver sets
    # MODEL.LINEAR_PROBE.FEATURE and SEM_SEG_HEAD.IN_FEATURES to it, capped at the stage's last
    # block for the backbone's depth (res3.1 of R18)
    probe_feature: str = ""
    repeatable: bool = False  # the driver's --runs N repeats it (MoCo: VOC detection, mean of 5)


def _det(header: str, task: str, paper: tuple[float, float, float]) -> tuple[Column, ...]:
    """The AP, AP50 and AP75 columns of one detection task."""
    return tuple(
        Column(header + suffix, task, "AP" + suffix, value)
        for suffix, value in zip(("", "50", "75"), paper, strict=True)
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark(
            "voc07_svm",
            "voc07_svm",
            ("voc_2007_cls_trainval", "voc_2007_cls_test"),
            "table1",
            (Column("VOC07 mAP", "voc07_cls", "mAP", 86.9),),
            "VirTex VOC07 SVM: res5 GAP, L2-norm, LinearSVC per class, cost by 3-fold CV",
        ),
        Benchmark(
            "in1pct",
            "semi_supervised",
            ("imagenet_train_1percent", "imagenet_val"),
            "table1",
            (
                Column("IN-1% top-1", "classification", "top1", 31.3),
                Column("IN-1% top-5", "classification", "top5", 59.4),
            ),
            "ImageNet 1% (SimCLR list), R50 + linear head, 20 ep, steps 12/16 x0.2",
            subset="1percent",
        ),
        Benchmark(
            "in10pct",
            "semi_supervised",
            ("imagenet_train_10percent", "imagenet_val"),
            "table1",
            (
                Column("IN-10% top-1", "classification", "top1", 61.7),
                Column("IN-10% top-5", "classification", "top5", 84.2),
            ),
            "ImageNet 10% (SimCLR list), R50 + linear head, 20 ep, steps 12/16 x0.2",
            subset="10percent",
        ),
        Benchmark(
            "voc_det",
            "train_net",
            ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test"),
            "table1",
            _det("VOC AP", "bbox", (58.0, 83.0, 64.3)),
            "Faster R-CNN R50-C4 + Res5ROIHeadsExtraNorm, VOC07+12, 24k (MoCo/VirTex)",
            config="voc_det_R50_C4_24k.yaml",
            demo_config="demo_voc_det_C4.yaml",
            repeatable=True,
        ),
        Benchmark(
            "coco_inst",
            "train_net",
            ("coco_2017_train", "coco_2017_val"),
            "table1",
            _det("COCO APbb", "bbox", (42.0, 62.6, 46.2))
            + _det("COCO APmk", "segm", (38.0, 59.7, 40.8)),
            "Mask R-CNN R50-FPN SyncBN, COCO 2x (VirTex)",
            config="coco_mask_rcnn_R50_FPN_2x.yaml",
            demo_config="demo_coco_mask_rcnn_FPN.yaml",
        ),
        Benchmark(
            "lvis",
            "train_net",
            ("lvis_v1_train", "lvis_v1_val"),
            "appendix",
            (
                Column("LVIS APbb", "bbox", "AP"),
                Column("LVIS APmk", "segm", "AP"),
                Column("LVIS APmk r/c/f", "segm", "APr/APc/APf"),
            ),
            "Mask R-CNN R50-FPN SyncBN, LVIS v1, RFS 0.001, 180k (VirTex)",
            config="lvis_v1_mask_rcnn_R50_FPN.yaml",
            demo_config="demo_lvis_v1_mask_rcnn_FPN.yaml",
        ),
        Benchmark(
            "cityscapes",
            "train_net",
            ("cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val"),
            "appendix",
            (Column("Cityscapes mIoU", "sem_seg", "mIoU"),),
            "FCN R50-D8, crop 769, 40k, poly (mmseg)",
            config="cityscapes_fcn_R50_dilated.yaml",
            demo_config="demo_cityscapes_fcn_dilated.yaml",
        ),
        Benchmark(
            "coco_stuff_fcn",
            "train_net",
            ("coco_stuff_10k_sem_seg_train", "coco_stuff_10k_sem_seg_test"),
            "appendix",
            (Column("COCO-Stuff-10k FCN mIoU", "sem_seg", "mIoU"),),
            "FCN R50-D8 end-to-end, crop 512 (mmseg schedule)",
            config="coco_stuff10k_fcn_R50.yaml",
            demo_config="demo_coco_stuff10k_fcn.yaml",
        ),
        Benchmark(
            "coco_stuff_probe",
            "train_net",
            ("coco_stuff_10k_sem_seg_train", "coco_stuff_10k_sem_seg_test"),
            "appendix",
            (Column("COCO-Stuff-10k probe mIoU", "sem_seg", "mIoU"),),
            "frozen res3.2 + 1x1 conv linear probe",
            config="coco_stuff10k_linear_probe.yaml",
            demo_config="demo_coco_stuff10k_linear_probe.yaml",
            probe_feature="res3.2",
        ),
    ]
}


def names_in(table: str) -> tuple[str, ...]:
    """The benchmarks of ``table`` (one of :data:`TABLES`) in the order of the paper's columns."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {TABLES}")
    return tuple(n for n, b in BENCHMARKS.items() if b.table == table)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def datasets(name: str, demo: bool) -> list[str]:
    """The data sets benchmark ``name`` reads (its demo twin's with ``demo``)."""
    return [("demo_" if demo else "") + d for d in get_benchmark(name).datasets]


def config(name: str, demo: bool) -> str:
    """The transfer config file name of a ``train_net`` benchmark (its demo twin's with ``demo``)."""
    b = get_benchmark(name)
    if b.evaluator != "train_net":
        raise ValueError(f"benchmark {name!r} is evaluated by {b.evaluator}, not by a config")
    return b.demo_config if demo else b.config


def columns(names: tuple[str, ...] | list[str]) -> list[tuple[str, str, str, str]]:
    """``(header, benchmark, task, metric)`` of every column of the named benchmarks, in order."""
    return [(c.header, n, c.task, c.metric) for n in names for c in get_benchmark(n).columns]


def paper_value(name: str, task: str, metric: str) -> float | None:
    """The published CYBORGS value of benchmark ``name``'s ``task``/``metric`` column (None:
    not in the paper's row, or no such column)."""
    b = BENCHMARKS.get(name)
    cols = b.columns if b is not None else ()
    return next((c.paper for c in cols if (c.task, c.metric) == (task, metric)), None)
