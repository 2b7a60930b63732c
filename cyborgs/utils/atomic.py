"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO

# What atomic_write's mkstemp names look like: ".<basename>.<random>.tmp".
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def _umask_by_flipping() -> int:
    # os.umask can only be read by setting it, and the mask is process-global: another thread
    # creating a file in between would get the stand-in mask. Done once, at import (normally
    # single-threaded), and only where /proc does not report the mask.
    old = os.umask(0o022)
    os.umask(old)
    return old


def _umask_from_proc() -> int | None:
    # Linux >= 4.7 reports the mask read-only; one small read per new file, so a mask set after
    # import (e.g. by a launcher) is honoured.
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None  # not Linux, or a kernel older than 4.7


_IMPORT_UMASK = _umask_from_proc()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _umask_by_flipping()


def _current_umask() -> int:
    """The process umask, read without changing it where /proc allows; else the one at
    import."""
    mask = _umask_from_proc()
    return _IMPORT_UMASK if mask is None else mask


def _mode_for(path: str) -> int:
    """The permission bits a plain ``open(path, "wb")`` would leave: an existing file keeps its
    own (it is truncated, not recreated), a new one gets ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def format_bytes(n: float | None) -> str:
    """``1.5 GB`` (decimal units, as ``df -H``)."""
    if n is None:
        return "unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class DiskFullError(OSError):
    """A write failed for lack of space (ENOSPC, or EDQUOT: over quota). Its message is one
    line: the file, the space it needed and the space left where it was written."""

    def __init__(self, path: str, needed: int | None, free: int | None) -> None:
        super().__init__(errno.ENOSPC, "No space left on device", path)
        self.needed, self.free = needed, free

    def __str__(self) -> str:
        need = f"~{format_bytes(self.needed)}" if self.needed else "more space"
        return (
            f"no space left on device writing {self.filename}: it needs {need}, "
            f"{format_bytes(self.free)} free on that file system"
        )


def _out_of_space(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from is ENOSPC / EDQUOT (torch's zip writer
    reports a full disk as ``RuntimeError: unexpected pos``, the OSError only chained)."""
    for _ in range(10):
        if e is None:
            return False
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def nearest_existing(path: str | os.PathLike) -> str:
    """``path`` made absolute, or its nearest existing parent (a folder not made yet lives on
    its parent's file system)."""
    p = os.path.abspath(os.fspath(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing parent); None if
    unknown."""
    try:
        return shutil.disk_usage(nearest_existing(path)).free
    except OSError:
        return None


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    fsync: bool = True,
    size_hint: int | None = None,
) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then ``os.replace`` it onto ``path``.

    The temp file lives in the destination directory (``os.replace`` is atomic only within one
    file system) and is removed if ``write`` fails, leaving any previous ``path`` untouched.
    ``fsync=False`` skips flushing to disk: still atomic against a crashed process, cheaper for
    many small files whose completeness a later fsynced manifest vouches for.

    The file gets the permissions a plain ``open()`` would give it (``mkstemp``'s are 0600,
    which would hide checkpoints, masks and caches from the rest of a team): an existing
    ``path``'s mode is kept, a new one gets ``0o666 & ~umask``. Owner and group are not
    copied: the new file is the writer's, as when a new file is created.

    A write that fails for lack of space raises :class:`DiskFullError` naming ``path``, the
    space needed (``size_hint`` bytes, else at least what was written) and the space free.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode_for(path))
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else None
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _out_of_space(e):
            raise DiskFullError(path, size_hint or written, free_bytes(directory)) from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """:func:`atomic_write` of a bytes payload."""
    atomic_write(path, lambda f: f.write(data), fsync=fsync, size_hint=len(data))


def remove_stale_temp_files(
    directory: str | os.PathLike, targets: re.Pattern[str] | None = None
) -> list[str]:
    """Remove the temp files an interrupted :func:`atomic_write` left directly in ``directory``.

    ``targets`` (a pattern of destination basenames): only temp files of those destinations
    are removed, e.g. ``.model_0000039.pth.<random>.tmp`` for ``model_\\d+\\.pth``; a file of
    someone else's that merely looks like a temp file keeps its place unless it names one of
    the caller's own files. Call it only when no write into ``directory`` can be in flight
    (e.g. when a run starts); returns the names removed. Subdirectories are not touched.
    """
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (_TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            # ".<basename>.<random>.tmp": the basename may hold dots itself
            target = entry.name[1:].rsplit(".", 2)[0]
            if targets is not None and not targets.fullmatch(target):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return sorted(removed)
