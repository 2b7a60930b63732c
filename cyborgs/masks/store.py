"""Versioned, atomic rounds of uint8 label maps on disk (METHOD.md §3).

Layout under ``root``::

    root/
      current.json                 {"round": 5, "dir": "round_0005"}   (atomic pointer)
      round_0005/
        part-000.bin               the label maps one writer process wrote (``packed.py``)
        part-001.bin               ... one per writer (rank, or loader worker of a precompute)
        index.npy                  key hash -> part, offset, shape, crc; sorted (binary search)
        manifest.json              written LAST: a round without it is partial, never current

A round is a small constant number of files per writer whatever its image count (a COCO run
of 8 rounds was ~950k PNG files before): see ``cyborgs.masks.packed`` for the record format.
Rounds written by earlier versions (``"format": "png-L"``: ``ab/<key>.png``, one 8-bit PNG per
image, sharded by a hash of the key) stay readable: the reader picks the layout from the
manifest. Renumbering ids in order of first appearance (done by the round runner) keeps the
zlib payloads small. The store is lossless: ``read`` returns exactly what ``write`` got. Put on an image's
pixels (``read(out_hw=)``), a map follows its round's cell placement: the manifest's
``"cell_grid"`` (a bootstrap round's measured receptive-field centre), nearest upsampling for a
round without one (``cyborgs.masks.cell_grid``).

Each writer process appends to its own temporary part file; ``finish_round`` (one process,
after a barrier) renames the parts, writes the index, then the manifest, so readers (data
loader workers) never see a half-written round. Several processes (distributed ranks, loader
workers) may ``write`` into the same round. Readers memory-map the parts lazily, per process
(keyed by pid: nothing opened before a fork is used after it).

Damage done from outside (a disk error, a user deleting files) is detected, not repaired, here:
``current_round`` raises :class:`CorruptPointerError` for a garbage pointer, ``verify_round``
compares a round's manifest with its files (count, bytes, and for packed rounds crc32), and
``read`` raises :class:`MaskFileError` for a missing or undecodable label map. ``BootstrapHook`` repairs from
the checkpoint's record of completed rounds; the data loader skips an image whose map is gone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import time
from typing import Any

import numpy as np
from PIL import Image

from cyborgs.data.image_ids import check_unique_image_ids, image_key
from cyborgs.utils.atomic import atomic_write_bytes
from cyborgs.utils.ownership import NotOwnedError

from . import packed
from .cell_grid import CellCentre, cell_centre_from_manifest, upsample_label_map

__all__ = [
    "CorruptPointerError",
    "MaskFileError",
    "MaskStore",
    "check_unique_image_ids",
    "image_key",
    "store_root",
    "upsample_nearest",
]

_POINTER = "current.json"
_MANIFEST = "manifest.json"
# a finished round as one process reads it: (its packed reader, None for a round of PNGs; the
# cell centre of its maps, None for the legacy rule)
_RoundState = tuple["packed.PackedRound | None", CellCentre]
_ROUND_RE = re.compile(r"^round_(\d{4,})$")


class CorruptPointerError(RuntimeError):
    """``current.json`` exists but does not hold ``{"round": int | null, ...}``."""


class MaskFileError(FileNotFoundError):
    """The label map of an image in a round is missing or cannot be decoded."""


_SHARD = re.compile(r"^[0-9a-f]{2}$")
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # cyborgs.utils.atomic's temp files


def _foreign_in_round_dir(d: str) -> list[str]:
    """Entries of round directory ``d`` that this store does not write: anything but
    ``manifest.json``, the packed round's ``index.npy`` and ``part-NNN.bin``, temp files of
    atomic writes and writers' parts, and the old layout's hash shards (``ab/``) holding label
    maps and their temp files."""
    foreign = []
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if name in (_MANIFEST, packed.INDEX) or (_TEMP.match(name) and os.path.isfile(path)):
            continue
        if packed.PART_RE.match(name) and os.path.isfile(path) and not os.path.islink(path):
            continue
        if not (_SHARD.match(name) and os.path.isdir(path) and not os.path.islink(path)):
            foreign.append(name)
            continue
        for f in sorted(os.listdir(path)):
            fp = os.path.join(path, f)
            ok = f.endswith(".png") or _TEMP.match(f)
            if not (ok and os.path.isfile(fp) and not os.path.islink(fp)):
                foreign.append(os.path.join(name, f))
    return foreign


def _remove_round_dir(d: str) -> None:
    """Delete an earlier (partial or stale) round directory, which must hold nothing but what
    the store writes: a folder of someone else's files under the round's name is refused,
    naming them, and nothing is deleted."""
    foreign = _foreign_in_round_dir(d) if os.path.isdir(d) and not os.path.islink(d) else [d]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise NotOwnedError(
            f"{d} would be replaced by a new mask round, but it holds files the mask store did "
            f"not write ({shown}; {len(foreign)} in all); nothing was deleted: move them away, "
            "or choose another OUTPUT_DIR / CYBORGS.MASKS.STORE_DIR"
        )
    shutil.rmtree(d)


def upsample_nearest(label_map: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (source index = floor(i * in / out), like
    ``torch.nn.functional.interpolate(mode="nearest")``): the placement of a map that records
    no cell centre."""
    return upsample_label_map(label_map, out_hw, None)


def encode_label_map(label_map: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label_map, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class MaskStore:
    """Rounds of per-image uint8 label maps under ``root`` (see the module docstring)."""

    def __init__(self, root: str):
        self.root = os.fspath(root)
        # Per process (a forked loader worker opens its own): writer part name, and round ->
        # (manifest stat, (packed reader or None for a PNG round, cell centre)); a redone
        # round has another manifest stat and is read again.
        self._pid = -1
        self._part_name = ""
        self._rounds: dict[int, tuple[Any, _RoundState]] = {}

    def __getstate__(self) -> dict:
        # memory maps do not pickle, and a copy (a spawned worker) opens its own anyway
        state = dict(self.__dict__)
        state.update(_pid=-1, _part_name="", _rounds={})
        return state

    def _own_process(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            host = hashlib.md5(socket.gethostname().encode()).hexdigest()[:8]
            self._part_name = f".part-{host}-{pid}-{secrets.token_hex(4)}.bin.w.tmp"
            self._rounds = {}  # inherited maps are the parent's: drop, never close

    # ---- paths ----
    @staticmethod
    def round_dirname(round_id: int) -> str:
        if int(round_id) < 0:
            raise ValueError(f"round_id must be >= 0, got {round_id}")
        return f"round_{int(round_id):04d}"

    def round_dir(self, round_id: int) -> str:
        return os.path.join(self.root, self.round_dirname(round_id))

    def _path(self, round_id: int, image_id: Any) -> str:
        """Where a round of the old per-image PNG layout keeps ``image_id``'s map."""
        key = image_key(image_id)
        shard = hashlib.md5(key.encode("utf-8")).hexdigest()[:2]
        return os.path.join(self.round_dir(round_id), shard, key + ".png")

    @property
    def pointer_path(self) -> str:
        return os.path.join(self.root, _POINTER)

    # ---- writing ----
    def begin_round(self, round_id: int, *, replace_current: bool = False) -> None:
        """Start writing round ``round_id``; any earlier (partial or stale) directory of that id
        is removed, if it holds only the store's files (else :class:`NotOwnedError`). The
        current round cannot be rewritten while readers may use it, unless ``replace_current``:
        then 'current' first points at no round (readers see none)."""
        if replace_current and (self.pointer_problem() or self.current_round() == int(round_id)):
            self.set_current(None)
        if self.current_round() == int(round_id):
            raise ValueError(
                f"{self.root}: round {round_id} is the current round; point 'current' elsewhere "
                "(set_current) before rewriting it"
            )
        d = self.round_dir(round_id)
        if os.path.exists(d):
            _remove_round_dir(d)
        os.makedirs(d, exist_ok=True)

    def write(self, round_id: int, image_id: Any, label_map: np.ndarray) -> int:
        """Write one label map (uint8 [h, w]) into a round begun with ``begin_round``; returns
        the number of bytes written. Safe to call from several processes (distinct images)."""
        label_map = np.asarray(label_map)
        if label_map.dtype != np.uint8 or label_map.ndim != 2:
            raise ValueError(
                f"label map of image {image_id!r} must be uint8 [h, w], got "
                f"{label_map.dtype} {tuple(label_map.shape)}"
            )
        d = self.round_dir(round_id)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d}: call begin_round first")
        h, w = label_map.shape
        if min(h, w) < 1:
            raise ValueError(f"label map of image {image_id!r} is empty ({h}x{w})")
        self._own_process()
        record = packed.encode_record(image_key(image_id), label_map)
        # No fsync per map: finish_round fsyncs the parts before the manifest vouches for them.
        packed.append_record(os.path.join(d, self._part_name), record)
        return len(record)

    def finish_round(self, round_id: int, manifest: dict | None = None) -> dict:
        """Write the manifest (LAST) and make the round current. Called by one process after
        every writer is done. ``num_images``, ``bytes``, ``round`` and ``created`` are filled in
        by counting the files on disk; the caller adds epoch, iteration, features, K, source."""
        d = self.round_dir(round_id)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{d}: round {round_id} was never begun")
        names = os.listdir(d)
        if any(packed.TEMP_PART_RE.match(f) or packed.PART_RE.match(f) for f in names):
            layout = self._publish_parts(d, names)
            n, nbytes = layout.pop("num_images"), layout.pop("bytes")
        else:  # maps of the old layout (e.g. a test or tool writing PNGs itself), or none
            n, nbytes = self._count_maps(d)
            layout = {"format": "png-L"}
        if n == 0:
            raise RuntimeError(f"{d}: refusing to finish a round with no label maps")
        m = dict(manifest or {})
        m.update(
            round=int(round_id),
            num_images=n,
            bytes=nbytes,
            bytes_per_image=nbytes / n,
            created=time.time(),
            **layout,
        )
        atomic_write_bytes(os.path.join(d, _MANIFEST), json.dumps(m, indent=1).encode())
        self.set_current(round_id)
        return m

    @staticmethod
    def _publish_parts(d: str, names: list[str]) -> dict:
        """Rename the writers' temporary parts to ``part-NNN.bin`` (fsynced), write the index;
        the manifest fields describing them (files, bytes, crc32s; num_images, bytes)."""
        done = sorted(f for f in names if packed.PART_RE.match(f))
        nxt = 1 + max((int(packed.PART_RE.match(f).group(1)) for f in done), default=-1)
        for f in sorted(f for f in names if packed.TEMP_PART_RE.match(f)):
            name = packed.final_part_name(nxt)
            nxt += 1
            with open(os.path.join(d, f), "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(os.path.join(d, f), os.path.join(d, name))
            done.append(name)
        paths = [os.path.join(d, f) for f in done]
        index = packed.build_index(paths)
        buf = io.BytesIO()
        np.save(buf, index, allow_pickle=False)
        atomic_write_bytes(os.path.join(d, packed.INDEX), buf.getvalue())
        files = [
            {"file": f, "bytes": os.path.getsize(p), "crc32": packed.crc32_file(p)}
            for f, p in zip(
                [*done, packed.INDEX], [*paths, os.path.join(d, packed.INDEX)], strict=True
            )
        ]
        return {
            "format": packed.FORMAT,
            "files": files,
            "num_images": len(index),
            "bytes": sum(f["bytes"] for f in files),
        }

    def set_current(self, round_id: int | None) -> None:
        """Atomically point ``current`` at a complete round, or at none (``None``)."""
        if round_id is not None and not self.is_complete(round_id):
            raise ValueError(f"{self.round_dir(round_id)} is not a complete round (no manifest)")
        os.makedirs(self.root, exist_ok=True)
        rec = {"round": None if round_id is None else int(round_id)}
        if round_id is not None:
            rec["dir"] = self.round_dirname(round_id)
        atomic_write_bytes(self.pointer_path, json.dumps(rec).encode())

    # ---- reading ----
    def is_complete(self, round_id: int) -> bool:
        return os.path.isfile(os.path.join(self.round_dir(round_id), _MANIFEST))

    def current_round(self) -> int | None:
        """The round ``current.json`` points at (None: no pointer, or a pointer at no round).

        Raises :class:`CorruptPointerError` when the file holds anything else."""
        try:
            with open(self.pointer_path, "rb") as f:
                rec = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptPointerError(f"{self.pointer_path}: corrupt pointer file ({e})") from e
        r = rec.get("round", ...) if isinstance(rec, dict) else ...
        if r is not None and (not isinstance(r, int) or isinstance(r, bool) or r < 0):
            raise CorruptPointerError(
                f'{self.pointer_path}: corrupt pointer file (expected {{"round": <int> or '
                f"null}}, got {rec!r:.100})"
            )
        return r

    def pointer_problem(self) -> str | None:
        """Why ``current.json`` is corrupt (the :class:`CorruptPointerError` message), or None."""
        try:
            self.current_round()
        except CorruptPointerError as e:
            return str(e)
        return None

    def verify_round(self, round_id: int) -> list[str]:
        """Problems of a round on disk (empty: sound): no directory, no or unreadable manifest,
        or label-map files whose count or total size differ from the manifest's. Lists the
        files (no decoding): a whole COCO round takes about a second."""
        d = self.round_dir(round_id)
        if not os.path.isdir(d):
            return [f"{d} does not exist"]
        try:
            man = self.manifest(round_id)
            want_n, want_bytes = int(man["num_images"]), int(man["bytes"])
        except FileNotFoundError:
            return [f"{d} has no {_MANIFEST}"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            return [f"{os.path.join(d, _MANIFEST)} is unreadable ({type(e).__name__}: {e})"]
        if man.get("format") == packed.FORMAT:
            return self._verify_packed(d, man, want_n)
        n, nbytes = self._count_maps(d)
        problems = []
        if n != want_n:
            problems.append(f"{d} holds {n} label maps, its manifest says {want_n}")
        if nbytes != want_bytes:
            problems.append(f"{d}: label maps total {nbytes} bytes, its manifest says {want_bytes}")
        return problems

    @staticmethod
    def _verify_packed(d: str, man: dict, want_n: int) -> list[str]:
        problems = []
        try:
            files = [(str(f["file"]), int(f["bytes"]), int(f["crc32"])) for f in man["files"]]
        except (KeyError, TypeError, ValueError) as e:
            return [f"{os.path.join(d, _MANIFEST)} is unreadable (files: {type(e).__name__}: {e})"]
        for name, size, crc in files:
            path = os.path.join(d, name)
            if not os.path.isfile(path):
                problems.append(f"{path} is missing (listed in its manifest)")
            elif os.path.getsize(path) != size:
                problems.append(
                    f"{path}: {os.path.getsize(path)} bytes, its manifest says {size} bytes"
                )
            elif packed.crc32_file(path) != crc:
                problems.append(f"{path}: crc32 differs from its manifest's (damaged)")
        if not problems:
            try:
                indexed = len(np.load(os.path.join(d, packed.INDEX), mmap_mode="r"))
            except (OSError, ValueError) as e:
                return [f"{os.path.join(d, packed.INDEX)} is unreadable ({e})"]
            if indexed != want_n:
                problems.append(f"{d} holds {indexed} label maps, its manifest says {want_n}")
        return problems

    @staticmethod
    def _count_maps(d: str) -> tuple[int, int]:
        n, nbytes = 0, 0
        for dirpath, _, files in os.walk(d):
            for f in files:
                if f.endswith(".png") and not f.startswith("."):
                    n += 1
                    nbytes += os.path.getsize(os.path.join(dirpath, f))
        return n, nbytes

    def rounds(self) -> list[int]:
        """Ids of the complete rounds, ascending."""
        if not os.path.isdir(self.root):
            return []
        out = []
        for name in os.listdir(self.root):
            m = _ROUND_RE.match(name)
            if m and self.is_complete(int(m.group(1))):
                out.append(int(m.group(1)))
        return sorted(out)

    def manifest(self, round_id: int) -> dict:
        path = os.path.join(self.round_dir(round_id), _MANIFEST)
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: round {round_id} is not complete") from None

    def bytes_per_image(self, round_id: int) -> float:
        return float(self.manifest(round_id)["bytes_per_image"])

    def has(self, image_id: Any, round_id: int | None = None) -> bool:
        r = self.current_round() if round_id is None else round_id
        if r is None:
            return False
        try:
            reader = self._reader(r)
        except MaskFileError:
            return False
        if reader is None:
            return os.path.isfile(self._path(r, image_id))
        try:
            return reader.find(image_key(image_id)) is not None
        except (OSError, ValueError):
            return False

    def _round_state(self, round_id: int) -> _RoundState | None:
        """This process's (reader, cell centre) of a round with a manifest, or None for a round
        not finished (its maps are looked for as PNGs, and are not there). The reader is None
        for a round of PNG files; the centre (:meth:`cell_centre`) None for the legacy rule.
        One ``stat`` of the manifest per call: the cache is keyed by it."""
        self._own_process()
        d = self.round_dir(round_id)
        path = os.path.join(d, _MANIFEST)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._rounds.get(int(round_id))
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            man = self.manifest(round_id)
        except (ValueError, UnicodeDecodeError) as e:
            raise MaskFileError(f"{path}: unreadable manifest ({e})") from None
        try:
            centre = cell_centre_from_manifest(man, path)
        except ValueError as e:
            raise MaskFileError(str(e)) from None
        reader = None
        if man.get("format") == packed.FORMAT:
            parts = [f["file"] for f in man["files"] if packed.PART_RE.match(f["file"])]
            try:
                reader = packed.PackedRound(d, parts)
            except (OSError, ValueError) as e:
                raise MaskFileError(
                    f"{os.path.join(d, packed.INDEX)}: unreadable mask index of round "
                    f"{round_id} of {self.root} ({type(e).__name__}: {e})"
                ) from None
        state = (reader, centre)
        self._rounds[int(round_id)] = (key, state)
        return state

    def _reader(self, round_id: int) -> packed.PackedRound | None:
        state = self._round_state(round_id)
        return None if state is None else state[0]

    def cell_centre(self, round_id: int) -> CellCentre:
        """Where the cells of ``round_id``'s maps sit on their images: the manifest's
        ``"cell_grid"`` centre (c_y, c_x), or None (the legacy rule) for a round that records
        none or has no manifest yet (``cyborgs.masks.cell_grid``). Cached per manifest file."""
        state = self._round_state(round_id)
        return None if state is None else state[1]

    def read_placed(
        self, image_id: Any, round_id: int | None = None
    ) -> tuple[np.ndarray, CellCentre]:
        """``(label map at its stored resolution, cell centre of its round)``: what a consumer
        needs to put the map on the image's pixels (``cell_grid.upsample_label_map``)."""
        r = self.current_round() if round_id is None else round_id
        if r is None:
            raise FileNotFoundError(f"{self.root}: no current mask round")
        reader, centre = self._round_state(r) or (None, None)
        if reader is not None:
            return self._read_packed(reader, image_id, r), centre
        return self._read_png(image_id, r), centre

    def read(
        self,
        image_id: Any,
        out_hw: tuple[int, int] | None = None,
        round_id: int | None = None,
    ) -> np.ndarray:
        """The label map of ``image_id`` in ``round_id`` (default: the current round), put on
        the pixels of an image of ``out_hw`` = (H, W) when given, by the round's cell centre
        (:meth:`cell_centre`; nearest upsampling for a round that records none)."""
        arr, centre = self.read_placed(image_id, round_id)
        if out_hw is not None:
            arr = upsample_label_map(arr, out_hw, centre)
        return arr

    def _read_packed(self, reader: packed.PackedRound, image_id: Any, r: int) -> np.ndarray:
        try:
            i = reader.find(image_key(image_id))
            if i is None:
                raise MaskFileError(
                    f"{reader.dir}: no mask for image_id {image_id!r} in round {r} of {self.root}"
                )
            return reader.read_row(i)
        except (OSError, ValueError) as e:  # a part deleted, truncated or overwritten
            raise MaskFileError(
                f"{reader.dir}: unreadable mask of image_id {image_id!r} in round {r} of "
                f"{self.root} ({type(e).__name__}: {e})"
            ) from None

    def _read_png(self, image_id: Any, r: int) -> np.ndarray:
        path = self._path(r, image_id)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except FileNotFoundError:
            raise MaskFileError(
                f"{path}: no mask for image_id {image_id!r} in round {r} of {self.root}"
            ) from None
        except (OSError, ValueError, SyntaxError) as e:  # truncated / not a PNG
            raise MaskFileError(
                f"{path}: unreadable mask of image_id {image_id!r} in round {r} of {self.root} "
                f"({type(e).__name__}: {e})"
            ) from None
        if arr.dtype != np.uint8 or arr.ndim != 2:
            raise MaskFileError(f"{path}: not an 8-bit label map ({arr.dtype}, {arr.shape})")
        return arr


def store_root(cfg, kind: str, dataset_name: str) -> str:
    """Directory of the mask rounds of ``kind`` ("bootstrap", or a fixed source's cache name)
    for ``dataset_name``: ``<CYBORGS.MASKS.STORE_DIR or OUTPUT_DIR/masks>/<kind>/<dataset>``.
    The bootstrap hook (writer) and the "bootstrap" mask source (reader) both use it."""
    base = cfg.CYBORGS.MASKS.STORE_DIR or os.path.join(cfg.OUTPUT_DIR, "masks")
    return os.path.join(base, kind, image_key(dataset_name))
