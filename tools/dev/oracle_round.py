#!/usr/bin/env python
"""Does the bootstrap round give object masks when the features are good? (issue 11, study)

Trains an "oracle" encoder with a supervised dense objective on the demo ground truth (things
AND stuff: the COCO-Stuff-10k twin labels the same scenes as the pretraining set), saves it as
a CYBORGS checkpoint, and runs the real bootstrap round (``tools/bootstrap_masks.py``) on it,
on a random initialisation, and on any checkpoints given with ``--checkpoint NAME=PATH``.
Every round is scored with the same mask mIoU the BootstrapHook logs (Hungarian, per image).

    tools/dev/oracle_round.py --out output/study/oracle [--seed 0] [--iters 300]
        [--checkpoint cyborgs=output/study/runs/cyborgs/seed0/pretrain/model_final.pth]

Oracle training: the CYBORGS model of ``--config-file`` (R18 in the demo), its online backbone
up to the bootstrap feature (``BOOTSTRAP.FEATURES``) plus a 1x1 convolution to the classes,
per-pixel cross-entropy (ignore 255) on random 96-px crops of images resized to the round's
``BOOTSTRAP.INPUT_SIZE``, Adam. Only the backbone is saved (the classifier is dropped): the
round clusters exactly the feature it was trained to separate linearly.

Writes OUT/oracle.pth, OUT/rounds/<name>/ (the round's mask store and console log) and
OUT/oracle.json: ``{"<name>": {"mask_miou": ..., "mask_miou_per_image": ...}, "train": {...}}``.
Resumable: a finished oracle checkpoint and finished rounds are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

# tools/ on the path, as Python puts it there for the scripts in it: the tools' modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repo_paths import REPO_ROOT as REPO  # noqa: E402

TRAIN_SET = "demo_coco_stuff_10k_sem_seg_train"
logger = logging.getLogger("oracle_round")


def _load_pairs(size: int):
    """(image uint8 [3, H, W], label uint8 [H, W]) of every training scene, shorter side
    ``size`` (bilinear image, nearest label)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from detectron2.data import DatasetCatalog
    from PIL import Image

    pairs = []
    for d in DatasetCatalog.get(TRAIN_SET):
        img = torch.from_numpy(np.asarray(Image.open(d["file_name"]).convert("RGB")).copy())
        lab = torch.from_numpy(np.asarray(Image.open(d["sem_seg_file_name"])).copy())
        h, w = lab.shape
        s = size / min(h, w)
        hw = (max(1, round(h * s)), max(1, round(w * s)))
        img = F.interpolate(img.permute(2, 0, 1)[None].float(), hw, mode="bilinear")[0]
        lab = F.interpolate(lab[None, None].float(), hw, mode="nearest")[0, 0]
        pairs.append((img.round().clamp(0, 255).to(torch.uint8), lab.to(torch.uint8)))
    return pairs


def train_oracle(
    config_file: str,
    opts: list[str],
    out: Path,
    seed: int,
    iters: int,
    crop: int = 96,
    batch: int = 16,
) -> dict:
    import torch
    import torch.nn.functional as F
    from bootstrap_masks import build_model_and_cfg

    from cyborgs.modeling.backbone_taps import tap_channels
    from cyborgs.modeling.fusion import fuse_features
    from cyborgs.utils.atomic import atomic_write

    torch.manual_seed(seed)
    model, cfg = build_model_and_cfg(config_file, "", opts)  # the round's own model and cfg
    names = list(cfg.CYBORGS.BOOTSTRAP.FEATURES)
    pairs = _load_pairs(int(cfg.CYBORGS.BOOTSTRAP.INPUT_SIZE))
    num_classes = 1 + max(int(lab[lab != 255].max()) for _, lab in pairs if (lab != 255).any())
    channels = sum(tap_channels(model.backbone, names).values())
    head = torch.nn.Conv2d(channels, num_classes, 1)
    params = list(model.backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0, losses = time.time(), []
    for it in range(iters):
        imgs, labs = [], []
        for j in torch.randint(len(pairs), (batch,), generator=g).tolist():
            img, lab = pairs[j]
            H, W = lab.shape
            c = min(crop, H, W)
            y = int(torch.randint(H - c + 1, (1,), generator=g))
            x = int(torch.randint(W - c + 1, (1,), generator=g))
            img, lab = img[:, y : y + c, x : x + c], lab[y : y + c, x : x + c]
            if bool(torch.rand((), generator=g) < 0.5):
                img, lab = img.flip(-1), lab.flip(-1)
            imgs.append(img)
            labs.append(lab)
        images = torch.stack(imgs).float()
        labels = torch.stack(labs).long()
        feats = model._backbone_features(model.backbone, model._normalize(images), names)
        logits = head(fuse_features(feats, names))
        logits = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if it % 50 == 0 or it == iters - 1:
            logger.info(f"oracle iter {it + 1}/{iters}: loss {loss.item():.3f}")
    # The round reads the online backbone; keep the target equal so the checkpoint is coherent.
    model.target_backbone.load_state_dict(model.backbone.state_dict())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / "oracle.pth", lambda f: torch.save({"model": state}, f))
    return {
        "iters": iters,
        "batch": batch,
        "crop": crop,
        "classes": num_classes,
        "first_loss": sum(losses[:10]) / max(1, len(losses[:10])),
        "last_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "seconds": round(time.time() - t0, 1),
    }


def run_round(config_file: str, weights: str, out: Path, opts: list[str]) -> dict:
    """One real bootstrap round (``tools/bootstrap_masks.py``) into ``out``; its mask quality."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "tools" / "bootstrap_masks.py"), "--config-file"]
    cmd += [config_file, "--weights", weights, "--round", "1", *opts, "OUTPUT_DIR", str(out)]
    with open(out / "round.log", "w") as log:
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    text = (out / "round.log").read_text(errors="replace")
    if rc != 0:
        raise RuntimeError(f"bootstrap round failed (exit {rc}); log {out / 'round.log'}")
    start = 0 if text.startswith("{") else text.index("\n{") + 1  # the JSON printed last
    stats, _ = json.JSONDecoder().raw_decode(text[start:])
    (res,) = stats.values()
    q = res.get("quality") or {}
    return {
        "weights": weights or "random init",
        "mask_miou": q.get("miou"),
        "mask_miou_per_image": q.get("miou_per_image"),
        "images": res.get("images"),
        "seconds": res.get("time_s"),
        "bytes_per_image": res.get("bytes_per_image"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config-file", default=str(REPO / "pretrain_configs" / "demo_R18.yaml"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=300, help="oracle training iterations")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another CYBORGS checkpoint to run the same round on (repeatable)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    # Everything the run reads is checked before OUTPUT is created: a mistake writes nothing.
    todo = {"oracle": "", "random_init": ""}
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        if not name or not path or not os.path.isfile(path):
            p.error(f"--checkpoint {spec!r}: expected NAME=PATH of an existing file")
        if name in todo:
            p.error(f"--checkpoint {spec!r}: the name {name!r} is taken (oracle, random_init)")
        todo[name] = str(Path(path).resolve())
    from cli_errors import one_line_config_errors

    from cyborgs.engine.setup import setup_pretrain_cfg

    with one_line_config_errors(args.config_file, args.opts):  # one error line, exit 2
        setup_pretrain_cfg(args.config_file, args.opts, world_size=1, schedule=False)
    out = Path(args.out).resolve()
    todo["oracle"] = str(out / "oracle.pth")
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "oracle.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}

    from cyborgs.utils.atomic import atomic_write_bytes

    def save() -> None:
        atomic_write_bytes(result_path, (json.dumps(result, indent=2) + "\n").encode())

    if not (out / "oracle.pth").is_file() or "train" not in result:
        result["train"] = train_oracle(args.config_file, args.opts, out, args.seed, args.iters)
        save()
    for name, weights in todo.items():
        if name in result.get("rounds", {}):
            continue
        logger.info(f"bootstrap round on {name} ({weights or 'random init'})")
        res = run_round(args.config_file, weights, out / "rounds" / name, args.opts)
        result.setdefault("rounds", {})[name] = res
        save()
        logger.info(f"{name}: mask mIoU {res['mask_miou']}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
