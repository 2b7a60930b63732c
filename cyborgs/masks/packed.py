"""The packed layout of a mask round: a few files per writer, not one per image.

A writer process appends one self-describing record per label map to its own part file
(``.part-<host>-<pid>-<token>.bin.w.tmp`` while the round is written; ``part-NNN.bin`` once the
round is finished)::

    record = header | key | payload
    header = "<4sIIHII": b"CYM1", h, w, len(key), len(payload), crc32(payload)
    key    = image_key(image_id), ASCII (percent-encoded: any image name works)
    payload = zlib(label map, row-major uint8)

Each record is one ``O_APPEND`` write of a file opened and closed around it: no state crosses a
fork, and the close is what NFS's close-to-open consistency needs before another host's rank
finishes the round. The finisher scans the parts once and writes ``index.npy``: one row per
image (64-bit key hash, part, offsets, shape, crc), sorted by hash, so that a reader finds a map
by binary search in a memory map, whatever the image count, without a Python dict per worker.

Measured against the per-image PNG layout in ``benchmarks/mask_store.py`` (RESULTS.md).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FORMAT",
    "INDEX",
    "PackedFormatError",
    "PackedRound",
    "append_record",
    "build_index",
    "encode_record",
    "final_part_name",
    "key_hash",
    "scan_part",
]

FORMAT = "packed-v1"
INDEX = "index.npy"
MAGIC = b"CYM1"
HEADER = struct.Struct("<4sIIHII")
PART_RE = re.compile(r"^part-(\d{3,})\.bin$")
TEMP_PART_RE = re.compile(r"^\.part-[A-Za-z0-9_\-]+\.bin\.w\.tmp$")
# zlib's default level (not tuned): on 60x80 segment maps it already comes out ~6% under the
# optimised PNG of the same map (benchmarks/RESULTS.md)
_LEVEL = 6

INDEX_DTYPE = np.dtype(
    [
        ("hash", "<u8"),
        ("part", "<u4"),
        ("key_off", "<u8"),
        ("key_len", "<u2"),
        ("off", "<u8"),
        ("len", "<u4"),
        ("h", "<u4"),
        ("w", "<u4"),
        ("crc", "<u4"),
    ]
)


class PackedFormatError(ValueError):
    """A part file or index that does not hold what the packed layout writes."""


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("ascii"), digest_size=8).digest(), "little")


def final_part_name(i: int) -> str:
    return f"part-{i:03d}.bin"


def encode_record(key: str, label_map: np.ndarray) -> bytes:
    kb = key.encode("ascii")
    payload = zlib.compress(np.ascontiguousarray(label_map).tobytes(), _LEVEL)
    h, w = label_map.shape
    return HEADER.pack(MAGIC, h, w, len(kb), len(payload), zlib.crc32(payload)) + kb + payload


def append_record(path: str, record: bytes) -> None:
    """Append ``record`` to ``path`` in one write (created if missing)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(record)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


@dataclass
class Record:
    key: str
    key_off: int
    off: int
    length: int
    h: int
    w: int
    crc: int


def scan_part(path: str) -> list[Record]:
    """Every record of a part file, in order. Raises :class:`PackedFormatError` (naming the
    file and offset) for anything but whole records: a torn tail is a writer that died."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < HEADER.size:
            raise PackedFormatError(f"{path}: torn record header at byte {pos} of {n}")
        magic, h, w, klen, plen, crc = HEADER.unpack_from(data, pos)
        if magic != MAGIC:
            raise PackedFormatError(f"{path}: no record at byte {pos} (bad magic {magic!r})")
        key_off = pos + HEADER.size
        off = key_off + klen
        if off + plen > n:
            raise PackedFormatError(f"{path}: torn record at byte {pos} of {n}")
        key = data[key_off:off].decode("ascii")
        out.append(Record(key, key_off, off, plen, h, w, crc))
        pos = off + plen
    return out


def build_index(parts: list[str]) -> np.ndarray:
    """The index of ``parts`` (paths, in part order): one row per key, sorted by key hash.

    Within a part the last record of a key wins (a rewritten map); the same key in two parts
    is an error (two writers wrote one image)."""
    rows, owner = [], {}
    for p, path in enumerate(parts):
        last = {r.key: r for r in scan_part(path)}
        for key, r in last.items():
            if key in owner:
                raise PackedFormatError(
                    f"image key {key!r} was written by two writers ({parts[owner[key]]} and "
                    f"{path}): the ranks' shards of a round must not overlap"
                )
            owner[key] = p
            rows.append((key_hash(key), p, r.key_off, len(key), r.off, r.length, r.h, r.w, r.crc))
    index = np.array(rows, dtype=INDEX_DTYPE)
    return index[np.argsort(index["hash"], kind="stable")]


class PackedRound:
    """Reader of one finished packed round: the index in memory, the parts memory-mapped
    lazily (one process's; the store makes one per pid)."""

    def __init__(self, round_dir: str, part_names: list[str]):
        self.dir = round_dir
        self.part_names = part_names
        # mapped, not loaded (ImageNet: ~60 MB a round); the hash column, searched on every
        # read, is copied contiguous (8 bytes an image)
        self.index = np.load(os.path.join(round_dir, INDEX), mmap_mode="r", allow_pickle=False)
        if self.index.dtype != INDEX_DTYPE:
            raise PackedFormatError(f"{os.path.join(round_dir, INDEX)}: not a mask index")
        self._hashes = np.ascontiguousarray(self.index["hash"])
        self._maps: dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _part(self, p: int) -> mmap.mmap:
        m = self._maps.get(p)
        if m is None:
            with open(os.path.join(self.dir, self.part_names[p]), "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[p] = m
        return m

    def part_path(self, p: int) -> str:
        return os.path.join(self.dir, self.part_names[p])

    def find(self, key: str) -> int | None:
        """Row of ``key`` in the index, or None."""
        h = np.uint64(key_hash(key))
        i = int(np.searchsorted(self._hashes, h))
        kb = key.encode("ascii")
        while i < len(self._hashes) and self._hashes[i] == h:
            row = self.index[i]
            ko, kl = int(row["key_off"]), int(row["key_len"])
            if kl == len(kb) and self._part(int(row["part"]))[ko : ko + kl] == kb:
                return i
            i += 1
        return None

    def read_row(self, i: int) -> np.ndarray:
        """The label map of index row ``i``; :class:`PackedFormatError` if its bytes are not
        what the index recorded (crc, length, zlib)."""
        row = self.index[i]
        off, n = int(row["off"]), int(row["len"])
        part = self._part(int(row["part"]))
        where = self.part_path(int(row["part"]))
        payload = part[off : off + n]
        if len(payload) != n or zlib.crc32(payload) != int(row["crc"]):
            raise PackedFormatError(f"checksum mismatch at byte {off} of {where}")
        h, w = int(row["h"]), int(row["w"])
        try:
            raw = zlib.decompress(payload)
        except zlib.error as e:
            raise PackedFormatError(f"{where}: {e}") from None
        if len(raw) != h * w:
            raise PackedFormatError(f"{where}: map size != {h}x{w}")
        return np.frombuffer(raw, np.uint8).reshape(h, w).copy()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()


def crc32_file(path: str, chunk: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return crc
            crc = zlib.crc32(b, crc)
