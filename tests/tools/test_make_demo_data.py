"""tools/make_demo_data.py says how to point the suite at the root it wrote."""

from __future__ import annotations

import make_demo_data  # tools/ is on sys.path (tests/conftest.py)


def test_prints_the_export_line_with_an_absolute_root(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert make_demo_data.main(["--root", "demo", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"use it with: export CYBORGS_DEMO_DATASETS={tmp_path / 'demo'}\n" in out
    assert (tmp_path / "demo").is_dir()
