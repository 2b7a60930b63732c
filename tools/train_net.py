#!/usr/bin/env python
"""Fine-tune / evaluate a transfer config (detection, instance and semantic segmentation).

    tools/train_net.py --config-file transfer_configs/voc_det_R50_C4_24k.yaml --num-gpus 8 \
        MODEL.WEIGHTS out/backbone.pkl OUTPUT_DIR out/voc_det

Before any training it checks that the data sets are registered and their files exist, that
MODEL.WEIGHTS exists, and that NUM_CLASSES matches the data; after loading it proves that every
backbone tensor came from MODEL.WEIGHTS. Final metrics go to OUTPUT_DIR/metrics_final.json.
"""

from __future__ import annotations

import argparse
import sys

from cli_errors import one_line_config_errors
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from repo_paths import resolve_transfer_config
from torch.multiprocessing import ProcessExitedException

from cyborgs.engine.launch import (  # CPU multi-process capable (METHOD.md §7)
    add_cluster_arguments,
    install_preemption_signals,
    launch_from_args,
)
from cyborgs.transfer.results import write_metrics_final
from cyborgs.transfer.setup import get_transfer_cfg
from cyborgs.transfer.trainer import TransferTrainer, build_checkpointer, check_backbone_loaded
from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS, Preempted


def load_config(args):
    """The transfer config of ``--config-file`` (a path, or a name under transfer_configs/)
    with the command-line overrides, read safely (no code runs from any file of its chain)."""
    return get_transfer_cfg(resolve_transfer_config(args.config_file), args.opts)


def setup(args):
    cfg = load_config(args)
    cfg.freeze()
    # default_setup logs and copies args.config_file: hand it the file a bare name resolved to
    resolved = resolve_transfer_config(args.config_file)
    default_setup(cfg, argparse.Namespace(**{**vars(args), "config_file": resolved}))
    # default_setup gives handlers to detectron2's and fvcore's loggers only; the backbone
    # check ("every backbone tensor came from MODEL.WEIGHTS") logs through ``cyborgs``.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cyborgs")
    return cfg


def main(args):
    from cyborgs.transfer.preflight import preflight

    install_preemption_signals(args)
    cfg = setup(args)
    if not getattr(args, "preflight_done", False):  # cli() checked the same config already
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
        try:
            results = trainer.train()
        except Preempted as e:  # a scheduler's stop: checkpointed, continue with --resume
            if comm.is_main_process():
                print(f"preempted: {e}", file=sys.stderr)
            raise SystemExit(PREEMPTED_EXIT_STATUS) from None
    write_metrics_final(cfg, results, eval_only=args.eval_only, config_file=args.config_file)
    return results


def cli(argv: list[str] | None = None) -> int:
    args = add_cluster_arguments(default_argument_parser()).parse_args(argv)
    # Read the config here, before launching: a config that cannot be used is one error line
    # (exit 2) and nothing is written, instead of one traceback per process.
    with one_line_config_errors(args.config_file, args.opts, transfer=True):
        cfg = load_config(args)
    # The data sets, the weight file and the training boxes too, before default_setup writes
    # OUTPUT_DIR/config.yaml and log.txt: a run that cannot train leaves nothing behind.
    from cyborgs.transfer.preflight import preflight

    try:
        preflight(cfg, eval_only=args.eval_only, resume=args.resume)
    except (FileNotFoundError, KeyError, ValueError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    args.preflight_done = True
    install_preemption_signals(args)  # the launcher forwards these to its processes
    try:
        launch_from_args(main, args)
    except SystemExit as e:
        if e.code == PREEMPTED_EXIT_STATUS:
            return PREEMPTED_EXIT_STATUS
        raise
    except ProcessExitedException as e:
        if e.exit_code == PREEMPTED_EXIT_STATUS:
            print("preempted: continue with --resume", file=sys.stderr)
            return PREEMPTED_EXIT_STATUS
        raise
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
