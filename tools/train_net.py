#!/usr/bin/env python
"""Fine-tune / evaluate a transfer config (detection, instance and semantic segmentation).

    tools/train_net.py --config-file transfer_configs/voc_det_R50_C4_24k.yaml --num-gpus 8 \
        MODEL.WEIGHTS out/backbone.pkl OUTPUT_DIR out/voc_det

Before any training it checks that the data sets are registered and their files exist, that
MODEL.WEIGHTS exists, and that NUM_CLASSES matches the data; after loading it proves that every
backbone tensor came from MODEL.WEIGHTS. Final metrics go to OUTPUT_DIR/metrics_final.json.
"""

from __future__ import annotations

import sys

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from repo_paths import resolve_transfer_config

from cyborgs.engine.launch import launch_from_args  # CPU multi-process capable (METHOD.md §7)
from cyborgs.transfer.results import write_metrics_final
from cyborgs.transfer.setup import get_transfer_cfg
from cyborgs.transfer.trainer import TransferTrainer, build_checkpointer, check_backbone_loaded


def setup(args):
    cfg = get_transfer_cfg(resolve_transfer_config(args.config_file), args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup gives handlers to detectron2's and fvcore's loggers only; the backbone
    # check ("every backbone tensor came from MODEL.WEIGHTS") logs through ``cyborgs``.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cyborgs")
    return cfg


def main(args):
    from cyborgs.transfer.preflight import preflight

    cfg = setup(args)
    preflight(cfg, eval_only=args.eval_only, resume=args.resume)
    if args.eval_only:
        model = TransferTrainer.build_model(cfg)
        checkpointer = build_checkpointer(model, save_dir=cfg.OUTPUT_DIR)
        resuming = args.resume and checkpointer.has_checkpoint()
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if not resuming and cfg.MODEL.WEIGHTS.endswith(".pkl"):
            # evaluating a bare converted backbone: still prove it loaded
            check_backbone_loaded(cfg, model, checkpointer)
        results = TransferTrainer.test(cfg, model)
        verify_results(cfg, results)
    else:
        trainer = TransferTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    write_metrics_final(cfg, results, eval_only=args.eval_only, config_file=args.config_file)
    return results


def cli(argv: list[str] | None = None) -> None:
    launch_from_args(main, default_argument_parser().parse_args(argv))


if __name__ == "__main__":
    cli(sys.argv[1:])
