"""Console metric printing for pretraining: an ETA that includes the bootstrap rounds to come,
and a writer hook that also writes on a timer.

detectron2's ``CommonMetricPrinter`` estimates the ETA as median iteration time x iterations
left. A CYBORGS run also stops for bootstrap rounds (on COCO, minutes each) between epochs;
:class:`RoundAwareMetricPrinter` adds ``rounds_left x measured seconds per round`` from a callback
(``BootstrapHook.pending_rounds``), and says "time unknown" before the first round is measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from detectron2.engine import hooks
from detectron2.utils.events import CommonMetricPrinter, EventWriter, get_event_storage

from cyborgs.utils.progress import format_eta

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


class RoundAwareMetricPrinter(CommonMetricPrinter):
    """``CommonMetricPrinter`` whose ETA adds the bootstrap rounds still to come, and whose loss
    terms are those of the current step.

    A term the model computes only in some phases (``loss_vmf``: the vMF epochs) keeps its
    last value in the event storage; detectron2 would print that stale median in every later
    line (``metrics.json`` is right: it writes each iteration's own values)."""

    def __init__(self, max_iter: int, pending_rounds: PendingRounds | None = None, **kwargs):
        super().__init__(max_iter, **kwargs)
        self._pending_rounds = pending_rounds

    def write(self) -> None:
        storage = get_event_storage()
        everything = storage.histories

        def current() -> dict:
            return {
                k: h
                for k, h in everything().items()
                if "loss" not in k or h.values()[-1][1] == storage.iter
            }

        # detectron2 v0.6 builds the loss list inline from storage.histories(): shown the
        # current terms only, for this call, through the public method's name
        storage.histories = current
        try:
            super().write()
        finally:
            del storage.histories

    def _get_eta(self, storage) -> str | None:  # detectron2 v0.6's hook for the ETA string
        base = super()._get_eta(storage)
        if not base or self._pending_rounds is None:
            return base
        try:
            base_s = float(storage.history("eta_seconds").latest())
        except KeyError:  # d2 estimated it without storing it: keep its string
            return base
        n, round_s = self._pending_rounds(int(storage.iter))
        return rounds_eta_text(base_s, n, round_s)


class TimedPeriodicWriter(hooks.PeriodicWriter):
    """``PeriodicWriter`` that also writes when ``max_interval_s`` passed since the last write,
    so slow iterations (10 s each on a CPU) never leave the console silent for minutes."""

    def __init__(
        self, writers: Sequence[EventWriter], period: int = 20, max_interval_s: float = 60.0
    ) -> None:
        super().__init__(list(writers), period=period)
        self.max_interval_s = float(max_interval_s)
        self._last = time.perf_counter()

    def after_step(self) -> None:
        it = self.trainer.iter
        due = (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1
        if due or time.perf_counter() - self._last >= self.max_interval_s:
            for writer in self._writers:
                writer.write()
            self._last = time.perf_counter()
