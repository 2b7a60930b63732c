"""Config keys of the CYBORGS pretrainer, added to a detectron2 ``CfgNode``.

Every key carries the paper / SPEC reference and the default. Layer names follow detectron2
(SPEC §1): the paper's "res2, res3, res4" are detectron2's ``res3, res4, res5``; the paper's
"res2.b2" is ``res3.2`` here (stage res3, block index 2, the third block).

    paper / torchvision      detectron2   stride  channels (R50)
    layer1                   res2         4       256
    layer2 ("res2")          res3         8       512
    layer3 ("res3")          res4         16      1024
    layer4 ("res4")          res5         32      2048
    layer2.2 ("res2.b2")     res3.2       8       512
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_cyborgs_config(cfg: CN) -> CN:
    """Add the ``CYBORGS`` node and our ``SOLVER`` keys to ``cfg`` in place (and return it)."""
    _C = cfg
    _C.CYBORGS = CN()
    c = _C.CYBORGS

    # ---- Stage 1: mask-dependent contrastive loss (paper §3.2, eq. 1-2; SPEC §2) ----
    # Backbone feature maps fused for the contrastive loss, pooled to the grid of the last
    # one and concatenated (R50: 512+1024+2048). Paper default "res2,res3,res4" = these.
    # Table 2c ablation: e.g. ["res5"] (DetCon), ["res3"], ["res4", "res5"].
    c.FUSION_FEATURES = ["res3", "res4", "res5"]
    # Mask ids sampled per view (with replacement among the ids present; DetCon: 16). The
    # online and the target encoder of one view use the same sampled ids.
    c.NUM_SAMPLED_MASKS = 16
    # Width of the one-hot used to vote masks onto the feature grid: K_max + 1 (SPEC §2), so
    # every id a bootstrap round can write (0..255) counts; the authors' 81 dropped ids >= 81.
    c.MAX_MASK_IDS = 257
    # Temperature of the contrastive softmax (DetCon / paper: 0.1).
    c.TEMPERATURE = 0.1
    # BYOL heads: Linear(D, HIDDEN)-BN-ReLU-Linear(HIDDEN, OUT); predictor OUT -> HIDDEN -> OUT.
    c.PROJECTOR_HIDDEN_DIM = 4096
    c.PROJECTOR_OUT_DIM = 256
    # Weight of the contrastive term once the vMF warm-up is over.
    c.CONTRASTIVE_WEIGHT = 1.0

    # ---- Target encoder EMA (BYOL; SPEC §5) ----
    c.EMA = CN()
    # Momentum at the start; "cosine" goes BASE -> 1.0 over training (BYOL). The authors'
    # code uses "constant" 0.996.
    c.EMA.BASE_MOMENTUM = 0.996
    c.EMA.SCHEDULE = "cosine"  # "cosine" | "constant"

    # ---- Augmentation (BYOL; SPEC §2) ----
    c.AUG = CN()
    c.AUG.CROP_SIZE = 224
    c.AUG.CROP_SCALE = (0.08, 1.0)
    c.AUG.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    c.AUG.FLIP_PROB = 0.5
    c.AUG.COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    c.AUG.COLOR_JITTER_PROB = 0.8
    c.AUG.GRAYSCALE_PROB = 0.2
    c.AUG.BLUR_PROB = (1.0, 0.1)  # view 1, view 2
    c.AUG.SOLARIZE_PROB = (0.0, 0.2)  # view 1, view 2
    # Where the photometric ops (colour jitter, grayscale, blur, solarize) run: "on" = batched
    # on the model's device before normalisation (loader workers only decode, crop, resize and
    # draw the parameters, from the same per-sample generator); "off" = per image in the loader
    # workers; "auto" = on iff MODEL.DEVICE is CUDA (and CUDA is available). Quote it in YAML.
    c.AUG.DEVICE = "auto"

    # ---- Pretraining data ----
    c.DATA = CN()
    # Extra image folder used as an unlabeled pretraining set (registered as
    # "cyborgs_image_folder" when non-empty); DATASETS.TRAIN may name it.
    c.DATA.IMAGE_FOLDER = ""

    # ---- Mask source (SPEC §3; Table 2 / Fig. 5a ablations) ----
    c.MASKS = CN()
    # "bootstrap" (CYBORGS), "whole" (BYOL-like), "grid", "felzenszwalb" (DetCon),
    # "selective_search", "ground_truth" (oracle, COCO annotations).
    c.MASKS.SOURCE = "bootstrap"
    c.MASKS.GRID_SIZE = 5  # "grid": GRID_SIZE x GRID_SIZE cells
    # "felzenszwalb": DetCon's scale 1000 / min size 1000 at COCO size, scaled with image area.
    c.MASKS.FH_SCALE = 1000.0
    c.MASKS.FH_MIN_SIZE = 1000
    c.MASKS.FH_SIGMA = 0.8
    # Where fixed and bootstrapped masks are stored (rounds of uint8 maps + manifest).
    # Empty: <OUTPUT_DIR>/masks.
    c.MASKS.STORE_DIR = ""

    # ---- Stage 2: bootstrapping (paper §3.3; SPEC §3) ----
    c.BOOTSTRAP = CN()
    # Backbone block clustered: "res3.2" = paper's res2.b2 (Table 2d: "res3", "res4", ...).
    # Several names ("res3.2,res4") are fused like FUSION_FEATURES for the Table 2d ablation.
    c.BOOTSTRAP.FEATURES = ["res3.2"]
    # Bootstrap every N epochs (paper 100; Table 2a: 0 = never after the warm-up round).
    c.BOOTSTRAP.PERIOD_EPOCHS = 100
    # Images clustered jointly (paper 16).
    c.BOOTSTRAP.GROUP_SIZE = 16
    # K ~ Uniform{K_MIN..K_MAX} inclusive per group (Table 2e: fix both for K = 2/81/256).
    c.BOOTSTRAP.K_MIN = 2
    c.BOOTSTRAP.K_MAX = 256
    c.BOOTSTRAP.KMEANS_ITERS = 20
    # "auto" (FAISS if importable; GPU index with CUDA), "faiss", "torch".
    c.BOOTSTRAP.KMEANS_BACKEND = "auto"
    # Image size fed to the encoder when bootstrapping (shorter side; 0 = as stored).
    c.BOOTSTRAP.INPUT_SIZE = 224
    # Mirror each image this many pixels outwards before the bootstrap forward, then crop the
    # features back (a multiple of the feature stride, 8 for res3; 0 = off). Keeps the backbone's
    # zero padding off the image's own border, which otherwise forms a strip cluster of its own.
    c.BOOTSTRAP.BORDER_PAD = 0
    c.BOOTSTRAP.BATCH_SIZE = 16
    # Dense-CRF refinement of bootstrapped masks (Table 2b; paper: off).
    c.BOOTSTRAP.CRF = False

    # ---- vMF clustering consistency (paper §3.4, eq. 3-4; SPEC §4) ----
    c.VMF = CN()
    c.VMF.KAPPA = 10.0
    # Warm-up epochs with only the vMF loss (paper W = 5) and its K (paper: 8 for COCO).
    c.VMF.WARMUP_EPOCHS = 5
    c.VMF.WARMUP_K = 8
    # Clusters per view for prototypes after the warm-up (not given by the paper; we keep 8).
    c.VMF.K = 8
    # After the warm-up the loss is added with weight LAMBDA during epochs e with e % M == 0
    # (paper λ = 0.1, M = 5; Table 2g/2h; M = 0 disables it after the warm-up).
    c.VMF.LAMBDA = 0.1
    c.VMF.PERIOD_EPOCHS = 5
    # Feature scored by the loss: "bootstrap" (the BOOTSTRAP.FEATURES map, SPEC §4) or "fused".
    c.VMF.FEATURE = "bootstrap"
    # "vmf" (paper) or "euclidean" (Table 2f).
    c.VMF.DISTANCE = "vmf"
    c.VMF.KMEANS_ITERS = 10
    # Side of the common grid sampled over the two views' crop intersection (inter terms).
    c.VMF.INTER_GRID = 7
    # k-means backend for the per-step prototypes (small problems: "torch" runs on the
    # training device and avoids a host round trip; "faiss" / "auto" as BOOTSTRAP).
    c.VMF.KMEANS_BACKEND = "torch"

    # ---- Accelerator path (no effect on CPU) ----
    c.GPU = CN()
    # Quote the values in YAML ("on"/"off"): unquoted, YAML reads them as booleans.
    # channels_last memory format for the backbones: "auto" (on with CUDA), "on", "off".
    c.GPU.CHANNELS_LAST = "auto"
    # bf16 autocast of the backbone forward passes (losses stay fp32; bf16 needs no grad
    # scaler): "auto" (on with CUDA and native bf16, i.e. Ampere or newer), "on", "off".
    c.GPU.BF16 = "auto"

    # ---- Optimisation (SPEC §5) ----
    # Schedules are written in epochs and converted to iterations from the data set size.
    # "LARS" (paper) or "SGD"; trust coefficient of LARS; bias/norm excluded from adaptation
    # and weight decay.
    _C.SOLVER.OPTIMIZER = "LARS"
    _C.SOLVER.LARS_TRUST_COEFFICIENT = 1e-3
    _C.SOLVER.EPOCHS = 800
    _C.SOLVER.WARMUP_EPOCHS = 10
    # "cosine" or "step" (authors' code: step at 768/784 epochs, x0.1).
    _C.SOLVER.EPOCH_SCHEDULE = "cosine"
    _C.SOLVER.STEP_EPOCHS = (768, 784)
    # Newest periodic checkpoints kept on disk (older model_XXXXXXX.pth are deleted;
    # model_final.pth is written besides and never deleted). Each holds online + target + optimizer state: ~140 MB for R18, ~600 MB
    # for R50. 0 keeps all.
    _C.SOLVER.CHECKPOINTS_TO_KEEP = 3
    # Stop with a clear message when a loss term is not finite.
    _C.SOLVER.STOP_ON_NONFINITE = True
    return cfg
