"""One key per ``image_id``: the name a mask store files an image's label map under.

Data sets check their ids with it at registration (``cyborgs.data.datasets``), the mask store
(``cyborgs.masks.store``) and the bootstrap rounds key every map with it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from .image_io import display_path

__all__ = ["check_unique_image_ids", "image_key"]

_SAFE = re.compile(r"^[A-Za-z0-9_\-]+$")


def image_key(image_id: Any) -> str:
    """Filename-safe, collision-free key of an ``image_id`` (int ``5`` and str ``"5"`` agree).

    Safe ids (letters, digits, ``-``, ``_``) are kept for readability; anything else is
    percent-encoded byte-wise (``%`` cannot occur in a kept id, so no collisions); very long
    keys are replaced by a hash to stay under file-name limits.

    Any file name the OS accepts works: the bytes encoded are the name's own bytes on disk, so
    a name that is not UTF-8 (which Python holds with surrogate escapes, as ``os.fsdecode``
    gives it) gets the percent-encoding of its raw bytes (``b"\xff.jpg"`` -> ``%FF%2Ejpg``).
    A key that is not a hash is reversible: ``os.fsdecode(urllib.parse.unquote_to_bytes(key))``.
    """
    s = str(image_id)
    if not s:
        raise ValueError("image_id must not be empty")
    if not _SAFE.match(s):
        s = "".join(ch if _SAFE.match(ch) else _percent_bytes(ch) for ch in s)
    if len(s) > 180:
        s = "h%" + hashlib.sha1(s.encode("utf-8")).hexdigest()
    return s


def _percent_bytes(ch: str) -> str:
    try:
        raw = ch.encode("utf-8", "surrogateescape")  # a non-UTF-8 byte of a file name
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (not a file name)
        raw = ch.encode("utf-8", "surrogatepass")
    return "".join(f"%{b:02X}" for b in raw)


def check_unique_image_ids(dicts: Iterable[dict]) -> None:
    """Raise ``ValueError`` naming both files if two dataset dicts share a mask key
    (:func:`image_key` of their ``image_id``): the store keeps one map per key, so they would
    silently share one image's mask (e.g. ``5.jpg``, ``0005.jpg`` and ``5.png``, all id 5)."""
    seen: dict[str, Any] = {}
    for d in dicts:
        key = image_key(d["image_id"])
        name = d.get("file_name", d["image_id"])
        if key in seen:
            raise ValueError(
                f"{display_path(seen[key])} and {display_path(name)} have the same image_id {d['image_id']!r}: masks are "
                "stored per image_id, so they would share one; rename one of the files (or give "
                "the data set unique ids)"
            )
        seen[key] = name
