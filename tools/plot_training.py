#!/usr/bin/env python
"""Plot a pretraining run's curves from its detectron2 metrics.json.

    tools/plot_training.py output/cyborgs_r50/metrics.json output/cyborgs_r50/training.png
    tools/plot_training.py output/cyborgs_r50 training.png     # a directory: its metrics.json

Panels: every ``loss_*`` term (and ``total_loss``) over iterations, with dashed lines at the
bootstrap rounds; LR and EMA momentum; mask mIoU per bootstrap round. The PNG is replaced
atomically, so the command can be rerun while training writes the file.
"""

from __future__ import annotations

import argparse
import os
import sys

from cyborgs.utils.plotting import load_metrics, plot_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="metrics.json (or the OUTPUT_DIR holding it)")
    parser.add_argument("out", help="PNG to write")
    args = parser.parse_args(argv)
    path = args.metrics
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    try:
        metrics = load_metrics(path)
        titles = plot_training(metrics, args.out)
    except (OSError, ValueError) as e:
        # The message names the file (and line); a traceback would add nothing for the user.
        print(f"plot_training: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({', '.join(titles)}; {len(metrics)} keys from {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
