"""One NCCL DDP training step of the real trainer (CUDA only; run by tools/dev/gpu_check.sh).

detectron2 wraps a model in DistributedDataParallel only when the world has more than one
process, and NCCL refuses two ranks on one GPU, so a one-GPU machine could never exercise the
DDP path. Here a one-process NCCL group is initialised and the trainer's own DDP wrapper
(``_create_ddp_model``: broadcast_buffers=False, find_unused_parameters=True) is made to wrap
even at world size 1; everything else is the real ``CyborgsTrainer`` (R18, two-view loader,
bf16 + channels_last by default on CUDA, LARS, EMA, hooks, checkpoint) on the tiny data.

Two norms: SyncBN (Base-CYBORGS.yaml's default for GPU runs: torch's SyncBatchNorm in the
backbone and the projector/predictor heads) and plain BN (the demo configs'). At world size 1
SyncBatchNorm takes its local path (torch reduces across processes only when the group has more
than one), so this covers the SyncBN modules under DDP, bf16 and channels_last, not the
cross-process reduction. CYBORGS.AUG.DEVICE stays "auto" (on with CUDA): the step must apply
the batched photometric ops on the GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from detectron2.config import get_cfg
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.gpu
@pytest.mark.parametrize("norm", ["SyncBN", "BN"])
def test_one_process_nccl_ddp_trains_the_real_model(tiny_data_root, tmp_path, monkeypatch, norm):
    import cyborgs.data.datasets  # noqa: F401  (registers the demo_* sets)
    import cyborgs.engine.trainer as trainer_mod
    import cyborgs.modeling.meta_arch as meta_arch
    from cyborgs.config import add_cyborgs_config
    from cyborgs.engine.launch import find_free_port
    from cyborgs.engine.setup import finalize_pretrain_cfg
    from cyborgs.pretrain_data.augment import device_augment_enabled

    cfg = add_cyborgs_config(get_cfg())
    cfg.merge_from_file(str(REPO / "pretrain_configs" / "demo_R18.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cuda",
            "MODEL.RESNETS.NORM", norm,
            "DATASETS.TRAIN", ("demo_coco_2017_train_unlabeled",),
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 8,
            "SOLVER.EPOCHS", 2,
            "SOLVER.LR_WARMUP_EPOCHS", 1,
            "CYBORGS.AUG.CROP_SIZE", 64,
            "CYBORGS.BOOTSTRAP.FEATURES", ["res3.1"],
            "CYBORGS.MASKS.SOURCE", "grid",
            "CYBORGS.WARMUP_EPOCHS", 1,
            "CYBORGS.VMF.PERIOD_EPOCHS", 1,
            "OUTPUT_DIR", str(tmp_path / "out"),
            "SEED", 3,
        ]
    )  # fmt: skip
    finalize_pretrain_cfg(cfg, world_size=1)
    assert cfg.MODEL.RESNETS.NORM == norm and cfg.CYBORGS.AUG.DEVICE == "auto"
    assert device_augment_enabled(cfg)

    photometric: list[tuple] = []  # (device type, dtype, batch size) of each device-ops call
    real_apply = meta_arch.apply_photometric

    def counted_apply(images, params):
        photometric.append((images.device.type, images.dtype, images.shape[0]))
        return real_apply(images, params)

    monkeypatch.setattr(meta_arch, "apply_photometric", counted_apply)
    wrapped: list[DistributedDataParallel] = []

    def ddp_even_at_world_size_one(model, **kwargs):
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()], **kwargs)
        wrapped.append(ddp)
        return ddp

    monkeypatch.setattr(trainer_mod, "create_ddp_model", ddp_even_at_world_size_one)
    torch.cuda.set_device(0)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{find_free_port()}", world_size=1, rank=0
    )
    # detectron2's launch creates the per-machine group; comm.get_local_rank() needs it.
    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", dist.new_group([0]))
    try:
        trainer = trainer_mod.CyborgsTrainer(cfg)
        trainer.resume_or_load(resume=False)
        model = trainer.model.module
        before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
        trainer.train()
    finally:
        dist.destroy_process_group()
    assert len(wrapped) == 1 and trainer.model is wrapped[0]
    assert next(model.parameters()).is_cuda and model.uses_bf16 and model.uses_channels_last
    sync = [n for n, m in model.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    if norm == "SyncBN":
        assert any(n.startswith("backbone.") for n in sync), "backbone has no SyncBatchNorm"
        assert any(n.startswith("projector.") for n in sync), "heads have no SyncBatchNorm"
    else:
        assert not sync
    # the device augmentation path ran in every step: both views of each batch of 8, the loader
    # sent the geometric uint8 views with their drawn records and the ops ran on the GPU
    assert photometric == [("cuda", torch.uint8, 8)] * (2 * trainer.max_iter)
    after = model.backbone.state_dict()
    changed = [
        k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])
    ]
    assert changed, "no backbone tensor changed: the DDP step did not train"
    assert trainer.iter == trainer.max_iter == 6  # 24 tiny images / batch 8 x 2 epochs
    storage = trainer.storage.latest()
    assert all(torch.isfinite(torch.tensor(v[0])) for k, v in storage.items() if "loss" in k)
    assert (tmp_path / "out" / "model_final.pth").is_file()
