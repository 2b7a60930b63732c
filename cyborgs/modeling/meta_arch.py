"""The CYBORGS pretraining meta-architecture (paper §3.2-3.4; METHOD.md §1, §2, §4).

Online encoder f_θ (a detectron2 ResNet with BN), target encoder f_ξ (EMA copy), BYOL
projector g / predictor q, the mask-contrastive loss on fused multi-layer features and the vMF
clustering-consistency loss on the bootstrap feature.

Choices where the paper is silent:
- The two views go through the encoders one after the other (not as one 2B batch), so BN
  statistics are per view as in BYOL/DetCon; the heads likewise see one view at a time.
- The target encoder runs in the module's mode (train mode during training, batch-statistics
  BN as in BYOL); its running statistics are overwritten by ``update_target`` anyway.
- The backbone keeps every stage (res2..res5) even when the losses read fewer, so the exported
  checkpoint is a complete ResNet; ``forward_taps`` only computes the stages a step needs.
- Phase attributes start as: ``<term>_weight`` per loss term (``loss_terms.py``) at its weight
  in a contrastive epoch without the vMF term (``contrastive_weight`` =
  CYBORGS.CONTRASTIVE_WEIGHT, ``vmf_weight`` = 0) and ``vmf_num_clusters`` = CYBORGS.VMF.K; the
  schedule hook sets them every step (K drawn per step after the warm-up, see
  ``LossScheduleHook``).

Accelerator path (CYBORGS.GPU.*, see ``precision.py``): "auto" is resolved from the model's
device whenever it changes (``.to()``/``.cuda()``, via ``_apply``) and again at every forward,
so a model built on the CPU and then moved to CUDA - what ``build_model`` does - gets it.
- channels_last: both backbones' parameters and the normalised input images use
  ``torch.channels_last``; moving back to the CPU under "auto" restores the default layout.
- bf16: ONLY the backbone passes (online, target, ``extract_features``) run under bf16
  autocast; their maps are cast back to contiguous fp32 before fusion, pooling, the heads and
  the losses, so the softmax over cosines / tau and the vMF math stay fp32. No GradScaler.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.utils.events import get_event_storage
from torch import nn

from ..config import SYNC_NORMS, mask_id_width
from ..data.device_augment import apply_photometric, stack_photometric
from .backbone_taps import forward_taps, tap_channels, validate_taps
from .fusion import fuse_features, fused_channels
from .heads import MLPHead
from .loss_terms import LOSS_TERM_REGISTRY, LossInputs, LossTerm, loss_terms
from .losses.mask_contrastive import MaskContrastiveLoss
from .losses.vmf_clustering import VMFClusteringLoss
from .mask_pooling import masks_to_grid, pool_by_mask, sample_mask_ids
from .precision import autocast, bf16_enabled, channels_last_enabled, parse_switch

__all__ = [
    "CYBORGS",
    "AcceleratorSettings",
    "ContrastiveSettings",
    "InputSettings",
    "MaskContrastiveTerm",
    "VMFSettings",
    "VMFTerm",
]

logger = logging.getLogger(__name__)

_ALL_STAGES = ["res2", "res3", "res4", "res5"]


def _put_scalars(**kv: float) -> None:
    """Log to the current EventStorage when there is one (tests run without)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**kv)


def _pretraining_backbone_cfg(cfg):
    """A copy of ``cfg`` whose backbone trains as pretraining needs (warning on each change)."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.RESNETS.NORM == "FrozenBN":
        # Pretraining learns every layer with batch statistics; detectron2's default
        # FrozenBN (meant for fine-tuning from ImageNet) would train nothing in the norms.
        logger.warning("CYBORGS pretraining: MODEL.RESNETS.NORM 'FrozenBN' -> 'BN'")
        cfg.MODEL.RESNETS.NORM = "BN"
    if cfg.MODEL.BACKBONE.FREEZE_AT != 0:
        logger.warning(
            f"CYBORGS pretraining trains the whole backbone: MODEL.BACKBONE.FREEZE_AT "
            f"{cfg.MODEL.BACKBONE.FREEZE_AT} -> 0"
        )
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
    # Keep every stage so the exported checkpoint is a complete ResNet (see module doc).
    cfg.MODEL.RESNETS.OUT_FEATURES = list(_ALL_STAGES)
    if cfg.INPUT.FORMAT != "RGB":
        logger.warning(
            f"INPUT.FORMAT is {cfg.INPUT.FORMAT!r} but the two-view mapper always gives RGB; "
            "MODEL.PIXEL_MEAN/PIXEL_STD are applied in RGB order"
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class ContrastiveSettings:
    """The mask-contrastive branch (METHOD.md §2; keys of ``cyborgs/config/defaults.py``, same
    names). Like the other settings below, its values are those of a validated config: every
    check lives once, in ``cyborgs.config.checks``.

    Attributes:
        fusion_features: maps fused for the contrastive loss (``CYBORGS.FUSION_FEATURES``).
        projector_hidden_dim, projector_out_dim: BYOL MLP sizes of projector and predictor.
        num_sampled_masks: mask ids sampled per view (``CYBORGS.NUM_SAMPLED_MASKS``).
        max_mask_ids: id width of the masks (``mask_id_width(cfg)``), >= 2.
        temperature: softmax temperature (``CYBORGS.TEMPERATURE``).
        head_norm: "BN" or "SyncBN" in the projector/predictor (from_config: "SyncBN" when
            MODEL.RESNETS.NORM is any of detectron2's synchronised norms, as BYOL
            synchronises its heads when the backbone is).
        gather_distributed: negatives from every rank.
    """

    fusion_features: tuple[str, ...]
    projector_hidden_dim: int
    projector_out_dim: int
    num_sampled_masks: int
    max_mask_ids: int
    temperature: float
    head_norm: str = "BN"
    gather_distributed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "fusion_features", tuple(self.fusion_features))


@dataclasses.dataclass(frozen=True)
class VMFSettings:
    """The vMF clustering-consistency branch (METHOD.md §4; ``CYBORGS.VMF.*``).

    Attributes:
        feature: the map it reads, as CYBORGS.VMF.FEATURE names it: "BOOTSTRAP.FEATURES" or
            "FUSION_FEATURES".
        kappa, k, kmeans_iters, inter_grid, distance, kmeans_backend: ``CYBORGS.VMF.KAPPA``,
            ``K``, ``KMEANS_ITERS``, ``INTER_GRID``, ``DISTANCE``, ``KMEANS_BACKEND``.
    """

    feature: str
    kappa: float
    k: int
    kmeans_iters: int
    inter_grid: int
    distance: str
    kmeans_backend: str = "torch"


@dataclasses.dataclass(frozen=True)
class InputSettings:
    """Image normalisation: MODEL.PIXEL_MEAN / PIXEL_STD, RGB, 3 values each."""

    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))


@dataclasses.dataclass(frozen=True)
class AcceleratorSettings:
    """CUDA path switches (``precision.py``): "auto" (on iff the model is on CUDA), "on",
    "off" (CYBORGS.GPU.CHANNELS_LAST / CYBORGS.GPU.BF16); parsed on construction, so a bad
    value fails before the model is built."""

    channels_last: str | bool = "auto"
    bf16: str | bool = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "channels_last", parse_switch(self.channels_last, "CYBORGS.GPU.CHANNELS_LAST")
        )
        object.__setattr__(self, "bf16", parse_switch(self.bf16, "CYBORGS.GPU.BF16"))


@META_ARCH_REGISTRY.register()
class CYBORGS(nn.Module):
    """Mask-contrastive + vMF-clustering pretrainer.

    Training input: a list (one per image) of two-view mapper outputs (docs/DESIGN.md):
    ``{"views": [{"image": uint8[3,S,S] RGB, "mask": int64 or uint8 [S,S], "box": float[4],
    "flip": bool}, {...}], ...}``; a view may also carry ``"photometric"`` (its drawn
    parameters, CYBORGS.AUG.DEVICE), applied here batched on the model's device before
    normalisation (``cyborgs.data.device_augment``). Output: one ``loss_*`` entry per
    registered loss term (``loss_terms.py``: ``loss_mask_contrastive``, ``loss_vmf``), each
    present only when its weight is positive.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        bootstrap_features: Sequence[str],
        contrastive: ContrastiveSettings,
        vmf: VMFSettings,
        inputs: InputSettings,
        accelerator: AcceleratorSettings = AcceleratorSettings(),
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        """
        Args:
            backbone: the online encoder (a detectron2 ResNet for block taps like "res3.2").
            bootstrap_features: map(s) clustered (CYBORGS.BOOTSTRAP.FEATURES), also the vMF
                feature when ``vmf.feature == "BOOTSTRAP.FEATURES"``.
            contrastive, vmf, inputs, accelerator: the settings of each part.
            loss_weights: initial weight per loss term name (absent: 0); the schedule hook
                sets them every step.
        """
        super().__init__()
        self.bootstrap_features = list(bootstrap_features)
        if not self.bootstrap_features:
            raise ValueError("CYBORGS.BOOTSTRAP.FEATURES must name at least one feature map")
        self.fusion_features = list(contrastive.fusion_features)
        validate_taps(backbone, self.fusion_features, "CYBORGS.FUSION_FEATURES")
        validate_taps(backbone, self.bootstrap_features, "CYBORGS.BOOTSTRAP.FEATURES")
        self.channels_last_mode = accelerator.channels_last
        self.bf16_mode = accelerator.bf16

        self.backbone = backbone
        self._build_contrastive_branch(contrastive)
        self.vmf_feature = vmf.feature
        self.vmf_loss = VMFClusteringLoss(
            kappa=vmf.kappa,
            num_clusters=vmf.k,
            kmeans_iters=vmf.kmeans_iters,
            inter_grid=vmf.inter_grid,
            distance=vmf.distance,
            kmeans_backend=vmf.kmeans_backend,
        )
        # Phase attributes, set by the schedule hook (docs/DESIGN.md "Model").
        weights = dict(loss_weights or {})
        for term in loss_terms():
            setattr(self, term.weight_attr(), float(weights.pop(term.name, 0.0)))
        if weights:
            raise ValueError(f"loss_weights name unregistered loss terms: {sorted(weights)}")
        self.vmf_num_clusters = int(vmf.k)
        # Training step, set by the schedule hook: seeds the vMF k-means init so a resumed run
        # draws the same prototypes as an uninterrupted one.
        self.vmf_step = 0

        self.register_buffer("pixel_mean", torch.tensor(inputs.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(inputs.pixel_std).view(-1, 1, 1), False)
        # Layout the backbones are in now; ``_sync_memory_format`` keeps it = the resolved mode.
        self._backbones_channels_last = False
        self._sync_memory_format()

    def _build_contrastive_branch(self, s: ContrastiveSettings) -> None:
        """Projector g, predictor q, the EMA targets f_ξ, g_ξ and the loss (BYOL, METHOD.md §2)."""
        channels = tap_channels(self.backbone, self.fusion_features + self.bootstrap_features)
        in_dim = fused_channels(channels, self.fusion_features)
        hidden, out = s.projector_hidden_dim, s.projector_out_dim
        self.projector = MLPHead(in_dim, hidden, out, s.head_norm)
        self.predictor = MLPHead(out, hidden, out, s.head_norm)
        # Target f_ξ and g_ξ start equal to the online ones (BYOL) and only move by EMA.
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in list(self.target_backbone.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)
        self.num_sampled_masks = int(s.num_sampled_masks)
        self.max_mask_ids = int(s.max_mask_ids)
        self.contrastive_loss = MaskContrastiveLoss(
            temperature=s.temperature, gather_distributed=s.gather_distributed
        )

    @classmethod
    def from_config(cls, cfg) -> dict:
        # No validate_cyborgs_config here: cyborgs.engine.setup validated the config once; a
        # config assembled by hand is checked by the settings' own argument checks.
        c = cfg.CYBORGS
        cfg = _pretraining_backbone_cfg(cfg)
        return {
            "backbone": build_backbone(cfg),
            "bootstrap_features": list(c.BOOTSTRAP.FEATURES),
            "contrastive": ContrastiveSettings(
                fusion_features=tuple(c.FUSION_FEATURES),
                projector_hidden_dim=c.PROJECTOR_HIDDEN_DIM,
                projector_out_dim=c.PROJECTOR_OUT_DIM,
                num_sampled_masks=c.NUM_SAMPLED_MASKS,
                max_mask_ids=mask_id_width(cfg),
                temperature=c.TEMPERATURE,
                head_norm="SyncBN" if cfg.MODEL.RESNETS.NORM in SYNC_NORMS else "BN",
            ),
            "vmf": VMFSettings(
                feature=c.VMF.FEATURE,
                kappa=c.VMF.KAPPA,
                k=c.VMF.K,
                kmeans_iters=c.VMF.KMEANS_ITERS,
                inter_grid=c.VMF.INTER_GRID,
                distance=c.VMF.DISTANCE,
                kmeans_backend=c.VMF.KMEANS_BACKEND,
            ),
            "inputs": InputSettings(tuple(cfg.MODEL.PIXEL_MEAN), tuple(cfg.MODEL.PIXEL_STD)),
            "accelerator": AcceleratorSettings(c.GPU.CHANNELS_LAST, c.GPU.BF16),
            # a contrastive epoch's weights without the periodic (vMF) terms
            "loss_weights": {
                t.name: 0.0 if t.periodic else t.configured_weight(cfg) for t in loss_terms()
            },
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ accelerator path
    @property
    def uses_channels_last(self) -> bool:
        """channels_last resolved for the model's current device."""
        return channels_last_enabled(self.channels_last_mode, self.device)

    @property
    def uses_bf16(self) -> bool:
        """bf16 autocast of the backbones resolved for the model's current device."""
        return bf16_enabled(self.bf16_mode, self.device)

    def _sync_memory_format(self) -> None:
        """Put both backbones in the layout the channels_last switch asks for on this device.

        ``Module.to(memory_format=...)`` rewrites ``param.data`` in place, so the Parameter
        objects (and an optimizer's references to them) survive the conversion.
        """
        want = self.uses_channels_last
        if want == self._backbones_channels_last:
            return
        fmt = torch.channels_last if want else torch.contiguous_format
        for bb in (self.backbone, self.target_backbone):
            bb.to(memory_format=fmt)
        self._backbones_channels_last = want

    def _apply(self, fn, *args, **kwargs):
        # Every device move (.to/.cuda/.cpu) goes through here: re-resolve "auto" right away,
        # so the layout is settled before DDP wraps the model and registers its grad buckets.
        out = super()._apply(fn, *args, **kwargs)
        self._sync_memory_format()
        return out

    def _run_backbone(
        self, backbone: nn.Module, x: torch.Tensor, names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Backbone maps exactly as computed: bf16 under autocast, channels_last layout."""
        if self._backbones_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.uses_bf16):
            return forward_taps(backbone, x, names)

    def _backbone_features(
        self, backbone: nn.Module, x: torch.Tensor, names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``_run_backbone`` cast back to contiguous fp32: everything after it is fp32 math.

        One copy covers both the dtype and the layout, and is a no-op on the plain fp32 path.
        """
        maps = self._run_backbone(backbone, x, names)
        return {
            n: f.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            for n, f in maps.items()
        }

    # ------------------------------------------------------------------ inputs
    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).float()
        return (images - self.pixel_mean) / self.pixel_std

    def _device_photometric(self, batch: torch.Tensor, views: list[dict], v: int) -> torch.Tensor:
        """CYBORGS.AUG.DEVICE: the views' drawn photometric ops, batched on the model's device
        (uint8 [B,3,S,S] -> float [B,3,S,S] in [0, 255]), before normalisation."""
        if not all("photometric" in d for d in views):
            raise ValueError(
                f"view {v + 1}: some images of the batch carry photometric parameters and some "
                "do not (mixed CYBORGS.AUG.DEVICE settings in one batch?)"
            )
        params = stack_photometric([d["photometric"] for d in views], self.device)
        return apply_photometric(batch.to(self.device, non_blocking=True), params)

    def _unpack(self, batched_inputs: list[dict]) -> tuple[list, list, torch.Tensor, torch.Tensor]:
        """Stack the two views: images/masks per view, boxes [B,2,4], flips [B,2]."""
        if not batched_inputs:
            raise ValueError("CYBORGS.forward got an empty batch")
        for i, x in enumerate(batched_inputs):
            if "views" not in x or len(x["views"]) != 2:
                raise ValueError(
                    f"batched_inputs[{i}] must hold 'views': a list of 2 view dicts (the "
                    f"TwoViewDatasetMapper output), got keys {sorted(x)}"
                )
        images, masks = [], []
        for v in range(2):
            views = [x["views"][v] for x in batched_inputs]
            shapes = {tuple(d["image"].shape) for d in views}
            if len(shapes) != 1:
                raise ValueError(f"view {v + 1} images differ in shape within the batch: {shapes}")
            batch = torch.stack([d["image"] for d in views])
            if any("photometric" in d for d in views):
                batch = self._device_photometric(batch, views, v)
            images.append(self._normalize(batch))
            masks.append(
                torch.stack([torch.as_tensor(d["mask"]) for d in views]).to(self.device).long()
            )
        boxes = torch.stack(
            [
                torch.stack(
                    [torch.as_tensor(x["views"][v]["box"], dtype=torch.float32) for v in range(2)]
                )
                for x in batched_inputs
            ]
        ).to(self.device)
        flips = torch.tensor(
            [[bool(x["views"][v]["flip"]) for v in range(2)] for x in batched_inputs],
            dtype=torch.bool,
            device=self.device,
        )
        return images, masks, boxes, flips

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        if not self.training:
            raise RuntimeError(
                "CYBORGS has no inference forward; use model.extract_features(images, names)"
            )
        weights = {t: float(getattr(self, t.weight_attr())) for t in loss_terms()}
        active = [t for t, w in weights.items() if w > 0]
        if not active:
            raise ValueError(
                f"every loss weight is 0 ({', '.join('model.' + t.weight_attr() for t in weights)})"
                ": no loss to train"
            )
        self._sync_memory_format()  # cheap flag check; the real work happens in ``_apply``
        images, masks, boxes, flips = self._unpack(batched_inputs)

        names = [n for t in active for n in t.features(self)]
        online = [self._backbone_features(self.backbone, img, names) for img in images]
        with torch.no_grad():
            target = [self._backbone_features(self.target_backbone, img, names) for img in images]
        inputs = LossInputs(online, target, masks, boxes, flips)
        return {t.output: weights[t] * t.compute(self, inputs) for t in active}

    def vmf_feature_names(self) -> list[str]:
        """The maps the vMF term reads (CYBORGS.VMF.FEATURE)."""
        if self.vmf_feature == "BOOTSTRAP.FEATURES":
            return self.bootstrap_features
        return self.fusion_features

    def _vmf(self, inputs: LossInputs) -> torch.Tensor:
        names = self.vmf_feature_names()
        on = tuple(fuse_features(f, names) for f in inputs.online)
        tg = tuple(fuse_features(f, names).detach() for f in inputs.target)
        parts = self.vmf_loss(
            on, tg, inputs.boxes, inputs.flips, num_clusters=self.vmf_num_clusters,
            seed=self.vmf_step,
        )  # fmt: skip
        _put_scalars(
            **{
                "cyborgs/vmf_intra": float(parts["intra"].detach()),
                "cyborgs/vmf_inter": float(parts["inter"].detach()),
            }
        )
        return parts["total"]

    def _contrastive(self, online: list[dict], target: list[dict], masks: list) -> torch.Tensor:
        preds, targs, ids_all, counts = [], [], [], {}
        for v in range(2):
            fused_o = fuse_features(online[v], self.fusion_features)
            grid = masks_to_grid(masks[v], tuple(fused_o.shape[-2:]), self.max_mask_ids)
            # One id sample per view, shared by the online and the target encoder (METHOD.md §2).
            ids = sample_mask_ids(grid, self.num_sampled_masks)
            preds.append(self.predictor(self.projector(pool_by_mask(fused_o, grid, ids))))
            with torch.no_grad():
                fused_t = fuse_features(target[v], self.fusion_features)
                targs.append(self.target_projector(pool_by_mask(fused_t, grid, ids)))
            ids_all.append(ids)
            counts[f"cyborgs/mask_ids_view{v + 1}"] = float(_ids_per_image(grid).float().mean())
        _put_scalars(**counts)
        return self.contrastive_loss(
            torch.stack(preds, dim=1), torch.stack(targs, dim=1), torch.stack(ids_all, dim=1)
        )

    # ------------------------------------------------------------------ EMA
    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """BYOL EMA: ``p_ξ <- m p_ξ + (1 - m) p_θ`` for parameters; buffers copied."""
        m = float(momentum)
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        for online, target in (
            (self.backbone, self.target_backbone),
            (self.projector, self.target_projector),
        ):
            # foreach kernels: one launch per dtype/device group, not per tensor (as LARS)
            on_params = dict(online.named_parameters())
            pairs = [(p, on_params[n].detach()) for n, p in target.named_parameters()]
            tp, op = zip(*pairs, strict=True)
            torch._foreach_mul_(list(tp), m)
            torch._foreach_add_(list(tp), list(op), alpha=1.0 - m)
            on_bufs = dict(online.named_buffers())
            pairs = [(b, on_bufs[n]) for n, b in target.named_buffers()]
            if pairs:
                tb, ob = zip(*pairs, strict=True)
                torch._foreach_copy_(list(tb), list(ob))

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def extract_features(
        self, images: torch.Tensor, names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Online-backbone maps ``{name: Tensor[B,C,h,w]}`` in eval mode (bootstrapping).

        Args:
            images: Tensor[B, 3, H, W] RGB, uint8 or float on the 0..255 scale (unnormalised;
                the model applies MODEL.PIXEL_MEAN/STD).
            names: e.g. ["res3.2"] or ["res5"]; several names may be fused by the caller.

        Returns fp32 contiguous maps; with bf16 on, the backbone itself ran in bf16.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}")
        self._sync_memory_format()
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            # fp32 contiguous maps even under bf16: k-means on them needs the precision.
            return self._backbone_features(self.backbone, self._normalize(images), list(names))
        finally:
            self.backbone.train(was_training)


# The pretrainer's loss terms (loss_terms.py), in the order of its loss dict.
@LOSS_TERM_REGISTRY.register()
class MaskContrastiveTerm(LossTerm):
    """Mask-contrastive loss on the fused features (paper §3.2, METHOD.md §2); off during the
    vMF warm-up, CYBORGS.CONTRASTIVE_WEIGHT afterwards."""

    name, output, label = "contrastive", "loss_mask_contrastive", "contrastive"
    weight_key = "CYBORGS.CONTRASTIVE_WEIGHT"
    warmup_weight, periodic = 0.0, False

    @staticmethod
    def features(model: CYBORGS) -> list[str]:
        return list(model.fusion_features)

    @staticmethod
    def compute(model: CYBORGS, inputs: LossInputs) -> torch.Tensor:
        return model._contrastive(inputs.online, inputs.target, inputs.masks)


@LOSS_TERM_REGISTRY.register()
class VMFTerm(LossTerm):
    """vMF clustering consistency (paper §3.4, METHOD.md §4, eq. 3-4): weight 1 alone during
    the warm-up, then CYBORGS.VMF.LAMBDA every VMF.PERIOD_EPOCHS epochs."""

    name, output, label = "vmf", "loss_vmf", "vMF"
    weight_key = "CYBORGS.VMF.LAMBDA"
    warmup_weight, periodic = 1.0, True

    @staticmethod
    def features(model: CYBORGS) -> list[str]:
        return list(model.vmf_feature_names())

    @staticmethod
    def compute(model: CYBORGS, inputs: LossInputs) -> torch.Tensor:
        return model._vmf(inputs)


def _ids_per_image(grid: torch.Tensor) -> torch.Tensor:
    """Number of distinct ids in each image's grid, LongTensor[B] (no loop over slots)."""
    B = grid.shape[0]
    present = torch.zeros(B, int(grid.max()) + 1, device=grid.device, dtype=torch.bool)
    present.scatter_(1, grid.reshape(B, -1), True)
    return present.sum(dim=1)
