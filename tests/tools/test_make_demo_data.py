"""tools/make_demo_data.py says how to point the suite at the root it wrote."""

from __future__ import annotations

import make_demo_data  # tools/ is on sys.path (tests/conftest.py)


def test_prints_the_export_line_with_an_absolute_root(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert make_demo_data.main(["--root", "demo", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"use it with: export CYBORGS_DEMO_DATASETS={tmp_path / 'demo'}\n" in out
    assert (tmp_path / "demo").is_dir()


def test_make_demo_console_is_only_its_own_lines(tmp_path) -> None:
    """`make demo` shows this tool's output on the console: importing the suite (detectron2,
    fvcore) must not add warnings to it. A fresh process: the warnings fire once, at import."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[2] / "tools" / "make_demo_data.py"
    res = subprocess.run(
        [sys.executable, str(tool), "--root", str(tmp_path / "d"), "--preset", "tiny"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.splitlines() == [f"INFO wrote tiny demo data (seed 0) to {tmp_path / 'd'}"]
    assert len(res.stdout.splitlines()) == 2, res.stdout
