"""Every config key the CYBORGS pretrainer adds to a detectron2 ``CfgNode``, with its default.

Every key carries the paper / METHOD.md reference and the default. Layer names follow detectron2
(METHOD.md §1): the paper's "res2, res3, res4" are detectron2's ``res3, res4, res5``; the paper's
"res2.b2" is ``res3.2`` here (stage res3, block index 2, the third block).

    paper / torchvision      detectron2   stride  channels (R50)
    layer1                   res2         4       256
    layer2 ("res2")          res3         8       512
    layer3 ("res3")          res4         16      1024
    layer4 ("res4")          res5         32      2048
    layer2.2 ("res2.b2")     res3.2       8       512

This module declares keys and the small vocabularies other layers share (switch values, the
``VMF.FEATURE`` names, image limits); the values are checked in :mod:`cyborgs.config.checks`.
"""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode as CN

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DERIVED_KEYS",
    "SWITCH_KEYS",
    "SWITCH_VALUES",
    "SYNC_NORMS",
    "VMF_FEATURES",
    "add_cyborgs_config",
    "flat_items",
    "get_key",
    "mask_id_width",
    "parse_switch",
    "set_key",
]

# The default of CYBORGS.DATA.MAX_ASPECT_RATIO (also the readers' default, cyborgs.data.image_io).
DEFAULT_MAX_ASPECT_RATIO = 10.0
# The default of CYBORGS.DATA.MAX_IMAGE_PIXELS: 100 MP, 300 MB as RGB uint8. COCO / LVIS
# images are at most 640x640 (0.4 MP), Cityscapes 2048x1024 (2.1 MP); ImageNet and OpenImages
# originals are camera photos, whose largest sensors (e.g. 11648x8736, 102 MP, medium format)
# sit at this size; ordinary full-frame photos (24-60 MP) are well below it.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

# "auto" / "on" / "off" switches. The default is None (= "auto") rather than "auto" because yacs
# rejects a value whose type differs from the default's: YAML reads unquoted on/off/true/false
# as booleans, and those must merge too. setup_pretrain_cfg writes the canonical string.
_SWITCH_DEFAULT = None
SWITCH_VALUES = ("auto", "on", "off")
SWITCH_KEYS = ("CYBORGS.GPU.CHANNELS_LAST", "CYBORGS.GPU.BF16", "CYBORGS.AUG.DEVICE")

# Derived by cyborgs.engine.setup (0 = not derived yet); a non-zero value given in a config must
# equal the derived one.
DERIVED_KEYS = ("CYBORGS.DATA.NUM_IMAGES", "SOLVER.MAX_ITER")

# The values of CYBORGS.VMF.FEATURE: the key that defines the map the vMF loss scores.
VMF_FEATURES = ("BOOTSTRAP.FEATURES", "FUSION_FEATURES")

# detectron2's norms (``get_norm``) that synchronise batch statistics across processes.
SYNC_NORMS = ("SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")


def add_cyborgs_config(cfg: CN) -> CN:
    """Add the ``CYBORGS`` node and our ``SOLVER`` keys to ``cfg`` in place (and return it)."""
    _C = cfg
    _C.CYBORGS = CN()
    c = _C.CYBORGS

    # ---- Stage 1: mask-dependent contrastive loss (paper §3.2, eq. 1-2; METHOD.md §2) ----
    # Backbone feature maps fused for the contrastive loss, pooled to the grid of the last
    # one and concatenated (R50: 512+1024+2048). Paper default "res2,res3,res4" = these.
    # Table 2c ablation: e.g. ["res5"] (DetCon), ["res3"], ["res4", "res5"].
    c.FUSION_FEATURES = ["res3", "res4", "res5"]
    # Mask ids sampled per view (with replacement among the ids present; DetCon: 16). The
    # online and the target encoder of one view use the same sampled ids.
    c.NUM_SAMPLED_MASKS = 16
    # (The width of the one-hot that votes masks onto the feature grid is not a setting: it is
    # derived from BOOTSTRAP.K_MAX by mask_id_width(cfg), METHOD.md §2.)
    # Temperature of the contrastive softmax (DetCon / paper: 0.1).
    c.TEMPERATURE = 0.1
    # BYOL heads: Linear(D, HIDDEN)-BN-ReLU-Linear(HIDDEN, OUT); predictor OUT -> HIDDEN -> OUT.
    c.PROJECTOR_HIDDEN_DIM = 4096
    c.PROJECTOR_OUT_DIM = 256
    # Weight of the contrastive term once the vMF warm-up is over.
    c.CONTRASTIVE_WEIGHT = 1.0

    # ---- Target encoder EMA (BYOL; METHOD.md §5) ----
    c.EMA = CN()
    # Momentum at the start; "cosine" goes BASE -> 1.0 over training (BYOL). The authors'
    # code uses "constant" 0.996.
    c.EMA.BASE_MOMENTUM = 0.996
    c.EMA.SCHEDULE = "cosine"  # "cosine" | "constant"

    # ---- Augmentation (BYOL; METHOD.md §2) ----
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
    # workers; "auto" = on iff MODEL.DEVICE is CUDA (and CUDA is available). A switch (see
    # SWITCH_KEYS): YAML booleans (on/off/true/false, unquoted) are accepted.
    c.AUG.DEVICE = _SWITCH_DEFAULT

    # ---- Pretraining data ----
    c.DATA = CN()
    # Extra image folder used as an unlabeled pretraining set (registered as
    # "cyborgs_image_folder" when non-empty); DATASETS.TRAIN may name it.
    c.DATA.IMAGE_FOLDER = ""
    # Images whose longer / shorter side exceeds this are skipped like unreadable ones (named
    # in a warning, counted in data/num_skipped_images and the round manifests); 0: no limit.
    c.DATA.MAX_ASPECT_RATIO = DEFAULT_MAX_ASPECT_RATIO
    # Images of more pixels (width x height, read from the header) are left out of image
    # folders at registration and skipped unread by every reader, named in a warning; 0: no
    # cap. The default (100 MP) is above the largest camera photos of real data sets; a tiny
    # crafted PNG can otherwise decode to gigabytes in every loader worker.
    c.DATA.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS

    # ---- Mask source (METHOD.md §3; Table 2 / Fig. 5a ablations) ----
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

    # ---- Stage 2: bootstrapping (paper §3.3; METHOD.md §3) ----
    c.BOOTSTRAP = CN()
    # Backbone block clustered: "res3.2" = paper's res2.b2 (Table 2d: "res3", "res4", ...).
    # Several names ("res3.2,res4") are fused like FUSION_FEATURES for the Table 2d ablation.
    c.BOOTSTRAP.FEATURES = ["res3.2"]
    # Bootstrap rounds: the first right after the vMF warm-up (CYBORGS.WARMUP_EPOCHS), then
    # every N epochs (paper 100; Table 2a: 0 = never after the warm-up round).
    c.BOOTSTRAP.PERIOD_EPOCHS = 100
    # Images clustered jointly (paper 16).
    c.BOOTSTRAP.GROUP_SIZE = 16
    # K ~ Uniform{K_MIN..K_MAX} inclusive per group (Table 2e: fix both for K = 2/81/256).
    # K_MAX also sets the mask-id one-hot width of the contrastive loss (mask_id_width).
    c.BOOTSTRAP.K_MIN = 2
    c.BOOTSTRAP.K_MAX = 256
    c.BOOTSTRAP.KMEANS_ITERS = 20
    # "auto" (FAISS if importable; GPU index with CUDA), "faiss", "torch".
    c.BOOTSTRAP.KMEANS_BACKEND = "auto"
    # Image size fed to the encoder when bootstrapping (shorter side; 0 = as stored); both
    # sides are then rounded to a multiple of the bootstrap map's stride (its cells tile the
    # image, as the mask store's upsampling assumes).
    c.BOOTSTRAP.INPUT_SIZE = 224
    # Mirror each image this many pixels outwards before the bootstrap forward, then crop the
    # features back (a multiple of the feature stride, 8 for res3; 0 = off). Keeps the backbone's
    # zero padding off the image's own border, which otherwise forms a strip cluster of its own.
    c.BOOTSTRAP.BORDER_PAD = 0
    c.BOOTSTRAP.BATCH_SIZE = 16
    # Dense-CRF refinement of bootstrapped masks (Table 2b; paper: off).
    c.BOOTSTRAP.CRF = False

    # ---- The run's phases (paper §3.4; METHOD.md §4) ----
    # The run starts with this many vMF warm-up epochs: the vMF clustering loss alone (weight 1,
    # K = VMF.WARMUP_K) trains the encoder that makes the first masks. The contrastive loss and
    # the first bootstrap round start right after it (paper W = 5). Not the LR warm-up, which is
    # SOLVER.LR_WARMUP_EPOCHS.
    c.WARMUP_EPOCHS = 5

    # ---- vMF clustering consistency (paper §3.4, eq. 3-4; METHOD.md §4) ----
    c.VMF = CN()
    c.VMF.KAPPA = 10.0
    # K of the vMF k-means during the warm-up (CYBORGS.WARMUP_EPOCHS; paper: 8 for COCO).
    c.VMF.WARMUP_K = 8
    # K of the per-view prototypes after the warm-up (METHOD.md §4): "uniform" draws K for each
    # step from {BOOTSTRAP.K_MIN..K_MAX} (§3.4 reuses §3.3's K; the authors' code draws per
    # step), seeded by the step so resume is exact; "fixed" uses VMF.K at every step.
    c.VMF.K_SAMPLING = "uniform"
    c.VMF.K = 8
    # After the warm-up the loss is added with weight LAMBDA during epochs e with
    # e % PERIOD_EPOCHS == 0 (paper λ = 0.1, M = 5; Table 2g/2h). LAMBDA 0 is THE way to turn
    # the vMF term off after the warm-up (Table 2g's M = 0 row; the warm-up itself is
    # CYBORGS.WARMUP_EPOCHS, 0 for none). PERIOD_EPOCHS is >= 1.
    c.VMF.LAMBDA = 0.1
    c.VMF.PERIOD_EPOCHS = 5
    # Feature map scored by the loss, named by the key that defines it: "BOOTSTRAP.FEATURES"
    # (the map the bootstrap rounds cluster, METHOD.md §4) or "FUSION_FEATURES" (the fused map of
    # the contrastive loss).
    c.VMF.FEATURE = "BOOTSTRAP.FEATURES"
    # "vmf" (paper) or "euclidean" (Table 2f).
    c.VMF.DISTANCE = "vmf"
    c.VMF.KMEANS_ITERS = 10
    # Side of the common grid sampled over the two views' crop intersection (inter terms).
    c.VMF.INTER_GRID = 7
    # k-means backend for the per-step prototypes (small problems: "torch" runs on the
    # training device and avoids a host round trip; "faiss" / "auto" as BOOTSTRAP).
    c.VMF.KMEANS_BACKEND = "torch"

    # ---- Accelerator path (no effect on CPU) ----
    # Both are switches (see SWITCH_KEYS): "auto", "on", "off", or a YAML boolean.
    c.GPU = CN()
    # channels_last memory format for the backbones: "auto" (on with CUDA), "on", "off".
    c.GPU.CHANNELS_LAST = _SWITCH_DEFAULT
    # bf16 autocast of the backbone forward passes (losses stay fp32; bf16 needs no grad
    # scaler): "auto" (on with CUDA and native bf16, i.e. Ampere or newer), "on", "off".
    c.GPU.BF16 = _SWITCH_DEFAULT

    # ---- Optimisation (METHOD.md §5) ----
    # Schedules are written in epochs and converted to iterations from the data set size.
    # "LARS" (paper) or "SGD"; trust coefficient of LARS; bias/norm excluded from adaptation
    # and weight decay.
    _C.SOLVER.OPTIMIZER = "LARS"
    _C.SOLVER.LARS_TRUST_COEFFICIENT = 1e-3
    # Length of the run: the one run-length setting (SOLVER.MAX_ITER is derived from it).
    _C.SOLVER.EPOCHS = 800
    # Linear LR warm-up (not the vMF warm-up, CYBORGS.WARMUP_EPOCHS).
    _C.SOLVER.LR_WARMUP_EPOCHS = 10
    # "cosine" or "step" (authors' code: step at 768/784 epochs, x0.1).
    _C.SOLVER.EPOCH_SCHEDULE = "cosine"
    _C.SOLVER.STEP_EPOCHS = (768, 784)
    # Newest periodic checkpoints kept on disk (older model_XXXXXXX.pth are deleted;
    # model_final.pth is written besides and never deleted). Each holds online + target + optimizer state: ~140 MB for R18, ~600 MB
    # for R50. 0 keeps all.
    _C.SOLVER.CHECKPOINTS_TO_KEEP = 3
    # Stop with a clear message when a loss term is not finite.
    _C.SOLVER.STOP_ON_NONFINITE = True

    # ---- Derived values (DERIVED_KEYS): written by cyborgs.engine.setup, never chosen ----
    # detectron2's SOLVER.MAX_ITER = round(SOLVER.EPOCHS x iterations per epoch). Leave it at
    # 0; a config that sets it to anything else than the derived value is rejected (the run
    # length is SOLVER.EPOCHS), so a value is never silently replaced.
    _C.SOLVER.MAX_ITER = 0
    # Images of DATASETS.TRAIN (unreadable / over-wide ones included: they are skipped per
    # batch); iterations per epoch = ceil(NUM_IMAGES / SOLVER.IMS_PER_BATCH). Same rule.
    c.DATA.NUM_IMAGES = 0

    return cfg


def _node_and_name(cfg: CN, key: str) -> tuple[CN, str]:
    *path, name = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    return node, name


def set_key(cfg: CN, key: str, value) -> None:
    """Set the dotted ``key`` of an unfrozen ``cfg`` (its parent nodes must exist)."""
    node, name = _node_and_name(cfg, key)
    node[name] = value


def flat_items(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"A.B.C": value}`` for every leaf of the nested mapping ``d`` (a config, parsed YAML)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get_key(cfg: CN, key: str, default=None):
    """Value of the dotted ``key`` in ``cfg`` (``default`` when absent)."""
    try:
        node, name = _node_and_name(cfg, key)
    except KeyError:
        return default
    return node.get(name, default)


def mask_id_width(cfg: CN) -> int:
    """Width of the one-hot that votes masks onto the feature grid (METHOD.md §2): ``K_max + 1``.

    With ``CYBORGS.MASKS.SOURCE`` "bootstrap" every id comes from a round with
    K <= ``BOOTSTRAP.K_MAX``; any other source may write every uint8 id (0..255), so its
    ``K_max`` is 256. Ids outside the width raise (never dropped, as the authors' 81 did)."""
    c = cfg.CYBORGS
    k_max = int(c.BOOTSTRAP.K_MAX) if c.MASKS.SOURCE == "bootstrap" else 256
    return k_max + 1


def parse_switch(value: str | bool | None, key: str) -> str:
    """Validate a ``"auto"/"on"/"off"`` switch; ``key`` names the config key for the message.

    Booleans are accepted as ``"on"``/``"off"`` because YAML 1.1 reads an unquoted ``on`` /
    ``off`` as ``True`` / ``False`` and kwargs users may pass them directly. None is the
    config's default (typeless so that YAML booleans merge, see ``_SWITCH_DEFAULT``): ``"auto"``.
    """
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.strip().lower() in SWITCH_VALUES:
        return value.strip().lower()
    raise ValueError(f"{key} must be one of {list(SWITCH_VALUES)}, got {value!r}")
