"""Image sizes from file headers, cached per image root so a large set is read once.

Registering COCO ``train2017`` (118k images) as an unlabeled set needs every image's size, and
opening 118k headers takes minutes on a network file system, on every rank of every run. The
sizes are therefore cached in ``$CYBORGS_CACHE_DIR/image_sizes/<hash of the root>.json``
(default ``~/.cache/cyborgs``). A cached entry is used only while the file's byte size and
modification time are unchanged, so replaced or edited images are re-read. Cache trouble (a
read-only home, a corrupt cache file) costs speed, never correctness: the headers are re-read
and a warning names the cache file.

Sizes are those of :func:`cyborgs.data.image_io.read_image`'s arrays (EXIF orientation applied).
A file whose header cannot be read gets its error text instead of a size; callers keep it in the
data set (see ``datasets.load_unlabeled_images``) so the loaders skip and count it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from cyborgs.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadImageError,
    display_path,
    read_image_size,
)
from cyborgs.utils.atomic import atomic_write_bytes
from cyborgs.utils.progress import Progress

__all__ = [
    "CACHE_ENV",
    "MAX_NAMED",
    "cache_file_for",
    "read_image_sizes",
    "warn_once",
    "warn_unreadable",
]

logger = logging.getLogger(__name__)


# (logger name, message, handlers it reaches) of the data warnings already logged
_WARNED: set[tuple[str, str, tuple[int, ...]]] = set()


def _handler_ids(log: logging.Logger) -> tuple[int, ...]:
    ids: list[int] = []
    node: logging.Logger | None = log
    while node is not None:
        ids += [id(h) for h in node.handlers]
        node = node.parent if node.propagate else None
    return tuple(ids)


def warn_once(message: str, name: str = __name__) -> None:
    """A warning about the data, logged once per process and logging setup: a data set is
    loaded several times in a run (counted at setup, then by the loader, the rounds and the
    plan) and its problems are the same each time. A load before the run's log file exists
    (the schedule counts the images before ``setup_logger``) does not use it up: the warning
    is logged again, once, when it can reach other handlers (``OUTPUT_DIR/log.txt``)."""
    log = logging.getLogger(name)
    key = (name, message, _handler_ids(log))
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


CACHE_ENV = "CYBORGS_CACHE_DIR"
_CACHE_VERSION = 2  # 2: EXIF-oriented sizes
# Header reads are I/O bound: threads overlap the file system's latency.
_READ_THREADS = 16

# At most this many files are named in one warning (the count is always complete).
MAX_NAMED = 20

Size = tuple[int, int]


def cache_file_for(root: str) -> str:
    """Where the sizes of the images under ``root`` are cached."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "cyborgs")
    key = hashlib.sha1(os.fsencode(os.path.abspath(root))).hexdigest()[:16]  # any name
    return os.path.join(base, "image_sizes", f"{key}.json")


def _read_size(path: str, max_pixels: int) -> Size | str:
    try:
        return read_image_size(path, max_pixels=max_pixels)  # the header only
    except BadImageError as e:
        return e.reason


def _load_cache(cache_file: str, root: str) -> dict[str, list[int]]:
    try:
        with open(cache_file) as f:
            data = json.load(f)
        if data.get("version") == _CACHE_VERSION and data.get("root") == root:
            return dict(data["entries"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning(f"Ignoring the unreadable image-size cache {cache_file}: {e}")
    return {}


def _is_entry(hit: object) -> bool:
    """Whether a cache entry is ``[byte size, mtime_ns, width, height]``, all ints (not bools)
    and width and height positive: anything else in a cache file that parses is a miss, not an error."""
    return (
        type(hit) is list
        and len(hit) == 4
        and all(type(v) is int for v in hit)
        and hit[2] > 0
        and hit[3] > 0
    )


def read_image_sizes(
    root: str, rel_paths: Sequence[str], max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> list[Size | str]:
    """``(width, height)`` of each image ``root/rel_path``, or the error text of an unreadable
    one or one above ``max_pixels`` (0: no cap); those are not cached, so a fixed file is read
    next time."""
    root = os.path.abspath(root)
    cache_file = cache_file_for(root)
    cached = _load_cache(cache_file, root)
    out: list[Size | str | None] = [None] * len(rel_paths)
    stats: dict[str, tuple[int, int]] = {}
    todo: list[int] = []
    malformed = 0
    for i, rel in enumerate(rel_paths):
        try:
            st = os.stat(os.path.join(root, rel))
        except OSError as e:
            out[i] = f"{type(e).__name__}: {e}"
            continue
        stats[rel] = (st.st_size, st.st_mtime_ns)
        hit = cached.get(rel)
        if rel in cached and not _is_entry(hit):
            malformed += 1  # a miss: re-read, and rewritten with the cache below
            hit = None
        if hit is not None and (hit[0], hit[1]) == stats[rel]:
            out[i] = (hit[2], hit[3])
            if max_pixels > 0 and hit[2] * hit[3] > max_pixels:  # cached under a larger cap
                todo.append(i)
        else:
            todo.append(i)
    if malformed:
        logger.warning(
            f"Ignoring {malformed} malformed entries of the image-size cache {cache_file}; "
            "those headers are re-read"
        )

    if todo:
        t0 = time.perf_counter()
        paths = [os.path.join(root, rel_paths[i]) for i in todo]
        progress = Progress(len(todo), f"reading image headers under {display_path(root)}", logger)
        with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(todo))) as pool:
            for i, size in zip(
                todo, pool.map(_read_size, paths, [max_pixels] * len(paths)), strict=True
            ):
                out[i] = size
                progress.update()
        progress.close(summary=False)  # the summary line below
        logger.info(
            f"Read {len(todo)} image header(s) under {display_path(root)} in {time.perf_counter() - t0:.1f} s "
            f"({len(rel_paths) - len(todo)} from the cache {cache_file})"
        )
        entries = {
            rel: [*stats[rel], *size]
            for rel, size in zip(rel_paths, out, strict=True)
            if isinstance(size, tuple)
        }
        payload = json.dumps({"version": _CACHE_VERSION, "root": root, "entries": entries})
        try:
            atomic_write_bytes(cache_file, payload.encode(), fsync=False)
        except OSError as e:
            logger.warning(f"Could not write the image-size cache {cache_file}: {e}")
    return out  # type: ignore[return-value]


def warn_unreadable(where: str, bad: Sequence[tuple[str, str]]) -> None:
    """One warning naming the files (``(path, reason)``, at most :data:`MAX_NAMED`) whose
    headers could not be read under ``where``. They stay in the data set with height and width
    0: the loaders skip them when they fail to read, and count them
    (``data/num_skipped_images``, the round manifests)."""
    if not bad:
        return
    named = "; ".join(f"{display_path(p)} ({r})" for p, r in bad[:MAX_NAMED])
    more = f"; and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
    warn_once(
        f"{len(bad)} unreadable image(s) under {display_path(where)}, skipped (and counted) when read: "
        f"{named}{more}"
    )
