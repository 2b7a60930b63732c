"""A short pretraining run is watchable: round progress/ETA lines, plan.json, masks in TensorBoard.

tiny preset: 24 images / batch 8 = 3 iterations per epoch, 3 epochs; vMF warm-up 1 epoch and
BOOTSTRAP.PERIOD_EPOCHS 2 -> rounds at the start of epochs 1 and 2 (after iterations 2 and 5).
Each label-map write is slowed to 0.1 s (the hook's test instrumentation) so a round lasts a
few seconds and logs progress lines, as a long COCO round would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

_OPTS = [
    "SOLVER.EPOCHS", "3",
    "SOLVER.IMS_PER_BATCH", "8",
    "SOLVER.CHECKPOINT_PERIOD", "3",
    "SOLVER.CHECKPOINTS_TO_KEEP", "1",
    "DATALOADER.NUM_WORKERS", "0",
    "CYBORGS.AUG.CROP_SIZE", "48",
    "CYBORGS.BOOTSTRAP.INPUT_SIZE", "64",
    "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", "2",
    "CYBORGS.BOOTSTRAP.GROUP_SIZE", "8",  # 3 groups: progress after each
]  # fmt: skip

PROGRESS = re.compile(
    r"bootstrap round (\d+) \(rank 0/1\): (\d+)/(\d+) images \((\d+)%\), ([\d.]+) images/s, "
    r"elapsed (\d+:\d\d:\d\d), eta: (\d+:\d\d:\d\d)"
)


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


@pytest.fixture(scope="module")
def run(tiny_data_root, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("watch") / "run"
    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(tiny_data_root), OMP_NUM_THREADS="2")
    # Each label map written sleeps 0.1 s (tests/bootstrap/slow_mask_writes.py): rounds last
    # long enough to print progress lines.
    cmd = [sys.executable, str(REPO / "tests" / "bootstrap" / "slow_mask_writes.py"), "0.1",
           str(REPO / "tools" / "pretrain_net.py"), "--config-file",
           "pretrain_configs/demo_R18.yaml", "OUTPUT_DIR", str(out), *_OPTS]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out, res.stdout + res.stderr


def test_round_progress_and_training_eta(run) -> None:
    out, log = run
    lines = {1: [], 2: []}
    for m in PROGRESS.finditer(log):
        lines[int(m.group(1))].append(m)
    for r, found in lines.items():
        assert found, f"no progress line for round {r}:\n{log[-4000:]}"
        for m in found:
            done, total, pct = int(m.group(2)), int(m.group(3)), int(m.group(4))
            rate, eta = float(m.group(5)), _seconds(m.group(7))
            assert total == 24 and 0 < done < total and pct == round(100 * done / total)
            # ETA = images left at the mean rate so far (whole seconds, rate printed to 0.1)
            assert abs(eta - (total - done) / rate) <= 1 + 0.05 * eta, m.group(0)
        assert re.search(rf"bootstrap round {r} \(rank 0/1\): 24 images in", log)
    # the console ETA after round 1 includes the round still to come (round 2)
    assert re.search(r"eta: \d+:\d\d:\d\d \(incl\. 1 bootstrap round\)", log), log[-4000:]


def test_plan_json_follows_the_schedule(run) -> None:
    out, log = run
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["images"], plan["iters_per_epoch"], plan["max_iter"]) == (24, 3, 9)
    assert [e["phase"] for e in plan["per_epoch"]] == [
        "vMF warm-up",  # epoch 0 < CYBORGS.WARMUP_EPOCHS 1
        "contrastive",  # 1 % VMF.PERIOD_EPOCHS 2 != 0
        "contrastive + vMF",  # 2 % 2 == 0
    ]
    assert [r["epoch"] for r in plan["bootstrap_rounds"]] == [1, 2]
    # checkpoints after iterations 2, 5, 8 and model_final; 1 periodic kept
    assert (plan["checkpoints"]["written"], plan["checkpoints"]["kept"]) == (4, 2)
    final = (out / "model_final.pth").stat().st_size
    assert 0.8 < plan["checkpoints"]["bytes_each"] / final < 1.2
    assert "Plan (" in log and "bootstrap rounds at the start of epochs 1-2" in log
    # what the run did matches the plan
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert sorted({r["bootstrap/round"] for r in rows if "bootstrap/round" in r}) == [1.0, 2.0]


def test_tensorboard_holds_the_masks_of_each_round(run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = run
    acc = EventAccumulator(str(out), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tag = "bootstrap/masks/demo_coco_2017_train_unlabeled"
    assert tag in acc.Tags()["images"], acc.Tags()
    images = acc.Images(tag)
    # one grid per round, written at the step after which the round ran (epoch * 3 - 1)
    assert [e.step for e in images] == [2, 5]
    for e in images:
        # 4 rows of image | mask, each image resized to a shorter side of 128 px
        assert e.width >= 2 * 128 and e.height >= 4 * 128
    assert [e.step for e in acc.Histograms("bootstrap/k/demo_coco_2017_train_unlabeled")] == [2, 5]
    scalars = set(acc.Tags()["scalars"])
    for k in ("bootstrap/bytes_per_image", "bootstrap/k_mean", "vmf_weight", "contrastive_weight",
              "loss_vmf", "vmf_num_clusters"):  # fmt: skip
        assert k in scalars, k


def _reference_miou(pairs) -> float:
    """Data-set mIoU of (stored map, ground truth) pairs, from the definition (paper's mask
    quality; cyborgs/bootstrap/quality.py's protocol): per image, clusters are matched one to
    one with the classes present, maximising matched pixels (the Hungarian problem, solved by
    scipy); each class then has TP = matched overlap, FP = its cluster's other pixels, FN = its
    other pixels (all of them when no cluster is left for it); TP/FP/FN add up over images and
    the classes' IoUs are averaged. Ground-truth 255 (crowd) is left out."""
    from scipy.optimize import linear_sum_assignment

    totals: dict[int, list[int]] = {}
    for pred, gt in pairs:
        valid = gt != 255
        p, g = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
        clusters, classes = np.unique(p), np.unique(g)
        conf = np.array([[np.sum((p == c) & (g == k)) for k in classes] for c in clusters])
        rows, cols = linear_sum_assignment(conf, maximize=True)
        matched = dict(zip(cols, rows, strict=True))
        for j, k in enumerate(classes):
            t = totals.setdefault(int(k), [0, 0, 0])
            area = int(conf[:, j].sum())
            if j in matched:
                tp = int(conf[matched[j], j])
                t[0] += tp
                t[1] += int(conf[matched[j]].sum()) - tp
                t[2] += area - tp
            else:
                t[2] += area
    return float(np.mean([tp / (tp + fp + fn) for tp, fp, fn in totals.values()]))


def _nearest_cells(n_cells: int, n_pixels: int, centre: float) -> np.ndarray:
    """Per pixel k of one image axis, the cell j whose centre (j + c) N / n lies nearest the
    pixel's centre k + 0.5, ties to the higher cell: the placement a round records as its cell
    centre c (cyborgs/masks/cell_grid.py's convention). Exact arithmetic, so a tie is a tie."""
    c = Fraction(centre)
    cells = [(j + c) * n_pixels / n_cells for j in range(n_cells)]
    out = []
    for k in range(n_pixels):
        d = [abs(Fraction(2 * k + 1, 2) - x) for x in cells]
        out.append(max(j for j in range(n_cells) if d[j] == min(d)))
    return np.array(out)


def test_logged_mask_miou_is_the_stored_masks_against_ground_truth(run, tiny_data_root) -> None:
    """The mask mIoU the run logs for each round (labeled twin demo_coco_2017_train) equals
    the metric recomputed here from the maps the round stored and the annotations."""
    from detectron2.data import DatasetCatalog

    from cyborgs.masks.ground_truth import semantic_map
    from cyborgs.masks.store import MaskStore, image_key

    out, _ = run
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    logged = {int(r["bootstrap/round"]): r["bootstrap/mask_miou"] for r in rows
              if "bootstrap/mask_miou" in r}  # fmt: skip
    assert sorted(logged) == [1, 2]
    name = "demo_coco_2017_train_unlabeled"
    store = MaskStore(str(out / "masks" / "bootstrap" / image_key(name)))
    twin = DatasetCatalog.get("demo_coco_2017_train")
    by_id = {d["image_id"]: d for d in twin}
    by_name = {os.path.basename(d["file_name"]): d for d in twin}
    for round_id, value in logged.items():
        cy, cx = store.manifest(round_id)["cell_grid"]["centre"]  # the round's record
        pairs = []
        for d in DatasetCatalog.get(name):
            lab = by_id.get(d["image_id"]) or by_name[os.path.basename(d["file_name"])]
            if not lab.get("annotations"):
                continue
            gt = semantic_map(lab)
            stored = store.read(d["image_id"], round_id=round_id)  # the map as stored
            H, W = gt.shape
            h, w = stored.shape
            # each pixel takes the label of the cell centred nearest to it
            pred = stored[_nearest_cells(h, H, cy)][:, _nearest_cells(w, W, cx)]
            pairs.append((pred, gt))
        assert len(pairs) > 10
        reference = _reference_miou(pairs)
        assert 0.0 < reference < 1.0  # clusters of a 9-iteration run are not the classes
        assert value == pytest.approx(reference, rel=1e-9, abs=1e-12), round_id
