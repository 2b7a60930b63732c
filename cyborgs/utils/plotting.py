"""Training curves from a detectron2 ``metrics.json`` (one JSON object per line).

``load_metrics(path)`` gives ``{key: [(iteration, value), ...]}`` sorted by iteration;
``plot_training(metrics, out_path)`` draws three panels (loss terms; LR and EMA momentum; mask
mIoU per bootstrap round) and writes the PNG atomically. Used by ``tools/plot_training.py``.

detectron2's ``JSONWriter`` writes one line per logging period with only the scalars updated
since the previous line, so any key may be absent on a line; bootstrap metrics
(``bootstrap/*``, ``cyborgs/bootstrap/hook.py``) appear once, on the line of the iteration where
their round ran. A resumed run appends to the same file and replays iterations, so for a
repeated iteration the later line wins (it belongs to the run that continued).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cyborgs.utils.atomic import atomic_write

__all__ = ["load_metrics", "plot_training", "bootstrap_rounds", "PANEL_TITLES"]

logger = logging.getLogger(__name__)

Series = list[tuple[int, float]]
Metrics = dict[str, Series]

# Titles of the three panels, in order (also what plot_training returns).
PANEL_TITLES = ("Loss terms", "Learning rate and EMA momentum", "Mask mIoU per bootstrap round")
NO_BOOTSTRAP_TEXT = "no bootstrap rounds yet"


def _is_number(v: object) -> bool:
    # bool is an int subclass; a True/False flag is not a curve.
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_metrics(path: str | os.PathLike) -> Metrics:
    """Parse ``path`` into ``{key: [(iteration, value), ...]}`` sorted by iteration.

    Non-numeric values and lines without ``"iteration"`` are ignored. A final line without a
    trailing newline that does not parse is taken to be still being written by a live run and
    is skipped with a warning; any other bad line raises ``ValueError`` naming the file and
    line number. A missing file raises ``FileNotFoundError``, an empty one ``ValueError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"metrics file {path} does not exist (expected OUTPUT_DIR/metrics.json)"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    by_key: dict[str, dict[int, float]] = {}
    parsed = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            is_last_unterminated = lineno == len(lines) and not text.endswith("\n")
            if is_last_unterminated and parsed > 0:
                logger.warning(
                    f"{path}:{lineno}: skipping incomplete last line (run still writing?)"
                )
                continue
            raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg}): {line[:80]!r}") from e
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}:{lineno}: expected a JSON object per line, got {type(record).__name__}"
            )
        parsed += 1
        it = record.get("iteration")
        if not _is_number(it):
            continue
        for key, value in record.items():
            if key == "iteration" or not _is_number(value):
                continue
            by_key.setdefault(key, {})[int(it)] = float(value)
    if parsed == 0:
        raise ValueError(f"metrics file {path} is empty (no JSON lines); has training logged yet?")
    return {k: sorted(v.items()) for k, v in by_key.items()}


def bootstrap_rounds(metrics: Mapping[str, Series]) -> list[tuple[int, int]]:
    """``[(iteration, round), ...]`` of the iterations where any ``bootstrap/*`` key appears.

    The round number is ``bootstrap/round`` when logged at that iteration, otherwise the
    position among the bootstrap iterations (0, 1, ...).
    """
    iters = sorted({it for k, s in metrics.items() if k.startswith("bootstrap/") for it, _ in s})
    logged = dict(metrics.get("bootstrap/round", []))
    return [(it, int(logged.get(it, i))) for i, it in enumerate(iters)]


def _xy(series: Series) -> tuple[list[int], list[float]]:
    return [it for it, _ in series], [v for _, v in series]


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _plot_losses(ax: Axes, metrics: Mapping[str, Series], round_iters: Sequence[int]) -> None:
    keys = sorted(k for k in metrics if k.startswith("loss_"))
    if "total_loss" in metrics:
        keys.append("total_loss")
    for k in keys:
        ax.plot(*_xy(metrics[k]), label=k, lw=1.2 if k != "total_loss" else 1.8)
    # Rounds change the masks the contrastive loss sees: mark them so jumps are explained.
    for it in round_iters:
        ax.axvline(it, color="0.6", ls="--", lw=0.8)
    if keys:
        ax.legend(fontsize=8, loc="upper right")
    else:
        _empty_note(ax, "no loss_* keys logged")
    ax.set_ylabel("loss")


def _plot_schedules(ax: Axes, metrics: Mapping[str, Series]) -> None:
    lines = []
    if "lr" in metrics:
        lines += ax.plot(*_xy(metrics["lr"]), color="tab:blue", label="lr")
    ax.set_ylabel("lr")
    if "ema_momentum" in metrics:
        # Momentum lives in [0.99, 1]; the LR spans orders of magnitude: separate y axes.
        twin = ax.twinx()
        lines += twin.plot(*_xy(metrics["ema_momentum"]), color="tab:orange", label="ema_momentum")
        twin.set_ylabel("EMA momentum")
    if lines:
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    else:
        _empty_note(ax, "no lr / ema_momentum logged")


def _plot_bootstrap(
    ax: Axes, metrics: Mapping[str, Series], rounds: Sequence[tuple[int, int]]
) -> None:
    if not rounds:
        _empty_note(ax, NO_BOOTSTRAP_TEXT)
        ax.set_ylabel("mask mIoU")
        return
    miou = dict(metrics.get("bootstrap/mask_miou", []))
    for it, _ in rounds:
        ax.axvline(it, color="0.6", ls="--", lw=0.8)
    pts = [(it, r, miou[it]) for it, r in rounds if it in miou and math.isfinite(miou[it])]
    if pts:
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "o-", color="tab:green")
        ax.margins(y=0.2)  # room for the round labels above the top point
        for it, r, v in pts:
            ax.annotate(
                f"r{r}: {v:.3f}", (it, v), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    else:
        # mIoU needs a labeled twin of the pretraining set (bootstrap hook); rounds still show.
        _empty_note(ax, f"{len(rounds)} bootstrap round(s), no mask mIoU logged")
    ax.set_ylabel("mask mIoU")


def plot_training(metrics: Mapping[str, Series], out_path: str | os.PathLike) -> list[str]:
    """Draw the three panels into ``out_path`` (PNG, written atomically); return their titles."""
    out_path = os.fspath(out_path)
    rounds = bootstrap_rounds(metrics)
    # Figure without pyplot: no global state, no GUI backend; savefig renders with Agg.
    fig = Figure(figsize=(9, 10), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    _plot_losses(axes[0], metrics, [it for it, _ in rounds])
    _plot_schedules(axes[1], metrics)
    _plot_bootstrap(axes[2], metrics, rounds)
    for ax, title in zip(axes, PANEL_TITLES, strict=True):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")

    # A reader (or a dashboard polling the PNG) never sees a half-written image, and a failed
    # render leaves the old one in place.
    atomic_write(out_path, lambda f: fig.savefig(f, format="png", dpi=100))
    return [ax.get_title() for ax in axes]
