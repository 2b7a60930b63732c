"""tools/pretrain_net.py end to end on the tiny synthetic set (R18, 48 px, a few iterations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cyborgs.engine.checkpoint import safe_load

REPO = Path(__file__).resolve().parents[2]

# 24 tiny images / batch 8 = 3 iterations per epoch; epoch 0 is the vMF warm-up, a bootstrap
# round follows it, epoch 1 trains the contrastive loss on the bootstrapped masks.
_OPTS = [
    "SOLVER.EPOCHS", "2",
    "SOLVER.IMS_PER_BATCH", "8",
    "SOLVER.CHECKPOINT_PERIOD", "1",
    "SOLVER.CHECKPOINTS_TO_KEEP", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "CYBORGS.AUG.CROP_SIZE", "48",
    "CYBORGS.BOOTSTRAP.INPUT_SIZE", "64",
]  # fmt: skip


def _run(args: list[str], env_root: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(env_root), OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(REPO / "tools" / "pretrain_net.py"), *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def test_help_has_tuning_advice() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "pretrain_net.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0
    for words in ("--config-file", "--resume", "LARS", "EMA", "NUM_WORKERS", "vMF warm-up"):
        assert words in res.stdout


def test_pretrain_writes_checkpoint_and_metrics(tiny_data_root, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = ["--config-file", "pretrain_configs/demo_R18.yaml", "OUTPUT_DIR", str(out)]
    _run([*cfg, *_OPTS], tiny_data_root)

    assert (out / "config.yaml").is_file() and (out / "args.json").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    # a checkpoint every iteration, only the newest 2 periodic ones kept, plus model_final
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000004.pth",
        "model_0000005.pth",
        "model_final.pth",
    ]
    ck = safe_load(str(out / "model_final.pth"))  # plain: loads with weights_only=True
    assert ck["iteration"] == 5
    assert any(k.startswith("target_backbone.") for k in ck["model"])
    hooks = ck["trainer"]["hooks"]
    assert {"LRScheduler", "RNGStateHook", "BootstrapHook"} <= set(hooks)
    assert hooks["BootstrapHook"]["completed"] == [1]  # the round right after the warm-up
    assert ck["trainer"]["_trainer"]["optimizer"]["state"]
    assert "demo_coco_2017_train_unlabeled" in ck["run_info"]["config"]

    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    keys = set().union(*rows)
    for k in ("images_per_sec", "lr", "ema_momentum", "vmf_weight", "total_loss", "loss_vmf"):
        assert k in keys, k
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in rows if "total_loss" in r)
    # warm-up epoch: vMF only; epoch 1: the contrastive term is on
    by_iter = {r["iteration"]: r for r in rows}
    assert by_iter[2]["contrastive_weight"] == 0.0 and by_iter[2]["vmf_weight"] == 1.0
    assert by_iter[5]["contrastive_weight"] == 1.0

    # --resume of a finished run trains nothing more, says so and keeps the final checkpoint
    before = (out / "model_final.pth").stat().st_mtime_ns
    res = _run(["--resume", *cfg, *_OPTS], tiny_data_root)
    assert "run already complete (6/6 iterations)" in res.stdout + res.stderr
    assert (out / "model_final.pth").stat().st_mtime_ns == before
    assert not list(out.glob("config.before_resume_*"))  # same config: nothing to keep

    # ... with a changed config: the changed keys are listed, the run's config.yaml kept
    res = _run(["--resume", *cfg, *_OPTS, "SOLVER.CHECKPOINT_PERIOD", "2"], tiny_data_root)
    assert "SOLVER.CHECKPOINT_PERIOD: 1 -> 2" in res.stdout + res.stderr
    assert "CHECKPOINT_PERIOD: 1" in (out / "config.before_resume_final.yaml").read_text()
    assert "CHECKPOINT_PERIOD: 2" in (out / "config.yaml").read_text()

    # rerunning into the run without --resume is refused before anything is written
    metrics = (out / "metrics.json").read_text()
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(tiny_data_root), OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, str(REPO / "tools" / "pretrain_net.py"), *cfg, *_OPTS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2 and "already holds a run" in res.stderr, res.stderr[-3000:]
    assert (out / "metrics.json").read_text() == metrics
    assert (out / "model_final.pth").stat().st_mtime_ns == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU gloo path")
def test_pretrain_two_cpu_processes(tiny_data_root, tmp_path) -> None:
    out = tmp_path / "ddp"
    cfg = ["--config-file", "pretrain_configs/demo_R18.yaml", "--num-gpus", "2"]
    _run([*cfg, "--dist-url", "auto", "OUTPUT_DIR", str(out), *_OPTS], tiny_data_root, 600)
    ck = safe_load(str(out / "model_final.pth"))
    assert ck["iteration"] == 5
    assert "World size: 2" in (out / "log.txt").read_text()  # really two processes (gloo)
    assert len(ck["trainer"]["hooks"]["RNGStateHook"]["ranks"]) == 2  # both ranks' RNG streams
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    contrastive = [r["loss_mask_contrastive"] for r in rows if "loss_mask_contrastive" in r]
    assert contrastive and all(torch.isfinite(torch.tensor(contrastive)))


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO) for p in (REPO / "pretrain_configs").rglob("*.yaml"))
)
def test_every_pretrain_config_merges(path: Path) -> None:
    from cyborgs.engine.setup import setup_pretrain_cfg

    # the paper's global batch 64 over 8 processes; the schedule needs the data set (absent)
    cfg, notes = setup_pretrain_cfg(str(REPO / path), [], world_size=8, schedule=False)
    assert not [n for n in notes if "deprecated" in n]  # shipped configs use current names
    assert cfg.MODEL.META_ARCHITECTURE == "CYBORGS"
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert cfg.SOLVER.OPTIMIZER == "LARS" and cfg.OUTPUT_DIR.startswith("output/")
    if not torch.cuda.is_available():
        assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.RESNETS.NORM == "BN"
