#!/usr/bin/env python
"""Gather every OUTDIR/*/metrics_final.json into OUTDIR/results.md and results.json, laid out
like the paper's Table 1 (next to the published CYBORGS row) plus an appendix table, and, for
submitted jobs (OUTDIR/jobs.json), which runs are still running or not started, or failed."""

from __future__ import annotations

import argparse
import sys

from cyborgs.transfer.results import collect


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("outdir")
    args = p.parse_args(argv)
    collect(args.outdir)
    with open(f"{args.outdir}/results.md") as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
