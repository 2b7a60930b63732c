"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from typing import BinaryIO

# What atomic_write's mkstemp names look like: ".<basename>.<random>.tmp".
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = True
) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then ``os.replace`` it onto ``path``.

    The temp file lives in the destination directory (``os.replace`` is atomic only within one
    file system) and is removed if ``write`` fails, leaving any previous ``path`` untouched.
    ``fsync=False`` skips flushing to disk: still atomic against a crashed process, cheaper for
    many small files whose completeness a later fsynced manifest vouches for.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """:func:`atomic_write` of a bytes payload."""
    atomic_write(path, lambda f: f.write(data), fsync=fsync)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[str]:
    """Remove the temp files an interrupted :func:`atomic_write` left directly in ``directory``.

    Call it only when no write into ``directory`` can be in flight (e.g. when a run starts);
    returns the names removed. Subdirectories are not touched.
    """
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if _TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed.append(entry.name)
    return sorted(removed)
