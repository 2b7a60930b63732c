"""Which files and folders the suite wrote: the record every deleting tool consults first.

An output folder the suite uses (a pretraining ``OUTPUT_DIR``, the benchmark driver's
``OUTDIR``, a study run) holds a small record, :data:`RECORD` (JSON, written atomically)::

    {"version": 1, "tool": "pretrain_net", "entries": ["args.json", "config.yaml", ...]}

``entries`` are the top-level names in the folder that the suite created there. A folder
without a record that already holds files is not the suite's: :func:`claim` refuses it. Tools
delete or overwrite only recorded entries (:func:`remove_recorded`); anything else in the way is
refused, naming it, and nothing is deleted. A recorded sub-folder is the suite's as a whole
(tools such as detectron2's write inside it without telling us): files a user adds inside it
later go with it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable

from cyborgs.utils.atomic import atomic_write_bytes

__all__ = [
    "RECORD",
    "NotOwnedError",
    "claim",
    "folder_summary",
    "is_claimed",
    "record",
    "recorded",
    "remove_recorded",
]

RECORD = ".cyborgs_outputs.json"


class NotOwnedError(ValueError):
    """A path the suite would overwrite or delete, but cannot prove it wrote."""


def folder_summary(folder: str | os.PathLike, limit: int = 5) -> str:
    """``"a, b, c, ... (12 entries)"``: what is in ``folder``, for messages."""
    names = sorted(n for n in os.listdir(folder) if n != RECORD)
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{shown} ({len(names)} entr{'y' if len(names) == 1 else 'ies'})"


def _read(folder: str | os.PathLike) -> dict | None:
    path = os.path.join(folder, RECORD)
    try:
        with open(path, "rb") as f:
            rec = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise NotOwnedError(f"{path}: unreadable record of the suite's files ({e})") from e
    if not (isinstance(rec, dict) and isinstance(rec.get("entries"), list)):
        raise NotOwnedError(f"{path}: not a record of the suite's files (no 'entries' list)")
    return rec


def is_claimed(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the suite's record."""
    return _read(folder) is not None


def recorded(folder: str | os.PathLike) -> set[str]:
    """The entries of ``folder`` recorded as written by the suite (empty: no record)."""
    rec = _read(folder)
    return set() if rec is None else {str(e) for e in rec["entries"]}


def _write(folder: str | os.PathLike, tool: str, entries: Iterable[str]) -> None:
    rec = {"version": 1, "tool": tool, "entries": sorted(set(entries))}
    atomic_write_bytes(os.path.join(folder, RECORD), (json.dumps(rec, indent=1) + "\n").encode())


def claim(
    folder: str | os.PathLike,
    tool: str,
    legacy: Iterable[str] | None = None,
    what: str = "an output folder",
    dry_run: bool = False,
) -> None:
    """Make ``folder`` an output folder of the suite (``tool`` names the writer).

    A missing or empty folder is created and gets a record; a folder that has one is kept as
    it is. A folder with other files and no record raises :class:`NotOwnedError` naming it and
    its contents, unless the caller recognised it by the suite's own files as written by an
    earlier version of the suite (which kept no record): then ``legacy`` lists the entries that
    are the suite's, and only those present are recorded. ``dry_run``: only the refusal, nothing
    created or written.
    """
    folder = os.fspath(folder)
    rec = _read(folder) if os.path.isdir(folder) else None
    if rec is not None and rec.get("tool") not in (tool, None):
        raise NotOwnedError(
            f"{folder} holds the outputs of {rec.get('tool')}, not of {tool}: choose another "
            f"folder for {what}"
        )
    if rec is not None:
        return
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotOwnedError(f"{folder} is not a folder: it cannot be {what}")
    present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    if present and legacy is None:
        raise NotOwnedError(
            f"{folder} is not empty and was not written by this suite (it holds "
            f"{folder_summary(folder)}): choose a new or empty folder for {what}"
        )
    if not dry_run:
        os.makedirs(folder, exist_ok=True)
        _write(folder, tool, set(legacy or ()) & present)


def record(folder: str | os.PathLike, *names: str) -> None:
    """Add top-level ``names``, about to be written, to ``folder``'s record (the folder must
    be claimed). A name already present there but not recorded raises
    :class:`NotOwnedError`: writing it would overwrite a file the suite did not write."""
    rec = _read(folder)
    if rec is None:
        raise NotOwnedError(f"{folder} has no record of the suite's files: claim it first")
    for n in names:
        if not n or os.path.basename(n) != n or n in (".", ".."):
            raise ValueError(f"record {n!r}: entries are names directly in {folder}")
    old = set(rec["entries"])
    foreign = [n for n in names if n not in old and os.path.lexists(os.path.join(folder, n))]
    if foreign:
        raise NotOwnedError(
            f"{', '.join(foreign)} in {folder} {'is' if len(foreign) == 1 else 'are'} not "
            "recorded as written by this suite, which would overwrite "
            f"{'it' if len(foreign) == 1 else 'them'}: move {'it' if len(foreign) == 1 else 'them'}"
            " away, or choose another folder"
        )
    if old | set(names) != old:
        _write(folder, str(rec.get("tool", "")), old | set(names))


def remove_recorded(folder: str | os.PathLike, names: Iterable[str], why: str = "") -> list[str]:
    """Delete those of ``names`` that exist in ``folder``, all of them recorded, or none.

    Any present name that the record does not list raises :class:`NotOwnedError` naming them
    (and ``why``, the flag or step that asked) before anything is deleted. Returns the names
    deleted; they leave the record too.
    """
    folder = os.fspath(folder)
    present = [n for n in names if os.path.lexists(os.path.join(folder, n))]
    ours = recorded(folder)
    foreign = [n for n in present if n not in ours]
    if foreign:
        raise NotOwnedError(
            f"{why + ': ' if why else ''}{', '.join(foreign)} in {folder} "
            f"{'is' if len(foreign) == 1 else 'are'} not recorded as written by this suite "
            f"(no entry in {os.path.join(folder, RECORD)}); nothing was deleted. Move or "
            "delete them yourself, or choose another folder"
        )
    for n in present:
        path = os.path.join(folder, n)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    if present:
        rec = _read(folder)
        _write(folder, str(rec.get("tool", "")), set(rec["entries"]) - set(present))
    return present
