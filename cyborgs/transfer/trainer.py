"""``TransferTrainer``: detectron2's ``DefaultTrainer`` with the transfer protocols' pieces.

Evaluators from the data set's ``evaluator_type``, mmseg's poly LR, the semantic-segmentation
crop pipeline (resize, then crop -- detectron2's default mapper crops before resizing),
weights-only checkpoint loading, and a proof that the pretrained backbone loaded.
"""

from __future__ import annotations

import logging

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from cyborgs.engine.checkpoint import SafeCheckpointer, read_checkpoint
from cyborgs.engine.preemption import PreemptionHook
from cyborgs.transfer.evaluators import build_evaluator
from cyborgs.transfer.load_check import assert_backbone_loaded, resnet_tensors_of_file
from cyborgs.transfer.solver import build_lr_scheduler

logger = logging.getLogger(__name__)


def build_checkpointer(model, save_dir: str, **checkpointables):
    """Weights-only loading (METHOD.md §7) and plain, atomic saves: the suite's checkpointer."""
    return SafeCheckpointer(model, save_dir, **checkpointables)


def sem_seg_train_augmentations(cfg) -> list[T.Augmentation]:
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    augs.append(T.RandomFlip())
    return augs


class TransferTrainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            mapper = DatasetMapper(
                cfg, is_train=True, augmentations=sem_seg_train_augmentations(cfg)
            )
            return build_detection_train_loader(cfg, mapper=mapper)
        return super().build_train_loader(cfg)

    def build_hooks(self):
        # Replace the checkpointer before the hooks capture it: weights-only loads (METHOD.md §7).
        self.checkpointer = build_checkpointer(
            self.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        ret = super().build_hooks()
        ret.insert(2, PreemptionHook())  # after the LR scheduler: stop on a signal, checkpointed
        return ret

    def train(self):
        # detectron2 v0.6 returns the final evaluation only when EXPECTED_RESULTS is set.
        super().train()
        return getattr(self, "_last_eval_results", None)

    def resume_or_load(self, resume: bool = True) -> None:
        resuming = resume and self.checkpointer.has_checkpoint()
        super().resume_or_load(resume=resume)
        if not resuming:
            check_backbone_loaded(self.cfg, self.model, self.checkpointer)


def check_backbone_loaded(cfg, model, checkpointer) -> None:
    """Raise unless every ResNet tensor of ``model`` equals MODEL.WEIGHTS (METHOD.md §6)."""
    if not cfg.MODEL.WEIGHTS or not cfg.TRANSFER.CHECK_BACKBONE_LOADED:
        return
    if isinstance(model, DistributedDataParallel):
        model = model.module
    weights = checkpointer.path_manager.get_local_path(cfg.MODEL.WEIGHTS)
    pretrained = resnet_tensors_of_file(read_checkpoint(weights)["model"])
    # The frozen probe runs only up to its block's stage: later stages are legitimately unused.
    allow_unused = cfg.MODEL.BACKBONE.NAME == "build_frozen_block_backbone"
    report = assert_backbone_loaded(model, pretrained, cfg.MODEL.WEIGHTS, allow_unused)
    if comm.is_main_process():
        logger.info("Backbone check: %s", report.summary())
