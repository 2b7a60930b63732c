"""docs/DESIGN.md "Add a loss term": a term registered from a test-side module with its own
weight key is computed by the model, weighted by the loss schedule, logged, planned and
trained (2 steps of the real pretrainer on the tiny set, in a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, sys
import dummy_loss_term as d
from detectron2.utils.logger import setup_logger
import cyborgs.engine.setup as setup
from cyborgs.engine.plan import build_plan, format_plan
from cyborgs.engine.trainer import CyborgsTrainer

# Step 2 of the recipe (the weight key declared beside the others in add_cyborgs_config),
# done from outside the package: the key exists before the config is merged and validated.
_declare = setup.add_cyborgs_config
setup.add_cyborgs_config = lambda cfg: (_declare(cfg), d.add_dummy_config(cfg))[0]

setup_logger(name="cyborgs")
out = sys.argv[1]
cfg, _ = setup.setup_pretrain_cfg("pretrain_configs/demo_R18.yaml", [
    "OUTPUT_DIR", out, "SOLVER.IMS_PER_BATCH", "12", "SOLVER.EPOCHS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0",
    "CYBORGS.WARMUP_EPOCHS", "0", "CYBORGS.MASKS.SOURCE", "grid",
    "CYBORGS.AUG.CROP_SIZE", "48", "CYBORGS.DUMMY_WEIGHT", "0.5",
])
plan = build_plan(cfg, 24)
json.dump({"plan": plan, "text": format_plan(plan)}, open(out + "/plan_test.json", "w"))
trainer = CyborgsTrainer(cfg)
trainer.resume_or_load(resume=False)
trainer.train()
"""


def test_a_dummy_term_added_by_the_recipe_trains(tiny_data_root, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    env = dict(
        os.environ,
        CYBORGS_DEMO_DATASETS=str(tiny_data_root),
        OMP_NUM_THREADS="2",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO)]),
    )
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]

    planned = json.loads((out / "plan_test.json").read_text())
    epoch0 = planned["plan"]["per_epoch"][0]
    assert epoch0["dummy_weight"] == 0.5 and epoch0["contrastive_weight"] == 1.0
    assert epoch0["phase"] == "contrastive + vMF + dummy"  # epoch 0: a vMF epoch (period 2)
    assert "(contrastive 1, vMF 0.1, dummy 0.5, K" in planned["text"]

    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    by_iter = {r["iteration"]: r for r in rows if "total_loss" in r}
    assert sorted(by_iter) == [0, 1] or sorted(by_iter) == [1], sorted(by_iter)
    for r in by_iter.values():
        assert r["dummy_weight"] == 0.5
        assert r["loss_dummy"] == 0.5 * 3.0  # weight (from its key) x the term
        assert "loss_mask_contrastive" in r and "loss_vmf" in r
        assert abs(r["total_loss"] - (r["loss_dummy"] + r["loss_mask_contrastive"]
                                      + r["loss_vmf"])) < 1e-4  # fmt: skip
