"""Atomic writes: the old file survives a failed write and no temp file is left behind."""

from __future__ import annotations

import pytest

from cyborgs.utils.atomic import atomic_write, atomic_write_bytes


@pytest.mark.parametrize("fsync", [True, False])
def test_writes_whole_payload_and_creates_parent(tmp_path, fsync):
    path = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(path, b"x" * 1000, fsync=fsync)
    assert path.read_bytes() == b"x" * 1000
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    def half_then_fail(f):
        f.write(b"new but incomplete")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
