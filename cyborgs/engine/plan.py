"""What a pretraining config will do, said up front: ``OUTPUT_DIR/plan.json`` and a printed table.

Per epoch: the loss phase (vMF warm-up / contrastive / contrastive + vMF) with its weights, and
the bootstrap round that runs at its start; totals: iterations, checkpoints written and kept, and
the disk they and the mask rounds will take. Everything is derived from the functions the
training loop itself runs -- ``iters_per_epoch`` and ``resolve_epoch_schedule``
(``cyborgs.solver.schedule``), ``LossScheduleHook.phase_at_epoch`` and the bootstrap hook's
``round_epochs`` -- so the plan cannot drift from the run.

Disk estimates: a checkpoint holds the model state (every parameter and buffer, online and
target) plus the optimizer's momentum buffer per trainable parameter; mask rounds are all kept
(``bytes per image x images x rounds``). Before any round exists, bytes per image is estimated
from the label-map size at the bootstrap feature stride (``MASK_BYTES_PER_CELL``, from the
sizes measured in ``benchmarks/mask_store.py``); the real number is the
``bootstrap/bytes_per_image`` metric of each round. A round of the packed store
(``cyborgs.masks.packed``) is one part file per writer process plus its index and manifest.

Data read per epoch: every image once (two views are cut from one decode) at
``IMAGE_BYTES_ESTIMATE`` each unless the caller knows better, plus its stored label map.
docs/SCALE.md works these figures out for COCO and ImageNet-1k.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from detectron2.config import CfgNode

from cyborgs.masks.packed import INDEX_DTYPE
from cyborgs.masks.registry import is_precomputed
from cyborgs.modeling.loss_terms import loss_terms
from cyborgs.solver.schedule import iters_per_epoch, resolve_epoch_schedule, round_epochs
from cyborgs.utils.atomic import atomic_write_bytes, format_bytes

from .hooks import LossPhase, LossScheduleHook

__all__ = [
    "PLAN_FILE",
    "build_plan",
    "estimate_mask_bytes_per_image",
    "format_plan",
    "model_counts",
    "model_counts_from_config",
    "write_plan",
]

PLAN_FILE = "plan.json"

# Compressed label maps of k-means segments: ~1500 B for 80x60 cells at mid-range K (PNG,
# measured: 190 B at K=2 .. 2020 B at K=256; the packed store's zlib records are ~7% smaller on
# the same maps, benchmarks/RESULTS.md), i.e. ~0.3 B per cell, plus ~100 B of record header,
# key and index row. An upper estimate: real rounds at K ~ 20 measured ~500 B.
MASK_BYTES_PER_CELL = 0.3
MASK_BYTES_HEADER = 100
# A packed round: index.npy and manifest.json, plus one part file per writer process.
MASK_FILES_PER_ROUND = 2
# Mean JPEG of COCO train2017 (~18 GB / 118,287 images); ImageNet-1k's is ~110 KB.
IMAGE_BYTES_ESTIMATE = 152_000
# Shape assumed for the estimate: COCO's typical 4:3 images.
_ASPECT = 4 / 3
_STAGE_STRIDE = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

PHASE_LABELS = {"vmf_warmup": "vMF warm-up", "contrastive": "contrastive"}
# The loss term each phase is named after (the label names the others when they are on).
_PHASE_TERM = {"vmf_warmup": "vmf", "contrastive": "contrastive"}


def model_counts(model: torch.nn.Module) -> dict[str, int]:
    """Element counts and bytes of ``model``'s state (works on a meta-device model too)."""
    params = list(model.parameters())
    buffers = list(model.buffers())
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "buffers": sum(b.numel() for b in buffers),
        "state_bytes": sum(t.numel() * t.element_size() for t in params + buffers),
        "momentum_bytes": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
    }


def model_counts_from_config(cfg: CfgNode) -> dict[str, int] | None:
    """:func:`model_counts` of ``cfg``'s model instantiated on the meta device: no memory is
    allocated and nothing is initialised or moved. None if the architecture cannot be built
    that way (the plan then gives no checkpoint size)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    try:
        with torch.device("meta"):
            model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    except Exception:  # noqa: BLE001 - an estimate only: say "unknown" rather than fail
        return None
    return model_counts(model)


def _feature_stride(features: list[str]) -> int:
    strides = [_STAGE_STRIDE.get(str(f).split(".")[0]) for f in features]
    known = [s for s in strides if s]
    return min(known) if known else 8


def estimate_mask_bytes_per_image(cfg: CfgNode) -> float:
    """Estimated PNG size of one bootstrap label map (feature resolution of BOOTSTRAP.INPUT_SIZE,
    4:3 images; INPUT_SIZE 0 = as stored: COCO's 480-px shorter side)."""
    b = cfg.CYBORGS.BOOTSTRAP
    short = int(b.INPUT_SIZE) or 480
    stride = _feature_stride(list(b.FEATURES))
    cells = math.ceil(short / stride) * math.ceil(short * _ASPECT / stride)
    return MASK_BYTES_HEADER + MASK_BYTES_PER_CELL * cells


def phase_label(phase: LossPhase) -> str:
    """The phase's name and the other loss terms it has on: ``vMF warm-up``, ``contrastive``,
    ``contrastive + vMF``."""
    others = [
        t.label
        for t in loss_terms()
        if t.name != _PHASE_TERM.get(phase.name) and phase.weights.get(t.name, 0.0) > 0
    ]
    return " + ".join([PHASE_LABELS.get(phase.name, phase.name), *others])


def build_plan(
    cfg: CfgNode,
    dataset_size: int,
    counts: dict[str, int] | None = None,
    *,
    world_size: int = 1,
    image_bytes: float | None = None,
) -> dict[str, Any]:
    """The plan of ``cfg`` on ``dataset_size`` images (see the module docstring); ``counts``
    from :func:`model_counts` gives the checkpoint size (None: unknown). ``world_size``: the
    ranks (each a writer of a bootstrap round; a fixed source writes from every loader worker
    of every rank); ``image_bytes``: mean size of one stored image (default
    ``IMAGE_BYTES_ESTIMATE``)."""
    ipe = iters_per_epoch(int(dataset_size), int(cfg.SOLVER.IMS_PER_BATCH))
    lr = resolve_epoch_schedule(cfg, ipe)
    max_iter = lr.max_iter
    phases = LossScheduleHook(cfg, ipe)
    source = str(cfg.CYBORGS.MASKS.SOURCE)
    rounds = (
        round_epochs(
            int(cfg.CYBORGS.WARMUP_EPOCHS),
            int(cfg.CYBORGS.BOOTSTRAP.PERIOD_EPOCHS),
            max_iter,
            ipe,
        )
        if source == "bootstrap"
        else []
    )

    ckpt = _checkpoint_plan(cfg, rounds, ipe, max_iter, counts)
    masks = _mask_plan(cfg, source, len(rounds), int(dataset_size), int(world_size))
    img_b = float(IMAGE_BYTES_ESTIMATE if image_bytes is None else image_bytes)
    read_images = int(img_b * dataset_size)
    read_masks = masks["store_bytes_per_round"] if masks["rounds_kept"] else 0
    disk = None
    if ckpt["bytes_kept"] is not None and masks["bytes"] is not None:
        disk = ckpt["bytes_kept"] + masks["bytes"]
    return {
        "datasets": list(cfg.DATASETS.TRAIN),
        "images": int(dataset_size),
        "ims_per_batch": int(cfg.SOLVER.IMS_PER_BATCH),
        "iters_per_epoch": ipe,
        "epochs": float(cfg.SOLVER.EPOCHS),
        "max_iter": max_iter,
        "lr_warmup_iters": lr.warmup_iters,
        "mask_source": source,
        "bootstrap_rounds": [{"round": e, "epoch": e, "iteration": e * ipe} for e in rounds],
        "per_epoch": _per_epoch(phases, rounds, ipe, max_iter, source),
        "checkpoints": ckpt,
        "model": counts,
        "masks": masks,
        "data_read_per_epoch": {
            "image_bytes_each_estimate": img_b,
            "images_bytes": read_images,
            "masks_bytes": read_masks,
            "bytes": None if read_masks is None else read_images + read_masks,
        },
        "disk_bytes_estimate": disk,
    }


def _per_epoch(
    phases: LossScheduleHook, rounds: list[int], ipe: int, max_iter: int, source: str
) -> list[dict[str, Any]]:
    """One entry per epoch: its iterations, loss phase, vMF K range and bootstrap round."""
    epochs = []
    masks_from: int | None = None
    for e in range(-(-max_iter // ipe)):
        p = phases.phase_at_epoch(e)
        if e in rounds:
            masks_from = e
        epochs.append(
            {
                "epoch": e,
                "iterations": [e * ipe, min((e + 1) * ipe, max_iter)],
                "phase": phase_label(p),
                **{f"{n}_weight": w for n, w in p.weights.items()},
                # K of the vMF k-means: drawn per step from [min, max] (equal: fixed)
                "vmf_k": [p.vmf_k_min, p.vmf_k_max],
                "bootstrap_round": e if e in rounds else None,  # runs before the epoch's 1st step
                "masks_of_round": masks_from if source == "bootstrap" else None,
            }
        )
    return epochs


def _checkpoint_plan(
    cfg: CfgNode, rounds: list[int], ipe: int, max_iter: int, counts: dict[str, int] | None
) -> dict[str, Any]:
    """Checkpoints written and kept, and their size (None without ``counts``)."""
    # detectron2's PeriodicCheckpointer: model_{iter} after every step with (iter + 1) % period
    # == 0, and after the last step before each bootstrap round (a failing round must not lose
    # the epoch), the newest CHECKPOINTS_TO_KEEP of them kept, plus model_final.
    period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
    before_rounds = [e for e in rounds if e > 0 and not (period > 0 and e * ipe % period == 0)]
    periodic = (max_iter // period if period > 0 else 0) + len(before_rounds)
    keep = int(cfg.SOLVER.CHECKPOINTS_TO_KEEP)
    kept = (min(periodic, keep) if keep > 0 else periodic) + 1
    ckpt_bytes = None
    if counts is not None:
        ckpt_bytes = int(counts["state_bytes"] + counts["momentum_bytes"])
    return {
        "period_iters": period,
        "written": periodic + 1,
        "kept": kept,
        "bytes_each": ckpt_bytes,
        "bytes_kept": None if ckpt_bytes is None else ckpt_bytes * kept,
    }


def _mask_plan(
    cfg: CfgNode, source: str, num_rounds: int, dataset_size: int, world_size: int
) -> dict[str, Any]:
    """The mask store's rounds kept, bytes and files (packed store: a few files per writer)."""
    if source == "bootstrap":
        mask_rounds = num_rounds
        bpi: float | None = estimate_mask_bytes_per_image(cfg)
    elif is_precomputed(source):  # the registry says which sources store one round
        mask_rounds, bpi = 1, None  # computed once at image resolution: size not estimated
    else:
        mask_rounds, bpi = 0, 0.0
    if source == "bootstrap":
        writers = world_size
    elif mask_rounds:  # precompute: every loader worker of every rank appends its own part
        writers = world_size * max(1, int(cfg.DATALOADER.NUM_WORKERS))
    else:
        writers = 0
    files_per_round = MASK_FILES_PER_ROUND + writers if mask_rounds else 0
    return {
        "rounds_kept": mask_rounds,
        "bytes_per_image_estimate": bpi,
        "bytes": None if bpi is None else int(bpi * dataset_size * mask_rounds),
        "writers_per_round": writers,
        "store_files_per_round": files_per_round,
        "store_files": files_per_round * mask_rounds,
        "store_bytes_per_round": None if bpi is None else int(bpi * dataset_size),
        "index_bytes_per_round": INDEX_DTYPE.itemsize * dataset_size if mask_rounds else 0,
    }


def write_plan(plan: dict[str, Any], output_dir: str) -> str:
    """``output_dir/plan.json``, written atomically; returns its path."""
    import os

    path = os.path.join(output_dir, PLAN_FILE)
    atomic_write_bytes(path, (json.dumps(plan, indent=1) + "\n").encode())
    return path


def _steps(epochs: list[int]) -> set[int]:
    return {b - a for a, b in zip(epochs, epochs[1:], strict=False)}


def _k_text(k: list[int]) -> str:
    return str(k[0]) if k[0] == k[1] else f"~U{{{k[0]}..{k[1]}}} per step"


def _irregular(epochs: list[int]) -> bool:
    return len(epochs) > 8 and len(_steps(epochs)) > 1


def _runs(epochs: list[int]) -> list[list[int]]:
    """``epochs`` cut into arithmetic runs, left to right; a pair whose second epoch starts a
    longer run is split, so that 1, 3, 6, 9 is [1], [3, 6, 9] and not [1, 3], [6, 9]."""
    runs, i, n = [], 0, len(epochs)
    while i < n:
        j = i + 1
        if j < n:
            step = epochs[j] - epochs[i]
            while j + 1 < n and epochs[j + 1] - epochs[j] == step:
                j += 1
            if (
                j == i + 1
                and j + 2 < n
                and (epochs[j + 2] - epochs[j + 1] == epochs[j + 1] - epochs[j])
            ):
                j = i
        else:
            j = i
        runs.append(epochs[i : j + 1])
        i = j + 1
    return runs


def _run_text(run: list[int]) -> str:
    if len(run) >= 3 and run[1] - run[0] == 1:
        return f"{run[0]}-{run[-1]}"
    if len(run) > 4:
        return f"{run[0]}, {run[1]}, ..., {run[-1]}"
    return ", ".join(map(str, run))


def _epoch_list(epochs: list[int], rest_of_span: bool = False) -> str:
    """Compact and exact: "3", "0-4", "6, 8, ..., 798" (a longer arithmetic run), a short list,
    or the arithmetic runs of an irregular set ("1 and 3, 6, ..., 27"). ``rest_of_span``: the
    set is every epoch of its span not listed before it (the phase printed last), which is
    said so when that is shorter."""
    if not epochs:
        return "none"
    if len(epochs) == 1:
        return str(epochs[0])
    steps = _steps(epochs)
    if steps == {1}:
        return f"{epochs[0]}-{epochs[-1]}"
    if len(steps) == 1 and len(epochs) > 4:
        return f"{epochs[0]}, {epochs[1]}, ..., {epochs[-1]}"
    if len(epochs) <= 8:
        return ", ".join(map(str, epochs))
    cut = _runs(epochs)
    if rest_of_span and len(cut) > 3:
        return f"{epochs[0]}-{epochs[-1]} except those above ({len(epochs)} epochs)"
    if all(len(r) <= 2 for r in cut):
        return ", ".join(map(str, epochs))
    runs = [_run_text(r) for r in cut]
    return runs[0] + " and " + runs[1] if len(runs) == 2 else "; ".join(runs)


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a few human-readable lines (what the log and ``--plan-only`` print)."""
    lines = [
        f"{plan['images']} images / batch {plan['ims_per_batch']} = {plan['iters_per_epoch']} "
        f"iterations/epoch; {plan['epochs']:g} epochs = {plan['max_iter']} iterations "
        f"(LR warm-up {plan['lr_warmup_iters']})"
    ]
    by_phase: dict[str, list[int]] = {}
    for e in plan["per_epoch"]:
        by_phase.setdefault(e["phase"], []).append(e["epoch"])
    # An irregular set goes after the regular ones; the last phase may be printed as the rest
    # of its span ("except those above"), true only there: the phases partition the epochs.
    phases = sorted(by_phase.items(), key=lambda kv: _irregular(kv[1]))
    for n, (phase, eps) in enumerate(phases):
        ex = next(e for e in plan["per_epoch"] if e["phase"] == phase)
        text = _epoch_list(eps, rest_of_span=n == len(phases) - 1)
        weights = ", ".join(
            f"{t.label} {ex[t.weight_attr()]:g}" for t in loss_terms() if t.weight_attr() in ex
        )
        lines.append(
            f"  epoch{'s' if len(eps) > 1 else ''} {text}: {phase} ({weights}, "
            f"K {_k_text(ex['vmf_k'])})"
        )
    rounds = [r["epoch"] for r in plan["bootstrap_rounds"]]
    if plan["mask_source"] == "bootstrap":
        many = "s" if len(rounds) != 1 else ""
        lines.append(
            f"  bootstrap round{many} at the start of epoch{many} {_epoch_list(rounds)} "
            f"({len(rounds)} round{many} of {plan['images']} images)"
        )
    else:
        lines.append(f"  masks: {plan['mask_source']} (no bootstrap rounds)")
    c, m = plan["checkpoints"], plan["masks"]
    lines.append(
        f"  checkpoints: every {c['period_iters']} iterations, {c['written']} written, "
        f"{c['kept']} kept x {format_bytes(c['bytes_each'])} = {format_bytes(c['bytes_kept'])}"
    )
    lines.append(
        f"  masks on disk: {m['rounds_kept']} round(s) x {plan['images']} images x "
        f"~{format_bytes(m['bytes_per_image_estimate'])} = ~{format_bytes(m['bytes'])}"
    )
    if m.get("store_files_per_round"):
        lines.append(
            f"  mask store: {m['store_files_per_round']} files per round (a part per writer x "
            f"{m['writers_per_round']}, index, manifest), ~{format_bytes(m['store_bytes_per_round'])} "
            f"per round, {m['store_files']} files in all"
        )
    r = plan.get("data_read_per_epoch")
    if r:
        lines.append(
            f"  data read per epoch: ~{format_bytes(r['bytes'])} (images ~{format_bytes(r['images_bytes'])} "
            f"at ~{format_bytes(r['image_bytes_each_estimate'])} each, masks "
            f"~{format_bytes(r['masks_bytes'])})"
        )
    lines.append(f"  disk in all: ~{format_bytes(plan['disk_bytes_estimate'])}")
    return "\n".join(lines)
