"""Smoke test of benchmarks/dataloader.py: the CLI runs both paths and its JSON is sane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "dataloader.py"
SPLIT = {"decode", "geometry", "mask", "photometric", "other"}


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def _run(args: list[str], cwd: Path, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(SCRIPT), *args]
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_both_paths_on_generated_jpegs_with_stage_split_and_ratios(tmp_path: Path) -> None:
    out = tmp_path / "res" / "dataloader.json"
    args = ["--image-size", "96x128", "--distinct-images", "2", "--num-images", "8"]
    args += ["--crop-size", "32", "--workers", "0,2", "--batch-size", "2", "--batch-images", "4"]
    args += ["--repeats", "1", "--device-threads", "1", "--out", str(out)]
    args += ["--interleave-chunk", "3"]  # turns of 3, 3, 2 samples: a short last turn too
    res = _run(args, tmp_path)
    assert json.loads(out.read_text()) == res  # --out holds the same result as stdout
    assert res["dataset"] == "generated" and res["mask_source"] == "bootstrap"
    data = res["data"]
    assert data["kind"] == "generated_coco_size" and data["image_hw"] == [96, 128]
    assert data["mask_storage"].startswith("12x16") and _positive(data["mean_file_kb"])
    assert res["notes"] == [] and set(res["paths"]) == {"cpu", "device"}
    for name, path in res["paths"].items():
        assert path["aug_device"] == ("on" if name == "device" else "off")
        ip = path["in_process"]
        assert ip["samples"] == 8 and ip["mapped"] == 8
        split = ip["ms_per_sample_split"]
        assert set(split) == SPLIT
        assert all(_positive(split[k]) for k in SPLIT - {"other"}) and split["other"] >= 0
        # the split accounts for the whole call (other is the remainder), no double counting
        assert abs(sum(split.values()) - ip["ms_per_sample"]) < 1e-6 * ip["ms_per_sample"] + 1e-9
        cpu_split = ip["cpu_ms_per_sample_split"]
        assert set(cpu_split) == SPLIT and all(v >= 0 for v in cpu_split.values())
        assert (
            abs(sum(cpu_split.values()) - ip["cpu_ms_per_sample"])
            < 1e-6 * ip["cpu_ms_per_sample"] + 1e-9
        )
        assert _positive(ip["cpu_samples_per_s"])
        loaders = path["dataloader"]
        assert [r["workers"] for r in loaders] == [0, 2]
        for r in loaders:
            assert r["images"] == 8
            assert r["images_per_s_per_worker"] == r["images_per_s"] / max(r["workers"], 1)
            assert "worker_cpu_s" in r and "cpu_images_per_s_per_worker" in r
    dev = res["paths"]["device"]
    phot = dev["device_photometric"]
    assert phot["device"] == "cpu" and phot["batch_images"] == 4 and phot["view_size"] == 32
    assert _positive(phot["ms_per_image"])
    assert abs(phot["ms_per_two_view_sample"] - 2 * phot["ms_per_image"]) < 1e-9
    dec = dev["decode_options_ms"]
    for key in (
        "detectron2_read_image",
        "cyborgs_read_image",
        "cyborgs_read_image_tensor",
        "torchvision_decode_jpeg",
        "pil_open_load",
        "pil_draft_half",
        "pil_draft_quarter",
    ):
        assert _positive(dec[key]), (key, dec)
    # 96x128 images cannot hold two crops of twice 32 px on both sides every time, but can
    assert 0.0 <= dec["half_draft_applicable_fraction"] <= 1.0
    assert 0.0 <= dec["quarter_draft_applicable_fraction"] <= dec["half_draft_applicable_fraction"]
    geo = dev["geometry_options_ms_per_view"]
    diffs = geo["max_abs_diff_to_torch_uint8"]
    assert diffs["torch_uint8_interpolate"] == 0 and diffs["torch_float_interpolate"] <= 1
    assert all(_positive(geo[k]) for k in diffs)
    # the device path as it was before, in the same run, hands out the very same views
    before = res["device_before"]
    assert before["in_process"]["views_identical_to_device"] == 1.0
    assert [r["workers"] for r in before["dataloader"]] == [0, 2]
    assert all(r["images"] == 8 for r in before["dataloader"])
    assert _positive(before["after_vs_before_cpu"]) and _positive(before["after_vs_before_wall"])
    ratio = res["device_vs_cpu"]
    assert _positive(ratio["in_process_per_worker"])
    assert [r["workers"] for r in ratio["dataloader_per_worker"]] == [0, 2]
    t = res["targets"]
    assert t["device_per_worker_measured"] == dev["in_process"]["cpu_samples_per_s"]
    assert t["device_per_worker_wall"] == dev["in_process"]["samples_per_s"]
    assert t["speedup_measured"] == ratio["in_process_per_worker_cpu"]
    assert t["speedup_wall"] == ratio["in_process_per_worker"]
    assert len(res["load_average"]["before"]) == 3
    assert not list(tmp_path.glob("output*"))  # nothing written into the working directory


def test_cuda_is_refused_up_front_without_it(monkeypatch, capsys) -> None:
    import importlib.util

    import pytest
    import torch

    spec = importlib.util.spec_from_file_location("bench_dataloader", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        mod.parse_args(["--path", "device", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
    assert mod.parse_args([]).path == "both"  # default: both paths, batched ops on the CPU
    with pytest.raises(SystemExit):
        mod.parse_args(["--interleave-chunk", "0"])
    assert "--interleave-chunk must be >= 1" in capsys.readouterr().err


def test_registered_set_device_path_only_and_bootstrap_without_round_is_flagged(
    tiny_data_root: Path, tmp_path: Path
) -> None:
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(tiny_data_root))
    args = ["--dataset", "demo_coco_2017_train_unlabeled", "--path", "device"]
    args += ["--num-images", "2", "--crop-size", "32", "--workers", "0", "--batch-images", "2"]
    args += ["--repeats", "1", "--device-threads", "1"]
    res = _run(args, tmp_path, env)
    assert res["mask_source"] == "bootstrap" and res["data"] == {"kind": "registered"}
    assert res["dataset_images"] > 0 and set(res["paths"]) == {"device"}
    assert "device_vs_cpu" not in res and "speedup_met" not in res["targets"]
    assert res["device_before"]["in_process"]["views_identical_to_device"] == 1.0
    assert any("no round" in n for n in res["notes"])
    assert not list(tmp_path.glob("output*"))  # the temp mask store, not ./output
