"""Small-scale study (issue 6): the paper's mask-source comparison (Fig. 5a), mask quality per
bootstrap round (Fig. 5b) and the vMF ablation (Table 2h, λ = 0) at demo scale, with seeds.

The CLI is ``tools/dev/study.py``; this module (a tool, not part of the ``cyborgs`` library) holds
its pieces:

* :data:`VARIANTS`: variant name -> config overrides on ``pretrain_configs/demo_R18.yaml``;
* :data:`BUDGETS`: ``micro`` (a few iterations, tests / smoke checks) and ``study`` (~2 h on
  2 CPU cores for 8 variants x 3 seeds), pretraining and transfer overrides plus time estimates;
* run planning and resumability (:func:`plan_runs`, :func:`run_is_complete`);
* one run's stages (:func:`execute_run`: pretrain or random init -> convert -> linear probe ->
  VOC detection -> ``result.json``);
* aggregation (:func:`aggregate`: mean ± std over seeds, n), the claims (:func:`evaluate_claims`,
  rule :data:`CLAIM_RULE`) and the report (:func:`write_report`: ``study.json``, ``study.md``,
  PNG plots). Every file is written atomically.

Layout under the study root ``OUT``::

    OUT/runs/<variant>/seed<k>/run.json            what the run is (fingerprint), written first
    OUT/runs/<variant>/seed<k>/pretrain/           pretrain_net OUTPUT_DIR (or the random init)
    OUT/runs/<variant>/seed<k>/transfer/           backbone.pkl, coco_stuff_probe/, voc_det/
    OUT/runs/<variant>/seed<k>/stages/<stage>.done a stage finished
    OUT/runs/<variant>/seed<k>/logs/<stage>.log    console of each subprocess
    OUT/runs/<variant>/seed<k>/result.json         the run is complete (its metrics)
    OUT/study.json, OUT/study.md, OUT/study_bars.png, OUT/study_mask_miou.png
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repo_paths import REPO_ROOT

from cyborgs.masks.cell_grid import CELL_GRID_VERSION
from cyborgs.utils.atomic import atomic_write, atomic_write_bytes

# 2: the exact METHOD.md §2 loss normalisation and the per-step vMF K (issue 11).
STUDY_VERSION = 2
PRETRAIN_CONFIG = "pretrain_configs/demo_R18.yaml"
PROBE_CONFIG = "transfer_configs/demo_coco_stuff10k_linear_probe.yaml"
VOC_CONFIG = "transfer_configs/demo_voc_det_C4.yaml"
RESULT_FILE = "result.json"
RUN_FILE = "run.json"

Override = tuple[str, Any]


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: tuple[Override, ...] = ()
    pretrain: bool = True  # False: random init (no pretraining)
    bootstrap: bool = False  # masks bootstrapped: bootstrap/mask_miou per round is tracked
    paper: str = ""
    # False: pretraining only, the result is the mask mIoU per round (no transfer stages).
    transfer: bool = True
    # False: run only when named with --variants (suite additions already measured).
    default: bool = True


# Fixed masks (Fig. 5a, as pretrain_configs/ablations/masks_*.yaml): no vMF warm-up, no vMF term,
# no bootstrap rounds (the bootstrap hook only exists for MASKS.SOURCE "bootstrap").
# The overrides here and in BUDGETS keep the pre-rename key names (CYBORGS.VMF.WARMUP_EPOCHS,
# SOLVER.WARMUP_EPOCHS, VMF.PERIOD_EPOCHS 0): they are part of every run's fingerprint, so new
# names would make finished study roots look stale; pretrain_opts maps them to the config's.
_FIXED: tuple[Override, ...] = (
    ("CYBORGS.VMF.WARMUP_EPOCHS", 0),
    ("CYBORGS.VMF.PERIOD_EPOCHS", 0),
    ("CYBORGS.VMF.LAMBDA", 0.0),
)

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("random", "random init", pretrain=False, paper="lower bound (no pretraining)"),
        Variant(
            "whole",
            "whole-image masks (BYOL-like)",
            (("CYBORGS.MASKS.SOURCE", "whole"), *_FIXED),
            paper="Fig. 5a 'random cropping'",
        ),
        Variant("grid", "grid masks", (("CYBORGS.MASKS.SOURCE", "grid"), *_FIXED), paper="Fig. 5a"),
        Variant(
            "felzenszwalb",
            "Felzenszwalb masks (DetCon)",
            (("CYBORGS.MASKS.SOURCE", "felzenszwalb"), *_FIXED),
            paper="Fig. 5a",
        ),
        # demo_R18.yaml unchanged: vMF warm-up (1 epoch) -> first round -> contrastive + λ = 0.1
        # vMF every VMF.PERIOD_EPOCHS, more rounds every BOOTSTRAP.PERIOD_EPOCHS.
        Variant("cyborgs", "CYBORGS (bootstrapped, vMF)", bootstrap=True, paper="Fig. 5a/5b"),
        # λ = 0 AFTER the warm-up only: the warm-up (vMF alone, weight 1) still trains the
        # encoder of the initial masks, as Table 2h's λ = 0 row (ablations/t2h_lambda_0.yaml).
        Variant(
            "cyborgs_no_vmf",
            "CYBORGS, vMF λ = 0",
            (("CYBORGS.VMF.LAMBDA", 0.0),),
            bootstrap=True,
            paper="Table 2h λ = 0",
        ),
        # Suite addition, not a paper row: CYBORGS with the bootstrap features computed on images
        # mirrored 16 px outwards (CYBORGS.BOOTSTRAP.BORDER_PAD), so the backbone's zero padding
        # does not give the image border a segment of its own.
        Variant(
            "cyborgs_border_pad",
            "CYBORGS, bootstrap BORDER_PAD 16",
            (("CYBORGS.BOOTSTRAP.BORDER_PAD", 16),),
            bootstrap=True,
            paper="suite addition (not in the paper)",
            default=False,
        ),
        # Fig. 5b at 4x the budget's epochs: rounds every 8 epochs (1, 8, 16, ..., 40), pretraining
        # only; its result is the mask mIoU per round.
        Variant(
            "cyborgs_long",
            "CYBORGS, 48 epochs (Fig. 5b)",
            (
                ("SOLVER.EPOCHS", 48),
                ("SOLVER.CHECKPOINT_PERIOD", 104),
                ("CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", 8),
            ),
            bootstrap=True,
            paper="Fig. 5b",
            transfer=False,
        ),
        Variant(
            "ground_truth",
            "ground-truth masks (oracle)",
            (
                ("CYBORGS.MASKS.SOURCE", "ground_truth"),
                ("DATASETS.TRAIN", ("demo_coco_2017_train",)),
                *_FIXED,
            ),
            paper="Fig. 5a oracle",
        ),
    ]
}
HEURISTICS = ("whole", "grid", "felzenszwalb")


def cli_value(v: Any) -> str:
    """A config value as detectron2's ``merge_from_list`` reads it (``literal_eval`` or str)."""
    if isinstance(v, str):
        return v
    if isinstance(v, tuple | list):
        return repr(tuple(v))
    return repr(v)


def flat_opts(overrides: Iterable[Override]) -> list[str]:
    out: list[str] = []
    for k, v in overrides:
        out += [k, cli_value(v)]
    return out


# The pre-rename key names the study's overrides keep (their fingerprints must not change, see
# _FIXED) -> the config's names. ``CYBORGS.VMF.PERIOD_EPOCHS 0`` meant "no vMF term after the
# warm-up", which the config says with ``CYBORGS.VMF.LAMBDA 0``.
_OLD_KEYS = {
    "SOLVER.WARMUP_EPOCHS": "SOLVER.LR_WARMUP_EPOCHS",
    "CYBORGS.VMF.WARMUP_EPOCHS": "CYBORGS.WARMUP_EPOCHS",
}


def pretrain_opts(overrides: Iterable[Override]) -> list[str]:
    """:func:`flat_opts` in the config's current key names (what ``tools/pretrain_net.py`` and
    the config setup accept); the fingerprints keep the study's own names."""
    out: list[str] = []
    for k, v in overrides:
        if k == "CYBORGS.VMF.PERIOD_EPOCHS" and v == 0:
            out += ["CYBORGS.VMF.PERIOD_EPOCHS", cli_value(1), "CYBORGS.VMF.LAMBDA", cli_value(0.0)]
        else:
            out += [_OLD_KEYS.get(k, k), cli_value(v)]
    return out


# ---------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    name: str
    pretrain: tuple[Override, ...]
    probe: tuple[Override, ...]
    voc: tuple[Override, ...]
    # time estimates (seconds, 2 CPU cores) used for the ETA before any run has been timed
    est_pretrain_s: float
    est_bootstrap_extra_s: float
    est_eval_s: float
    description: str = ""


# study: demo data (400 images), batch 32 -> 13 iterations/epoch, ~1.3 s/iteration (R18, crop
# 64, 2 idle cores) -> ~17 s/epoch. 12 epochs = 156 iterations ~ 203 s, + ~25 s start-up.
# Bootstrap variants add 4 rounds (epochs 1, 3, 6, 9) ~ 50 s. Evaluation per run: convert ~5 s
# + probe ~15 s + VOC detection (120 iterations, backbone frozen through res4) ~110 s +
# start-ups ~15 s ~ 145 s. Default variants (7) x 3 seeds: 4 fixed-mask x 3 x 228 s +
# 2 bootstrap x 3 x 278 s + 21 x 145 s (random init: no pretraining) = 2736 + 1668 + 3045
# ~ 7450 s ~ 2.1 h, plus cyborgs_long (3 x ~1100 s, pretraining only; reused by later studies
# since its fingerprint ignores the transfer settings).
STUDY_ARITHMETIC = (
    "study budget: demo data (400 images), batch 32 -> 13 it/epoch at ~1.3 s/it (R18, crop 64, "
    "2 idle cores) ~ 17 s/epoch; 12 epochs = 156 it ~ 203 s (+ ~25 s start-up); bootstrap "
    "variants + 4 rounds (epochs 1, 3, 6, 9) ~ 50 s; evaluation per run ~ 145 s (convert 5 + "
    "probe 15 + VOC detection 120 iterations, backbone frozen through res4, ~110 + start-ups "
    "15). 7 default variants x 3 seeds: 12 x 228 + 6 x 278 + 21 x 145 ~ 7450 s ~ 2.1 h, plus "
    "cyborgs_long 3 x ~1100 s (pretraining only)."
)

# The demo VOC fine-tune sized so that a pretrained backbone and random init differ by far more
# than the seed noise (docs/study.md, pilot): the 36-iteration demo config leaves every
# initialisation at 0.07-0.38 AP, and a full 200-iteration fine-tune lets random init catch up
# (9.2 vs 10.4 AP). Freezing the backbone through res4 (the C4 head's res5 still trains)
# measures the representation: random init 1.12 +- 0.16 AP vs CYBORGS 3.42 +- 0.10 (2 seeds,
# 200 iterations). The study runs the same schedule shortened to 120 iterations (steps and
# warm-up scaled alike) so that 7 variants x 3 seeds fit the 2.5 h budget on 2 cores.
STUDY_VOC: tuple[Override, ...] = (
    ("SOLVER.IMS_PER_BATCH", 8),
    ("SOLVER.BASE_LR", 0.02),
    ("SOLVER.MAX_ITER", 120),
    ("SOLVER.STEPS", (90, 108)),
    ("SOLVER.WARMUP_ITERS", 12),
    ("MODEL.BACKBONE.FREEZE_AT", 4),
)

BUDGETS: dict[str, Budget] = {
    "micro": Budget(
        name="micro",
        pretrain=(
            ("SOLVER.IMS_PER_BATCH", 8),
            ("SOLVER.EPOCHS", 3),
            ("SOLVER.WARMUP_EPOCHS", 1),
            ("SOLVER.CHECKPOINT_PERIOD", 1000000),
            ("SOLVER.CHECKPOINTS_TO_KEEP", 1),
            ("DATALOADER.NUM_WORKERS", 0),
            ("CYBORGS.AUG.CROP_SIZE", 48),
            ("CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", 1),  # rounds after epochs 1 and 2
            ("CYBORGS.BOOTSTRAP.INPUT_SIZE", 64),
            ("CYBORGS.BOOTSTRAP.KMEANS_ITERS", 3),
            ("CYBORGS.VMF.PERIOD_EPOCHS", 1),
            ("CYBORGS.VMF.KMEANS_ITERS", 3),
        ),
        probe=(("SOLVER.MAX_ITER", 2), ("DATALOADER.NUM_WORKERS", 0)),
        voc=(
            ("SOLVER.MAX_ITER", 2),
            ("SOLVER.STEPS", (1,)),
            ("SOLVER.WARMUP_ITERS", 1),
            ("TEST.PRECISE_BN.NUM_ITER", 1),
            ("DATALOADER.NUM_WORKERS", 0),
        ),
        est_pretrain_s=25.0,
        est_bootstrap_extra_s=5.0,
        est_eval_s=30.0,
        description=(
            "micro: 3 epochs at batch 8 (tiny preset, 24 images: 9 iterations; demo data: 150), "
            "2 transfer iterations each; a smoke check of the whole pipeline, not a measurement"
        ),
    ),
    "study": Budget(
        name="study",
        pretrain=(
            ("SOLVER.EPOCHS", 12),
            ("SOLVER.CHECKPOINT_PERIOD", 39),  # every 3 epochs (13 it/epoch on demo data)
            ("SOLVER.CHECKPOINTS_TO_KEEP", 1),
        ),
        probe=(),  # demo_coco_stuff10k_linear_probe.yaml as is (50 iterations)
        voc=STUDY_VOC,
        est_pretrain_s=228.0,
        est_bootstrap_extra_s=50.0,
        est_eval_s=145.0,
        description=STUDY_ARITHMETIC,
    ),
}


def estimate_run_s(variant: Variant, budget: Budget) -> float:
    s = budget.est_eval_s if variant.transfer else 0.0
    if variant.pretrain:
        # Scaled by the variant's own epoch count when it overrides the budget's.
        epochs = dict(budget.pretrain).get("SOLVER.EPOCHS")
        scale = dict(variant.overrides).get("SOLVER.EPOCHS", epochs) / epochs if epochs else 1.0
        s += scale * budget.est_pretrain_s
        s += scale * budget.est_bootstrap_extra_s if variant.bootstrap else 0.0
    return s


# ---------------------------------------------------------------------------------------------
# Planning and resumability
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    variant: Variant
    seed: int
    dir: Path
    status: str = "todo"  # "done" | "todo" (fresh or partial: stages resume) | "stale"
    fingerprint: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"


def fingerprint(variant: Variant, budget: Budget, seed: int) -> dict:
    """What makes two runs the same run; a directory with another fingerprint is redone.
    A pretraining-only variant does not depend on the transfer settings; a bootstrapped one
    also holds the version of the masks' cell placement (``cyborgs.masks.cell_grid``)."""
    fp = {
        "version": STUDY_VERSION,
        "variant": variant.name,
        "seed": int(seed),
        "budget": budget.name,
        "pretrain_config": PRETRAIN_CONFIG,
        "overrides": flat_opts(variant.overrides),
        "pretrain": variant.pretrain,
        "budget_pretrain": flat_opts(budget.pretrain),
    }
    if variant.bootstrap:
        # where rounds place their maps on the pixels: a change redoes the bootstrapped runs
        # only (the fixed-mask variants' masks are unchanged)
        fp["cell_grid"] = CELL_GRID_VERSION
    if variant.transfer:
        fp["budget_probe"] = flat_opts(budget.probe)
        fp["budget_voc"] = flat_opts(budget.voc)
    return fp


def run_dir(root: str | os.PathLike, variant: str, seed: int) -> Path:
    return Path(root) / "runs" / variant / f"seed{seed}"


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_is_complete(path: str | os.PathLike, fp: Mapping) -> bool:
    """``result.json`` exists, parses, belongs to this fingerprint and has its metrics (both
    transfer metrics, or the mask mIoU of a pretraining-only run)."""
    rec = read_json(Path(path) / RESULT_FILE)
    if not isinstance(rec, dict) or rec.get("fingerprint") != dict(fp):
        return False
    m = rec.get("metrics", {})
    need = ("probe_miou", "voc_ap") if "budget_voc" in fp else ("mask_miou_last",)
    return isinstance(m, dict) and all(_finite(m.get(k)) for k in need)


def plan_runs(
    root: str | os.PathLike, variants: Sequence[str], seeds: Sequence[int], budget: Budget
) -> list[Run]:
    """Every (variant, seed) run with its status: "done" (skipped), "stale" (another
    fingerprint: wiped and redone) or "todo" (new or incomplete: its finished stages are kept)."""
    runs = []
    for name in variants:
        if name not in VARIANTS:
            raise KeyError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        v = VARIANTS[name]
        for seed in seeds:
            d = run_dir(root, name, seed)
            fp = fingerprint(v, budget, seed)
            if run_is_complete(d, fp):
                status = "done"
            else:
                prev = read_json(d / RUN_FILE)
                status = "stale" if prev is not None and prev.get("fingerprint") != fp else "todo"
            runs.append(Run(v, int(seed), d, status, fp))
    return runs


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
class StageError(RuntimeError):
    pass


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _run_cmd(cmd: list[str], log: Path, env: Mapping[str, str]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, cwd=REPO_ROOT, env=dict(env), stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise StageError(f"command failed (exit {rc}), log {log}:\n{tail}")


def write_random_init(path: Path, seed: int, opts: Sequence[str]) -> None:
    """A randomly initialised CYBORGS checkpoint (``{"model": state_dict}``) built from the same
    pretraining config, seeded: the "no pretraining" baseline goes through the same
    conversion and transfer as every other variant."""
    import torch
    from detectron2.modeling import build_model

    from cyborgs.engine.setup import setup_pretrain_cfg

    cfg, _ = setup_pretrain_cfg(
        str(REPO_ROOT / PRETRAIN_CONFIG), list(opts), world_size=1, schedule=False
    )
    rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_model(cfg)
    finally:
        torch.random.set_rng_state(rng)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save({"model": state}, f))


def _mask_rounds(metrics_json: Path) -> list[dict]:
    """``[{"round": epoch, "iteration": it, "mask_miou": v}, ...]`` from a pretraining run."""
    from cyborgs.utils.plotting import bootstrap_rounds, load_metrics

    if not metrics_json.is_file():
        return []
    m = load_metrics(metrics_json)
    miou = dict(m.get("bootstrap/mask_miou", []))
    return [
        {"round": r, "iteration": it, "mask_miou": miou[it]}
        for it, r in bootstrap_rounds(m)
        if it in miou and math.isfinite(miou[it])
    ]


def _transfer_metric(path: Path, task: str, metric: str) -> float:
    rec = read_json(path)
    if not isinstance(rec, dict):
        raise StageError(f"{path}: missing or unreadable")
    v = rec.get("results", {}).get(task, {}).get(metric)
    if not _finite(v):
        raise StageError(f"{path}: no finite results.{task}.{metric}")
    return float(v)


def execute_run(
    run: Run,
    budget: Budget,
    env: Mapping[str, str],
    python: str = sys.executable,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the stages of ``run`` that are not done yet, then write ``result.json``."""
    d = run.dir
    if run.status == "stale" and d.exists():
        log(f"  {run.key}: outputs of another configuration; starting over")
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / RUN_FILE, {"fingerprint": run.fingerprint})
    stages, logs = d / "stages", d / "logs"
    stages.mkdir(exist_ok=True)
    pre, tr = d / "pretrain", d / "transfer"
    ckpt, weights = pre / "model_final.pth", tr / "backbone.pkl"
    seed = str(run.seed)
    pre_opts = pretrain_opts(budget.pretrain) + pretrain_opts(run.variant.overrides)
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], None]) -> None:
        marker = stages / f"{name}.done"
        if marker.is_file():
            return
        log(f"  {run.key}: {name} ...")
        t0 = time.time()
        fn()
        timings[name] = time.time() - t0
        atomic_write_bytes(marker, f"{timings[name]:.1f}\n".encode())

    def pretrain() -> None:
        if run.variant.pretrain:
            cmd = [python, "tools/pretrain_net.py", "--config-file", PRETRAIN_CONFIG, "--resume"]
            cmd += [*pre_opts, "OUTPUT_DIR", str(pre), "SEED", seed]
            _run_cmd(cmd, logs / "pretrain.log", env)
            # Only the final weights are needed; periodic checkpoints would fill the disk.
            for p in pre.glob("model_*.pth"):
                if p.name != "model_final.pth":
                    p.unlink()
        else:
            pre.mkdir(parents=True, exist_ok=True)
            write_random_init(ckpt, run.seed, pre_opts)
        if not ckpt.is_file():
            raise StageError(f"{ckpt} was not written")

    def convert() -> None:
        tr.mkdir(parents=True, exist_ok=True)
        # train_net proves every backbone tensor loads, so the converter's own check is skipped.
        cmd = [python, "tools/convert_to_detectron2.py", str(ckpt), str(weights), "--check", ""]
        _run_cmd(cmd, logs / "convert.log", env)

    def transfer(name: str, config: str, opts: tuple[Override, ...]) -> Callable[[], None]:
        def fn() -> None:
            out = tr / name
            if out.exists():
                shutil.rmtree(out)  # a half-finished fine-tuning restarts from scratch
            cmd = [python, "tools/train_net.py", "--config-file", config, "MODEL.WEIGHTS"]
            cmd += [str(weights), *flat_opts(opts), "OUTPUT_DIR", str(out), "SEED", seed]
            _run_cmd(cmd, logs / f"{name}.log", env)

        return fn

    stage("pretrain", pretrain)
    metrics: dict[str, float] = {}
    if run.variant.transfer:
        stage("convert", convert)
        stage("coco_stuff_probe", transfer("coco_stuff_probe", PROBE_CONFIG, budget.probe))
        stage("voc_det", transfer("voc_det", VOC_CONFIG, budget.voc))
        voc = tr / "voc_det" / "metrics_final.json"
        metrics = {
            "probe_miou": _transfer_metric(tr / "coco_stuff_probe" / "metrics_final.json", "sem_seg", "mIoU"),
            "voc_ap": _transfer_metric(voc, "bbox", "AP"),
            "voc_ap50": _transfer_metric(voc, "bbox", "AP50"),
            "voc_ap75": _transfer_metric(voc, "bbox", "AP75"),
        }  # fmt: skip
    rounds = _mask_rounds(pre / "metrics.json") if run.variant.bootstrap else []
    if rounds:
        metrics["mask_miou_first"] = rounds[0]["mask_miou"]
        metrics["mask_miou_last"] = rounds[-1]["mask_miou"]
    record = {
        "fingerprint": run.fingerprint,
        "variant": run.variant.name,
        "seed": run.seed,
        "metrics": metrics,
        "mask_rounds": rounds,
        "stage_seconds": {
            p.stem.removesuffix(".done"): float(p.read_text() or 0) for p in stages.glob("*.done")
        },
    }
    _write_json(d / RESULT_FILE, record)
    # The fine-tuned weights are not needed once their metrics are read (~50 MB each).
    for p in tr.glob("*/model_*.pth"):
        p.unlink()
    return record


# ---------------------------------------------------------------------------------------------
# Aggregation and claims
# ---------------------------------------------------------------------------------------------
METRICS = [  # (key, header, unit note)
    ("probe_miou", "probe mIoU", "COCO-Stuff linear probe mIoU (%)"),
    ("voc_ap", "VOC AP", "VOC detection AP (%)"),
    ("voc_ap50", "VOC AP50", "VOC detection AP50 (%)"),
    ("voc_ap75", "VOC AP75", "VOC detection AP75 (%)"),
    ("mask_miou_first", "mask mIoU (first round)", "bootstrapped mask mIoU, 0-1"),
    ("mask_miou_last", "mask mIoU (last round)", "bootstrapped mask mIoU, 0-1"),
]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}``: std is the sample std (ddof = 1); 0.0 for n = 1; None for n = 0."""
    vals = [float(v) for v in values if _finite(v)]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def aggregate(records: Sequence[Mapping]) -> dict:
    """Per variant: each metric's mean ± std over seeds, and mask mIoU per round."""
    by_var: dict[str, list[Mapping]] = {}
    for r in records:
        by_var.setdefault(r["variant"], []).append(r)
    out: dict[str, Any] = {}
    for name, recs in by_var.items():
        metrics = {k: mean_std([r["metrics"].get(k) for r in recs]) for k, _, _ in METRICS}
        per_round: dict[int, list[float]] = {}
        for r in recs:
            for p in r.get("mask_rounds", []):
                per_round.setdefault(int(p["round"]), []).append(p["mask_miou"])
        out[name] = {
            "seeds": sorted(int(r["seed"]) for r in recs),
            "metrics": metrics,
            "per_round_values": {str(k): v for k, v in sorted(per_round.items())},
            "mask_miou_per_round": [
                {"round": k, **mean_std(v)} for k, v in sorted(per_round.items())
            ],
        }
    return out


CLAIM_RULE = (
    "A comparison A > B holds if mean(A) - mean(B) > pooled std, with pooled std = "
    "sqrt(((n_A - 1) s_A^2 + (n_B - 1) s_B^2) / (n_A + n_B - 2)) (s = sample std over seeds); "
    "it does not hold otherwise; it is inconclusive when either side is missing or "
    "n_A + n_B < 3 (no std to compare with)."
)


def pooled_std(a: Mapping, b: Mapping) -> float | None:
    na, nb = a.get("n", 0), b.get("n", 0)
    if not na or not nb or na + nb < 3:
        return None
    return math.sqrt(((na - 1) * a["std"] ** 2 + (nb - 1) * b["std"] ** 2) / (na + nb - 2))


def compare(a: Mapping | None, b: Mapping | None) -> dict:
    """``a > b`` under :data:`CLAIM_RULE`: verdict "holds" / "does not hold" / "inconclusive"."""
    if not a or not b or a.get("mean") is None or b.get("mean") is None:
        return {"verdict": "inconclusive", "why": "missing results"}
    diff = a["mean"] - b["mean"]
    sp = pooled_std(a, b)
    if sp is None:
        return {"verdict": "inconclusive", "diff": diff, "why": "fewer than 3 runs in total"}
    return {"verdict": "holds" if diff > sp else "does not hold", "diff": diff, "pooled_std": sp}


def _all(verdicts: Sequence[str]) -> str:
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    if all(v == "holds" for v in verdicts) and verdicts:
        return "holds"
    return "inconclusive"


def _m(agg: Mapping, variant: str, metric: str) -> Mapping | None:
    return agg.get(variant, {}).get("metrics", {}).get(metric)


def evaluate_claims(agg: Mapping) -> list[dict]:
    """The paper's three claims, decided from ``aggregate`` output by :data:`CLAIM_RULE`."""
    claims = []

    # (1) Fig. 5a (COCO-Stuff mIoU; here the linear probe): CYBORGS beats each fixed heuristic
    # and approaches ground truth.
    checks = []
    for h in HEURISTICS:
        c = compare(_m(agg, "cyborgs", "probe_miou"), _m(agg, h, "probe_miou"))
        checks.append({"test": f"cyborgs > {h} (probe mIoU)", **c})
    beats = _all([c["verdict"] for c in checks])
    cy, gt = _m(agg, "cyborgs", "probe_miou"), _m(agg, "ground_truth", "probe_miou")
    hs = [m for h in HEURISTICS if (m := _m(agg, h, "probe_miou")) and m.get("mean") is not None]
    if cy and gt and cy.get("mean") is not None and gt.get("mean") is not None and hs:
        best = max(hs, key=lambda m: m["mean"])
        gap_closed = cy["mean"] - best["mean"]
        half_gap = 0.5 * (gt["mean"] - best["mean"])
        not_worse = compare(gt, cy)["verdict"] == "does not hold"
        ok = not_worse or (gap_closed >= half_gap and gt["mean"] > best["mean"])
        approach = {
            "test": "cyborgs approaches ground_truth (probe mIoU): GT - CYBORGS is not > pooled "
            "std, or CYBORGS closes at least half the gap from the best heuristic to GT",
            "verdict": "holds" if ok else "does not hold",
            "diff": cy["mean"] - gt["mean"],
        }
        if compare(gt, cy)["verdict"] == "inconclusive" and not ok:
            approach["verdict"] = "inconclusive"
    else:
        approach = {"test": "cyborgs approaches ground_truth", "verdict": "inconclusive",
                    "why": "missing results"}  # fmt: skip
    checks.append(approach)
    claims.append(
        {
            "id": 1,
            "claim": "CYBORGS beats the fixed heuristic masks (whole, grid, Felzenszwalb) and "
            "approaches ground-truth masks (Fig. 5a)",
            "metric": "probe_miou",
            "verdict": _all([beats, approach["verdict"]]),
            "checks": checks,
        }
    )

    # (2) Fig. 5b: mask mIoU improves across rounds (first vs last round), on the long run when
    # the study has it.
    fig5b = "cyborgs_long" if "cyborgs_long" in agg else "cyborgs"
    rounds = agg.get(fig5b, {}).get("mask_miou_per_round", [])
    if len(rounds) >= 2:
        c = compare(rounds[-1], rounds[0])
        test = f"{fig5b} mask mIoU: round {rounds[-1]['round']} > round {rounds[0]['round']}"
    else:
        c = {"verdict": "inconclusive", "why": f"{len(rounds)} round(s) with mask mIoU"}
        test = f"{fig5b} mask mIoU: last round > first round"
    claims.append(
        {
            "id": 2,
            "claim": "bootstrapped mask mIoU improves across rounds (Fig. 5b)",
            "metric": "mask_miou per round",
            "verdict": c["verdict"],
            "checks": [{"test": test, **c}],
        }
    )

    # (3) Table 2h (VOC detection AP): vMF matters, CYBORGS (λ = 0.1) > λ = 0.
    c = compare(_m(agg, "cyborgs", "voc_ap"), _m(agg, "cyborgs_no_vmf", "voc_ap"))
    also = compare(_m(agg, "cyborgs", "probe_miou"), _m(agg, "cyborgs_no_vmf", "probe_miou"))
    claims.append(
        {
            "id": 3,
            "claim": "the vMF loss matters: CYBORGS beats CYBORGS with λ = 0 (Table 2h)",
            "metric": "voc_ap",
            "verdict": c["verdict"],
            "checks": [
                {"test": "cyborgs > cyborgs_no_vmf (VOC AP; Table 2h's metric)", **c},
                {"test": "cyborgs > cyborgs_no_vmf (probe mIoU; information only)", **also},
            ],
        }
    )
    return claims


def suite_findings(agg: Mapping) -> list[dict]:
    """Comparisons for the suite's own additions (same rule; empty when the variant is absent)."""
    if "cyborgs_border_pad" not in agg:
        return []
    out = []
    for key in ("mask_miou_last", "probe_miou", "voc_ap"):
        c = compare(_m(agg, "cyborgs_border_pad", key), _m(agg, "cyborgs", key))
        out.append({"test": f"cyborgs_border_pad > cyborgs ({key})", **c})
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _fmt(ms: Mapping | None, digits: int = 2) -> str:
    if not ms or ms.get("mean") is None:
        return "–"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f} (n={ms['n']})"


def _numbers(check: Mapping) -> str:
    """ "; difference +d, pooled std s" of a comparison, for the parts it has."""
    out = f"; difference {check['diff']:+.3f}" if "diff" in check else ""
    return out + (f", pooled std {check['pooled_std']:.3f}" if "pooled_std" in check else "")


def _plot_bars(agg: Mapping, variants: Sequence[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (key, title) in zip(axes, [("probe_miou", "COCO-Stuff probe mIoU (%)"),
                                       ("voc_ap", "VOC detection AP (%)")], strict=True):  # fmt: skip
        names = [v for v in variants if _m(agg, v, key) and _m(agg, v, key)["mean"] is not None]
        means = [_m(agg, v, key)["mean"] for v in names]
        stds = [_m(agg, v, key)["std"] for v in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title + "; mean ± std over seeds")
        ax.grid(axis="y", alpha=0.3)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _plot_rounds(agg: Mapping, variants: Sequence[str], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    drawn = 0
    for v in variants:
        pts = [p for p in agg.get(v, {}).get("mask_miou_per_round", []) if p["mean"] is not None]
        if pts:
            ax.errorbar([p["round"] for p in pts], [p["mean"] for p in pts],
                        yerr=[p["std"] for p in pts], marker="o", capsize=4, label=v)  # fmt: skip
            drawn += 1
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no mask mIoU logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("bootstrap round (epoch)")
    ax.set_ylabel("mask mIoU vs ground truth (Hungarian)")
    ax.set_title("Bootstrapped mask mIoU per round; mean ± std over seeds")
    ax.grid(alpha=0.3)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def write_report(
    root: str | os.PathLike, records: Sequence[Mapping], budget: Budget, seeds: Sequence[int]
) -> dict:
    """``study.json``, ``study.md`` and the two PNGs under ``root``; returns the JSON content."""
    root = Path(root)
    agg = aggregate(records)
    variants = [v for v in VARIANTS if v in agg]
    claims = evaluate_claims(agg)
    data = {
        "version": STUDY_VERSION,
        "budget": budget.name,
        "budget_description": budget.description,
        "seeds": list(seeds),
        "variants": {
            v: {
                "label": VARIANTS[v].label,
                "overrides": flat_opts(VARIANTS[v].overrides),
                "paper": VARIANTS[v].paper,
            }
            for v in variants
        },  # fmt: skip
        "results": agg,
        "claim_rule": CLAIM_RULE,
        "claims": claims,
        "runs": [
            {"variant": r["variant"], "seed": r["seed"], "metrics": r["metrics"]} for r in records
        ],  # fmt: skip
        "plots": {"bars": "study_bars.png", "mask_miou": "study_mask_miou.png"},
    }
    _plot_bars(agg, variants, root / "study_bars.png")
    _plot_rounds(agg, [v for v in variants if VARIANTS[v].bootstrap], root / "study_mask_miou.png")

    md = ["# CYBORGS small-scale study", ""]
    md += [f"Budget `{budget.name}`: {budget.description}", "",
           f"Seeds: {', '.join(map(str, seeds))}. Pretraining: `{PRETRAIN_CONFIG}` + the variant's "
           f"overrides; evaluation: `{PROBE_CONFIG}`, `{VOC_CONFIG}`. Cells: mean ± sample std "
           "over seeds (n = runs).", ""]  # fmt: skip
    if budget.name == "micro":
        md += ["**Micro budget**: a few iterations per run; these numbers only show that the "
               "pipeline runs and say nothing about the method.", ""]  # fmt: skip
    md += ["## Results", ""]
    md.append("| variant | " + " | ".join(h for _, h, _ in METRICS) + " |")
    md.append("|---" * (len(METRICS) + 1) + "|")
    for v in variants:
        cells = [_fmt(_m(agg, v, k), 3 if k.startswith("mask") else 2) for k, _, _ in METRICS]
        md.append(f"| {v} ({VARIANTS[v].label}) | " + " | ".join(cells) + " |")
    md += ["", "Units: " + "; ".join(f"{h}: {u}" for _, h, u in METRICS), ""]
    md += ["## Mask mIoU per bootstrap round (Fig. 5b)", ""]
    for v in variants:
        pts = agg[v]["mask_miou_per_round"]
        if pts:
            md.append(f"- {v}: " + ", ".join(f"round {p['round']}: {_fmt(p, 3)}" for p in pts))
    md += ["", "![bars](study_bars.png)", "", "![mask mIoU](study_mask_miou.png)", ""]
    md += ["## Claims (computed from the numbers above)", "", f"Rule: {CLAIM_RULE}", ""]
    for c in claims:
        md.append(f"{c['id']}. **{c['verdict']}**: {c['claim']} (metric: {c['metric']})")
        for ch in c["checks"]:
            why = f"; {ch['why']}" if "why" in ch else ""
            md.append(f"   - {ch['test']}: {ch['verdict']}{_numbers(ch)}{why}")
    md.append("")
    findings = suite_findings(agg)
    if findings:
        md += ["## Suite additions (not paper claims)", ""]
        md += [f"- {ch['test']}: **{ch['verdict']}**{_numbers(ch)}" for ch in findings]
        md.append("")
    data["suite_findings"] = findings
    oracle = read_json(root / "oracle" / "oracle.json")
    if isinstance(oracle, dict) and oracle.get("rounds"):
        md += ["## Oracle round (does the round give object masks when features are good?)", ""]
        md += ["One real bootstrap round (`tools/bootstrap_masks.py`) on each encoder, scored "
               "like `bootstrap/mask_miou`.", "",
               "| encoder | mask mIoU | mask mIoU per image | images |", "|---|---|---|---|"]  # fmt: skip
        for name, r in oracle["rounds"].items():
            cells = [f"{v:.3f}" if _finite(v) else "–" for v in (r.get("mask_miou"), r.get("mask_miou_per_image"))]  # fmt: skip
            md.append(f"| {name} | {cells[0]} | {cells[1]} | {r.get('images', '–')} |")
        md.append("")
        data["oracle"] = oracle
    atomic_write_bytes(root / "study.md", "\n".join(md).encode())
    _write_json(root / "study.json", data)
    return data


def format_duration(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
