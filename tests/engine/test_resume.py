"""Resume exactness: N steps straight == N/2 + crash + resume + rest, bit for bit (CPU).

A tiny stand-in for the CYBORGS meta-architecture (BN, EMA target, random draws from the global
torch *and* numpy RNGs, both loss terms switched by the phase weights) and a tiny self-seeded
data stream exercise everything that makes a resume exact: model/target/BN buffers, LARS
momentum, LR scheduler, EMA schedule, RNG states, data position.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.env import seed_all_rng
from torch import nn

from cyborgs.config import add_cyborgs_config
from cyborgs.engine.checkpoint import safe_load
from cyborgs.engine.setup import finalize_pretrain_cfg
from cyborgs.engine.trainer import CyborgsTrainer


@META_ARCH_REGISTRY.register()
class ResumeStandIn(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.projector = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)
        )
        self.predictor = nn.Linear(4, 4)
        self.target_backbone = self._frozen_copy(self.backbone)
        self.target_projector = self._frozen_copy(self.projector)
        self.contrastive_weight = 1.0
        self.vmf_weight = 0.0
        self.vmf_num_clusters = 8
        self.nan_at_call: int | None = None  # make loss_vmf NaN on this forward call
        self.calls = 0

    @staticmethod
    def _frozen_copy(m: nn.Module) -> nn.Module:
        import copy

        c = copy.deepcopy(m)
        for p in c.parameters():
            p.requires_grad_(False)
        return c

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        x1 = torch.stack([b["views"][0] for b in batch])
        x2 = torch.stack([b["views"][1] for b in batch])
        # model-side randomness from the global RNGs (like mask-id sampling / k-means init)
        keep = (torch.rand(x1.shape[0]) > 0.2).float() + float(np.random.rand() * 0.1)
        h1 = self.backbone(x1).flatten(1)
        p1 = F.normalize(self.predictor(self.projector(h1)), dim=1)
        with torch.no_grad():
            z2 = F.normalize(self.target_projector(self.target_backbone(x2).flatten(1)), dim=1)
        out = {}
        if self.contrastive_weight > 0:
            per = (2 - 2 * (p1 * z2).sum(1)) * keep
            out["loss_mask_contrastive"] = self.contrastive_weight * per.mean()
        if self.vmf_weight > 0:
            logits = 10 * h1[:, : self.vmf_num_clusters]
            out["loss_vmf"] = self.vmf_weight * F.cross_entropy(
                logits, torch.zeros_like(keep).long()
            )
            if self.calls == self.nan_at_call:
                out["loss_vmf"] = out["loss_vmf"] * float("nan")
        self.calls += 1
        return out

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        for o, t in (
            (self.backbone, self.target_backbone),
            (self.projector, self.target_projector),
        ):
            for po, pt in zip(o.parameters(), t.parameters(), strict=True):
                pt.mul_(momentum).add_(po.detach(), alpha=1 - momentum)
            for bo, bt in zip(o.buffers(), t.buffers(), strict=True):
                bt.copy_(bo)


_N_IMAGES = 10


class _TinyTrainer(CyborgsTrainer):
    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        bs = cfg.SOLVER.IMS_PER_BATCH
        seed = cfg.SEED
        base = torch.Generator().manual_seed(1234)
        images = torch.rand(_N_IMAGES, 3, 8, 8, generator=base)

        def indices():
            g = torch.Generator().manual_seed(seed)
            while True:
                yield from torch.randperm(_N_IMAGES, generator=g).tolist()

        def batches():
            pos = start_iter * bs
            stream = itertools.islice(indices(), pos, None)
            while True:
                batch = []
                for _ in range(bs):
                    i = next(stream)
                    rng = np.random.default_rng([seed, pos])  # per-sample augmentation seed
                    noise = torch.from_numpy(rng.normal(0, 0.1, (2, 3, 8, 8)).astype(np.float32))
                    batch.append({"views": [images[i] + noise[0], images[i].flip(-1) + noise[1]]})
                    pos += 1
                yield batch

        return batches()


class _Crash(Exception):
    pass


class _CrashAt(HookBase):
    def __init__(self, it: int) -> None:
        self.it = it

    def after_step(self) -> None:
        if self.trainer.iter == self.it:
            raise _Crash()


def _cfg(out_dir: str):
    cfg = add_cyborgs_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "ResumeStandIn"
    cfg.MODEL.DEVICE = "cpu"
    cfg.CYBORGS.MASKS.SOURCE = "whole"
    cfg.CYBORGS.WARMUP_EPOCHS = 1
    cfg.CYBORGS.VMF.PERIOD_EPOCHS = 2
    cfg.SOLVER.IMS_PER_BATCH = 4  # 3 iterations / epoch
    cfg.SOLVER.EPOCHS = 3
    cfg.SOLVER.LR_WARMUP_EPOCHS = 1
    cfg.SOLVER.BASE_LR = 5.0
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    cfg.CYBORGS.EMA.BASE_MOMENTUM = 0.9
    cfg.SEED = 7
    cfg.OUTPUT_DIR = out_dir
    return cfg


def _final(cfg):
    """The trainer's input: the config finalized as tools/pretrain_net.py does (10 images)."""
    if not cfg.is_frozen():
        finalize_pretrain_cfg(cfg, num_images=_N_IMAGES, world_size=1)
    return cfg


def _train(cfg, crash_at: int | None = None, resume: bool = False) -> _TinyTrainer:
    seed_all_rng(0)
    cfg = _final(cfg)

    class T(_TinyTrainer):
        def build_hooks(self):
            ret = super().build_hooks()
            if crash_at is not None:
                ret.insert(-1, _CrashAt(crash_at))  # after the checkpointer, before RNG hook
            return ret

    t = T(cfg)
    t.resume_or_load(resume=resume)
    if crash_at is None:
        t.train()
    else:
        with pytest.raises(_Crash):
            t.train()
    return t


def test_resume_is_bit_exact(tmp_path) -> None:
    straight = _train(_cfg(str(tmp_path / "a")))
    assert straight.max_iter == 9 and straight.iters_per_epoch == 3
    assert straight.iter == 9  # a finished loop ends at max_iter (hooks' after_train see it)

    crashed = _train(_cfg(str(tmp_path / "b")), crash_at=5)  # last checkpoint: iteration 3
    assert crashed.iter == 5
    resumed = _train(_cfg(str(tmp_path / "b")), resume=True)
    assert resumed.start_iter == 4

    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # the run really trained: weights moved and the target differs from the online net
    assert not torch.equal(sa["backbone.0.weight"], sa["target_backbone.0.weight"])

    # full training state identical in the final checkpoints (optimizer momentum, LR, RNG)
    fa = safe_load(str(tmp_path / "a" / "model_final.pth"))
    fb = safe_load(str(tmp_path / "b" / "model_final.pth"))
    oa, ob = fa["trainer"]["_trainer"]["optimizer"], fb["trainer"]["_trainer"]["optimizer"]
    for k in oa["state"]:
        assert torch.equal(oa["state"][k]["momentum_buffer"], ob["state"][k]["momentum_buffer"])
    assert [g["lr"] for g in oa["param_groups"]] == [g["lr"] for g in ob["param_groups"]]
    ha, hb = fa["trainer"]["hooks"], fb["trainer"]["hooks"]
    assert ha["LRScheduler"] == hb["LRScheduler"]
    ra, rb = ha["RNGStateHook"]["ranks"], hb["RNGStateHook"]["ranks"]
    assert len(ra) == len(rb) == 1 and torch.equal(ra[0]["torch"], rb[0]["torch"])
    assert (
        fb["run_info"]["config"].startswith("CUDNN_BENCHMARK")
        or "SOLVER" in fb["run_info"]["config"]
    )


def test_data_seed_persists_when_seed_is_random(tmp_path) -> None:
    cfg = _cfg(str(tmp_path / "c"))
    cfg.SEED = -1
    first = _train(cfg, crash_at=4)
    seed_all_rng(123)  # a fresh process would draw another seed
    second = _TinyTrainer(_final(cfg))
    second.resume_or_load(resume=True)
    assert second.data_seed == first.data_seed


def test_nonfinite_loss_stops_before_the_update(tmp_path) -> None:
    from cyborgs.utils.nonfinite import NonFiniteLossError

    seed_all_rng(0)
    t = _TinyTrainer(_final(_cfg(str(tmp_path / "nan"))))
    t.resume_or_load(resume=False)
    t.model.nan_at_call = 1  # second step, still in the vMF warm-up
    with pytest.raises(NonFiniteLossError, match=r"iteration 1: loss_vmf=nan"):
        t.train()
    # weights after step 0 only: finite, and the optimizer never saw a NaN gradient
    assert all(
        torch.isfinite(v).all() for v in t.model.state_dict().values() if v.is_floating_point()
    )


def test_resume_after_crash_recovers_without_a_human(tmp_path) -> None:
    """A crash leaves a truncated latest checkpoint and a temp file, and the restart asks for
    fewer checkpoints than the crashed run kept: the resume falls back to the newest complete
    checkpoint, removes the temp file and prunes the old checkpoints too."""
    out = tmp_path / "run"
    cfg = _cfg(str(out))
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 0  # keep all
    _train(cfg, crash_at=5)
    assert (out / "last_checkpoint").read_text() == "model_0000005.pth"
    latest = out / "model_0000005.pth"
    latest.write_bytes(latest.read_bytes()[:1000])
    (out / ".model_0000006.pth.q1w2e3r4.tmp").write_bytes(b"partial")

    cfg = _cfg(str(out))
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 2
    resumed = _train(cfg, resume=True)
    assert resumed.start_iter == 5  # from model_0000004.pth
    assert not list(out.glob("*.tmp"))
    assert sorted(p.name for p in out.glob("model_*.pth")) == [
        "model_0000007.pth", "model_0000008.pth", "model_final.pth"
    ]  # fmt: skip


class _ModelRounds:
    """Stands in for bootstrap_shard: each map holds a number derived from the online weights
    and from a draw of the global torch RNG (a real round must leave training's RNG streams
    alone); fails once, out of space, in round ``fail_on``."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.calls: list[int] = []

    def __call__(self, model, settings, dicts, store, round_id, *, iteration, world_size, rank):
        import errno

        self.calls.append(round_id)
        w = float(model.backbone[0].weight.detach().double().abs().sum()) + float(torch.rand(1))
        for n, d in enumerate(dicts):
            if round_id == self.fail_on and n == 1:
                self.fail_on = None
                raise OSError(errno.ENOSPC, "No space left on device", "round_0002/x.png")
            store.write(round_id, d["image_id"], np.full((2, 2), int(w * 1e4) % 251, np.uint8))
        return {"k_values": [2], "time_s": 0.1, "images": len(dicts), "bytes": 10}


def _train_with_rounds(cfg, rounds: _ModelRounds, resume: bool = False) -> _TinyTrainer:
    from cyborgs.bootstrap.hook import BootstrapHook
    from cyborgs.bootstrap.round import RoundSettings
    from cyborgs.masks.store import MaskStore

    seed_all_rng(0)
    cfg = _final(cfg)
    settings = RoundSettings(
        features=("res3.2",), group_size=16, k_min=2, k_max=8, kmeans_iters=5,
        backend="torch", input_size=0, border_pad=0, batch_size=4, seed=0, crf=False,
        num_workers=0, max_aspect_ratio=10.0,
    )  # fmt: skip
    dicts = [{"image_id": i, "file_name": f"{i}.png", "height": 8, "width": 8} for i in range(3)]
    store = MaskStore(f"{cfg.OUTPUT_DIR}/masks")

    class T(_TinyTrainer):
        def build_bootstrap_hook(self):
            return BootstrapHook(
                settings=settings, round_fn=rounds, datasets=[("tiny", dicts, store)],
                iters_per_epoch=self.iters_per_epoch, warmup_epochs=1, period_epochs=2,
            )  # fmt: skip

    t = T(cfg)
    t.resume_or_load(resume=resume)
    t.train()
    return t


def test_a_failed_round_keeps_the_epoch_and_the_resume_reruns_it(tmp_path) -> None:
    """Rounds after epochs 1 and 2 (iterations 2 and 5); no periodic checkpoint falls there.
    Round 2 fails for space: the step before it is on disk, and the resume from it runs the
    round again and continues bit for bit as the run that never failed."""
    import json

    def cfg(name):
        c = _cfg(str(tmp_path / name))
        c.SOLVER.CHECKPOINT_PERIOD = 100
        return c

    straight_rounds = _ModelRounds()
    straight = _train_with_rounds(cfg("a"), straight_rounds)
    assert straight_rounds.calls == [1, 2]
    # the step before each round is checkpointed, after the round with the round recorded
    saved = safe_load(str(tmp_path / "a" / "model_0000005.pth"))
    assert saved["iteration"] == 5 and saved["trainer"]["hooks"]["BootstrapHook"] == {
        "completed": [1, 2]
    }

    failing = _ModelRounds(fail_on=2)
    with pytest.raises(OSError, match="No space left"):
        _train_with_rounds(cfg("b"), failing)
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000005.pth"
    saved = safe_load(str(tmp_path / "b" / "model_0000005.pth"))
    assert saved["trainer"]["hooks"]["BootstrapHook"] == {"completed": [1]}

    resumed = _train_with_rounds(cfg("b"), failing, resume=True)
    assert resumed.start_iter == 6 and failing.calls == [1, 2, 2]
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    fa = safe_load(str(tmp_path / "a" / "model_final.pth"))
    fb = safe_load(str(tmp_path / "b" / "model_final.pth"))
    ra, rb = fa["trainer"]["hooks"]["RNGStateHook"], fb["trainer"]["hooks"]["RNGStateHook"]
    assert torch.equal(ra["ranks"][0]["torch"], rb["ranks"][0]["torch"])
    # the rerun round wrote the masks the uninterrupted run wrote
    for r in (1, 2):
        ma = json.loads((tmp_path / "a" / "masks" / f"round_{r:04d}" / "manifest.json").read_text())
        mb = json.loads((tmp_path / "b" / "masks" / f"round_{r:04d}" / "manifest.json").read_text())
        assert ma["bytes"] == mb["bytes"] and ma["num_images"] == mb["num_images"] == 3
    from cyborgs.masks.store import MaskStore

    a, b = MaskStore(str(tmp_path / "a" / "masks")), MaskStore(str(tmp_path / "b" / "masks"))
    for r in (1, 2):
        for i in range(3):
            assert np.array_equal(a.read(i, round_id=r), b.read(i, round_id=r)), (r, i)


def test_loop_ends_and_a_full_disk_is_one_line(tmp_path, caplog) -> None:
    """The trainer's own loop: a failing step keeps its iteration, the writers still write what
    it logged (after_train), and a full disk is logged as one line (the file, needed and free
    space) instead of a traceback."""
    import json
    import logging

    from cyborgs.utils.atomic import DiskFullError

    full = DiskFullError(str(tmp_path / "full" / "model_0000001.pth"), 45_000_000, 1_000)

    class _DiskFull(HookBase):
        def after_step(self) -> None:
            if self.trainer.iter == 1:
                raise full

    seed_all_rng(0)
    t = _TinyTrainer(_final(_cfg(str(tmp_path / "full"))))
    t.register_hooks([_DiskFull()])  # after the writer, which writes every 3 iterations
    t.resume_or_load(resume=False)
    with caplog.at_level(logging.INFO, logger="cyborgs"), pytest.raises(DiskFullError):
        t.train()
    assert t.iter == 1
    (err,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert err.exc_info is None and err.getMessage() == f"Exception during training: {full}"
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1] and "loss_vmf" in rows[0]  # latest values
