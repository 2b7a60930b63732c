"""Config keys of the CYBORGS pretrainer, added to a detectron2 ``CfgNode``.

Every key carries the paper / METHOD.md reference and the default. Layer names follow detectron2
(METHOD.md §1): the paper's "res2, res3, res4" are detectron2's ``res3, res4, res5``; the paper's
"res2.b2" is ``res3.2`` here (stage res3, block index 2, the third block).

    paper / torchvision      detectron2   stride  channels (R50)
    layer1                   res2         4       256
    layer2 ("res2")          res3         8       512
    layer3 ("res3")          res4         16      1024
    layer4 ("res4")          res5         32      2048
    layer2.2 ("res2.b2")     res3.2       8       512
"""

from __future__ import annotations

import re

from detectron2.config import CfgNode as CN

from cyborgs.config_io import load_yaml_config
from cyborgs.data.image_io import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS


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
    # See cyborgs/data/image_io.py.
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

    # ---- Old names (DEPRECATED_KEYS), read for one release ----
    # Kept in the tree (typeless, None = not given) so that older configs and overrides still
    # merge; cyborgs.engine.setup maps a given value to its new key with a warning and then
    # removes these keys, so the final config (and OUTPUT_DIR/config.yaml) has the new names.
    for key in DEPRECATED_KEYS:
        node, name = _node_and_name(_C, key)
        node[name] = None
    return cfg


# "auto" / "on" / "off" switches. The default is None (= "auto") rather than "auto" because yacs
# rejects a value whose type differs from the default's: YAML reads unquoted on/off/true/false
# as booleans, and those must merge too. setup_pretrain_cfg writes the canonical string.
_SWITCH_DEFAULT = None
SWITCH_KEYS = ("CYBORGS.GPU.CHANNELS_LAST", "CYBORGS.GPU.BF16", "CYBORGS.AUG.DEVICE")

# Derived by cyborgs.engine.setup (0 = not derived yet); a non-zero value given in a config must
# equal the derived one.
DERIVED_KEYS = ("CYBORGS.DATA.NUM_IMAGES", "SOLVER.MAX_ITER")

# Old key -> its new key (None: nothing replaces it, see resolve_deprecated_keys).
DEPRECATED_KEYS: dict[str, str | None] = {
    # the LR warm-up, renamed apart from the vMF warm-up
    "SOLVER.WARMUP_EPOCHS": "SOLVER.LR_WARMUP_EPOCHS",
    # the vMF warm-up is a phase of the whole run (it also times the first bootstrap round)
    "CYBORGS.VMF.WARMUP_EPOCHS": "CYBORGS.WARMUP_EPOCHS",
    # derived from BOOTSTRAP.K_MAX (mask_id_width)
    "CYBORGS.MAX_MASK_IDS": None,
}
# Old values of CYBORGS.VMF.FEATURE -> new ones.
_OLD_VMF_FEATURE = {"bootstrap": "BOOTSTRAP.FEATURES", "fused": "FUSION_FEATURES"}
VMF_FEATURES = ("BOOTSTRAP.FEATURES", "FUSION_FEATURES")


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


def canonical_switch(value, key: str) -> str:
    """The switch value as "auto", "on" or "off" (None = "auto"; YAML booleans accepted)."""
    from cyborgs.modeling.precision import parse_switch

    try:
        return parse_switch(value, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _renamed(key: str) -> str | None:
    new = DEPRECATED_KEYS.get(key)
    return new if isinstance(new, str) else None


def rename_old_keys_in_opts(opts: list) -> tuple[list, list[str]]:
    """``KEY VALUE`` pairs with every renamed old key replaced by its new name, in place in
    the order given (so a later pair still wins); returns ``(opts, notes)``."""
    out, notes = list(opts), []
    for i in range(0, len(out) - 1, 2):
        new = _renamed(str(out[i]))
        if new is not None:
            notes.append(
                f"{out[i]} is deprecated: use {new} (command line {out[i]} {out[i + 1]!r})"
            )
            out[i] = new
    return out, notes


def _pop_path(d: dict, key: str):
    *path, name = key.split(".")
    for p in path:
        d = d.get(p)
        if not isinstance(d, dict):
            return None, False
    if name in d:
        return d.pop(name), True
    return None, False


def _set_path(d: dict, key: str, value) -> None:
    *path, name = key.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[name] = value


def _has_path(d: dict, key: str) -> bool:
    *path, name = key.split(".")
    for p in path:
        d = d.get(p)
        if not isinstance(d, dict):
            return False
    return name in d


def load_pretrain_yaml(filename: str) -> tuple[dict, list[str]]:
    """A pretraining YAML with its ``_BASE_`` chain (:func:`cyborgs.config_io.load_yaml_config`:
    safe YAML only), with renamed keys (``DEPRECATED_KEYS``) mapped file by file, so that the
    usual order holds whichever name each file uses: a file over its base, whatever the base
    called the key. Returns ``(dict, notes)``."""
    notes: list[str] = []

    def map_old_names(path: str, own: dict, merged: dict) -> None:
        for old, new in DEPRECATED_KEYS.items():
            if new is not None and _has_path(own, old) and _has_path(own, new):
                raise ConfigError(
                    f"{path}: sets both {old} (deprecated) and {new}, its new name; keep {new}"
                )
        # Bases come back with new names only, so an old name left in the merged dict is this
        # file's own, and it overrides the base's new key.
        for old, new in DEPRECATED_KEYS.items():
            if new is None:
                continue
            value, found = _pop_path(merged, old)
            if found:
                notes.append(f"{path}: {old} is deprecated: use {new} ({old} {value!r})")
                _set_path(merged, new, value)

    return load_yaml_config(filename, on_file=map_old_names), notes


def resolve_deprecated_keys(cfg: CN) -> list[str]:
    """Map old key names and values to the current ones, in place on an unfrozen ``cfg``;
    returns one deprecation note per change (the caller logs them as warnings).

    * ``DEPRECATED_KEYS`` with a new name: a value still under the old name is copied to the
      new key and wins over it. ``setup_pretrain_cfg`` maps old names per file and on the
      command line first (:func:`load_pretrain_yaml`, :func:`rename_old_keys_in_opts`), so the
      usual order holds there; this pass catches configs merged by other code.
    * ``CYBORGS.MAX_MASK_IDS``: now :func:`mask_id_width`. An old value at least that wide
      gave the same votes (the extra ids never occur) and is ignored; a narrower one would
      have failed on the ids a round writes, so it is rejected.
    * ``CYBORGS.VMF.FEATURE`` "bootstrap" / "fused" -> "BOOTSTRAP.FEATURES" / "FUSION_FEATURES".
    * ``CYBORGS.VMF.PERIOD_EPOCHS`` 0 meant "no vMF term after the warm-up", which is
      ``CYBORGS.VMF.LAMBDA`` 0: LAMBDA becomes 0 and PERIOD_EPOCHS 1 (then irrelevant).

    Then the old keys are removed from ``cfg``. Idempotent.
    """
    notes: list[str] = []
    for old, new in DEPRECATED_KEYS.items():
        value = get_key(cfg, old)
        if value is not None and new is not None:
            current = get_key(cfg, new)
            note = f"{old} is deprecated: use {new} ({old} {value!r} -> {new}"
            note += f", which was {current!r})" if current != value else ")"
            notes.append(note)
            set_key(cfg, new, value)
        elif value is not None and old == "CYBORGS.MAX_MASK_IDS":
            width = mask_id_width(cfg)
            if not _is_num(value) or value < width:
                raise ConfigError(
                    f"CYBORGS.MAX_MASK_IDS = {value!r}: this setting was removed; the mask-id "
                    f"width is derived from CYBORGS.BOOTSTRAP.K_MAX = {cfg.CYBORGS.BOOTSTRAP.K_MAX}"
                    f" (K_MAX + 1 = {width} for MASKS.SOURCE {cfg.CYBORGS.MASKS.SOURCE!r}), and "
                    f"{value!r} would not count every id. Remove CYBORGS.MAX_MASK_IDS."
                )
            notes.append(
                f"CYBORGS.MAX_MASK_IDS is deprecated and ignored: the mask-id width is derived "
                f"from CYBORGS.BOOTSTRAP.K_MAX ({width}; {value} gave the same votes)"
            )
        try:
            node, name = _node_and_name(cfg, old)
        except KeyError:
            continue
        node.pop(name, None)
    v = cfg.CYBORGS.VMF
    if v.FEATURE in _OLD_VMF_FEATURE:
        notes.append(
            f"CYBORGS.VMF.FEATURE {v.FEATURE!r} is deprecated: use "
            f"{_OLD_VMF_FEATURE[v.FEATURE]!r} (the key naming the map)"
        )
        v.FEATURE = _OLD_VMF_FEATURE[v.FEATURE]
    if v.PERIOD_EPOCHS == 0:
        notes.append(
            "CYBORGS.VMF.PERIOD_EPOCHS 0 is deprecated: the vMF term is turned off after the "
            f"warm-up by CYBORGS.VMF.LAMBDA 0 (LAMBDA {v.LAMBDA} -> 0.0, PERIOD_EPOCHS -> 1)"
        )
        v.LAMBDA = 0.0
        v.PERIOD_EPOCHS = 1
    return notes


# Blocks per stage (res2..res5) of detectron2's ``build_resnet_backbone`` for each depth.
_RESNET_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_RESNET_BUILDERS = ("build_resnet_backbone",)


def res2_out_channels(depth: int) -> int:
    """``MODEL.RESNETS.RES2_OUT_CHANNELS`` that detectron2's ResNet of ``depth`` needs: 64 for the
    basic-block R18/R34, 256 for the bottleneck R50/R101/R152."""
    if depth not in _RESNET_BLOCKS:
        raise ValueError(f"ResNet depth {depth!r}: expected one of {sorted(_RESNET_BLOCKS)}")
    return 64 if depth in (18, 34) else 256


# detectron2's norms (``get_norm``) that synchronise batch statistics across processes.
SYNC_NORMS = ("SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")


def fall_back_to_cpu(cfg: CN) -> list[str]:
    """Without CUDA, run on the CPU: ``MODEL.DEVICE`` -> ``cpu`` and every synchronised norm
    (:data:`SYNC_NORMS`) of the backbone and heads -> ``BN``, in place on an unfrozen ``cfg``. Returns one note per change.

    torch's SyncBatchNorm refuses CPU tensors once a process group exists, and in one process it
    is plain BN anyway (same parameters and buffers, so checkpoints are interchangeable). With
    CUDA available nothing changes."""
    import torch

    device = str(cfg.MODEL.DEVICE)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        # checked first: a typo ("cpuu") must not be "fixed" to the CPU without CUDA
        raise ConfigError(f"MODEL.DEVICE = {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if torch.cuda.is_available():
        return []
    notes: list[str] = []
    if cfg.MODEL.DEVICE != "cpu":
        notes.append(f"CUDA is not available: MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    for name in ("RESNETS", "FPN", "SEM_SEG_HEAD", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        node = cfg.MODEL.get(name)
        if node is not None and node.get("NORM") in SYNC_NORMS:
            notes.append(f"CUDA is not available: MODEL.{name}.NORM {node.NORM} -> BN")
            node.NORM = "BN"
    return notes


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value, what is expected."""


def validate_cyborgs_config(cfg: CN, world_size: int | None = None) -> None:
    """Check every ``CYBORGS.*`` / pretraining ``SOLVER.*`` value that can be checked up front.

    Runs in milliseconds and touches no file and no data set. The one caller in the pipeline is
    :func:`cyborgs.engine.setup.finalize_pretrain_cfg` (behind every entry point), before
    anything expensive happens (data set sizing, model construction, the vMF warm-up); it is
    idempotent, so library users may call it on a config of their own.

    Args:
        cfg: a config with :func:`add_cyborgs_config` applied (frozen or not; not modified).
        world_size: processes sharing ``SOLVER.IMS_PER_BATCH``; default: the current process
            group's size (1 outside ``launch``).

    Raises:
        ConfigError (a ``ValueError``) naming the key, its value and what was expected.
        Settings that are legal but probably not what was meant (a schedule that never reaches
        a bootstrap round) are logged as warnings instead.
    """
    import logging

    log = logging.getLogger(__name__)

    def fail(key: str, value, expected: str) -> None:
        raise ConfigError(f"{key} = {value!r}: expected {expected}")

    def number(key: str, value, *, lo=None, hi=None, lo_open=False, integer=False, why="") -> None:
        what = ("an integer" if integer else "a finite number") + _range_text(lo, hi, lo_open)
        what += f" ({why})" if why else ""
        if integer and not (isinstance(value, int) and not isinstance(value, bool)):
            fail(key, value, what)
        if not _is_num(value):
            fail(key, value, what)
        if lo is not None and (value < lo or (lo_open and value == lo)):
            fail(key, value, what)
        if hi is not None and value > hi:
            fail(key, value, what)

    def choice(key: str, value, allowed) -> None:
        if value not in allowed:
            fail(key, value, f"one of {sorted(allowed)}")

    def pair(key: str, value, n: int = 2) -> tuple:
        if not isinstance(value, list | tuple) or len(value) != n:
            fail(key, value, f"a list of {n} values")
        return tuple(value)

    if not hasattr(cfg, "CYBORGS"):
        raise ConfigError("cfg has no CYBORGS node: call cyborgs.config.add_cyborgs_config(cfg)")
    for old, new in DEPRECATED_KEYS.items():
        if get_key(cfg, old) is not None:
            raise ConfigError(
                f"{old} = {get_key(cfg, old)!r} is an old name ({new or 'derived now'}): build "
                "the config with cyborgs.engine.setup_pretrain_cfg, which maps it"
            )
    c, s, m = cfg.CYBORGS, cfg.SOLVER, cfg.MODEL

    # ---- backbone and feature names ----
    depth = m.RESNETS.DEPTH
    resnet = m.BACKBONE.NAME in _RESNET_BUILDERS
    if resnet:
        choice("MODEL.RESNETS.DEPTH", depth, _RESNET_BLOCKS)
        if depth in (18, 34) and m.RESNETS.RES2_OUT_CHANNELS != 64:
            fail(
                "MODEL.RESNETS.RES2_OUT_CHANNELS",
                m.RESNETS.RES2_OUT_CHANNELS,
                f"64 for MODEL.RESNETS.DEPTH {depth} (detectron2's basic-block ResNets)",
            )
        choice("MODEL.RESNETS.RES5_DILATION", m.RESNETS.RES5_DILATION, (1, 2))
    for v in pair("MODEL.PIXEL_MEAN", m.PIXEL_MEAN, 3):
        number("MODEL.PIXEL_MEAN", v)
    for v in pair("MODEL.PIXEL_STD", m.PIXEL_STD, 3):
        number("MODEL.PIXEL_STD", v, lo=0, lo_open=True)
    strides = {}
    for key, names in (
        ("CYBORGS.FUSION_FEATURES", c.FUSION_FEATURES),
        ("CYBORGS.BOOTSTRAP.FEATURES", c.BOOTSTRAP.FEATURES),
    ):
        if not isinstance(names, list | tuple) or not names:
            fail(key, names, "a non-empty list of feature names such as ['res3', 'res4', 'res5']")
        for name in names:
            strides[name] = _check_feature_name(key, name, depth if resnet else None, m)

    # ---- stage 1: mask-contrastive loss ----
    number("CYBORGS.NUM_SAMPLED_MASKS", c.NUM_SAMPLED_MASKS, lo=1, integer=True)
    number("CYBORGS.TEMPERATURE", c.TEMPERATURE, lo=0, lo_open=True)
    number("CYBORGS.PROJECTOR_HIDDEN_DIM", c.PROJECTOR_HIDDEN_DIM, lo=1, integer=True)
    number("CYBORGS.PROJECTOR_OUT_DIM", c.PROJECTOR_OUT_DIM, lo=1, integer=True)
    number("CYBORGS.CONTRASTIVE_WEIGHT", c.CONTRASTIVE_WEIGHT, lo=0)
    number("CYBORGS.EMA.BASE_MOMENTUM", c.EMA.BASE_MOMENTUM, lo=0, hi=1)
    choice("CYBORGS.EMA.SCHEDULE", c.EMA.SCHEDULE, ("cosine", "constant"))

    # ---- augmentation ----
    a = c.AUG
    number("CYBORGS.AUG.CROP_SIZE", a.CROP_SIZE, lo=1, integer=True)
    number("CYBORGS.DATA.MAX_IMAGE_PIXELS", c.DATA.MAX_IMAGE_PIXELS, lo=0, integer=True)
    lo, hi = pair("CYBORGS.AUG.CROP_SCALE", a.CROP_SCALE)
    if not (_is_num(lo) and _is_num(hi) and 0 < lo <= hi <= 1):
        fail("CYBORGS.AUG.CROP_SCALE", a.CROP_SCALE, "(lo, hi) with 0 < lo <= hi <= 1")
    lo, hi = pair("CYBORGS.AUG.CROP_RATIO", a.CROP_RATIO)
    if not (_is_num(lo) and _is_num(hi) and 0 < lo <= hi):
        fail("CYBORGS.AUG.CROP_RATIO", a.CROP_RATIO, "(lo, hi) with 0 < lo <= hi")
    for v in pair("CYBORGS.AUG.COLOR_JITTER", a.COLOR_JITTER, 4):
        number("CYBORGS.AUG.COLOR_JITTER", v, lo=0)
    for key in ("FLIP_PROB", "COLOR_JITTER_PROB", "GRAYSCALE_PROB"):
        number(f"CYBORGS.AUG.{key}", a.get(key), lo=0, hi=1)
    for key in ("BLUR_PROB", "SOLARIZE_PROB"):
        for v in pair(f"CYBORGS.AUG.{key}", a.get(key)):
            number(f"CYBORGS.AUG.{key}", v, lo=0, hi=1)

    # ---- mask source ----
    from cyborgs.masks.registry import mask_source_names

    choice("CYBORGS.MASKS.SOURCE", c.MASKS.SOURCE, mask_source_names())
    number("CYBORGS.MASKS.GRID_SIZE", c.MASKS.GRID_SIZE, lo=1, hi=16, integer=True)
    number("CYBORGS.MASKS.FH_SCALE", c.MASKS.FH_SCALE, lo=0, lo_open=True)
    number("CYBORGS.MASKS.FH_MIN_SIZE", c.MASKS.FH_MIN_SIZE, lo=0)
    number("CYBORGS.MASKS.FH_SIGMA", c.MASKS.FH_SIGMA, lo=0)

    # ---- bootstrapping ----
    from cyborgs.clustering import kmeans_backend_names

    backends = {"auto", *kmeans_backend_names()}
    b = c.BOOTSTRAP
    number("CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", b.PERIOD_EPOCHS, lo=0, integer=True)
    number("CYBORGS.BOOTSTRAP.GROUP_SIZE", b.GROUP_SIZE, lo=1, integer=True)
    # Label maps are uint8: ids 0..255.
    k_cap = 256
    why = "uint8 label maps"
    number("CYBORGS.BOOTSTRAP.K_MIN", b.K_MIN, lo=2, hi=k_cap, integer=True, why=why)
    number("CYBORGS.BOOTSTRAP.K_MAX", b.K_MAX, lo=2, hi=k_cap, integer=True, why=why)
    if b.K_MIN > b.K_MAX:
        raise ConfigError(
            f"CYBORGS.BOOTSTRAP.K_MIN = {b.K_MIN} > CYBORGS.BOOTSTRAP.K_MAX = {b.K_MAX}: expected "
            f"2 <= K_MIN <= K_MAX <= {k_cap} (K ~ Uniform{{K_MIN..K_MAX}}; fix both for one K)"
        )
    number("CYBORGS.BOOTSTRAP.KMEANS_ITERS", b.KMEANS_ITERS, lo=1, integer=True)
    choice("CYBORGS.BOOTSTRAP.KMEANS_BACKEND", b.KMEANS_BACKEND, backends)
    number("CYBORGS.BOOTSTRAP.INPUT_SIZE", b.INPUT_SIZE, lo=0, integer=True)
    number("CYBORGS.BOOTSTRAP.BORDER_PAD", b.BORDER_PAD, lo=0, integer=True)
    stride = strides.get(b.FEATURES[-1])
    if b.BORDER_PAD and stride and b.BORDER_PAD % stride:
        fail(
            "CYBORGS.BOOTSTRAP.BORDER_PAD",
            b.BORDER_PAD,
            f"a multiple of the stride {stride} of {b.FEATURES[-1]!r} (the bootstrap map's grid)",
        )
    number("CYBORGS.BOOTSTRAP.BATCH_SIZE", b.BATCH_SIZE, lo=1, integer=True)
    choice("CYBORGS.BOOTSTRAP.CRF", b.CRF, (True, False))

    # ---- vMF clustering ----
    v = c.VMF
    number("CYBORGS.WARMUP_EPOCHS", c.WARMUP_EPOCHS, lo=0, integer=True)
    number("CYBORGS.VMF.KAPPA", v.KAPPA, lo=0, lo_open=True)
    # K = 1 makes the loss identically 0 (a softmax over one prototype).
    number("CYBORGS.VMF.WARMUP_K", v.WARMUP_K, lo=2, integer=True)
    choice("CYBORGS.VMF.K_SAMPLING", v.K_SAMPLING, ("uniform", "fixed"))
    number("CYBORGS.VMF.K", v.K, lo=2, integer=True)
    number("CYBORGS.VMF.LAMBDA", v.LAMBDA, lo=0)
    number(
        "CYBORGS.VMF.PERIOD_EPOCHS",
        v.PERIOD_EPOCHS,
        lo=1,
        integer=True,
        why="turn the vMF term off after the warm-up with CYBORGS.VMF.LAMBDA 0",
    )
    choice("CYBORGS.VMF.FEATURE", v.FEATURE, VMF_FEATURES)
    from cyborgs.modeling.losses.vmf_clustering import VMF_DISTANCE_REGISTRY

    choice("CYBORGS.VMF.DISTANCE", v.DISTANCE, sorted(n for n, _ in VMF_DISTANCE_REGISTRY))
    number("CYBORGS.VMF.KMEANS_ITERS", v.KMEANS_ITERS, lo=1, integer=True)
    number("CYBORGS.VMF.INTER_GRID", v.INTER_GRID, lo=1, integer=True)
    choice("CYBORGS.VMF.KMEANS_BACKEND", v.KMEANS_BACKEND, backends)

    for key in SWITCH_KEYS:
        canonical_switch(get_key(cfg, key), key)

    # ---- optimisation and schedule ----
    if str(s.OPTIMIZER).upper() not in ("LARS", "SGD"):
        fail("SOLVER.OPTIMIZER", s.OPTIMIZER, "'LARS' or 'SGD'")
    number("SOLVER.BASE_LR", s.BASE_LR, lo=0, lo_open=True)
    number("SOLVER.MOMENTUM", s.MOMENTUM, lo=0, hi=1)
    if s.MOMENTUM == 1:
        fail("SOLVER.MOMENTUM", s.MOMENTUM, "a number in [0, 1)")
    number("SOLVER.WEIGHT_DECAY", s.WEIGHT_DECAY, lo=0)
    number("SOLVER.LARS_TRUST_COEFFICIENT", s.LARS_TRUST_COEFFICIENT, lo=0, lo_open=True)
    number("SOLVER.EPOCHS", s.EPOCHS, lo=0, lo_open=True)
    number("SOLVER.LR_WARMUP_EPOCHS", s.LR_WARMUP_EPOCHS, lo=0, hi=s.EPOCHS)
    choice("SOLVER.EPOCH_SCHEDULE", s.EPOCH_SCHEDULE, ("cosine", "step"))
    if s.EPOCH_SCHEDULE == "step":
        steps = list(s.STEP_EPOCHS)
        ok = all(_is_num(e) and 0 < e <= s.EPOCHS for e in steps)
        if not ok or steps != sorted(steps):
            fail(
                "SOLVER.STEP_EPOCHS",
                s.STEP_EPOCHS,
                f"increasing epochs in (0, SOLVER.EPOCHS = {s.EPOCHS}]",
            )
        number("SOLVER.GAMMA", s.GAMMA, lo=0, lo_open=True)
    number("SOLVER.CHECKPOINT_PERIOD", s.CHECKPOINT_PERIOD, lo=1, integer=True)
    number("SOLVER.CHECKPOINTS_TO_KEEP", s.CHECKPOINTS_TO_KEEP, lo=0, integer=True)
    choice("SOLVER.STOP_ON_NONFINITE", s.STOP_ON_NONFINITE, (True, False))
    if s.AMP.ENABLED:
        fail("SOLVER.AMP.ENABLED", s.AMP.ENABLED, "False (use CYBORGS.GPU.BF16 instead)")
    number("SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH, lo=1, integer=True)
    if s.get("REFERENCE_WORLD_SIZE", 0):
        # detectron2's auto_scale_workers would rescale the batch the epochs are counted in.
        fail("SOLVER.REFERENCE_WORLD_SIZE", s.REFERENCE_WORLD_SIZE, "0 (IMS_PER_BATCH is global)")
    if world_size is None:
        from detectron2.utils import comm

        world_size = comm.get_world_size()
    if s.IMS_PER_BATCH % int(world_size):
        fail(
            "SOLVER.IMS_PER_BATCH",
            s.IMS_PER_BATCH,
            f"a multiple of the {world_size} processes (it is the global batch)",
        )
    number("DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, lo=0, integer=True)

    # ---- legal, but probably not meant ----
    if c.WARMUP_EPOCHS >= s.EPOCHS:
        log.warning(
            f"CYBORGS.WARMUP_EPOCHS = {c.WARMUP_EPOCHS} >= SOLVER.EPOCHS = {s.EPOCHS}: the "
            "whole run is the vMF warm-up (no contrastive loss, no bootstrap round)"
        )
    elif c.MASKS.SOURCE == "bootstrap" and 0 < b.PERIOD_EPOCHS and c.WARMUP_EPOCHS + 1 < s.EPOCHS:
        if not any(e % b.PERIOD_EPOCHS == 0 for e in range(c.WARMUP_EPOCHS + 1, int(s.EPOCHS))):
            log.warning(
                f"CYBORGS.BOOTSTRAP.PERIOD_EPOCHS = {b.PERIOD_EPOCHS}: no round after the "
                f"post-warm-up one within SOLVER.EPOCHS = {s.EPOCHS}"
            )


def _is_num(x) -> bool:
    import math

    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _range_text(lo, hi, lo_open: bool) -> str:
    if lo is None and hi is None:
        return ""
    if hi is None:
        return f" {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f" <= {hi}"
    return f" in {'(' if lo_open else '['}{lo}, {hi}]"


def _check_feature_name(key: str, name, depth: int | None, model_cfg) -> int | None:
    """Validate one feature name (``res4``, ``res3.2``) against the ResNet depth; returns the
    map's stride (None for non-ResNet backbones, which the model checks when it is built)."""
    from cyborgs.modeling.backbone_taps import parse_tap

    try:
        stage, block = parse_tap(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if depth is None:
        return None
    stages = ("res2", "res3", "res4", "res5")
    if stage == "stem":
        if block is not None:
            raise ConfigError(f"{key} = {name!r}: the stem has no blocks")
        return 4
    if stage not in stages:
        raise ConfigError(
            f"{key} = {name!r}: expected 'stem', one of {list(stages)} or '<stage>.<block>' "
            "(e.g. 'res3.2')"
        )
    n_blocks = _RESNET_BLOCKS[depth][stages.index(stage)]
    if block is not None and block >= n_blocks:
        raise ConfigError(
            f"{key} = {name!r}: a ResNet-{depth} has {n_blocks} blocks in {stage}, so block "
            f"indices 0..{n_blocks - 1} (e.g. '{stage}.{n_blocks - 1}')"
        )
    stride = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}[stage]
    if stage == "res5" and model_cfg.RESNETS.RES5_DILATION == 2:
        stride = 16
    return stride
