"""``BootstrapHook``: runs bootstrapping rounds on the paper's schedule (§3.3, METHOD.md §3).

Schedule (in epochs e = iterations done / iters_per_epoch, checked at epoch boundaries): one
round right after the vMF warm-up (e == WARMUP_EPOCHS), then at every e > WARMUP_EPOCHS with
e % PERIOD_EPOCHS == 0 ("epoch N, 2N, ...", Table 2a); PERIOD_EPOCHS = 0: only the post-warm-up
round. No round at the very last iteration (nothing would train on it). The round id is its
epoch (``round_0100``).

Distributed protocol: rank 0 begins the round (wipes any partial directory of that id),
barrier, every rank checks it sees the directory, bootstraps its shard, barrier, rank 0 writes
the manifest and moves the ``current`` pointer, barrier, every rank checks it sees the round as
current. The store must therefore be on a file system shared by all ranks. Rank 0's steps share
their outcome (``all_gather``) and the checks their verdicts, so a failure stops every rank with
:class:`BootstrapRoundError` naming it instead of leaving the others in a barrier until the
process-group timeout. The "bootstrap" mask source re-reads the pointer whenever it changes, so
every rank and data-loader worker switches without restarting.

Resume: ``state_dict`` records the completed rounds. ``before_train`` (i) points ``current`` at
the latest completed round of the checkpoint (or at none), so masks match the checkpoint even
if a later round finished after it was saved (a garbage ``current.json`` is rewritten; the
round is verified against its manifest and redone with the checkpoint's weights if files are
missing or damaged), and (ii) runs the latest due round the checkpoint has not completed (a crash during a round restarts it; with WARMUP_EPOCHS = 0 this is the
initial round at iteration 0).

Metrics (EventStorage): bootstrap/round, time_s, images_per_s, bytes_per_image, k_mean, and
mask_miou (Hungarian, per image; ``quality.py``) when the data set has a labeled twin; for
TensorBoard, a grid of a few fixed images with the round's masks and the histogram of K per
group (``visuals.py``). ``pending_rounds`` feeds the rounds still to come into the training ETA.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.engine import HookBase
from detectron2.utils import comm

from cyborgs.masks.store import CorruptPointerError, MaskStore, check_unique_image_ids
from cyborgs.solver.schedule import due_epochs, round_epochs
from cyborgs.utils import preemption
from cyborgs.utils.nonfinite import NonFiniteLossError
from cyborgs.utils.rng import capture_rng_state, restore_rng_state

from .quality import QualityFn, ground_truth_quality
from .round import RoundSettings, bootstrap_shard, round_manifest

__all__ = [
    "BootstrapHook",
    "BootstrapRoundError",
    "due_epochs",
    "round_epochs",
    "sync_buffers_from_main",
]

logger = logging.getLogger(__name__)

# How long a rank keeps looking for a round it cannot see before it fails the run (only the
# failure path waits).
VISIBILITY_WAIT_S = 30.0


class BootstrapRoundError(RuntimeError):
    """A bootstrapping round failed; raised on every rank, naming the cause."""


def _visibility_problem(store: MaskStore, round_id: int | None, begun: bool = False) -> str | None:
    """Why this process does not see ``round_id`` as the store's complete current round (or,
    ``begun``, the directory rank 0 began for it)."""
    if begun:
        d = store.round_dir(round_id)
        return None if os.path.isdir(d) else f"{d} does not exist"
    try:
        current = store.current_round()
        if current != round_id:
            return f"{store.pointer_path} names round {current}, not {round_id}"
        if round_id is not None:
            store.manifest(round_id)
    except (CorruptPointerError, OSError, ValueError) as e:  # missing/unreadable manifest
        return f"{type(e).__name__}: {e}"
    return None


def sync_buffers_from_main(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN running statistics) of ``model``, in place.

    A round runs the online backbone in eval mode, so its masks depend on the running
    statistics. The method has one model and so one set of statistics; with SyncBN (GPU) every
    rank holds the same ones, but plain BN (SyncBN on the CPU) lets each rank's drift with its
    own batches, and a checkpoint holds rank 0's only: without this, a resumed rank > 0 would
    cluster with rank 0's statistics where the uninterrupted run used its own. Broadcasting
    rank 0's before every round makes uninterrupted and resumed runs agree on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    net = model.module if hasattr(model, "module") else model
    if not isinstance(net, torch.nn.Module):  # a stand-in model (tests): nothing to share
        return
    with torch.no_grad():
        for buf in net.buffers():
            if buf.is_contiguous():
                dist.broadcast(buf, src=0)
            else:  # a collective needs contiguous memory
                tmp = buf.contiguous()
                dist.broadcast(tmp, src=0)
                buf.copy_(tmp)


# round_fn(model, settings, dataset_dicts, store, round_id, *, iteration, world_size, rank)
#   -> this rank's stats with "k_values", "time_s", "images" (``bootstrap_shard``'s contract)
RoundFn = Callable[..., dict]


class BootstrapHook(HookBase):
    """``BootstrapHook(cfg, iters_per_epoch=...)`` (what ``CyborgsTrainer`` builds; detectron2's
    ``@configurable``: keyword arguments given beside ``cfg`` override what :meth:`from_config`
    reads) or, explicitly, with keyword arguments (tests, custom loops): ``settings``
    (:class:`RoundSettings`), ``datasets`` ((name, dataset dicts, store) each) and the schedule;
    ``round_fn`` defaults to :func:`bootstrap_shard`, ``iters_per_epoch`` to the trainer's."""

    @configurable
    def __init__(
        self,
        *,
        settings: RoundSettings,
        datasets: Sequence[tuple[str, Sequence[dict], MaskStore]],
        warmup_epochs: int,
        period_epochs: int,
        round_fn: RoundFn | None = None,
        iters_per_epoch: int | None = None,
        quality_fns: dict[str, QualityFn] | None = None,
    ):
        if warmup_epochs < 0 or period_epochs < 0:
            raise ValueError(
                "CYBORGS.WARMUP_EPOCHS and CYBORGS.BOOTSTRAP.PERIOD_EPOCHS must be >= 0"
            )
        self.settings = settings
        self.round_fn = round_fn or bootstrap_shard
        self.datasets = list(datasets)
        for _, dicts, _ in self.datasets:  # once per run, not per round (the store's keys)
            check_unique_image_ids(dicts)
        self._ipe = iters_per_epoch
        self.warmup_epochs = int(warmup_epochs)
        self.period_epochs = int(period_epochs)
        self.quality_fns = quality_fns or {}
        self.completed: list[int] = []
        self.round_seconds: list[float] = []  # wall time of each round run by this process
        self._visual_dicts: dict[str, list[dict]] = {}

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """Round settings, one store per ``cfg.DATASETS.TRAIN`` entry (``store_root``), the
        schedule, and the mask-quality function of each data set with a labeled twin."""
        from detectron2.data import DatasetCatalog

        from cyborgs.masks.store import store_root

        datasets, quality = [], {}
        for name in cfg.DATASETS.TRAIN:
            dicts = DatasetCatalog.get(name)
            datasets.append((name, dicts, MaskStore(store_root(cfg, "bootstrap", name))))
            q = ground_truth_quality(name, dicts)
            if q is not None:
                quality[name] = q
        return {
            "settings": RoundSettings.from_cfg(cfg),
            "datasets": datasets,
            "warmup_epochs": cfg.CYBORGS.WARMUP_EPOCHS,
            "period_epochs": cfg.CYBORGS.BOOTSTRAP.PERIOD_EPOCHS,
            "quality_fns": quality,
        }

    @property
    def iters_per_epoch(self) -> int:
        ipe = self._ipe if self._ipe is not None else getattr(self.trainer, "iters_per_epoch", None)
        if ipe is None or int(ipe) < 1:
            raise ValueError(f"BootstrapHook needs iters_per_epoch >= 1, got {ipe}")
        return int(ipe)

    # ---- schedule ----
    def scheduled_epochs(self) -> list[int]:
        return round_epochs(
            self.warmup_epochs, self.period_epochs, int(self.trainer.max_iter), self.iters_per_epoch
        )

    def _is_due(self, epoch: int) -> bool:
        return epoch in self.scheduled_epochs()

    def pending_rounds(self, iteration: int) -> tuple[int, float | None]:
        """(rounds still to run after step ``iteration``, mean seconds of the rounds this
        process ran, None before the first): the training ETA adds them."""
        ipe = self.iters_per_epoch
        left = [
            e for e in self.scheduled_epochs() if e not in self.completed and e * ipe > iteration
        ]
        mean = float(np.mean(self.round_seconds)) if self.round_seconds else None
        return len(left), mean

    def before_train(self) -> None:
        # (i) Masks of the checkpoint: the latest round it completed (verified against its
        # manifest, redone from the checkpoint's weights if damaged), or none.
        latest = max(self.completed) if self.completed else None
        # Rank 0 checks; its verdict (or its error) reaches every rank, so none waits alone.
        damaged = self._on_main(
            lambda: self._repair_pointers(latest), "bootstrap: checking the mask store on resume"
        )
        if damaged:
            logger.warning(
                f"bootstrap round {latest}, recorded as complete in the checkpoint, is damaged "
                f"({'; '.join(damaged)}): redoing it with the checkpoint's weights (iteration "
                f"{int(self.trainer.iter)}), so its masks differ from the lost ones"
            )
            self._run_round(latest)
            self._restart_loader(int(self.trainer.iter))
        comm.synchronize()
        if latest is not None:  # a resumed rank must see the checkpoint's round as well
            for name, _, store in self.datasets:
                self._check_visible(name, store, latest)
        # (ii) The latest round due at or before the start iteration, if not completed.
        start_epoch = int(self.trainer.iter) // self.iters_per_epoch
        due = self.scheduled_epochs()
        due = [e for e in due if e * self.iters_per_epoch <= int(self.trainer.iter)]
        if due and max(due) not in self.completed and max(due) <= start_epoch:
            self._run_round(max(due))
            self._restart_loader(int(self.trainer.iter))

    def _repair_pointers(self, latest: int | None) -> list[str]:
        """Point every store at ``latest`` (rank 0). A garbage ``current.json`` is rewritten;
        returns the problems of round ``latest`` in stores where it is damaged (left pointing
        at no round, for the caller to redo). A store without the round's directory at all is
        an error: more likely a changed CYBORGS.MASKS.STORE_DIR / OUTPUT_DIR than damage."""
        damaged: list[str] = []
        for name, _, store in self.datasets:
            problem = store.pointer_problem()
            if problem:
                logger.warning(
                    f"{problem}: rewriting it from the checkpoint's record of completed "
                    f"bootstrap rounds (latest: {latest})"
                )
                store.set_current(None)
            current = store.current_round()
            if latest is not None:
                if not os.path.isdir(store.round_dir(latest)):
                    raise FileNotFoundError(
                        f"{store.round_dir(latest)}: bootstrap round {latest} of {name!r} is "
                        "recorded as complete in the checkpoint but missing on disk (was "
                        "CYBORGS.MASKS.STORE_DIR / OUTPUT_DIR changed?)"
                    )
                problems = store.verify_round(latest)
                if problems:
                    damaged += [f"{name}: {p}" for p in problems]
                    if current is not None:
                        store.set_current(None)
                    continue
            # A missing pointer is written too (even at no round): the mask source treats a
            # missing one beside completed rounds as a deleted pointer and stops.
            if current != latest or not os.path.exists(store.pointer_path):
                store.set_current(latest)
        return damaged

    def _restart_loader(self, iteration: int) -> None:
        # The source switches by itself, but batches prefetched by loader workers still carry
        # the old masks; CyborgsTrainer can rebuild its loader so step ``iteration`` on sees
        # only the new round.
        restart = getattr(self.trainer, "restart_data_loader", None)
        if callable(restart):
            restart(iteration)

    def round_follows(self, iteration: int) -> bool:
        """Whether a round runs after step ``iteration`` (the last of an epoch whose round is
        due and not done): the checkpointer saves that step before the round."""
        done = int(iteration) + 1
        if done % self.iters_per_epoch:
            return False
        epoch = done // self.iters_per_epoch
        return self._is_due(epoch) and epoch not in self.completed

    def after_step(self) -> None:
        it = int(self.trainer.iter)
        if not self.round_follows(it):
            return
        # The checkpointer (registered before this hook) has saved this step: a round that
        # fails, for space or anything else, leaves the epoch's training on disk, and the
        # resume from it runs the round again.
        epoch = (it + 1) // self.iters_per_epoch
        self._run_round(epoch)
        self._restart_loader(it + 1)
        self._checkpoint_round(it)

    def _checkpoint_round(self, iteration: int) -> None:
        """Save step ``iteration`` again, now recording the round, so that a resume from it
        does not redo the round (main process; the checkpoint holds the same training state:
        a round leaves weights, optimizer and RNG states as they were)."""
        ckpt = getattr(self.trainer, "checkpointer", None)
        if ckpt is None or not comm.is_main_process() or not getattr(ckpt, "save_dir", None):
            return
        name = f"model_{iteration:07d}"
        if os.path.isfile(os.path.join(ckpt.save_dir, name + ".pth")):
            ckpt.save(name, iteration=iteration)

    # ---- one round ----
    def _run_round(self, epoch: int) -> None:
        # The global RNG streams are training's: the round leaves them as it found them, so
        # that its checkpoints (before and after it) hold the same states.
        state = capture_rng_state()
        try:
            self._run_round_inner(epoch)
        finally:
            restore_rng_state(state)

    def _run_round_inner(self, epoch: int) -> None:
        t_round = time.perf_counter()
        round_id = epoch
        iteration = epoch * self.iters_per_epoch
        rank = comm.get_rank()
        # Every rank clusters with rank 0's BN statistics, the ones a checkpoint keeps.
        sync_buffers_from_main(self.trainer.model)
        metrics: dict[str, list[float]] = {}
        for name, dicts, store in self.datasets:
            # replace: a stale pointer from an aborted run may name this round
            self._on_main(
                lambda store=store: store.begin_round(round_id, replace_current=True),
                f"bootstrap round {round_id} of {name!r}: starting it",
            )
            # Before the costly part: a rank whose disk does not show the new directory could
            # not write its shard (the same check as after the round, caught early).
            self._check_visible(name, store, round_id, begun=True)
            stats = self._call_round_fn(dicts, store, round_id, iteration)
            keys = ("k_values", "time_s", "images", "bytes", "skipped_images", "skipped_files",
                    "cell_grid")  # fmt: skip
            all_stats = comm.all_gather({k: stats[k] for k in keys if k in stats})
            man = self._on_main(
                lambda store=store, all_stats=all_stats: store.finish_round(
                    round_id,
                    round_manifest(all_stats, self.settings, epoch=epoch, iteration=iteration),
                ),
                f"bootstrap round {round_id} of {name!r}: finishing it",
            )
            if rank == 0:
                n = sum(s["images"] for s in all_stats)
                t = max(s["time_s"] for s in all_stats)
                m = {
                    "time_s": t,
                    "images_per_s": n / t if t > 0 else 0.0,
                    "bytes_per_image": man["bytes_per_image"],
                    "k_mean": man["k_mean"],
                }
                miou = self._quality(name, store, round_id)
                if miou is not None:
                    m["mask_miou"] = miou
                for k, v in m.items():
                    metrics.setdefault(k, []).append(float(v))
                logger.info("bootstrap round %d of %s: %s", round_id, name, m)
                self._put_visuals(name, dicts, store, round_id, man)
            comm.synchronize()
            self._check_visible(name, store, round_id)
        self.completed = sorted(set(self.completed) | {round_id})
        self.round_seconds.append(time.perf_counter() - t_round)
        storage = getattr(self.trainer, "storage", None)
        if storage is not None and metrics:
            for k, vals in metrics.items():
                storage.put_scalar(f"bootstrap/{k}", float(np.mean(vals)), smoothing_hint=False)
            # The round id (= epoch) lets plots label rounds correctly across resumes.
            storage.put_scalar("bootstrap/round", float(round_id), smoothing_hint=False)

    def _on_main(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` on rank 0, its result returned on every rank. If it raises, every rank
        raises :class:`BootstrapRoundError` naming the cause: the other ranks would otherwise
        wait in the next barrier until the process-group timeout and fail with an unrelated
        error."""
        outcome: tuple[Any, str | None] = (None, None)
        error: Exception | None = None
        if comm.is_main_process():
            try:
                outcome = (fn(), None)
            except Exception as e:  # noqa: BLE001 - re-raised below on every rank
                error, outcome = e, (None, f"{type(e).__name__}: {e}")
        result, message = comm.all_gather(outcome)[0]  # also the barrier after rank 0's work
        if message is not None:
            where = "" if comm.is_main_process() else " (on rank 0; see its log)"
            raise BootstrapRoundError(f"{what} failed{where}: {message}") from error
        return result

    def _quality(self, name: str, store: MaskStore, round_id: int) -> float | None:
        """The round's mask mIoU against the labeled twin, or None. Rank 0 only: a metric
        failure (e.g. a damaged map) is logged and must not stop training."""
        q = self.quality_fns.get(name)
        if q is None:
            return None
        try:
            res = q(store, round_id)
        except Exception as e:  # noqa: BLE001
            logger.warning(f"bootstrap round {round_id} of {name!r}: no mask_miou ({e})")
            return None
        if res is None or not np.isfinite(res["miou"]):
            return None
        return float(res["miou"])

    def _check_visible(
        self, name: str, store: MaskStore, round_id: int | None, begun: bool = False
    ) -> None:
        """Every rank must see the round rank 0 made current: a rank that cannot (a store on
        a node-local disk, ``current.json`` deleted) would read no round and silently train
        with whole-image masks (``begun``: the directory rank 0 began, checked before the
        round). Each rank checks; the verdicts are shared so that every rank stops together
        instead of the healthy ones hanging in the next collective."""
        problem = _visibility_problem(store, round_id, begun)
        deadline = time.monotonic() + VISIBILITY_WAIT_S
        # A network file system may show another node's fresh write only after its attribute
        # cache expires (seconds): look again before calling it invisible.
        while problem is not None and time.monotonic() < deadline:
            time.sleep(1.0)
            problem = _visibility_problem(store, round_id, begun)
        problems = comm.all_gather(problem)
        bad = [(r, p) for r, p in enumerate(problems) if p is not None]
        if bad:
            detail = "; ".join(f"rank {r}: {p}" for r, p in bad)
            raise BootstrapRoundError(
                f"bootstrap round {round_id} of {name!r} is not visible to rank(s) "
                f"{', '.join(str(r) for r, _ in bad)} ({detail}). The mask store {store.root} "
                "(CYBORGS.MASKS.STORE_DIR, default OUTPUT_DIR/masks) must be on a file system "
                "shared by all ranks, and its current.json left alone; otherwise those ranks "
                "would train with whole-image masks"
            )

    def _put_visuals(self, name: str, dicts, store: MaskStore, round_id: int, man: dict) -> None:
        """The round's mask grid (same images every round) and K histogram for TensorBoard."""
        storage = getattr(self.trainer, "storage", None)
        if storage is None:
            return
        from .visuals import put_round_visuals, visual_dicts

        # Rank 0 only, before a barrier: a failure here must not stop (or hang) training.
        try:
            if name not in self._visual_dicts:
                self._visual_dicts[name] = visual_dicts(dicts)
            put_round_visuals(storage, name, store, round_id, self._visual_dicts[name], man)
        except Exception as e:  # noqa: BLE001
            logger.warning(f"bootstrap round {round_id} of {name!r}: no TensorBoard visuals ({e})")

    def _call_round_fn(self, dicts, store: MaskStore, round_id: int, iteration: int):
        """``round_fn`` on this rank's shard. A failure on any rank stops every rank (the
        others would wait in the next collective until the process-group timeout): a
        non-finite stop as :class:`NonFiniteLossError` naming the last good checkpoint, any
        other error (say, out of memory on one GPU) as itself on its rank and as
        :class:`BootstrapRoundError` naming that rank on the others."""
        world, rank = comm.get_world_size(), comm.get_rank()
        error: Exception | None = None
        try:
            stats = self.round_fn(
                self.trainer.model,
                self.settings,
                dicts,
                store,
                round_id,
                iteration=iteration,
                world_size=world,
                rank=rank,
            )
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, re-raised below
            error, stats = e, None
        if world > 1:
            mine = None
            if error is not None:
                mine = (isinstance(error, NonFiniteLossError), f"{type(error).__name__}: {error}")
            failed = [(r, o) for r, o in enumerate(comm.all_gather(mine)) if o is not None]
            if error is None and failed:
                r, (nonfinite, message) = failed[0]
                if message.startswith("Preempted:"):  # another rank stopped on a signal: stop too
                    raise preemption.Preempted(preemption.requested() or 15)
                if not nonfinite:
                    raise BootstrapRoundError(
                        f"bootstrap round {round_id}: rank {r} failed ({message}; see its log)"
                    )
                error = NonFiniteLossError(
                    f"Non-finite bootstrap features on another rank in round {round_id} at "
                    f"iteration {iteration} (see its log)",
                    iteration,
                )
        if isinstance(error, NonFiniteLossError):
            cfg = getattr(self.trainer, "cfg", None)
            raise error.with_output_dir(getattr(cfg, "OUTPUT_DIR", None)) from None
        if error is not None:
            raise error
        return stats

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        return {"completed": list(self.completed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.completed = sorted(int(e) for e in state_dict.get("completed", []))
