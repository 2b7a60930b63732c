"""The benchmark table: every config it names exists and records the benchmark's name as its
protocol (what collect_results groups by), every data set (and demo twin) is registered."""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog

import cyborgs.data.datasets  # noqa: F401  (registration)
from cyborgs.transfer.setup import get_transfer_cfg
from cyborgs.transfer.table import BENCHMARKS, columns, config, datasets, names_in

CONFIGS = Path(__file__).resolve().parents[2] / "transfer_configs"


@pytest.mark.parametrize("name", [n for n, b in BENCHMARKS.items() if b.evaluator == "train_net"])
def test_train_net_benchmarks_name_existing_configs_of_their_protocol(name):
    for demo in (False, True):
        cfg = get_transfer_cfg(CONFIGS / config(name, demo))
        assert cfg.TRANSFER.PROTOCOL == name, (config(name, demo), cfg.TRANSFER.PROTOCOL)
        assert set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST) <= set(datasets(name, demo))


def test_every_data_set_and_demo_twin_is_registered():
    registered = set(DatasetCatalog.list())
    for name in BENCHMARKS:
        for demo in (False, True):
            assert set(datasets(name, demo)) <= registered, (name, demo)
    assert datasets("in10pct", True) == ["demo_imagenet_train_10percent", "demo_imagenet_val"]


def test_tables_and_lookups():
    assert names_in("table1") == ("voc07_svm", "in1pct", "in10pct", "voc_det", "coco_inst")
    assert names_in("appendix") == ("lvis", "cityscapes", "coco_stuff_fcn", "coco_stuff_probe")
    assert len(columns(names_in("table1"))) == 14 and columns(names_in("table1"))[0] == (
        "VOC07 mAP", "voc07_svm", "voc07_cls", "mAP",
    )  # fmt: skip
    assert all(c.paper is not None for n in names_in("table1") for c in BENCHMARKS[n].columns)
    assert {BENCHMARKS[n].subset for n in ("in1pct", "in10pct")} == {"1percent", "10percent"}
    with pytest.raises(ValueError, match="evaluated by voc07_svm"):
        config("voc07_svm", False)
    with pytest.raises(KeyError, match="unknown benchmark 'voc'"):
        datasets("voc", False)
