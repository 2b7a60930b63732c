"""One Mask R-CNN training step on the demo COCO twin through detectron2's own data path."""

import math

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model

import cyborgs.data.datasets  # noqa: F401  (registers the demo_* names)


def _cfg():
    cfg = get_cfg()
    cfg.merge_from_file(
        model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""  # random init
    cfg.MODEL.RESNETS.NORM = "BN"  # SyncBN needs a process group; plain BN on one CPU
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(MetadataCatalog.get("demo_coco_2017_train").thing_classes)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.DATASETS.TRAIN = ("demo_coco_2017_train",)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    return cfg


def test_one_training_step_on_demo_coco(tiny_data_root):
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg)
    model.train()
    loader = build_detection_train_loader(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    watched = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n
        in (
            "backbone.bottom_up.stem.conv1.weight",
            "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.mask_head.predictor.weight",
        )
    }
    assert len(watched) == 3
    assert (
        model.roi_heads.box_predictor.cls_score.out_features == cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1
    )

    losses = {}

    class Recorder(SimpleTrainer):
        def run_step(self):
            # the same step as SimpleTrainer, keeping the loss dict for the assertions
            data = next(self._data_loader_iter)
            assert all(len(d["instances"]) > 0 and d["image"].shape[0] == 3 for d in data)
            loss_dict = self.model(data)
            losses.update({k: float(v) for k, v in loss_dict.items()})
            self.optimizer.zero_grad()
            sum(loss_dict.values()).backward()
            self.optimizer.step()

    trainer = Recorder(model, loader, optimizer)
    trainer.train(0, 1)

    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    params = dict(model.named_parameters())
    for name, before in watched.items():
        assert not torch.equal(params[name].detach(), before), f"{name} did not change"
