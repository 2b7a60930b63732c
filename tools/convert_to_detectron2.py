#!/usr/bin/env python
"""Convert a CYBORGS pretraining checkpoint to detectron2 (.pkl) or torchvision (.pth) weights.

    tools/convert_to_detectron2.py CKPT OUT.pkl [--source online|target]
        [--format detectron2|torchvision] [--depth 50] [--check c4,fpn]

The online backbone (default) is taken from the checkpoint, validated against detectron2's
ResNet of that depth, written atomically, and -- for the detectron2 format -- loaded into the
C4 and FPN transfer models; any backbone tensor that does not arrive is an error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from repo_paths import TRANSFER_CONFIGS

from cyborgs.engine.checkpoint import safe_load
from cyborgs.transfer.convert import convert_checkpoint, infer_depth
from cyborgs.transfer.verify import TRANSFER_MODELS, verify_transfer_loading


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="CYBORGS checkpoint (.pth: {'model': state_dict, ...})")
    p.add_argument("output", help="output file (.pkl for detectron2, .pth for torchvision)")
    p.add_argument("--source", default="online", choices=["online", "target"])
    p.add_argument("--format", default="detectron2", choices=["detectron2", "torchvision"])
    p.add_argument("--depth", type=int, default=None, help="expected ResNet depth (checked)")
    p.add_argument("--prefix", default=None, help="module prefix of the backbone, if unusual")
    p.add_argument(
        "--check",
        default="c4,fpn",
        help=f"transfer models to load-check (subset of {','.join(TRANSFER_MODELS)}; '' = none)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.format == "detectron2" and not args.output.endswith(".pkl"):
        p.error("--format detectron2 writes a .pkl (detectron2 reads .pkl as model-zoo weights)")
    state = convert_checkpoint(
        args.checkpoint, args.output, args.source, args.format, args.depth, args.prefix
    )
    depth = infer_depth(state)
    print(f"wrote {args.output}: {args.source} ResNet-{depth} backbone, {len(state)} tensors")
    checks = tuple(c for c in args.check.split(",") if c)
    if args.format == "detectron2" and checks:
        reports = verify_transfer_loading(args.output, depth, TRANSFER_CONFIGS, checks)
        for name, r in reports.items():
            print(f"[check {name}] {r.summary()}")
    elif args.format == "torchvision" and checks:
        import torchvision

        tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        tv_state = safe_load(args.output)
        tv_state.update({k: v for k, v in tv.state_dict().items() if k.startswith("fc.")})
        tv.load_state_dict(tv_state, strict=True)
        print(f"[check torchvision] loads into torchvision resnet{depth} (strict; fc untouched)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
