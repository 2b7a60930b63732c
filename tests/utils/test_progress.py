"""cyborgs.utils.progress: when lines are logged, and that rate and ETA follow their definition."""

from __future__ import annotations

import logging
import re

import pytest

from cyborgs.utils.progress import Progress, format_eta

LINE = re.compile(
    r"^work: (\d+)/(\d+) images \((\d+)%\), ([\d.]+) images/s, elapsed (\S+), eta: (\S+)$"
)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


def test_eta_is_remaining_count_at_the_mean_rate() -> None:
    clock = _Clock()
    p = Progress(1000, "work", logging.getLogger("t"), clock=clock, tty=False)
    clock.t += 20.0
    p.update(100)  # 100 images in 20 s: 5 images/s; 900 left -> 180 s
    m = LINE.match(p.lines[-1])
    assert m, p.lines
    done, total, pct, rate, elapsed, eta = m.groups()
    assert (int(done), int(total), int(pct)) == (100, 1000, 10)
    assert float(rate) == pytest.approx(5.0)
    assert _seconds(elapsed) == 20 and _seconds(eta) == 180


def test_lines_at_percent_steps_throttled_and_on_a_timer() -> None:
    clock = _Clock()
    p = Progress(100, "work", logging.getLogger("t"), clock=clock, tty=False,
                 interval_s=10, pct_step=5, min_gap_s=1)  # fmt: skip
    # fast work: 100 items within 0.5 s cross every 5% mark but log nothing (gap < 1 s)
    for _ in range(50):
        clock.t += 0.01
        p.update()
    assert p.lines == []
    # slow work: one item every 2 s -> every 5% mark (each 5 items) is logged... but a line also
    # comes from the timer when no mark is crossed for 10 s.
    clock.t += 11
    p.update()  # 51: the timer (11 s since the start)
    assert len(p.lines) == 1 and p.lines[-1].startswith("work: 51/100")
    for _ in range(4):
        clock.t += 2
        p.update()  # 52..55: the 55 mark at 8 s after the last line
    assert p.lines[-1].startswith("work: 55/100") and len(p.lines) == 2
    summary_at = len(p.lines)
    p.close()
    assert p.lines[summary_at].startswith("work: done, 55 images in 0:00:20")


def test_slow_rate_keeps_significant_digits() -> None:
    clock = _Clock()
    p = Progress(10, "work", logging.getLogger("t"), clock=clock, tty=False)
    clock.t += 70.0
    p.update()  # 1 item in 70 s
    assert ", 0.0143 images/s," in p.lines[-1] and "eta: 0:10:30" in p.lines[-1]


def test_zero_total_and_unknown_eta() -> None:
    p = Progress(0, "work", logging.getLogger("t"), tty=False)
    assert p.eta_s() is None and format_eta(None) == "unknown"
    p.close()
    assert p.lines[-1].startswith("work: done, 0 images")
    with pytest.raises(ValueError, match="total"):
        Progress(-1, "work", logging.getLogger("t"))


def test_terminal_shows_a_bar_instead_of_percent_lines(capsys) -> None:
    clock = _Clock()
    p = Progress(20, "work", logging.getLogger("t"), clock=clock, tty=True)
    for _ in range(20):
        clock.t += 2  # every 5% mark is > min_gap apart, yet no percentage lines on a tty
        p.update()
    p.close()
    assert [line for line in p.lines if "done" not in line] == []
    assert "20/20" in capsys.readouterr().err  # the tqdm bar
