"""``CyborgsTrainer``: the CYBORGS pretrainer, a detectron2 ``TrainerBase`` with its own loop.

detectron2's advice when ``DefaultTrainer``'s assumptions do not fit is to build on
``TrainerBase`` / ``SimpleTrainer`` (its docstring; ``tools/plain_train_net.py``); here they do
not (DDP wrapping, a loader built at the resumed iteration, epoch schedules), so the trainer owns
its builders, hooks, loop, resume and state, and the optimisation step is a ``SimpleTrainer``
subclass. It takes the final config of :func:`cyborgs.engine.setup.setup_pretrain_cfg` (or
``finalize_pretrain_cfg``) and changes nothing in it. What it does beyond detectron2's defaults:

* Schedules are in epochs (METHOD.md §5): the config carries the derived ``CYBORGS.DATA.NUM_IMAGES``
  and ``SOLVER.MAX_ITER = round(EPOCHS * iters_per_epoch)``, ``iters_per_epoch =
  ceil(NUM_IMAGES / IMS_PER_BATCH)``; LR warm-up + cosine/step via :mod:`cyborgs.solver.schedule`.
* Optimizer: LARS (or SGD) with biases/norm parameters excluded (``SOLVER.OPTIMIZER``).
* Exact resume: the checkpoint holds model (online, target, heads), optimizer, LR scheduler,
  iteration, every hook's state (RNG states included), the data seed, and the config/args as
  strings -- all plain, loaded with ``weights_only=True`` (:mod:`cyborgs.engine.checkpoint`).
  The data loader is built lazily *after* ``resume_or_load`` so it can start at the resumed
  iteration (``build_pretrain_train_loader(cfg, start_iter=...)``), and its construction does
  not consume the global RNG streams.
* Non-finite loss terms stop training before the update, naming the term and the iteration.
* Scalars: ``images_per_sec``, ``lr``, ``ema_momentum``, ``epoch``, the loss weights, every
  ``loss_*`` term, and ``data/num_skipped_images`` (rank 0's count) once the loader reports
  skipped images through the items' ``"skipped_files"``.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.engine import HookBase, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import (
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from cyborgs.config import ConfigError
from cyborgs.solver import build_epoch_lr_scheduler, build_lars_optimizer
from cyborgs.utils.atomic import DiskFullError
from cyborgs.utils.nonfinite import NonFiniteLossError, check_finite_losses, finite_flag
from cyborgs.utils.preemption import Preempted

from .checkpoint import PeriodicCheckpointer, RunInfo, SafeCheckpointer, check_plain
from .hooks import EMAHook, LossScheduleHook, RNGStateHook, unwrap_model
from .preemption import PreemptionHook
from .setup import iters_per_epoch_of
from .writers import PendingRounds, RoundAwareMetricPrinter, TimedPeriodicWriter

__all__ = ["CyborgsTrainer", "ResumableLoader", "preserve_rng"]

logger = logging.getLogger(__name__)


class preserve_rng:  # noqa: N801 - used like a function: ``with preserve_rng(): ...``
    """Context manager restoring python/numpy/torch RNG states on exit."""

    def __enter__(self) -> None:
        from .hooks import capture_rng_state

        self._state = capture_rng_state()

    def __exit__(self, *exc: object) -> None:
        from .hooks import restore_rng_state

        restore_rng_state(self._state)


class ResumableLoader:
    """Iterable whose underlying loader is built on the first ``next``, at ``start_iter``.

    ``SimpleTrainer`` calls ``iter(loader)`` in its constructor, before ``resume_or_load`` knows
    where training restarts; deferring the build lets the stream start at the resumed
    iteration and avoids spawning workers twice. ``restart(iteration)`` drops the current
    iterator so the next batch comes from a fresh loader positioned at ``iteration`` (for a
    bootstrap round that changed the masks workers read).
    """

    def __init__(self, build: Callable[[int], Any], positionable: bool = True) -> None:
        self._build = build
        self.positionable = positionable
        self.start_iter = 0
        self.loader: Any = None
        self._it: Iterator[Any] | None = None

    def __iter__(self) -> ResumableLoader:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            with preserve_rng():
                self.loader = self._build(self.start_iter)
                self._it = iter(self.loader)
        return next(self._it)

    def restart(self, iteration: int) -> None:
        if self._it is not None and not self.positionable:
            # Rebuilding a loader that cannot start at ``iteration`` would replay the stream
            # from its beginning; keeping the running one is the lesser evil.
            logger.info("Data loader cannot be positioned (no start_iter): not restarting it")
            return
        self._it = None
        self.loader = None
        self.start_iter = int(iteration)


class _CyborgsStep(SimpleTrainer):
    """One optimisation step: finite-loss check before backward, throughput logging."""

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: ResumableLoader,
        optimizer: torch.optim.Optimizer,
        *,
        ims_per_batch: int,
        stop_on_nonfinite: bool,
        output_dir: str | None = None,
    ) -> None:
        super().__init__(model, data_loader, optimizer)
        self.ims_per_batch = ims_per_batch
        self.stop_on_nonfinite = stop_on_nonfinite
        self.output_dir = output_dir  # named in the non-finite message (last good checkpoint)
        self.num_skipped = 0  # this rank's skipped images since the (re)start

    def run_step(self) -> None:
        assert self.model.training, "[CyborgsTrainer] model was switched to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self._count_skipped(data)
        loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        if not loss_dict:
            raise RuntimeError(
                f"The model returned no loss term at iteration {self.iter}; check "
                "CYBORGS.CONTRASTIVE_WEIGHT and CYBORGS.VMF.LAMBDA (both zero?)"
            )
        if self.stop_on_nonfinite:
            self._check_finite(loss_dict)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        if len(loss_dict) == 1 and comm.is_main_process():
            # detectron2 logs the named terms only when there are several; during the vMF
            # warm-up there is one, and its curve should still be under its own name.
            storage = get_event_storage()
            storage.put_scalar(next(iter(loss_dict)), storage.history("total_loss").latest())
        self.optimizer.step()
        step_time = time.perf_counter() - start
        if comm.is_main_process():
            storage = get_event_storage()
            storage.put_scalar("images_per_sec", self.ims_per_batch / max(step_time, 1e-9))
            if self.num_skipped:
                storage.put_scalar(
                    "data/num_skipped_images", self.num_skipped, smoothing_hint=False
                )

    def _check_finite(self, loss_dict: dict[str, torch.Tensor]) -> None:
        # One host sync per step: a single reduction over every term (and the ranks).
        finite = finite_flag(loss_dict)
        if comm.get_world_size() > 1:
            # All ranks must stop together: a rank that raised alone would leave the others
            # waiting in the next collective until the process-group timeout.
            device = next(iter(loss_dict.values())).device
            mine = (~finite).to(device=device, dtype=torch.float32).reshape(1)
            total = mine.clone()
            dist.all_reduce(total)
            total_bad, mine_bad = torch.cat([total, mine]).tolist()
            finite = not mine_bad
            if total_bad > 0 and finite:
                raise NonFiniteLossError(
                    f"Non-finite loss on another rank at iteration {self.iter} (see its log)",
                    self.iter,
                    self.output_dir,
                )
        check_finite_losses(loss_dict, self.iter, self.output_dir, flag=finite)

    def _count_skipped(self, data: Any) -> None:
        # The pretraining loader puts the files it had to skip (unreadable images) since the
        # previous item into each item's "skipped_files"; count them (this rank only).
        if not isinstance(data, list):
            return
        for d in data:
            files = d.get("skipped_files") if isinstance(d, dict) else None
            if files:
                self.num_skipped += len(files)
                logger.warning(f"Skipped {len(files)} unreadable image(s): {files[:5]}")


def _create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """detectron2's ``create_ddp_model``, except that CPU modules get no ``device_ids`` (DDP
    rejects them; detectron2 v0.6 assumes one GPU per process)."""
    if comm.get_world_size() == 1 or next(model.parameters()).device.type == "cuda":
        return create_ddp_model(model, **kwargs)
    return DistributedDataParallel(model, **kwargs)


class CyborgsTrainer(TrainerBase):
    """Pretrainer for the ``CYBORGS`` meta-architecture (see module docstring).

    detectron2's ``TrainerBase`` (hooks, the iteration counters) with its own builders, hooks,
    loop, resume and state; the optimisation step is a ``SimpleTrainer`` (``_CyborgsStep``), as
    in detectron2's ``DefaultTrainer``, whose assumptions do not fit here (see ``__init__``).

    Attributes for hooks: ``model``, ``optimizer``, ``scheduler``, ``checkpointer``, ``cfg``,
    ``iters_per_epoch``; ``loss_schedule`` (the :class:`~cyborgs.engine.hooks.LossScheduleHook`:
    ``current`` phase, ``epoch_started``, ``warmup_just_ended``); ``restart_data_loader(
    iteration)`` (used by the BootstrapHook after a round, so prefetched batches with old masks
    are dropped); ``data_seed``.
    """

    def __init__(self, cfg: CfgNode, args: Any = None) -> None:
        """``cfg``: a final config (:mod:`cyborgs.engine.setup`); ``args``: recorded in the
        checkpoints beside the config.

        The sequence is ``DefaultTrainer``'s, through overridable builders, with the pieces
        DefaultTrainer hard-codes chosen here: the model is wrapped by :meth:`build_ddp_model`
        (DefaultTrainer's ``create_ddp_model(model, broadcast_buffers=False)`` hands CPU
        processes ``device_ids``, which DDP rejects, and no ``find_unused_parameters``, which
        the vMF warm-up needs: the contrastive heads get no gradient), the loader is built
        lazily at the resumed iteration (:class:`ResumableLoader`), the checkpointer is
        :class:`SafeCheckpointer`. Left out on purpose: ``auto_scale_workers``
        (``SOLVER.REFERENCE_WORLD_SIZE`` must be 0: IMS_PER_BATCH is the global batch the
        epochs are counted in) and the AMP trainer (bf16 is ``CYBORGS.GPU.BF16``); both are
        rejected by the config's validation.
        """
        super().__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        self.iters_per_epoch = self._check_final(cfg)
        # One data seed for the whole run (sampler order, per-sample augmentation). Drawn once
        # and saved in the checkpoint when SEED < 0, so a resumed run sees the same stream.
        self.data_seed = int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())
        self.cfg = cfg
        logger.info(
            f"{cfg.CYBORGS.DATA.NUM_IMAGES} images / batch {cfg.SOLVER.IMS_PER_BATCH} = "
            f"{self.iters_per_epoch} iterations/epoch, {cfg.SOLVER.EPOCHS} epochs = "
            f"{cfg.SOLVER.MAX_ITER} iterations"
        )

        model = self.build_model(cfg)
        if comm.is_main_process():
            self._write_plan(cfg, model)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_resumable_loader()
        model = self.build_ddp_model(model)
        self._trainer = _CyborgsStep(
            model,
            data_loader,
            optimizer,
            ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
            stop_on_nonfinite=cfg.SOLVER.STOP_ON_NONFINITE,
            output_dir=cfg.OUTPUT_DIR,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.checkpointer.add_checkpointable("run_info", RunInfo(cfg.dump(), str(args or "")))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.loss_schedule = LossScheduleHook(cfg, self.iters_per_epoch)
        self.register_hooks(self.build_hooks())

    # the step's objects, for hooks (detectron2's hooks read trainer.model / .optimizer)
    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    @property
    def data_loader(self) -> ResumableLoader:
        return self._trainer.data_loader

    @staticmethod
    def _check_final(cfg: CfgNode) -> int:
        """Iterations per epoch of ``cfg``, after a cheap check that it is a final config: the
        trainer is also constructed directly (tests, library users), and a config that skipped
        :mod:`cyborgs.engine.setup` would otherwise run a wrong number of iterations."""
        ipe = iters_per_epoch_of(cfg)
        expected = int(round(cfg.SOLVER.EPOCHS * ipe))
        if cfg.SOLVER.MAX_ITER != expected:
            raise ConfigError(
                f"SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER}, but SOLVER.EPOCHS = "
                f"{cfg.SOLVER.EPOCHS} x {ipe} iterations/epoch = {expected}: build the config "
                "with cyborgs.engine.setup.setup_pretrain_cfg / finalize_pretrain_cfg"
            )
        return ipe

    @staticmethod
    def _write_plan(cfg: CfgNode, model: torch.nn.Module) -> None:
        """Log the run's plan (phases, rounds, checkpoints, disk) and save OUTPUT_DIR/plan.json."""
        from .plan import build_plan, format_plan, model_counts, write_plan

        plan = build_plan(cfg, int(cfg.CYBORGS.DATA.NUM_IMAGES), model_counts(model))
        where = write_plan(plan, cfg.OUTPUT_DIR) if cfg.OUTPUT_DIR else "not saved: no OUTPUT_DIR"
        logger.info(f"Plan ({where}):\n{format_plan(plan)}")

    # ---- builders (classmethods so subclasses/tests can swap one piece) ----
    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"Model {type(model).__name__}: {n / 1e6:.2f}M trainable parameters")
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_lars_optimizer(cfg, model)

    def build_lr_scheduler(self, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
        return build_epoch_lr_scheduler(cfg, optimizer, self.iters_per_epoch)

    def build_ddp_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP over the processes (the model itself with one). Phases change which parameters
        receive gradients (no contrastive heads during the vMF warm-up), so DDP must tolerate
        unused parameters; buffers are not broadcast (DefaultTrainer's choice)."""
        return _create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=True)

    def build_resumable_loader(self) -> ResumableLoader:
        """The training stream, built on its first batch at the (resumed) start iteration by
        :meth:`build_train_loader` (see :class:`ResumableLoader`)."""
        self._loader = ResumableLoader(self._build_loader_at, self.loader_is_positionable())
        return self._loader

    @classmethod
    def loader_is_positionable(cls) -> bool:
        """Whether :meth:`build_train_loader` honours ``start_iter`` (exact resume)."""
        if cls.build_train_loader.__func__ is not CyborgsTrainer.build_train_loader.__func__:
            return True  # a subclass's own loader: trusted to honour start_iter
        from cyborgs.pretrain_data.pretrain_loader import build_pretrain_train_loader

        return "start_iter" in inspect.signature(build_pretrain_train_loader).parameters

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, start_iter: int = 0) -> Any:
        """``build_pretrain_train_loader(cfg, start_iter=...)``: the stream must begin at
        global sample ``start_iter * IMS_PER_BATCH`` for an exact resume."""
        from cyborgs.pretrain_data.pretrain_loader import build_pretrain_train_loader

        if "start_iter" in inspect.signature(build_pretrain_train_loader).parameters:
            return build_pretrain_train_loader(cfg, start_iter=start_iter)
        if start_iter > 0:
            logger.warning(
                "build_pretrain_train_loader has no start_iter: the data stream restarts from "
                "its beginning after resume (the run continues, but not bit-exactly)."
            )
        return build_pretrain_train_loader(cfg)

    def _build_loader_at(self, start_iter: int) -> Any:
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.SEED = self.data_seed
        cfg.freeze()
        logger.info(f"Building the training data loader at iteration {start_iter}")
        return self.build_train_loader(cfg, start_iter=start_iter)

    def restart_data_loader(self, iteration: int | None = None) -> None:
        """Rebuild the loader at ``iteration`` (default: the step about to run)."""
        self._loader.restart(self.iter if iteration is None else iteration)

    def build_bootstrap_hook(self) -> HookBase | None:
        """The bootstrap-round hook, when ``CYBORGS.MASKS.SOURCE`` is "bootstrap".

        ``cyborgs.bootstrap.BootstrapHook(cfg, iters_per_epoch=...)`` runs rounds in
        ``after_step`` at epoch boundaries (and a missed one in ``before_train``), then calls
        :meth:`restart_data_loader`. It sits after the checkpointer, which saves the step
        before each round (``round_follows``); the hook saves that step again once the round
        is done, so the checkpoint records it.
        """
        if self.cfg.CYBORGS.MASKS.SOURCE != "bootstrap":
            return None
        from cyborgs.bootstrap import BootstrapHook

        return BootstrapHook(self.cfg, iters_per_epoch=self.iters_per_epoch)

    def build_hooks(self) -> list[HookBase | None]:
        """The hooks, in the order detectron2 runs them (docs/DESIGN.md "Training loop")."""
        cfg = self.cfg
        bootstrap = self.build_bootstrap_hook()
        # The step before a round is checkpointed whatever the period (see BootstrapHook).
        before_round = getattr(bootstrap, "round_follows", None)
        main = comm.is_main_process()
        keep = cfg.SOLVER.CHECKPOINTS_TO_KEEP
        return [
            hooks.IterationTimer(),
            self.loss_schedule,
            EMAHook(cfg.CYBORGS.EMA.BASE_MOMENTUM, cfg.CYBORGS.EMA.SCHEDULE),
            hooks.LRScheduler(),
            # every rank: gathers the RNG states the checkpointer saves next (a collective)
            RNGStateHook(cfg.SOLVER.CHECKPOINT_PERIOD, also_at=before_round),
            PreemptionHook(),  # every rank: stop on a signal, checkpointed (a collective)
            PeriodicCheckpointer(
                self.checkpointer,
                cfg.SOLVER.CHECKPOINT_PERIOD,
                max_to_keep=keep or None,
                also_at=before_round,
            )
            if main
            else None,
            # after the checkpointer: the epoch before a round is on disk if the round fails
            bootstrap,
            # the console ETA adds the rounds still to come
            TimedPeriodicWriter(
                self.build_writers(getattr(bootstrap, "pending_rounds", None)),
                period=min(20, self.iters_per_epoch),
            )
            if main
            else None,
        ]

    def build_writers(self, pending_rounds: PendingRounds | None = None) -> list[EventWriter]:
        """The console line (:class:`RoundAwareMetricPrinter`: ETA with the bootstrap rounds
        ``pending_rounds`` reports), ``OUTPUT_DIR/metrics.json`` and TensorBoard events."""
        out = self.cfg.OUTPUT_DIR
        os.makedirs(out, exist_ok=True)
        return [
            RoundAwareMetricPrinter(self.max_iter, pending_rounds),
            JSONWriter(os.path.join(out, "metrics.json")),
            TensorboardXWriter(out),
        ]

    # ---- resume ----
    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``OUTPUT_DIR``'s last checkpoint (``resume`` and one exists: model,
        optimizer, scheduler, hooks, data seed; training goes on at the next iteration), else
        load ``MODEL.WEIGHTS`` if set and start at 0. Positions the loader either way."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint holds the iteration that had just finished
            self.start_iter = self.iter + 1
        self._loader.restart(self.start_iter)

    def state_dict(self) -> dict[str, Any]:
        """``iteration``, ``hooks`` (TrainerBase), ``_trainer`` (the step: optimizer) and
        ``data_seed``: the checkpoint's ``trainer`` entry, all plain values."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["data_seed"] = self.data_seed
        return ret

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        if "data_seed" in state_dict:
            self.data_seed = int(state_dict["data_seed"])

    # ---- the loop ----
    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def train(self) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks around each (as
        ``TrainerBase.train``). After a normal end ``iter == max_iter``; after an exception
        it is the failed iteration, and ``after_train`` runs either way."""
        # Fail at iteration 0, not at the first checkpoint an epoch later, if some hook's state
        # is not plain.
        check_plain(self.state_dict(), where="trainer state")
        logger.info(f"Starting training from iteration {self.start_iter}")
        self.iter = self.start_iter
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for it in range(self.start_iter, self.max_iter):
                    self.iter = it
                    self.before_step()
                    self.run_step()
                    self.after_step()
                self.iter = self.max_iter  # hooks' after_train: the run finished
            except Preempted as e:
                # a requested stop (a signal), checkpointed: no error, no traceback
                logger.info(f"Training stopped at iteration {self.iter}: {e}")
                raise
            except DiskFullError as e:
                # one line (the file, the space needed and free): a traceback only hides it
                logger.error(f"Exception during training: {e}")
                raise
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return unwrap_model(self.model)
