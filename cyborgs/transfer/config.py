"""Config keys the transfer protocols add to detectron2's defaults (none changes its meaning)."""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_transfer_config(cfg: CN) -> CN:
    """Add our transfer keys to ``cfg`` in place (idempotent) and return it."""
    if "TRANSFER" in cfg:
        return cfg
    # Dilation of res4 for the output-stride-8 backbone (``build_dilated_resnet_backbone``);
    # res5 uses MODEL.RESNETS.RES5_DILATION. mmseg's "-d8" ResNet: res4 2, res5 4.
    cfg.MODEL.RESNETS.RES4_DILATION = 1

    # FCN head (mmseg FCNHead): NUM_CONVS 3x3 conv-norm-ReLU at SEM_SEG_HEAD.CONVS_DIM channels,
    # the input concatenated back before the classifier, dropout before it; an auxiliary FCN
    # head on res4 (one conv, AUX_CONVS_DIM) weighted AUX_LOSS_WEIGHT during training only.
    cfg.MODEL.FCN_HEAD = CN()
    cfg.MODEL.FCN_HEAD.NUM_CONVS = 2
    cfg.MODEL.FCN_HEAD.CONCAT_INPUT = True
    cfg.MODEL.FCN_HEAD.DROPOUT = 0.1
    cfg.MODEL.FCN_HEAD.AUX_IN_FEATURE = "res4"  # "" disables the auxiliary head
    cfg.MODEL.FCN_HEAD.AUX_CONVS_DIM = 256
    cfg.MODEL.FCN_HEAD.AUX_LOSS_WEIGHT = 0.4

    # Frozen linear probe (paper §4 / Fig. 5): feature "res3.2" = stage res3, block index 2
    # (the paper's res2.b2, METHOD.md §1), bilinearly upsampled, one trainable 1x1 conv.
    cfg.MODEL.LINEAR_PROBE = CN()
    cfg.MODEL.LINEAR_PROBE.FEATURE = "res3.2"

    # Poly LR (mmseg): lr = (base - MIN_LR) * (1 - it/max_iter)^POWER + MIN_LR, used when
    # SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" (not in detectron2 v0.6).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_MIN = 1e-4

    # Max share of one category in a random crop (detectron2 >= 0.6 main; absent from the v0.6
    # release). Read by our sem-seg crop augmentation.
    if "SINGLE_CATEGORY_MAX_AREA" not in cfg.INPUT.CROP:
        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0

    cfg.TRANSFER = CN()
    # Refuse to train unless every ResNet tensor of the model equals MODEL.WEIGHTS (a silent
    # fall-back to random init is the failure this guards against). Off for random-init runs.
    cfg.TRANSFER.CHECK_BACKBONE_LOADED = True
    # Name of the protocol, written to metrics_final.json and used by collect_results.
    cfg.TRANSFER.PROTOCOL = ""
    # COCO / LVIS box and mask AP: "faster_coco_eval" (C++, same metrics) or "official"
    # (pycocotools / lvis-api, pure Python and much slower; to cross-check).
    cfg.TRANSFER.EVAL_BACKEND = "faster_coco_eval"
    return cfg
