"""Progress and ETA of a long loop, through the logger (detectron2's conventions).

    progress = Progress(len(items), "precomputing felzenszwalb masks", logger, unit="images")
    for item in items:
        ...
        progress.update()
    progress.close()          # "...: done, 118287 images in 0:19:41 (100.1 images/s)"

A line (``<desc>: 5900/118287 images (5%), 98.7 images/s, elapsed 0:01:00, eta: 0:19:01``)
is logged whenever another ``pct_step`` percent is done (but at most one line per ``min_gap_s``,
so a loop of a few seconds prints a few lines and one under a second only its summary) or
``interval_s`` seconds passed since the previous line -- a long stage never goes quiet for more
than ``interval_s``. The ETA is the remaining count at the mean
rate so far, written like detectron2's ``CommonMetricPrinter`` (``eta: h:mm:ss``).

Where a terminal is attached (``sys.stderr.isatty()``) and tqdm is importable, a tqdm bar on
stderr shows the progress instead of the percentage lines; the time-based lines still go to the
logger (so ``log.txt`` shows progress) at ``TTY_LOG_INTERVAL_S``. ``Progress`` is for one process:
distributed callers name their rank in ``desc``.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "format_eta"]

# On a terminal the bar shows live progress; the log keeps one line a minute.
TTY_LOG_INTERVAL_S = 60.0


def format_eta(seconds: float | None) -> str:
    """``h:mm:ss`` (detectron2's ETA format), or "unknown"."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "unknown"
    return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
    """Counts work done out of ``total`` and logs progress lines (see the module docstring).

    ``clock`` (default ``time.perf_counter``) and ``tty`` (default: ``sys.stderr.isatty()``) are
    injectable for tests. ``total`` may be 0 (nothing to do: only the summary is logged).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        logger: logging.Logger,
        *,
        unit: str = "images",
        interval_s: float = 10.0,
        pct_step: float = 5.0,
        min_gap_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
        tty: bool | None = None,
    ) -> None:
        if total < 0:
            raise ValueError(f"Progress total must be >= 0, got {total}")
        if interval_s <= 0 or pct_step <= 0:
            raise ValueError("Progress interval_s and pct_step must be > 0")
        self.total, self.desc, self.logger, self.unit = int(total), desc, logger, unit
        self.pct_step = float(pct_step)
        self.min_gap_s = float(min_gap_s)
        self._clock = clock
        self.start = self._last_line = clock()
        self.done = 0
        self._next_mark = self._mark_after(0)
        self._bar: Any = None
        if tty is None:
            tty = _stderr_is_tty()
        if tty:
            self._bar = _make_bar(self.total, desc, unit)
        self.interval_s = TTY_LOG_INTERVAL_S if self._bar is not None else float(interval_s)
        self.lines: list[str] = []  # every line logged (tests, summaries)

    def _mark_after(self, done: int) -> int:
        """Smallest count > ``done`` that completes another ``pct_step`` percent."""
        if self.total == 0:
            return 1
        step = self.total * self.pct_step / 100.0
        k = int(done / step) + 1
        return max(done + 1, int(-(-k * step // 1)))

    @property
    def elapsed(self) -> float:
        return self._clock() - self.start

    def rate(self) -> float:
        """Items per second so far (0 before anything is done)."""
        t = self.elapsed
        return self.done / t if t > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at the mean rate so far; None before anything is done."""
        r = self.rate()
        if self.done == 0 or r <= 0:
            return None
        return max(self.total - self.done, 0) / r

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
        now = self._clock()
        since = now - self._last_line
        due_mark = (
            self._bar is None
            and self.done >= self._next_mark
            and self.done < self.total
            and since >= self.min_gap_s
        )
        if due_mark or since >= self.interval_s:
            self._log(self.status())
            self._last_line = now
        if self.done >= self._next_mark:
            self._next_mark = self._mark_after(self.done)

    def status(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{_rate(self.rate())} {self.unit}/s, elapsed {format_eta(self.elapsed)}, "
            f"eta: {format_eta(self.eta_s())}"
        )

    def close(self, summary: bool = True) -> float:
        """Stop the bar; log the summary line unless the caller logs its own. Returns the
        elapsed seconds."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        t = self.elapsed
        if summary:
            self._log(
                f"{self.desc}: done, {self.done} {self.unit} in {format_eta(t)} "
                f"({_rate(self.rate())} {self.unit}/s)"
            )
        return t

    def _log(self, line: str) -> None:
        self.lines.append(line)
        self.logger.info(line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(summary=exc[0] is None)


def _rate(r: float) -> str:
    """One decimal, or three significant digits below 1/s (slow loops: "0.0143", not "0.0")."""
    return f"{r:.1f}" if r >= 1 or r == 0 else f"{r:.3g}"


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _make_bar(total: int, desc: str, unit: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)
