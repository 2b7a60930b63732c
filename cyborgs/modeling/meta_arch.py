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
- Phase attributes start as: ``contrastive_weight`` = CYBORGS.CONTRASTIVE_WEIGHT,
  ``vmf_weight`` = 0 and ``vmf_num_clusters`` = CYBORGS.VMF.K; the schedule hook sets them
  every step (K drawn per step after the warm-up, see ``LossScheduleHook``).

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
import logging
from collections.abc import Sequence

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
from .losses.mask_contrastive import MaskContrastiveLoss
from .losses.vmf_clustering import VMFClusteringLoss
from .mask_pooling import masks_to_grid, pool_by_mask, sample_mask_ids
from .precision import autocast, bf16_enabled, channels_last_enabled, parse_switch

__all__ = ["CYBORGS"]

logger = logging.getLogger(__name__)

_ALL_STAGES = ["res2", "res3", "res4", "res5"]
# CYBORGS.VMF.FEATURE (the key naming the map) -> the constructor's ``vmf_feature``.
_VMF_FEATURE_ARG = {"BOOTSTRAP.FEATURES": "bootstrap", "FUSION_FEATURES": "fused"}


def _put_scalars(**kv: float) -> None:
    """Log to the current EventStorage when there is one (tests run without)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalars(**kv)


@META_ARCH_REGISTRY.register()
class CYBORGS(nn.Module):
    """Mask-contrastive + vMF-clustering pretrainer.

    Training input: a list (one per image) of two-view mapper outputs (docs/DESIGN.md):
    ``{"views": [{"image": uint8[3,S,S] RGB, "mask": int64 or uint8 [S,S], "box": float[4],
    "flip": bool}, {...}], ...}``; a view may also carry ``"photometric"`` (its drawn
    parameters, CYBORGS.AUG.DEVICE), applied here batched on the model's device before
    normalisation (``cyborgs.data.device_augment``). Output: ``{"loss_mask_contrastive", "loss_vmf"}``, each
    present only when its weight is positive.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        fusion_features: Sequence[str],
        bootstrap_features: Sequence[str],
        projector_hidden_dim: int,
        projector_out_dim: int,
        num_sampled_masks: int,
        max_mask_ids: int,
        temperature: float,
        vmf_kappa: float,
        vmf_k: int,
        vmf_kmeans_iters: int,
        vmf_inter_grid: int,
        vmf_distance: str,
        vmf_feature: str,
        contrastive_weight: float,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vmf_weight: float = 0.0,
        vmf_kmeans_backend: str = "torch",
        gather_distributed: bool = True,
        channels_last: str | bool = "auto",
        bf16: str | bool = "auto",
        head_norm: str = "BN",
    ) -> None:
        """
        Args:
            backbone: the online encoder (a detectron2 ResNet for block taps like "res3.2").
            fusion_features: maps fused for the contrastive loss (CYBORGS.FUSION_FEATURES).
            bootstrap_features: map(s) clustered (CYBORGS.BOOTSTRAP.FEATURES), also the vMF
                feature when ``vmf_feature == "bootstrap"``.
            vmf_feature: "bootstrap" or "fused" (CYBORGS.VMF.FEATURE).
            vmf_weight: initial weight of the vMF term (the schedule hook sets it).
            channels_last, bf16: "auto" (on iff the model is on CUDA), "on", "off"
                (CYBORGS.GPU.CHANNELS_LAST / CYBORGS.GPU.BF16).
            head_norm: "BN" or "SyncBN" in the projector/predictor (from_config: "SyncBN" when
                MODEL.RESNETS.NORM is any of detectron2's synchronised norms, as BYOL
                synchronises its heads when the backbone is).
            Other args: see ``cyborgs/config/defaults.py`` (same names).
        """
        super().__init__()
        self.fusion_features = list(fusion_features)
        self.bootstrap_features = list(bootstrap_features)
        if not self.fusion_features:
            raise ValueError("CYBORGS.FUSION_FEATURES must name at least one feature map")
        if not self.bootstrap_features:
            raise ValueError("CYBORGS.BOOTSTRAP.FEATURES must name at least one feature map")
        if vmf_feature not in ("bootstrap", "fused"):
            raise ValueError(
                f"CYBORGS.VMF.FEATURE must be 'bootstrap' or 'fused', got {vmf_feature!r}"
            )
        if num_sampled_masks <= 0:
            raise ValueError(f"CYBORGS.NUM_SAMPLED_MASKS must be positive, got {num_sampled_masks}")
        if not 2 <= max_mask_ids:
            raise ValueError(f"max_mask_ids must be >= 2 (mask_id_width), got {max_mask_ids}")
        # Parsed early so a bad value fails before the deep copies below.
        self.channels_last_mode = parse_switch(channels_last, "CYBORGS.GPU.CHANNELS_LAST")
        self.bf16_mode = parse_switch(bf16, "CYBORGS.GPU.BF16")
        validate_taps(backbone, self.fusion_features, "CYBORGS.FUSION_FEATURES")
        validate_taps(backbone, self.bootstrap_features, "CYBORGS.BOOTSTRAP.FEATURES")

        self.backbone = backbone
        channels = tap_channels(backbone, self.fusion_features + self.bootstrap_features)
        in_dim = fused_channels(channels, self.fusion_features)
        self.projector = MLPHead(in_dim, projector_hidden_dim, projector_out_dim, head_norm)
        self.predictor = MLPHead(
            projector_out_dim, projector_hidden_dim, projector_out_dim, head_norm
        )
        # Target f_ξ and g_ξ start equal to the online ones (BYOL) and only move by EMA.
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in list(self.target_backbone.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)

        self.num_sampled_masks = int(num_sampled_masks)
        self.max_mask_ids = int(max_mask_ids)
        self.vmf_feature = vmf_feature
        self.contrastive_loss = MaskContrastiveLoss(
            temperature=temperature, gather_distributed=gather_distributed
        )
        self.vmf_loss = VMFClusteringLoss(
            kappa=vmf_kappa,
            num_clusters=vmf_k,
            kmeans_iters=vmf_kmeans_iters,
            inter_grid=vmf_inter_grid,
            distance=vmf_distance,
            kmeans_backend=vmf_kmeans_backend,
        )
        # Phase attributes, set by the schedule hook (docs/DESIGN.md "Model").
        self.contrastive_weight = float(contrastive_weight)
        self.vmf_weight = float(vmf_weight)
        self.vmf_num_clusters = int(vmf_k)
        # Training step, set by the schedule hook: seeds the vMF k-means init so a resumed run
        # draws the same prototypes as an uninterrupted one.
        self.vmf_step = 0

        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"MODEL.PIXEL_MEAN / PIXEL_STD must have 3 (RGB) values, got {pixel_mean} / "
                f"{pixel_std}"
            )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # Layout the backbones are in now; ``_sync_memory_format`` keeps it = the resolved mode.
        self._backbones_channels_last = False
        self._sync_memory_format()

    @classmethod
    def from_config(cls, cfg) -> dict:
        # No validate_cyborgs_config here: cyborgs.engine.setup validated the config once; a
        # config assembled by hand is checked by the constructor's own argument checks.
        c = cfg.CYBORGS
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
        return {
            "backbone": build_backbone(cfg),
            "fusion_features": list(c.FUSION_FEATURES),
            "bootstrap_features": list(c.BOOTSTRAP.FEATURES),
            "projector_hidden_dim": c.PROJECTOR_HIDDEN_DIM,
            "projector_out_dim": c.PROJECTOR_OUT_DIM,
            "num_sampled_masks": c.NUM_SAMPLED_MASKS,
            "max_mask_ids": mask_id_width(cfg),
            "temperature": c.TEMPERATURE,
            "vmf_kappa": c.VMF.KAPPA,
            "vmf_k": c.VMF.K,
            "vmf_kmeans_iters": c.VMF.KMEANS_ITERS,
            "vmf_inter_grid": c.VMF.INTER_GRID,
            "vmf_distance": c.VMF.DISTANCE,
            "vmf_feature": _VMF_FEATURE_ARG.get(c.VMF.FEATURE, c.VMF.FEATURE),
            "vmf_kmeans_backend": c.VMF.KMEANS_BACKEND,
            "contrastive_weight": c.CONTRASTIVE_WEIGHT,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "channels_last": c.GPU.CHANNELS_LAST,
            "bf16": c.GPU.BF16,
            "head_norm": "SyncBN" if cfg.MODEL.RESNETS.NORM in SYNC_NORMS else "BN",
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
        use_c = self.contrastive_weight > 0
        use_v = self.vmf_weight > 0
        if not (use_c or use_v):
            raise ValueError(
                "both model.contrastive_weight and model.vmf_weight are 0: no loss to train"
            )
        self._sync_memory_format()  # cheap flag check; the real work happens in ``_apply``
        images, masks, boxes, flips = self._unpack(batched_inputs)

        vmf_names = (
            self.bootstrap_features if self.vmf_feature == "bootstrap" else self.fusion_features
        )
        names = (self.fusion_features if use_c else []) + (vmf_names if use_v else [])
        online = [self._backbone_features(self.backbone, img, names) for img in images]
        with torch.no_grad():
            target = [self._backbone_features(self.target_backbone, img, names) for img in images]

        losses: dict[str, torch.Tensor] = {}
        if use_c:
            losses["loss_mask_contrastive"] = self.contrastive_weight * self._contrastive(
                online, target, masks
            )
        if use_v:
            on = tuple(fuse_features(f, vmf_names) for f in online)
            tg = tuple(fuse_features(f, vmf_names).detach() for f in target)
            parts = self.vmf_loss(
                on, tg, boxes, flips, num_clusters=self.vmf_num_clusters, seed=self.vmf_step
            )
            losses["loss_vmf"] = self.vmf_weight * parts["total"]
            _put_scalars(
                **{
                    "cyborgs/vmf_intra": float(parts["intra"].detach()),
                    "cyborgs/vmf_inter": float(parts["inter"].detach()),
                }
            )
        return losses

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


def _ids_per_image(grid: torch.Tensor) -> torch.Tensor:
    """Number of distinct ids in each image's grid, LongTensor[B] (no loop over slots)."""
    B = grid.shape[0]
    present = torch.zeros(B, int(grid.max()) + 1, device=grid.device, dtype=torch.bool)
    present.scatter_(1, grid.reshape(B, -1), True)
    return present.sum(dim=1)
