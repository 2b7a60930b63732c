"""The stop request of a preempted job: a process-wide flag set by a signal handler.

A scheduler asks a job to stop with a signal (SLURM: SIGTERM before preemption or at the time
limit, or the signal of ``--signal``; submitit: SIGUSR2). The handler only records the signal;
the training loop (:class:`cyborgs.engine.preemption.PreemptionHook`) and a bootstrap round
(between groups of images) poll the flag at points where the run can stop cleanly, write what
resume needs and raise :class:`Preempted`; the entry points turn that into
:data:`PREEMPTED_EXIT_STATUS`. Lower layers only call :func:`check` (or :func:`requested`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

__all__ = [
    "DEFAULT_SIGNALS",
    "PREEMPTED_EXIT_STATUS",
    "Preempted",
    "check",
    "clear",
    "configured",
    "install",
    "installed_signals",
    "parse_signals",
    "request",
    "requested",
    "uninstall",
]

# 128 + SIGTERM, what a process killed by SIGTERM reports: schedulers and shells read it as
# "stopped by the scheduler", not as a failure of the program.
PREEMPTED_EXIT_STATUS = 143
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")

_requested: int | None = None
_previous: dict[int, Any] = {}
_configured = False


class Preempted(Exception):
    """Training stopped on a signal; ``checkpoint`` is the file resume continues from (None:
    the last one written before, e.g. the one before a bootstrap round)."""

    def __init__(
        self, signum: int, iteration: int | None = None, checkpoint: str | None = None
    ) -> None:
        self.signum = int(signum)
        self.iteration = iteration
        self.checkpoint = checkpoint
        name = signal.Signals(self.signum).name if self.signum > 0 else f"signal {self.signum}"
        where = f" after iteration {iteration}" if iteration is not None else ""
        saved = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped on {name}{where}{saved}: continue with --resume")


def parse_signals(names: str | Iterable[str]) -> tuple[int, ...]:
    """``"TERM,USR1"`` / ``["SIGTERM", "SIGUSR1"]`` -> signal numbers (ValueError naming a bad
    one)."""
    if isinstance(names, str):
        names = [n for n in names.replace(" ", ",").split(",") if n]
    out = []
    for n in names:
        key = str(n).upper()
        key = key if key.startswith("SIG") else f"SIG{key}"
        sig = getattr(signal.Signals, key, None)
        if sig is None or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(
                f"preemption signal {n!r}: expected a catchable signal name such as TERM, USR1"
            )
        out.append(int(sig))
    return tuple(out)


def _handler(signum: int, frame: FrameType | None) -> None:
    # Only record: the loop stops at the next point where it can (a handler that raised
    # would interrupt a checkpoint write or a collective half-way).
    request(signum)


def request(signum: int = int(signal.SIGTERM)) -> None:
    """Ask the run to stop, as the signal ``signum`` does (the first request is kept)."""
    global _requested
    if _requested is None:
        _requested = int(signum)


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _requested


def clear() -> None:
    global _requested
    _requested = None


def check(iteration: int | None = None) -> None:
    """Raise :class:`Preempted` if a stop was requested (for loops with nothing to save)."""
    if _requested is not None:
        raise Preempted(_requested, iteration)


def install(signals: str | Iterable[str] = DEFAULT_SIGNALS) -> tuple[int, ...]:
    """Make ``signals`` set the flag instead of killing the process (main thread only; from
    another thread nothing is installed and () returned). Idempotent; ``()`` installs nothing
    but counts as configured (the training hook then leaves the signals alone)."""
    global _configured
    if threading.current_thread() is not threading.main_thread():
        return ()
    nums = parse_signals(signals)
    _configured = True
    for s in nums:
        if s not in _previous:
            _previous[s] = signal.getsignal(s)
        signal.signal(s, _handler)
    return nums


def installed_signals() -> tuple[int, ...]:
    """The signals whose handler is this module's."""
    return tuple(s for s in _previous if signal.getsignal(s) is _handler)


def configured() -> bool:
    """Whether :func:`install` ran in this process (since the last :func:`uninstall`)."""
    return _configured


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced and clear the flag."""
    global _configured
    _configured = False
    for s, h in list(_previous.items()):
        if threading.current_thread() is threading.main_thread():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        del _previous[s]
    clear()
