#!/usr/bin/env python
"""CYBORGS self-supervised pretraining (paper §3; SPEC §2-5).

    tools/pretrain_net.py --config-file pretrain_configs/cyborgs_R50_coco_800ep.yaml \
        --num-gpus 8 OUTPUT_DIR output/cyborgs_r50
    tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml     # CPU, minutes

Writes OUTPUT_DIR/{config.yaml, args.json, log.txt, metrics.json, events.out.tfevents.*,
model_*.pth, last_checkpoint, plan.json}. ``--resume`` continues exactly from last_checkpoint.
``--plan-only`` prints what the config will do (phase per epoch, bootstrap rounds, iterations,
checkpoints, disk), writes OUTPUT_DIR/plan.json and exits without training or allocating the model. Convert
the result for transfer with tools/convert_to_detectron2.py.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from cyborgs.engine.launch import launch_from_args
from cyborgs.engine.setup import setup_pretrain_cfg
from cyborgs.engine.trainer import CyborgsTrainer

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
On a machine without CUDA, MODEL.DEVICE is set to cpu automatically and SyncBN becomes BN;
  --num-gpus N then starts N CPU processes (gloo).

Examples:
  tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml SOLVER.EPOCHS 2
  tools/pretrain_net.py --config-file pretrain_configs/cyborgs_R50_coco_800ep.yaml --num-gpus 8
  tools/pretrain_net.py --config-file ... --resume     # continue from OUTPUT_DIR/last_checkpoint
"""


def setup(args) -> CfgNode:
    """The run's frozen config (:func:`cyborgs.engine.setup.setup_pretrain_cfg`: merged,
    checked, epochs -> iterations), then detectron2's ``default_setup`` (logger, env info,
    OUTPUT_DIR/config.yaml, seeding), the cyborgs logger and OUTPUT_DIR/args.json."""
    cfg, notes = setup_pretrain_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cyborgs")
    for n in notes:  # automatic changes (CPU fallback) and old key names mapped
        logger.warning(n)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        with open(os.path.join(cfg.OUTPUT_DIR, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
    return cfg


def main(args) -> None:
    cfg = setup(args)
    if args.eval_only:
        raise SystemExit(
            "pretrain_net.py has no evaluation: convert the checkpoint with "
            "tools/convert_to_detectron2.py and evaluate it with tools/train_net.py"
        )
    trainer = CyborgsTrainer(cfg, args=vars(args))
    trainer.resume_or_load(resume=args.resume)
    trainer.train()


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
        print(f"{e}\n--plan-only needs the number of images: pass --images N (COCO "
              "train2017: 118287)", file=sys.stderr)  # fmt: skip
        return 2
    for n in notes:
        logger.warning(n)
    plan = build_plan(cfg, int(cfg.CYBORGS.DATA.NUM_IMAGES), model_counts_from_config(cfg))
    print(format_plan(plan))
    if cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        print(f"plan written to {write_plan(plan, cfg.OUTPUT_DIR)}")
    return 0


def get_parser():
    parser = default_argument_parser(epilog=EPILOG)
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="print the plan (phases, rounds, iterations, checkpoints, disk), write "
        "OUTPUT_DIR/plan.json and exit without training or allocating the model",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="with --plan-only: number of training images (default: count the data set; "
        "lets you plan a run whose data is not on this machine)",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    if args.plan_only:
        sys.exit(plan_only(args))
    launch_from_args(main, args)
    sys.exit(0)
