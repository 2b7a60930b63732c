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


def test_out_of_space_is_one_line_naming_the_file_and_the_space(tmp_path, monkeypatch):
    """torch's zip writer reports a full disk as ``RuntimeError: unexpected pos`` with the
    ENOSPC only chained (seen on a 1 MB tmpfs); the error raised names the file, the space it
    needed and the space free, and the old file survives."""
    import errno

    from cyborgs.utils.atomic import DiskFullError

    path = tmp_path / "model_0000009.pth"
    atomic_write_bytes(path, b"old")
    monkeypatch.setattr(atomic, "free_bytes", lambda p: 123_000)

    def like_torch_save(f):
        f.write(b"x" * 600)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("unexpected pos 704")  # noqa: B904 - as torch: context only

    with pytest.raises(DiskFullError) as e:
        atomic_write(path, like_torch_save, size_hint=4_500_000)
    line = str(e.value)
    assert line == (
        f"no space left on device writing {path}: it needs ~4.5 MB, 123.0 kB free on that "
        "file system"
    )
    assert e.value.errno == errno.ENOSPC and "\n" not in line
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    # without a size hint: at least what was written before the failure
    with pytest.raises(DiskFullError, match="it needs ~600 B"):
        atomic_write(path, like_torch_save)
    # other failures are left as they are
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(path, lambda f: (_ for _ in ()).throw(RuntimeError("unexpected pos")))
