"""Training hooks of the CYBORGS pretrainer.

Order in :meth:`CyborgsTrainer.build_hooks` (detectron2 runs hooks in registration order)::

    IterationTimer
    LossScheduleHook   before_step: sets model.<term>_weight (every loss term) / vmf_num_clusters
    EMAHook            after_step:  model.update_target(momentum(iter))
    LRScheduler        after_step
    RNGStateHook       after_step: gathers every rank's RNG states on checkpoint iterations;
                       before_train: restores them
    PeriodicCheckpointer (main process; after EMA so the saved target is the updated one; also
                       after the last step of an epoch a bootstrap round follows)
    BootstrapHook      after_step of an epoch's last step: a bootstrap round (cyborgs.bootstrap),
                       after the checkpointer so the epoch is on disk if the round fails; then
                       the same checkpoint again, now recording the round (rounds leave the
                       global RNG states as they found them)
    TimedPeriodicWriter  (main process; the console line, metrics.json, TensorBoard)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cyborgs.modeling.loss_terms import loss_terms
from cyborgs.solver.schedule import ema_momentum
from cyborgs.utils.rng import capture_rng_state, restore_rng_state

__all__ = [
    "EMAHook",
    "LossPhase",
    "LossScheduleHook",
    "RNGStateHook",
    "capture_rng_state",
    "restore_rng_state",
    "unwrap_model",
]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP (attributes like ``vmf_weight`` live there)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class EMAHook(HookBase):
    """Update the target encoder after every optimizer step (METHOD.md §5, BYOL).

    Momentum at iteration k of K = ``SOLVER.MAX_ITER``: ``CYBORGS.EMA.SCHEDULE`` "cosine"
    ``1 - (1 - base)(cos(pi k / K) + 1) / 2`` or "constant" ``base``. Stateless: the momentum
    is a function of the iteration and the target weights are in the model's state_dict, so a
    resumed run continues exactly.
    """

    def __init__(self, base_momentum: float, schedule: str = "cosine") -> None:
        self.base = float(base_momentum)
        self.schedule = str(schedule)
        ema_momentum(self.base, 0, 1, self.schedule)  # validate keys at build time

    def before_train(self) -> None:
        if not hasattr(unwrap_model(self.trainer.model), "update_target"):
            raise AttributeError(
                f"{type(unwrap_model(self.trainer.model)).__name__} has no update_target("
                "momentum): the CYBORGS meta-architecture must provide it for the EMA target"
            )

    def momentum(self, iteration: int) -> float:
        return ema_momentum(self.base, iteration, self.trainer.max_iter, self.schedule)

    def after_step(self) -> None:
        m = self.momentum(self.trainer.iter)
        unwrap_model(self.trainer.model).update_target(m)
        self.trainer.storage.put_scalar("ema_momentum", m, smoothing_hint=False)


@dataclass(frozen=True)
class LossPhase:
    """Loss weights of one epoch."""

    epoch: int
    name: str  # "vmf_warmup" | "contrastive"
    weights: dict[str, float]  # loss term name (``cyborgs.modeling.loss_terms``) -> weight
    # K of the vMF k-means is drawn uniformly from {vmf_k_min..vmf_k_max} for each step
    # (equal bounds: a fixed K); see LossScheduleHook.vmf_k_at_iter.
    vmf_k_min: int
    vmf_k_max: int

    @property
    def contrastive_weight(self) -> float:
        return self.weights.get("contrastive", 0.0)

    @property
    def vmf_weight(self) -> float:
        return self.weights.get("vmf", 0.0)


class LossScheduleHook(HookBase):
    """Set the model's loss weights for the current epoch, before each step (METHOD.md §4).

    * epochs ``e < CYBORGS.WARMUP_EPOCHS``: vMF only (contrastive 0, vMF 1, K = VMF.WARMUP_K);
    * afterwards: contrastive ``CYBORGS.CONTRASTIVE_WEIGHT``; vMF ``VMF.LAMBDA`` in epochs with
      ``e % VMF.PERIOD_EPOCHS == 0``, else 0 (LAMBDA 0: never); every loss term's weight comes
      from its declaration (``cyborgs.modeling.loss_terms``); K drawn per step
      from {BOOTSTRAP.K_MIN..K_MAX} (``VMF.K_SAMPLING "uniform"``, METHOD.md §4) or ``VMF.K``
      (``"fixed"``). The draw is seeded by the step alone (:meth:`vmf_k_at_iter`), so every
      rank and a resumed run use the same K at the same step.

    The epoch is ``iter // iters_per_epoch``. For the bootstrap hook (registered right after
    this one, so it sees the phase of the step about to run):

    * ``current`` -- the :class:`LossPhase` of the step about to run;
    * ``epoch_started`` -- True when this step is the first of an epoch;
    * ``warmup_just_ended`` -- True on the first step of epoch ``WARMUP_EPOCHS`` (iteration 0
      when there is no warm-up): the moment for the first bootstrap round. After a resume it is
      True again only if the run resumes exactly at that step.

    The hook keeps no state beyond the iteration, so resume is exact.
    """

    def __init__(self, cfg: CfgNode, iters_per_epoch: int) -> None:
        if iters_per_epoch <= 0:
            raise ValueError(f"iters_per_epoch must be > 0, got {iters_per_epoch}")
        v = cfg.CYBORGS.VMF
        # Cheap checks of what this hook divides by: it is also built directly, from configs
        # that never went through cyborgs.engine.setup.
        if cfg.CYBORGS.WARMUP_EPOCHS < 0 or v.PERIOD_EPOCHS < 1:
            raise ValueError(
                "CYBORGS.WARMUP_EPOCHS must be >= 0 and CYBORGS.VMF.PERIOD_EPOCHS >= 1 (no vMF "
                f"term after the warm-up: CYBORGS.VMF.LAMBDA 0), got {cfg.CYBORGS.WARMUP_EPOCHS} "
                f"and {v.PERIOD_EPOCHS}"
            )
        self.ipe = int(iters_per_epoch)
        self.warmup_epochs = int(cfg.CYBORGS.WARMUP_EPOCHS)
        self.warmup_k = int(v.WARMUP_K)
        if v.K_SAMPLING == "uniform":
            self.k_range = (int(cfg.CYBORGS.BOOTSTRAP.K_MIN), int(cfg.CYBORGS.BOOTSTRAP.K_MAX))
        elif v.K_SAMPLING == "fixed":
            self.k_range = (int(v.K), int(v.K))
        else:
            raise ValueError(
                f'CYBORGS.VMF.K_SAMPLING must be "uniform" or "fixed", got {v.K_SAMPLING!r}'
            )
        if not 1 <= self.k_range[0] <= self.k_range[1]:
            raise ValueError(
                f"vMF K range {self.k_range} (CYBORGS.VMF.K_SAMPLING {v.K_SAMPLING!r}: "
                "BOOTSTRAP.K_MIN..K_MAX or VMF.K) must satisfy 1 <= min <= max"
            )
        self.period = int(v.PERIOD_EPOCHS)
        self.terms = loss_terms()
        self.weights = {t.name: t.configured_weight(cfg) for t in self.terms}
        self.current: LossPhase | None = None
        self.epoch_started = False
        self.warmup_just_ended = False

    def phase_at_epoch(self, epoch: int) -> LossPhase:
        if epoch < self.warmup_epochs:
            w = {t.name: float(t.warmup_weight) for t in self.terms}
            return LossPhase(epoch, "vmf_warmup", w, self.warmup_k, self.warmup_k)
        periodic_on = epoch % self.period == 0
        w = {t.name: self.weights[t.name] if periodic_on or not t.periodic else 0.0
             for t in self.terms}  # fmt: skip
        return LossPhase(epoch, "contrastive", w, *self.k_range)

    def phase_at_iter(self, iteration: int) -> LossPhase:
        return self.phase_at_epoch(iteration // self.ipe)

    def vmf_k_at_iter(self, iteration: int) -> int:
        """K of the vMF k-means at ``iteration``: uniform on the phase's inclusive range, from a
        generator seeded by the iteration alone (no global RNG is touched or consumed)."""
        p = self.phase_at_iter(iteration)
        if p.vmf_k_min == p.vmf_k_max:
            return p.vmf_k_min
        g = torch.Generator().manual_seed(int(iteration))
        return int(torch.randint(p.vmf_k_min, p.vmf_k_max + 1, (1,), generator=g))

    def before_step(self) -> None:
        it = self.trainer.iter
        self.current = p = self.phase_at_iter(it)
        self.epoch_started = it % self.ipe == 0
        self.warmup_just_ended = it == self.warmup_epochs * self.ipe
        model = unwrap_model(self.trainer.model)
        for t in self.terms:
            setattr(model, t.weight_attr(), p.weights[t.name])
        model.vmf_num_clusters = self.vmf_k_at_iter(it)
        # The vMF k-means init is seeded by the step, so a resumed run matches a straight one.
        model.vmf_step = int(it)
        if self.epoch_started or it == self.trainer.start_iter:
            weights = ", ".join(f"{t.weight_attr()}={p.weights[t.name]}" for t in self.terms)
            logger.info(
                f"Epoch {p.epoch} ({p.name}): {weights}, vMF K in [{p.vmf_k_min}, {p.vmf_k_max}]"
            )
        s = self.trainer.storage
        s.put_scalar("epoch", p.epoch, smoothing_hint=False)
        for t in self.terms:
            s.put_scalar(t.weight_attr(), p.weights[t.name], smoothing_hint=False)
        # The K in use this step (drawn per step after the warm-up).
        s.put_scalar("vmf_num_clusters", model.vmf_num_clusters, smoothing_hint=False)


class RNGStateHook(HookBase):
    """Save every rank's RNG states with each checkpoint and restore them on resume.

    Model-side randomness (mask-id sampling, k-means init) draws from the global RNGs, so an
    exact resume needs them, on every rank: each rank samples its own mask ids. Checkpoints are
    written by the main process alone, so on a checkpoint iteration (``(iter + 1) % period == 0``
    or the last one, as detectron2's ``PeriodicCheckpointer``) every rank captures its states
    in ``after_step`` and rank 0 gathers them; the hook is registered right before the
    checkpointer so nothing draws in between. ``state_dict`` is ``{"ranks": [state of rank 0,
    state of rank 1, ...]}``.

    On resume each rank restores its own entry in ``before_train`` (this hook comes after every
    hook whose ``before_train`` may draw; the bootstrap hook after it restores the states
    around its rounds). A checkpoint from another world size, or one written
    outside a checkpoint iteration, restores rank 0 exactly and re-seeds the other ranks from
    (iteration, rank), with a warning.
    """

    def __init__(
        self, checkpoint_period: int = 0, also_at: Callable[[int], bool] | None = None
    ) -> None:
        """``also_at``: the checkpointer's extra checkpoint iterations (before bootstrap
        rounds), which need every rank's states as well."""
        self.period = int(checkpoint_period)
        self.also_at = also_at
        self._pending: list[dict[str, Any]] | None = None
        self._gathered: tuple[int, list[dict[str, Any]]] | None = None  # (iter, states)

    def _is_checkpoint_iter(self, it: int) -> bool:
        last = it >= self.trainer.max_iter - 1
        extra = self.also_at is not None and self.also_at(it)
        return last or extra or (self.period > 0 and (it + 1) % self.period == 0)

    def after_step(self) -> None:
        if comm.get_world_size() > 1 and self._is_checkpoint_iter(int(self.trainer.iter)):
            self.gather()

    def gather(self) -> None:
        """Gather every rank's states for a checkpoint of the current iteration (a collective:
        every rank calls it at the same iteration; the preemption hook's off-period save)."""
        if comm.get_world_size() > 1:
            self._gathered = (int(self.trainer.iter), comm.all_gather(capture_rng_state()))

    def state_dict(self) -> dict[str, Any]:
        if self._gathered is not None and self._gathered[0] == int(self.trainer.iter):
            return {"ranks": self._gathered[1]}
        return {"ranks": [capture_rng_state()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # checkpoints written before per-rank states held rank 0's state dict itself
        self._pending = list(state["ranks"]) if "ranks" in state else [state]

    def before_train(self) -> None:
        if self._pending is None:
            return
        rank, world = comm.get_rank(), comm.get_world_size()
        if len(self._pending) == world or rank == 0:
            restore_rng_state(self._pending[rank])
        else:
            from detectron2.utils.env import seed_all_rng

            if rank == 1:
                logging.getLogger(__name__).warning(
                    "RNG states of %d rank(s) in the checkpoint, world size %d: ranks > 0 are "
                    "re-seeded, so this resume is not bit-exact",
                    len(self._pending),
                    world,
                )
            seed_all_rng((int(self.trainer.iter) * 1_000_003 + rank) % 2**31)
        self._pending = None
