#!/usr/bin/env python
"""Fig. 4-style panels: image | k-means of bilinearly upsampled features | CRF-refined.

  tools/visualize_masks.py --config-file pretrain_configs/demo_R18.yaml \
      --weights output/demo_pretrain/model_final.pth --input a.jpg b.jpg --output vis/ [--k 8]

Per image: the bootstrap feature map (CYBORGS.BOOTSTRAP.FEATURES, unit norm) is clustered with
spherical k-means (K = --k) at feature resolution; for display the features are bilinearly
interpolated between the cells' receptive-field centres (``cyborgs.masks.cell_grid``) to the
image and every pixel takes its nearest prototype (as the paper's Fig. 4; real rounds assign at
feature resolution and give each pixel its nearest cell's label). Images are resized as a
round resizes them (shorter side BOOTSTRAP.INPUT_SIZE, sides multiples of the stride). The
third panel is the dense-CRF refinement (``cyborgs/bootstrap/crf.py``). Colours are per
cluster and consistent within one image's panels only.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def panels(model, cfg, image: np.ndarray, k: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from cyborgs.bootstrap.crf import crf_refine, upsample_cells
    from cyborgs.bootstrap.features import extract_bootstrap_features
    from cyborgs.bootstrap.receptive_field import measure_cell_grid
    from cyborgs.clustering import spherical_kmeans
    from cyborgs.masks.cell_grid import cell_grid_record
    from cyborgs.utils.mask_vis import palette

    names = list(cfg.CYBORGS.BOOTSTRAP.FEATURES)
    centre = tuple(cell_grid_record(*measure_cell_grid(model, names))["centre"])

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(model.pixel_mean.device)
    feats = extract_bootstrap_features(model, x, names)[0]
    D, h, w = feats.shape
    protos, labels = spherical_kmeans(feats.flatten(1).T, k, iters=cfg.CYBORGS.BOOTSTRAP.KMEANS_ITERS,
                                      backend=cfg.CYBORGS.BOOTSTRAP.KMEANS_BACKEND)  # fmt: skip
    up = F.normalize(upsample_cells(feats[None], image.shape[:2], centre), dim=1)[0]
    dense = torch.einsum("kd,dhw->khw", protos.float(), up).argmax(0).cpu().numpy()
    refined = crf_refine(image, feats.cpu(), protos.cpu(), labels.view(h, w).cpu().numpy(),
                         cell_centre=centre)  # fmt: skip
    pal = palette(protos.shape[0])
    return np.concatenate([image, pal[dense], pal[refined]], axis=1)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--k", type=int, default=8, help="clusters per image")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)

    from bootstrap_masks import build_model_and_cfg
    from PIL import Image

    from cyborgs.bootstrap.receptive_field import measure_cell_grid
    from cyborgs.bootstrap.round import load_resized_image

    model, cfg = build_model_and_cfg(args.config_file, args.weights, args.opts)
    stride, _ = measure_cell_grid(model, list(cfg.CYBORGS.BOOTSTRAP.FEATURES))
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in args.input:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--input {path} does not exist")
        img = load_resized_image(
            {"file_name": path}, cfg.CYBORGS.BOOTSTRAP.INPUT_SIZE, multiple=stride
        )
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + "_masks.png")
        Image.fromarray(panels(model, cfg, img, args.k)).save(out)
        written.append(out)
        print(out)
    return written


if __name__ == "__main__":
    main()
