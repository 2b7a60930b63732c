"""What the classification protocol tools (``voc07_svm.py``, ``semi_supervised.py``) share:
the checks and logging before a run, and its ``metrics_final.json`` after (the fields
``tools/train_net.py`` writes, so that ``collect_results.py`` reads all protocols alike)."""

from __future__ import annotations

import logging
import os
from typing import Any

from cyborgs.transfer.results import METRICS_FILE, write_metrics


def begin(weights: str) -> None:
    """detectron2's log-file line format (run_demo.sh picks progress lines from it); the
    converted weights must exist."""
    logging.basicConfig(level=logging.INFO, datefmt="%m/%d %H:%M:%S",
                        format="[%(asctime)s] %(name)s %(levelname)s: %(message)s")  # fmt: skip
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"--weights {weights} not found: run tools/convert_to_detectron2.py"
        )


def finish(
    output_dir: str,
    protocol: str,
    config: str,
    weights: str,
    train: str,
    test: str,
    results: dict[str, Any],
) -> dict[str, Any]:
    """Write ``output_dir/metrics_final.json`` of one run; returns the record."""
    record = {
        "protocol": protocol,
        "config": config,
        "weights": weights,
        "datasets": {"train": [train], "test": [test]},
        "results": results,
    }
    write_metrics(os.path.join(output_dir, METRICS_FILE), record)
    return record
