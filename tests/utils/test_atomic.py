"""Atomic writes: the old file survives a failed write and no temp file is left behind."""

from __future__ import annotations

import os
import stat

import pytest

from cyborgs.utils import atomic
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


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the old one after."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_new_file_gets_plain_open_mode(tmp_path, umask, mask, mode):
    # mkstemp's 0600 would hide checkpoints and caches from the rest of a team.
    umask(mask)
    path = tmp_path / "new.bin"
    atomic_write_bytes(path, b"x")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_umask_without_proc_uses_the_one_read_at_import(tmp_path, umask, monkeypatch):
    monkeypatch.setattr(atomic, "_umask_from_proc", lambda: None)
    monkeypatch.setattr(atomic, "_IMPORT_UMASK", 0o027)
    umask(0o022)  # not seen: without /proc only the import-time mask is known
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o640


def test_umask_by_flipping_restores_the_mask(umask):
    umask(0o027)
    assert atomic._umask_by_flipping() == 0o027
    assert os.umask(0o027) == 0o027


def test_existing_file_keeps_its_mode(tmp_path, umask):
    # As a plain open() that truncates it: a file made private (or shared) stays so.
    umask(0o022)
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    for mode in (0o600, 0o664):
        path.chmod(mode)
        atomic_write_bytes(path, b"new")
        assert path.read_bytes() == b"new"
        assert stat.S_IMODE(path.stat().st_mode) == mode
