"""Console metric printing for pretraining: an ETA that includes the bootstrap rounds to come,
the loss terms of the current step, and a writer hook that also writes on a timer.

Both are built on detectron2's public extension points only: :class:`RoundAwareMetricPrinter`
is an ``EventWriter`` that formats its line from the event storage's public API
(``storage.iter``, ``storage.latest()``, ``storage.history(name)``), and
:class:`TimedPeriodicWriter` is a ``HookBase`` holding its own writers and period. The console
line is detectron2 v0.6's ``CommonMetricPrinter`` line, under the same logger
(``detectron2.utils.events``), so logs read and filter as in any detectron2 run.

The ETA: detectron2 estimates it as median iteration time x iterations left. A CYBORGS run also
stops for bootstrap rounds (on COCO, minutes each) between epochs; the printer adds
``rounds_left x measured seconds per round`` from a callback (``BootstrapHook.pending_rounds``),
and says "time unknown" before the first round is measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from detectron2.engine import HookBase
from detectron2.utils.events import EventStorage, EventWriter, get_event_storage

from cyborgs.utils.progress import format_eta

if TYPE_CHECKING:
    from fvcore.common.history_buffer import HistoryBuffer

__all__ = ["RoundAwareMetricPrinter", "TimedPeriodicWriter", "rounds_eta_text"]

# pending(iteration) -> (rounds still to run, estimated seconds per round or None)
PendingRounds = Callable[[int], tuple[int, float | None]]


def rounds_eta_text(base_s: float, rounds_left: int, round_s: float | None) -> str:
    """The ETA string: ``h:mm:ss`` of the iterations plus the rounds to come, naming them."""
    if rounds_left <= 0:
        return format_eta(base_s)
    what = f"{rounds_left} bootstrap round{'s' if rounds_left > 1 else ''}"
    if round_s is None:
        return f"{format_eta(base_s)} + {what} (time unknown until the first one)"
    return f"{format_eta(base_s + rounds_left * round_s)} (incl. {what})"


def _stat_or_none(
    storage: EventStorage, name: str, stat: Callable[[HistoryBuffer], float]
) -> float | None:
    try:
        return stat(storage.history(name))
    except KeyError:  # not put yet (first iterations) or never (no IterationTimer)
        return None


class RoundAwareMetricPrinter(EventWriter):
    """The console line: ETA (bootstrap rounds included), iteration, loss terms, time, LR.

    Loss terms are those put at the current step, median-smoothed over ``window_size``: a term
    the model computes only in some phases (``loss_vmf``: the vMF epochs) keeps its last value
    in the storage, and a printer that listed every history would repeat that stale median in
    every later line (``metrics.json`` is right either way: it writes each step's own values).
    Like detectron2's printer it stores ``eta_seconds`` (iterations only) for the other writers.
    """

    def __init__(
        self, max_iter: int, pending_rounds: PendingRounds | None = None, window_size: int = 20
    ) -> None:
        self.logger = logging.getLogger("detectron2.utils.events")
        self.max_iter = int(max_iter)
        self.window_size = int(window_size)
        self.pending_rounds = pending_rounds
        self._last_write: tuple[int, float] | None = None  # (iteration, time): ETA fallback

    def _eta_seconds(self, storage: EventStorage) -> float | None:
        """Seconds for the iterations left: the median iteration time (IterationTimer's
        ``time``), else the time per iteration since the previous line."""
        iteration = storage.iter
        per_iter = _stat_or_none(storage, "time", lambda h: h.median(1000))
        if per_iter is not None:
            eta = per_iter * (self.max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta, smoothing_hint=False)
            return eta
        eta = None
        now = time.perf_counter()
        if self._last_write is not None and iteration > self._last_write[0]:
            per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
            eta = per_iter * (self.max_iter - iteration - 1)
        self._last_write = (iteration, now)
        return eta

    def _eta_text(self, storage: EventStorage) -> str | None:
        base_s = self._eta_seconds(storage)
        if base_s is None:
            return None
        if self.pending_rounds is None:
            return format_eta(base_s)
        return rounds_eta_text(base_s, *self.pending_rounds(int(storage.iter)))

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self.max_iter:
            return  # training finished: the line reports progress, there is none left
        data_time = _stat_or_none(storage, "data_time", lambda h: h.avg(20))
        iter_time = _stat_or_none(storage, "time", lambda h: h.global_avg())
        lr = _stat_or_none(storage, "lr", lambda h: h.latest())
        eta = self._eta_text(storage)
        losses = "  ".join(
            f"{name}: {storage.history(name).median(self.window_size):.4g}"
            for name, (_, it) in storage.latest().items()
            if "loss" in name and it == iteration
        )
        max_mem_mb = (
            torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
            if torch.cuda.is_available()
            else None
        )
        self.logger.info(
            (f" eta: {eta}  " if eta else " ")
            + f"iter: {iteration}  {losses}  "
            + (f"time: {iter_time:.4f}  " if iter_time is not None else "")
            + (f"data_time: {data_time:.4f}  " if data_time is not None else "")
            + ("lr: N/A  " if lr is None else f"lr: {lr:.5g}  ")
            + (f"max_mem: {max_mem_mb:.0f}M" if max_mem_mb is not None else "")
        )


class TimedPeriodicWriter(HookBase):
    """Calls its writers every ``period`` iterations, after the last one, and whenever
    ``max_interval_s`` passed since the last write (slow iterations, 10 s each on a CPU, must
    not leave the console silent for minutes); after training, a last write and ``close``."""

    def __init__(
        self, writers: Sequence[EventWriter], period: int = 20, max_interval_s: float = 60.0
    ) -> None:
        for w in writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"TimedPeriodicWriter needs EventWriters, got {type(w).__name__}")
        self.writers = list(writers)
        self.period = int(period)
        self.max_interval_s = float(max_interval_s)
        self._last = time.perf_counter()

    def write(self) -> None:
        for writer in self.writers:
            writer.write()
        self._last = time.perf_counter()

    def after_step(self) -> None:
        it = self.trainer.iter
        due = (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1
        if due or time.perf_counter() - self._last >= self.max_interval_s:
            self.write()

    def after_train(self) -> None:
        # what another hook's after_train put is written before closing
        for writer in self.writers:
            writer.write()
            writer.close()
