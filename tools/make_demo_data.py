#!/usr/bin/env python
"""Write the synthetic demo data sets in their standard on-disk layouts.

    python tools/make_demo_data.py --root datasets/demo --preset demo [--seed 0] [--force]

Then point ``CYBORGS_DEMO_DATASETS`` at the root (default ``datasets/demo``) and use the
``demo_*`` names registered by ``cyborgs.data.datasets``. The same root also works as a
``DETECTRON2_DATASETS`` root for detectron2's built-in COCO/LVIS/VOC/Cityscapes names.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from cyborgs.data.writers import PRESETS, build_demo_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default="datasets/demo", help="output root (default: %(default)s)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace existing data under --root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    start = time.perf_counter()
    try:
        root = build_demo_data(args.root, args.preset, args.seed, force=args.force)
    except RuntimeError as e:
        print(f"make_demo_data: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.preset} data (seed {args.seed}) ready in {root} ({time.perf_counter() - start:.1f}s)"
    )
    # the data sets are found through this variable (default datasets/demo, relative to the
    # working directory): say how to point at this root
    print(f"use it with: export CYBORGS_DEMO_DATASETS={os.path.abspath(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
