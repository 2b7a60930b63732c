#!/usr/bin/env python
"""Run one bootstrapping round offline from a checkpoint (paper §3.3, METHOD.md §3).

  tools/bootstrap_masks.py --config-file pretrain_configs/demo_R18.yaml \
      --weights output/demo_pretrain/model_final.pth [--round 100] [--dataset NAME] [KEY VALUE ...]

Writes round R of the "bootstrap" store of every DATASETS.TRAIN entry (or --dataset), makes
it current, and prints the round's stats (plus mIoU vs ground truth when a labeled twin
exists) as JSON. Single process; the store layout is the one BootstrapHook writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _refuse(message: str) -> None:
    """A request this tool cannot carry out: one ``error:`` line, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_model_and_cfg(config_file: str, weights: str, opts: list[str]):
    """CYBORGS model with ``weights`` loaded (never executing code: SafeCheckpointer), eval mode,
    and its config: the pretraining one (cyborgs.engine.setup), without the training schedule."""
    from cli_errors import one_line_config_errors
    from detectron2.modeling import build_model

    from cyborgs.engine.checkpoint import SafeCheckpointer
    from cyborgs.engine.setup import setup_pretrain_cfg

    with one_line_config_errors(config_file, opts):  # a bad config: one error line, exit 2
        cfg, notes = setup_pretrain_cfg(config_file, opts, world_size=1, schedule=False)
    for n in notes:
        logging.getLogger(__name__).warning(n)
    if weights and not os.path.isfile(weights):
        _refuse(f"--weights {weights} does not exist")
    model = build_model(cfg)
    if weights:
        try:
            SafeCheckpointer(model).load(weights)
        except ValueError as e:  # NotACheckpointError, UnsafeCheckpointError: name the file
            _refuse(str(e))
    model.eval()
    return model, cfg


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="checkpoint (.pth / .pkl); empty: random init")
    p.add_argument("--round", type=int, default=0, help="round id (the epoch, by convention)")
    p.add_argument("--dataset", default="", help="default: every DATASETS.TRAIN entry")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.round < 0:  # the store names rounds round_0000, round_0001, ...
        _refuse(f"--round {args.round}: a round id is an epoch number, 0 or more")
    logging.basicConfig(level=logging.INFO)

    from detectron2.data import DatasetCatalog

    from cyborgs.bootstrap import RoundSettings, ground_truth_quality, run_bootstrap_round
    from cyborgs.masks.store import MaskStore, store_root
    from cyborgs.utils.ownership import NotOwnedError

    model, cfg = build_model_and_cfg(args.config_file, args.weights, args.opts)
    names = [args.dataset] if args.dataset else list(cfg.DATASETS.TRAIN)
    unknown = [n for n in names if n not in DatasetCatalog.list()]
    if unknown:
        _refuse(f"data set(s) {', '.join(map(repr, unknown))} not registered (--dataset / "
                "DATASETS.TRAIN); see cyborgs/data/datasets.py for the names")  # fmt: skip
    settings = RoundSettings.from_cfg(cfg)
    out = {}
    for name in names:
        dicts = DatasetCatalog.get(name)
        store = MaskStore(store_root(cfg, "bootstrap", name))
        # The tool's job is to (re)write the round it is given, current or not.
        try:
            stats = run_bootstrap_round(
                model, settings, dicts, store, args.round, replace_current=True
            )
        except NotOwnedError as e:  # a round folder holding files the store did not write
            _refuse(str(e))
        stats.pop("k_values")
        q = ground_truth_quality(name, dicts)
        if q is not None:
            stats["quality"] = q(store, args.round)
        stats["store"] = store.root
        out[name] = stats
    print(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
