#!/usr/bin/env python
"""CYBORGS self-supervised pretraining (paper §3; METHOD.md §2-5).

    tools/pretrain_net.py --config-file pretrain_configs/cyborgs_R50_coco_800ep.yaml \
        --num-gpus 8 OUTPUT_DIR output/cyborgs_r50
    tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml     # CPU, minutes

Writes OUTPUT_DIR/{config.yaml, args.json, log.txt, metrics.json, events.out.tfevents.*,
model_*.pth, last_checkpoint, plan.json}. ``--resume`` continues exactly from last_checkpoint;
without it an OUTPUT_DIR that already holds a run is refused, and so is any non-empty folder
that is not a run of the suite (OUTPUT_DIR/.cyborgs_outputs.json records what the suite writes
there). Before training, the plan's disk estimate is checked against the free space (--force
starts anyway).
``--plan-only`` prints what the config will do (phase per epoch, bootstrap rounds, iterations,
checkpoints, disk), writes OUTPUT_DIR/plan.json and exits without training or allocating the model. Convert
the result for transfer with tools/convert_to_detectron2.py.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import re
import sys

from cli_errors import UsageError, one_line_config_errors
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from cyborgs.config import flat_items
from cyborgs.config_io import parse_yaml_text
from cyborgs.engine.launch import (
    add_cluster_arguments,
    install_preemption_signals,
    launch_from_args,
)
from cyborgs.engine.setup import setup_pretrain_cfg
from cyborgs.engine.trainer import CyborgsTrainer
from cyborgs.utils import ownership
from cyborgs.utils.atomic import DiskFullError, format_bytes, free_bytes, nearest_existing
from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS, Preempted

logger = logging.getLogger("cyborgs.tools.pretrain_net")

EPILOG = """
Tuning advice
-------------
Batch size and LR (LARS): the paper uses SOLVER.IMS_PER_BATCH 64 (global, over all processes)
  with SOLVER.BASE_LR 0.1; the authors' code 128 with 0.2. Scale BASE_LR linearly with the batch
  (BASE_LR = 0.1 * batch / 64). LARS rescales each layer by its trust ratio, so it tolerates large
  batches, but keep SOLVER.LR_WARMUP_EPOCHS (10) when raising the LR; a NaN in the first epochs
  means the LR is too high for the batch.
EMA momentum: CYBORGS.EMA.BASE_MOMENTUM 0.996 suits hundreds of epochs. For short runs (a few
  epochs, or tiny data sets) lower it (0.99 or even 0.9), otherwise the target encoder barely
  moves from its random init and the losses stall; the cosine schedule always ends at 1.0.
Data workers: DATALOADER.NUM_WORKERS 4-8 per GPU keeps a V100 busy at 224 px; with images/s in
  metrics.json falling while data_time grows, raise it. On a 2-core CPU use 0-2.
vMF warm-up: CYBORGS.WARMUP_EPOCHS (paper 5, K = VMF.WARMUP_K 8) trains the encoder with the
  clustering loss alone so the first bootstrap round has structure to find; then the contrastive
  loss starts and the vMF term returns with weight VMF.LAMBDA every VMF.PERIOD_EPOCHS epochs
  (VMF.LAMBDA 0: never). Bootstrap rounds run right after the warm-up and every
  BOOTSTRAP.PERIOD_EPOCHS epochs; scale all epoch keys down together for short runs.
Schedules are in epochs (SOLVER.EPOCHS, SOLVER.LR_WARMUP_EPOCHS, SOLVER.STEP_EPOCHS). SOLVER.MAX_ITER
  is derived (EPOCHS x iterations/epoch from the data set size): leave it unset; a config that
  sets it to another value is rejected.
  SOLVER.CHECKPOINT_PERIOD is in iterations (the log prints iterations/epoch).
On a machine without CUDA, MODEL.DEVICE is set to cpu automatically and SyncBN (any synchronised
  norm) becomes BN; --num-gpus N then starts N CPU processes (gloo).

Examples:
  tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml SOLVER.EPOCHS 2
  tools/pretrain_net.py --config-file pretrain_configs/cyborgs_R50_coco_800ep.yaml --num-gpus 8
  tools/pretrain_net.py --config-file ... --resume     # continue from OUTPUT_DIR/last_checkpoint
"""


def existing_run(output_dir: str) -> list[str]:
    """The files in ``output_dir`` that show a run lives there (checkpoint pointer, weights)."""
    weights = sorted(glob.glob(os.path.join(output_dir, "model_*.pth")))
    found = [
        p for p in [os.path.join(output_dir, "last_checkpoint"), *weights] if os.path.isfile(p)
    ]
    return [os.path.basename(p) for p in found]


def _changed_keys(saved_yaml: str, cfg: CfgNode, saved_name: str = "config.yaml") -> list[str]:
    """``KEY: old -> new`` for each key whose value differs from the saved config. OUTPUT_DIR
    is ignored: a run directory may be moved or reached by another path."""
    old = flat_items(parse_yaml_text(saved_yaml, saved_name) or {})
    new = flat_items(parse_yaml_text(cfg.dump(), "the new config"))
    keys = sorted((set(old) | set(new)) - {"OUTPUT_DIR"})
    return [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in keys
            if old.get(k, "<absent>") != new.get(k, "<absent>")]  # fmt: skip


def refuse_output_dir(out: str, resume: bool) -> None:
    """Before anything is written: an empty OUTPUT_DIR, or a run's directory without --resume
    (that would overwrite its checkpoints and mask rounds and append to its metrics.json)."""
    if not out:
        raise UsageError("OUTPUT_DIR is empty: a run needs a directory for its checkpoints")
    held = existing_run(out)
    shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
    if held and not resume:
        raise UsageError(
            f"OUTPUT_DIR {out} already holds a run ({shown}): pass --resume to continue it, "
            "or choose a new OUTPUT_DIR"
        )
    if held and "last_checkpoint" not in held:
        # --resume follows last_checkpoint only: it would start over and overwrite these
        raise UsageError(
            f"OUTPUT_DIR {out} holds checkpoints ({shown}) but no last_checkpoint file, so "
            "--resume cannot continue from them: write the name of the one to continue from "
            "into OUTPUT_DIR/last_checkpoint, or choose a new OUTPUT_DIR"
        )


# The files a run writes directly in OUTPUT_DIR under fixed names (recorded when the folder is
# claimed; a file of the user's under one of these names is refused, never overwritten).
RUN_FILES = ("config.yaml", "args.json", "plan.json", "log.txt", "metrics.json",
             "last_checkpoint", "masks")  # fmt: skip
# What a run of an older version of the suite (which kept no record) left in OUTPUT_DIR.
_LEGACY_RUN_FILE = re.compile(
    r"^(config\.yaml|config\.before_resume_.+\.yaml|args\.json|plan\.json|log\.txt(\.rank\d+)?|"
    r"metrics\.json|last_checkpoint|masks|model_(\d+|final)\.pth|events\.out\.tfevents\..+)$"
)


def claim_output_dir(out: str, dry_run: bool = False) -> None:
    """Make OUTPUT_DIR the run's (:mod:`cyborgs.utils.ownership`) before anything is written
    there: a new or empty folder, or one the suite's record marks as a pretraining run's. A
    folder holding anything else is refused, naming it and what it holds (nothing there is
    overwritten or deleted). A run of an older version of the suite (``last_checkpoint`` or
    ``model_*.pth`` beside no record) is recognised and its own files recorded. ``dry_run``:
    the refusal only, nothing written."""
    legacy = None
    if os.path.isdir(out) and existing_run(out) and not ownership.is_claimed(out):
        legacy = [n for n in os.listdir(out) if _LEGACY_RUN_FILE.match(n)]
    try:
        ownership.claim(out, "pretrain_net", legacy=legacy, what="OUTPUT_DIR", dry_run=dry_run)
        if not dry_run:
            ownership.record(out, *RUN_FILES)
    except ownership.NotOwnedError as e:
        raise UsageError(f"OUTPUT_DIR: {e}") from None


def _device_of(path: str) -> int | None:
    try:
        return os.stat(nearest_existing(path)).st_dev
    except OSError:
        return None


def _bytes_already_there(cfg: CfgNode) -> tuple[int, int]:
    """(checkpoint bytes, bootstrap-round bytes) a resumed run already holds: the plan's
    estimate is the whole run's, so only the rest is still to be written."""
    from cyborgs.masks.store import MaskStore, store_root

    out = cfg.OUTPUT_DIR
    ckpt = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "model_*.pth")))
    masks = 0
    for name in cfg.DATASETS.TRAIN:
        store = MaskStore(store_root(cfg, "bootstrap", name))
        for r in store.rounds():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                masks += int(store.manifest(r)["bytes"])
    return ckpt, masks


def check_disk(cfg: CfgNode) -> None:
    """Before any work: the plan's disk estimate (:mod:`cyborgs.engine.plan`: kept checkpoints
    plus mask rounds; on resume, less what the run already holds) against the free space at
    OUTPUT_DIR and, where it lies on another file system, the mask store. Refused with the
    numbers (``--force`` skips this check)."""
    from cyborgs.engine.plan import build_plan, model_counts_from_config

    plan = build_plan(cfg, int(cfg.CYBORGS.DATA.NUM_IMAGES), model_counts_from_config(cfg))
    have_ckpt, have_masks = _bytes_already_there(cfg)
    ckpt = max(0, (plan["checkpoints"]["bytes_kept"] or 0) - have_ckpt)
    masks = max(0, (plan["masks"]["bytes"] or 0) - have_masks)
    out = cfg.OUTPUT_DIR
    store = cfg.CYBORGS.MASKS.STORE_DIR or os.path.join(out, "masks")
    needs = {out: ckpt, store: masks}
    if _device_of(out) == _device_of(store):
        needs = {out: ckpt + masks}
    for where, need in needs.items():
        free = free_bytes(where)
        if free is not None and need > free:
            c = plan["checkpoints"]
            raise UsageError(
                f"not enough disk space at {where}: the plan needs ~{format_bytes(need)} more "
                f"(checkpoints: {c['kept']} kept x {format_bytes(c['bytes_each'])}; mask "
                f"rounds: ~{format_bytes(plan['masks']['bytes'])}; less "
                f"{format_bytes(have_ckpt + have_masks)} already written), "
                f"{format_bytes(free)} free there: free some space, choose another OUTPUT_DIR "
                "(or CYBORGS.MASKS.STORE_DIR), or pass --force to start anyway"
            )


def keep_config_if_changed(cfg: CfgNode) -> list[str]:
    """On --resume, before default_setup overwrites OUTPUT_DIR/config.yaml: if the new config
    differs from the run's, rename the run's to config.before_resume_<checkpoint>.yaml and
    return a warning listing the changed keys (logged once the logger exists)."""
    out = cfg.OUTPUT_DIR
    saved = os.path.join(out, "config.yaml")
    pointer = os.path.join(out, "last_checkpoint")
    if not (comm.is_main_process() and os.path.isfile(saved) and os.path.isfile(pointer)):
        return []
    with open(saved) as f:
        changed = _changed_keys(f.read(), cfg, saved)
    if not changed:
        return []
    with open(pointer) as f:
        # model_0000123.pth -> 0000123, model_final.pth -> final: the point resumed from
        tag = re.sub(r"^model_|\.pth$", "", os.path.basename(f.read().strip())) or "unknown"
    kept = os.path.join(out, f"config.before_resume_{tag}.yaml")
    n = 1
    while os.path.exists(kept):  # an earlier resume from the same checkpoint kept one already
        kept = os.path.join(out, f"config.before_resume_{tag}.{n}.yaml")
        n += 1
    os.replace(saved, kept)
    return [
        f"--resume with a config that differs from the run's (kept as {kept}); "
        f"{len(changed)} changed key(s):\n  " + "\n  ".join(changed)
    ]


def setup(args) -> CfgNode:
    """The run's frozen config (:func:`cyborgs.engine.setup.setup_pretrain_cfg`: merged,
    checked, epochs -> iterations), the OUTPUT_DIR checks (:func:`refuse_output_dir`,
    :func:`claim_output_dir`, :func:`check_disk`, :func:`keep_config_if_changed`), then
    detectron2's ``default_setup`` (logger, env info, OUTPUT_DIR/config.yaml, seeding), the
    cyborgs logger and OUTPUT_DIR/args.json."""
    cfg, notes = setup_pretrain_cfg(args.config_file, args.opts)
    refuse_output_dir(cfg.OUTPUT_DIR, args.resume)
    if comm.is_main_process():
        claim_output_dir(cfg.OUTPUT_DIR, dry_run=True)  # refusals first, nothing written
        if not args.force:
            check_disk(cfg)
        claim_output_dir(cfg.OUTPUT_DIR)
    # The other ranks write (log.txt.rankN) only into a folder rank 0 has claimed; if rank 0
    # refused, it exits and the launcher stops them here.
    comm.synchronize()
    if args.resume:
        notes += keep_config_if_changed(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cyborgs")
    for n in notes:  # automatic changes (CPU fallback), config changes
        logger.warning(n)
    if args.resume and not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        # a warning, not an error: tools/run_demo.sh and the study always pass --resume
        logger.warning("--resume: nothing to resume in %s; starting a new run", cfg.OUTPUT_DIR)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        with open(os.path.join(cfg.OUTPUT_DIR, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
    return cfg


def main(args) -> None:
    install_preemption_signals(args)  # before anything slow: a signal now is honoured too
    with one_line_config_errors(args.config_file, args.opts):
        cfg = setup(args)
    try:
        trainer = CyborgsTrainer(cfg, args=vars(args))
        trainer.resume_or_load(resume=args.resume)
        if args.resume and trainer.start_iter >= trainer.max_iter:
            logger.info("run already complete (%d/%d iterations) in %s; nothing to train",
                        trainer.start_iter, trainer.max_iter, cfg.OUTPUT_DIR)  # fmt: skip
            return
        trainer.train()
    except DiskFullError as e:
        # The checkpoints up to the failure are whole (atomic writes): resume from them.
        print(f"error: {e}; free some space and continue with --resume", file=sys.stderr)
        raise SystemExit(1) from None
    except Preempted as e:
        # A scheduler's stop (SLURM preemption / time limit): not an error of the run.
        if comm.is_main_process():
            print(f"preempted: {e}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT_STATUS) from None


def plan_only(args) -> int:
    """Print the plan and write OUTPUT_DIR/plan.json; no model, no process group, no training.
    Checkpoint sizes come from a meta-device instance of the model (no memory, no init)."""
    from cyborgs.engine.plan import build_plan, format_plan, model_counts_from_config, write_plan

    setup_logger(name="cyborgs")
    setup_logger(name="detectron2")
    try:
        # a bad config fails here (validation comes before the data set is counted)
        cfg, notes = setup_pretrain_cfg(
            args.config_file, args.opts, num_images=args.images or None, world_size=1
        )
    except FileNotFoundError as e:
        if args.images or (args.config_file and not os.path.isfile(args.config_file)):
            raise  # not the data set: the config file
        print(f"{e}\n--plan-only counts the data set's images: fix the path above, or pass "
              "--images N to plan without the data (COCO train2017: 118287)",
              file=sys.stderr)  # fmt: skip
        return 2
    for n in notes:
        logger.warning(n)
    plan = build_plan(
        cfg,
        int(cfg.CYBORGS.DATA.NUM_IMAGES),
        model_counts_from_config(cfg),
        world_size=max(1, int(args.num_gpus) * int(args.num_machines)),
    )
    print(format_plan(plan))
    if cfg.OUTPUT_DIR and existing_run(cfg.OUTPUT_DIR):
        # the run's own plan.json describes the run; a what-if plan must not replace it
        print(f"plan not written: OUTPUT_DIR {cfg.OUTPUT_DIR} holds a run")
    elif cfg.OUTPUT_DIR:
        try:
            claim_output_dir(cfg.OUTPUT_DIR)
        except UsageError as e:
            print(f"plan not written: {e}")
            return 0
        print(f"plan written to {write_plan(plan, cfg.OUTPUT_DIR)}")
    return 0


def get_parser():
    parser = default_argument_parser(epilog=EPILOG)
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="print the plan (phases, rounds, iterations, checkpoints, disk), write "
        "OUTPUT_DIR/plan.json (not into an existing run) and exit without training or "
        "allocating the model",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="start even if the plan's disk estimate exceeds the free space",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="with --plan-only: number of training images (default: count the data set; "
        "lets you plan a run whose data is not on this machine)",
    )
    add_cluster_arguments(parser)
    for action in parser._actions:  # detectron2's flag; pretraining has no evaluation
        if action.dest == "eval_only":
            action.help = argparse.SUPPRESS
    return parser


def check_args(args) -> str | None:
    """What is wrong with the command line before any config is read; None if nothing."""
    if args.eval_only:
        return ("pretrain_net.py has no evaluation: convert the checkpoint with "
                "tools/convert_to_detectron2.py and evaluate it with tools/train_net.py")  # fmt: skip
    options = [o for o in args.opts if str(o).startswith("--")]
    if options:
        return (f"{options[0]} was read as a config key: options go before the KEY VALUE "
                "overrides")  # fmt: skip
    if not args.config_file and not args.plan_only:
        # --plan-only may plan the built-in defaults (--config-file ""); a run may not
        return "--config-file is required (e.g. pretrain_configs/demo_R18.yaml)"
    return None


def cli(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with one_line_config_errors(args.config_file, args.opts):
        if args.plan_only:
            return plan_only(args)
        # Merge, validate and check OUTPUT_DIR in this process, before launch: a mistake is
        # one line here, not one traceback per spawned process. The schedule (which counts
        # the data set) is left to setup().
        cfg, _ = setup_pretrain_cfg(args.config_file, args.opts, schedule=False,
                                    world_size=args.num_gpus * args.num_machines)  # fmt: skip
        refuse_output_dir(cfg.OUTPUT_DIR, args.resume)
        claim_output_dir(cfg.OUTPUT_DIR, dry_run=True)  # claimed in setup(), after the disk
    install_preemption_signals(args)  # the launcher forwards these to its processes
    try:
        launch_from_args(main, args)
    except SystemExit as e:  # one process, run inline
        if e.code == PREEMPTED_EXIT_STATUS:
            return PREEMPTED_EXIT_STATUS
        raise
    except ProcessExitedException as e:
        if e.exit_code == PREEMPTED_EXIT_STATUS:  # every process checkpointed and stopped
            print("preempted: the processes stopped on a signal after a checkpoint; continue "
                  "with --resume", file=sys.stderr)  # fmt: skip
            return PREEMPTED_EXIT_STATUS
        # A spawned process exited with a status after printing why (a config mistake found
        # only there, e.g. a missing data set: one error line per process); the launcher's
        # own traceback would bury that line. A process that raised still shows its traceback.
        print(f"error: training process {e.error_index} exited with status {e.exit_code}",
              file=sys.stderr)  # fmt: skip
        return e.exit_code or 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
