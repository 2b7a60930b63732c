#!/usr/bin/env python
"""ImageNet semi-supervised fine-tuning (1% / 10% labels): R50 + linear head (METHOD.md §6).

    tools/semi_supervised.py --weights backbone.pkl --output-dir out/in1pct --subset 1percent
        [--epochs 20 --batch-size 256 --lr 0.01 --head-lr-mult 100 --crop 224 --resize 256]

Writes OUTPUT_DIR/metrics_final.json ({"classification": {"top1", "top5"}}).
"""

from __future__ import annotations

import argparse
import sys

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from protocol_run import begin, finish
from torch.utils.data import DataLoader, Dataset

from cyborgs.transfer.image_data import (
    ImageList,
    build_pretrained_resnet,
    eval_transform,
    res5_dim,
    train_transform,
)
from cyborgs.transfer.preflight import check_datasets
from cyborgs.transfer.semi_supervised import (
    FinetuneSchedule,
    ResNetClassifier,
    evaluate_topk,
    finetune,
)


class Labeled(Dataset):
    def __init__(self, dicts, transform):
        self.images, self.labels = ImageList(dicts, transform), [d["label"] for d in dicts]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i][0], self.labels[i]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="converted backbone .pkl")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--subset", default="1percent", choices=["1percent", "10percent"])
    p.add_argument("--prefix", default="", help="data set name prefix, e.g. demo_")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, nargs="*", default=[12, 16])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.01, help="backbone LR at batch 256")
    p.add_argument(
        "--head-lr-mult",
        type=float,
        default=None,
        help="head LR multiplier (default 100 for 1%%, 10 for 10%%; sweep 10-100)",
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    begin(args.weights)
    train_name = f"{args.prefix}imagenet_train_{args.subset}"
    val_name = f"{args.prefix}imagenet_val"
    check_datasets([train_name, val_name])
    torch.manual_seed(args.seed)
    mult = args.head_lr_mult or (100.0 if args.subset == "1percent" else 10.0)
    sched = FinetuneSchedule(epochs=args.epochs, base_lr=args.lr, head_lr_mult=mult,
                             weight_decay=args.weight_decay, steps=tuple(args.steps))  # fmt: skip
    backbone = build_pretrained_resnet(args.weights, args.depth)
    classes = MetadataCatalog.get(train_name).thing_classes
    model = ResNetClassifier(backbone, res5_dim(backbone), len(classes))
    train = DataLoader(Labeled(DatasetCatalog.get(train_name), train_transform(args.crop)),
                       batch_size=args.batch_size, shuffle=True, drop_last=False,
                       num_workers=args.num_workers)  # fmt: skip
    val = DataLoader(Labeled(DatasetCatalog.get(val_name), eval_transform(args.resize, args.crop)),
                     batch_size=args.batch_size, num_workers=args.num_workers)  # fmt: skip
    # Linear LR scaling from the protocol's batch 256.
    finetune(model, train, sched, lr_scale=args.batch_size / 256, device=args.device)
    res = evaluate_topk(model, val, device=args.device)
    protocol = "in1pct" if args.subset == "1percent" else "in10pct"
    config = f"{args.epochs} ep, lr {args.lr}, head x{mult}, batch {args.batch_size}"
    record = finish(args.output_dir, protocol, config, args.weights, train_name, val_name,
                    {"classification": res})  # fmt: skip
    print(f"{record['protocol']}: top-1 {res['top1']:.2f} top-5 {res['top5']:.2f}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
