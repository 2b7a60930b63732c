"""collect_results: Table 1 / appendix layout with a number in every column (formatting test
on metric files written here), runs averaged, bad files named."""

from __future__ import annotations

import json

import pytest

from cyborgs.transfer.results import collect, write_metrics
from cyborgs.transfer.table import columns, names_in


def fake(outdir, sub, protocol, results):
    write_metrics(
        str(outdir / sub / "metrics_final.json"), {"protocol": protocol, "results": results}
    )


def test_every_column_filled_and_runs_averaged(tmp_path):
    det = {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}
    fake(tmp_path, "voc07_svm", "voc07_svm", {"voc07_cls": {"mAP": 85.0}})
    fake(tmp_path, "in1pct", "in1pct", {"classification": {"top1": 30.0, "top5": 58.0}})
    fake(tmp_path, "in10pct", "in10pct", {"classification": {"top1": 60.0, "top5": 83.0}})
    fake(tmp_path, "voc_det/run1", "voc_det", {"bbox": det})
    fake(tmp_path, "voc_det/run2", "voc_det", {"bbox": {"AP": 52.0, "AP50": 82.0, "AP75": 57.0}})
    fake(tmp_path, "coco_inst", "coco_inst", {"bbox": det, "segm": det})
    lvis = dict(det, APr=10.0, APc=20.0, APf=30.0)
    fake(tmp_path, "lvis", "lvis", {"bbox": lvis, "segm": lvis})
    for p in ("cityscapes", "coco_stuff_fcn", "coco_stuff_probe"):
        fake(tmp_path, p, p, {"sem_seg": {"mIoU": 40.0}})

    data = collect(str(tmp_path))
    assert [c["column"] for c in data["table1"]] == [h for h, *_ in columns(names_in("table1"))]
    assert [c["column"] for c in data["appendix"]] == [h for h, *_ in columns(names_in("appendix"))]
    assert all(c["value"] is not None for c in data["table1"] + data["appendix"])
    voc_ap = next(c for c in data["table1"] if c["column"] == "VOC AP")
    assert voc_ap["value"] == 51.0 and voc_ap["runs"] == 2 and voc_ap["paper"] == 58.0

    md = (tmp_path / "results.md").read_text()
    table1 = md.split("## Appendix")[0]
    rows = {
        line.split("|")[1].strip(): line for line in table1.splitlines() if line.startswith("| ")
    }
    ours = [c.strip() for c in rows["this run"].split("|")[2:-1]]
    paper = [c.strip() for c in rows["CYBORGS (paper)"].split("|")[2:-1]]
    assert len(ours) == len(paper) == 14 and "–" not in ours and "–" not in paper[:14]
    assert paper[0] == "86.9" and ours[0] == "85.0" and ours[5] == "51.0"
    assert "10.0/20.0/30.0" in md and "Faster R-CNN R50-C4" in md
    assert json.loads((tmp_path / "results.json").read_text())["table1"][0]["value"] == 85.0


def test_missing_benchmarks_show_dash_and_bad_file_is_named(tmp_path):
    fake(tmp_path, "in1pct", "in1pct", {"classification": {"top1": 30.0, "top5": 58.0}})
    data = collect(str(tmp_path))
    assert data["table1"][0]["value"] is None and data["table1"][1]["value"] == 30.0
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics_final.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken/metrics_final.json"):
        collect(str(tmp_path))


def test_demo_runs_are_flagged_and_name_what_ran(tmp_path):
    write_metrics(
        str(tmp_path / "voc_det" / "metrics_final.json"),
        {
            "protocol": "voc_det",
            "config": "transfer_configs/demo_voc_det_C4.yaml",
            "datasets": {"train": ["demo_voc_2007_trainval"], "test": ["demo_voc_2007_test"]},
            "results": {"bbox": {"AP": 1.0, "AP50": 2.0, "AP75": 0.5}},
        },
    )
    md = (collect(str(tmp_path)), (tmp_path / "results.md").read_text())[1]
    assert "**Demo scale**" in md
    assert "as run: transfer_configs/demo_voc_det_C4.yaml" in md
    fake(tmp_path, "voc_det", "voc_det", {"bbox": {"AP": 1.0}})  # real data: no demo banner
    collect(str(tmp_path))
    assert "Demo scale" not in (tmp_path / "results.md").read_text()
