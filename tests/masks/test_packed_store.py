"""The packed round layout: few files per writer, per-process readers, integrity checks."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from cyborgs.masks.packed import PackedFormatError
from cyborgs.masks.store import MaskStore


def _segments(seed: int, h: int = 15, w: int = 20) -> np.ndarray:
    """A segment-like map: nearest of a few random seed points (not noise)."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    pts = rng.uniform(0, 1, (k, 2)) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    return d.argmin(-1).astype(np.uint8)


def _files(d: str) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file())


@pytest.mark.parametrize("n", [5, 400])
def test_a_round_is_three_files_whatever_its_image_count(tmp_path, n):
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    for i in range(n):
        store.write(0, i, _segments(i))
    man = store.finish_round(0)
    assert _files(store.round_dir(0)) == ["index.npy", "manifest.json", "part-000.bin"]
    assert man["num_images"] == n and man["format"] == "packed-v1"
    assert man["bytes"] == sum(
        os.path.getsize(os.path.join(store.round_dir(0), f["file"])) for f in man["files"]
    )
    for i in range(n):
        np.testing.assert_array_equal(store.read(i), _segments(i))


def _write_shard(root: str, ids: list[int]) -> None:
    store = MaskStore(root)
    for i in ids:
        store.write(0, i, _segments(i))


def test_each_writer_process_is_one_part_and_the_finisher_merges_them(tmp_path):
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    store.write(0, 999, _segments(999))  # the finishing process writes too
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_write_shard, args=(str(tmp_path), list(range(r, 60, 3))))
        for r in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    man = MaskStore(str(tmp_path)).finish_round(0)
    parts = [f"part-00{i}.bin" for i in range(4)]
    assert _files(store.round_dir(0)) == ["index.npy", "manifest.json", *parts]
    assert man["num_images"] == 61
    for i in [*range(60), 999]:
        np.testing.assert_array_equal(store.read(i), _segments(i))
    assert not store.has(60) and store.has(59)
    assert store.verify_round(0) == []


def _child_reads(store: MaskStore, parent_reader_id: int, q) -> None:
    reader = store._reader(0)
    q.put((id(reader) != parent_reader_id, int(store.read(3).sum())))


def test_a_forked_worker_opens_its_own_memory_map(tmp_path):
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    for i in range(5):
        store.write(0, i, _segments(i))
    store.finish_round(0)
    np.testing.assert_array_equal(store.read(3), _segments(3))  # the parent maps the part
    parent = store._reader(0)
    assert parent._maps  # opened lazily, by the read
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_reads, args=(store, id(parent), q))
    p.start()
    own, total = q.get(timeout=30)
    p.join(30)
    assert own and total == int(_segments(3).sum())
    assert store._reader(0) is parent  # the parent keeps its own


def test_a_redone_round_is_reread(tmp_path):
    store = MaskStore(str(tmp_path))
    for value in (1, 2):
        store.begin_round(0, replace_current=True)
        store.write(0, "a", np.full((3, 4), value, np.uint8))
        store.finish_round(0)
        assert int(store.read("a").max()) == value


def test_non_utf8_names_and_rewrites(tmp_path):
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    odd = os.fsdecode(b"\xff\xfe.jpg")  # a file name that is not UTF-8
    store.write(0, odd, _segments(1))
    store.write(0, "ü/ä b", _segments(2))
    store.write(0, "x", _segments(3))
    store.write(0, "x", _segments(4))  # a rewrite: the last one counts
    assert store.finish_round(0)["num_images"] == 3
    np.testing.assert_array_equal(store.read(odd), _segments(1))
    np.testing.assert_array_equal(store.read("ü/ä b"), _segments(2))
    np.testing.assert_array_equal(store.read("x"), _segments(4))


def test_two_writers_of_one_image_and_a_torn_part_are_refused(tmp_path):
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    store.write(0, 7, _segments(7))
    other = MaskStore(str(tmp_path))
    other._own_process()
    other._part_name = ".part-other-1-ab.bin.w.tmp"  # a second writer (another rank)
    other.write(0, 7, _segments(8))
    with pytest.raises(PackedFormatError, match="image key '7' was written by two writers"):
        store.finish_round(0)
    assert not store.is_complete(0)

    store.begin_round(1)
    store.write(1, 1, _segments(1))
    (part,) = Path(store.round_dir(1)).glob(".part-*")
    part.write_bytes(part.read_bytes()[:-3])  # a writer that died mid-record
    with pytest.raises(PackedFormatError, match=r"part-000\.bin: torn record at byte 0"):
        store.finish_round(1)
    assert not store.is_complete(1)


def test_a_store_that_has_read_pickles_for_a_spawned_worker(tmp_path):
    import pickle

    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    store.write(0, 1, _segments(1))
    store.finish_round(0)
    store.read(1)  # holds a memory map now
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy.read(1), _segments(1))


def test_a_read_touches_the_round_metadata_once(tmp_path, monkeypatch):
    # On a shared file system each stat is a metadata request: a sample read, placed on its
    # image, checks the round's manifest once (the reader and the cell centre share it).
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    for i in range(3):
        store.write(0, i, _segments(i))
    store.finish_round(0)
    store.read(0, out_hw=(30, 40), round_id=0)  # the first read opens the round
    import cyborgs.masks.store as store_module

    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        stats.append(os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "stat", counting_stat)
    for i in range(3):
        store.read(i, out_hw=(30, 40), round_id=0)
        store.read_placed(i, round_id=0)
    assert len(stats) == 6 and all(p.endswith("manifest.json") for p in stats)
    np.testing.assert_array_equal(store.read_placed(2, round_id=0)[0], _segments(2))


def test_a_bad_cell_grid_record_is_a_mask_file_error(tmp_path):
    import json

    from cyborgs.masks.store import MaskFileError

    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    store.write(0, 0, _segments(0))
    store.finish_round(0)
    path = os.path.join(store.round_dir(0), "manifest.json")
    man = json.loads(open(path).read())
    man["cell_grid"] = {"centre": [7.0, 7.0]}  # outside [-1, 2] cells: not a centre
    with open(path, "w") as f:
        json.dump(man, f)
    assert store.has(0, round_id=0) is False  # has() answers, it does not raise
    with pytest.raises(MaskFileError, match="manifest.json"):
        store.read(0, round_id=0)
