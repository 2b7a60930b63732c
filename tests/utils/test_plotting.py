"""metrics.json parsing and the training-curve figure (cyborgs/utils/plotting.py, the CLI)."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from pathlib import Path

import pytest

from cyborgs.utils.plotting import PANEL_TITLES, bootstrap_rounds, load_metrics, plot_training

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli():
    spec = importlib.util.spec_from_file_location(
        "plot_training_cli", ROOT / "tools/plot_training.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, records: list[dict | str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_records(n: int = 30, rounds: tuple[int, ...] = (10, 20)) -> list[dict]:
    """A detectron2-like log: periodic scalars, bootstrap keys only at round iterations."""
    out: list[dict] = []
    for it in range(0, n):
        rec: dict = {"iteration": it, "lr": 0.1 * (it + 1) / n, "ema_momentum": 0.996 + it * 1e-4}
        rec["loss_vmf"] = 2.0 - it * 0.01
        if it >= 5:  # contrastive term starts after the vMF warm-up: absent before, never NaN
            rec["loss_mask_contrastive"] = 5.0 - it * 0.05
        rec["total_loss"] = rec["loss_vmf"] + rec.get("loss_mask_contrastive", 0.0)
        if it in rounds:
            rec["bootstrap/mask_miou"] = 0.2 + 0.01 * it
            rec["bootstrap/time_s"] = 3.0
        out.append(rec)
    return out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_parsing_handles_missing_keys_blank_lines_and_sorts(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "metrics.json",
        [
            {"iteration": 19, "loss_vmf": 1.5, "lr": 0.2},
            "",
            "   ",
            {"iteration": 9, "loss_vmf": 2.0},  # no lr on this line
            {"iteration": 19, "bootstrap/round": 1, "flag": True, "name": "x"},
            {"loss_vmf": 9.0},  # no iteration: cannot be placed, ignored
        ],
    )
    m = load_metrics(p)
    assert m["loss_vmf"] == [(9, 2.0), (19, 1.5)]  # sorted by iteration
    assert m["lr"] == [(19, 0.2)]
    assert m["bootstrap/round"] == [(19, 1.0)]
    assert "flag" not in m and "name" not in m  # booleans / strings are not curves


def test_resumed_run_later_line_wins_for_repeated_iteration(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "m.json",
        [{"iteration": 5, "loss_vmf": 3.0}, {"iteration": 5, "loss_vmf": 1.0}],
    )
    assert load_metrics(p)["loss_vmf"] == [(5, 1.0)]


def test_bad_json_line_names_file_and_line_number(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "metrics.json", [{"iteration": 0, "lr": 1.0}, "", "{not json", {"iteration": 1}]
    )
    with pytest.raises(ValueError, match=r"metrics\.json:3: not a JSON line"):
        load_metrics(p)
    q = _write(tmp_path / "list.json", [{"iteration": 0}, "[1, 2]"])
    with pytest.raises(ValueError, match=r"list\.json:2: expected a JSON object"):
        load_metrics(q)


def test_incomplete_last_line_of_live_run_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps({"iteration": 0, "lr": 1.0}) + '\n{"iteration": 1, "lr"')
    assert load_metrics(p) == {"lr": [(0, 1.0)]}


def test_missing_and_empty_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "metrics.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_metrics(missing)
    empty = tmp_path / "empty.json"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.json is empty"):
        load_metrics(empty)


def test_bootstrap_rounds_use_logged_round_or_order() -> None:
    m = {
        "bootstrap/mask_miou": [(10, 0.3), (20, 0.4)],
        "bootstrap/round": [(20, 7.0)],
        "lr": [(0, 1.0)],
    }
    assert bootstrap_rounds(m) == [(10, 0), (20, 7)]
    assert bootstrap_rounds({"lr": [(0, 1.0)]}) == []


def test_plot_writes_valid_png_with_three_panels(tmp_path: Path) -> None:
    m = load_metrics(_write(tmp_path / "metrics.json", _run_records()))
    out = tmp_path / "sub" / "curves.png"
    titles = plot_training(m, out)
    assert titles == list(PANEL_TITLES)
    w, h = _png_size(out)
    assert w > 100 and h > 100 and out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left behind


def test_plot_without_bootstrap_rounds_says_so(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.axes

    texts: list[str] = []
    orig = matplotlib.axes.Axes.text

    def spy(self, x, y, s, *a, **k):
        texts.append(s)
        return orig(self, x, y, s, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", spy)
    m = load_metrics(_write(tmp_path / "m.json", _run_records(rounds=())))
    plot_training(m, tmp_path / "a.png")
    assert "no bootstrap rounds yet" in texts
    texts.clear()
    plot_training(load_metrics(_write(tmp_path / "m2.json", _run_records())), tmp_path / "b.png")
    assert "no bootstrap rounds yet" not in texts


def test_failed_render_keeps_previous_png(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    out = tmp_path / "curves.png"
    out.write_bytes(b"previous")

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plot_training({"lr": [(0, 1.0)]}, out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_cli_writes_png_from_output_dir_and_reports_errors(tmp_path: Path, capsys) -> None:
    cli = _cli()
    _write(tmp_path / "metrics.json", _run_records(n=12, rounds=(6,)))
    assert cli.main([str(tmp_path), str(tmp_path / "c.png")]) == 0
    assert _png_size(tmp_path / "c.png")[0] > 0
    assert cli.main([str(tmp_path / "missing.json"), str(tmp_path / "d.png")]) == 1
    err = capsys.readouterr().err
    assert "missing.json" in err and not (tmp_path / "d.png").exists()
