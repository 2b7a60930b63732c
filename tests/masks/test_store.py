"""MaskStore: atomic rounds, current pointer, nearest upsampling, compact storage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cyborgs.masks.store import MaskStore, image_key, upsample_nearest


def _map(seed: int, h: int = 6, w: int = 8, k: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, (h, w)).astype(np.uint8)


def test_round_roundtrip_and_current(tmp_path):
    store = MaskStore(str(tmp_path))
    assert store.current_round() is None and store.rounds() == []
    store.begin_round(0)
    ids = [1, "000000139.jpg", "a/b c", "ü"]
    maps = {i: _map(n) for n, i in enumerate(ids)}
    for i, m in maps.items():
        store.write(0, i, m)
    # Partial round: not current, not listed, not readable through the pointer.
    assert store.current_round() is None and store.rounds() == []
    with pytest.raises(FileNotFoundError, match="no current mask round"):
        store.read(1)
    man = store.finish_round(0, {"epoch": 5, "source": "test"})
    assert store.current_round() == 0 and store.rounds() == [0]
    assert man["num_images"] == 4 and man["epoch"] == 5 and man["source"] == "test"
    assert store.manifest(0)["bytes"] == man["bytes"] > 0
    for i, m in maps.items():
        np.testing.assert_array_equal(store.read(i), m)
    # int 1 and str "1" are the same image
    np.testing.assert_array_equal(store.read("1"), maps[1])
    with pytest.raises(FileNotFoundError, match="no mask for image_id 99"):
        store.read(99)


def test_crash_mid_round_is_cleaned_and_previous_stays_current(tmp_path):
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    store.write(0, "x", _map(0))
    store.finish_round(0)
    # Round 5 crashes after one image: no manifest, round 0 stays current.
    store.begin_round(5)
    store.write(5, "x", _map(1))
    store.write(5, "stale", _map(2))
    assert store.current_round() == 0 and store.rounds() == [0]
    with pytest.raises(ValueError, match="not a complete round"):
        store.set_current(5)
    # Restart round 5: the partial directory is wiped (the stale image is gone).
    store.begin_round(5)
    assert not store.has("stale", round_id=5)
    store.write(5, "x", _map(3))
    store.finish_round(5)
    assert store.current_round() == 5 and store.rounds() == [0, 5]
    np.testing.assert_array_equal(store.read("x"), _map(3))
    np.testing.assert_array_equal(store.read("x", round_id=0), _map(0))
    # The current round cannot be rewritten under the readers' feet.
    with pytest.raises(ValueError, match="current round"):
        store.begin_round(5)
    store.set_current(None)
    assert store.current_round() is None
    # No temp files are left anywhere.
    for _, _, files in os.walk(tmp_path):
        assert not [f for f in files if f.startswith(".tmp-")]
    with open(store.pointer_path) as f:
        assert json.load(f) == {"round": None}


def test_read_upsamples_nearest(tmp_path):
    store = MaskStore(str(tmp_path))
    m = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    store.begin_round(1)
    store.write(1, 7, m)
    store.finish_round(1)
    up = store.read(7, out_hw=(4, 6))
    expect = np.array([[0] * 3 + [1] * 3] * 2 + [[2] * 3 + [3] * 3] * 2, dtype=np.uint8)
    np.testing.assert_array_equal(up, expect)
    # Non-integer factor: floor(i * in / out), same as torch's "nearest".
    import torch

    m2 = _map(4, 5, 7, 200)
    ours = upsample_nearest(m2, (13, 11))
    ref = torch.nn.functional.interpolate(torch.from_numpy(m2)[None, None].float(), (13, 11))
    np.testing.assert_array_equal(ours, ref[0, 0].numpy().astype(np.uint8))


def test_write_rejects_bad_maps(tmp_path):
    store = MaskStore(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="begin_round"):
        store.write(0, "a", _map(0))
    store.begin_round(0)
    with pytest.raises(ValueError, match="uint8"):
        store.write(0, "a", _map(0).astype(np.int64))
    with pytest.raises(RuntimeError, match="no label maps"):
        store.finish_round(0)


def test_image_key_is_safe_and_injective():
    keys = [image_key(x) for x in ["a", "a/b", "a%2Fb", "..", ".", "x" * 300, "ü", 12]]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert "/" not in k and k not in (".", "..") and len(k) <= 200
    assert image_key(12) == image_key("12") == "12"


def test_bytes_per_image_smooth_maps_are_small(tmp_path):
    # Piecewise-constant 80x60 maps with 81 regions (COCO res3 grid of a 640x480 image).
    rng = np.random.default_rng(0)
    store = MaskStore(str(tmp_path))
    store.begin_round(0)
    yy, xx = np.mgrid[:60, :80]
    for i in range(4):
        pts = rng.uniform(0, 1, (81, 2)) * [60, 80]
        d = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
        store.write(0, i, d.argmin(-1).astype(np.uint8))
    store.finish_round(0)
    assert 100 < store.bytes_per_image(0) < 2048


def _finished(tmp_path, ids=(1, 2, 3)):
    store = MaskStore(str(tmp_path))
    store.begin_round(4)
    for i in ids:
        store.write(4, i, _map(i))
    store.finish_round(4)
    return store


@pytest.mark.parametrize(
    "content", [b"\x00garbage{", b"[]", b'{"round": "4"}', b'{"dir": "round_0004"}', b"\xff\xfe"]
)
def test_garbage_pointer_is_a_corrupt_pointer_error(tmp_path, content):
    from cyborgs.masks.store import CorruptPointerError

    store = _finished(tmp_path)
    Path(store.pointer_path).write_bytes(content)
    with pytest.raises(CorruptPointerError, match="current.json: corrupt pointer file"):
        store.current_round()
    # a round can still be begun over it (the pointer is rewritten to none first)
    store.begin_round(4, replace_current=True)
    assert store.current_round() is None


def _legacy_png_round(tmp_path, ids=(1, 2, 3), round_id=4):
    """A round of the earlier layout (one PNG per image), as earlier versions wrote it."""
    from cyborgs.masks.store import encode_label_map

    store = MaskStore(str(tmp_path))
    store.begin_round(round_id)
    for i in ids:
        path = Path(store._path(round_id, i))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_label_map(_map(i)))
    assert store.finish_round(round_id)["format"] == "png-L"
    return store


def _part(store, round_id=4) -> Path:
    (f,) = [f["file"] for f in store.manifest(round_id)["files"] if f["file"].startswith("part")]
    return Path(store.round_dir(round_id)) / f


def test_verify_round_compares_manifest_and_files(tmp_path):
    store = _finished(tmp_path)
    assert store.verify_round(4) == []
    part = _part(store)
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped, same size
    assert any("crc32 differs" in p for p in store.verify_round(4))
    part.write_bytes(data[: len(data) // 2])  # truncated
    assert any("bytes, its manifest says" in p for p in store.verify_round(4))
    part.unlink()  # deleted
    assert any("part-000.bin is missing" in p for p in store.verify_round(4))
    part.write_bytes(data)
    assert store.verify_round(4) == []
    manifest = Path(store.round_dir(4)) / "manifest.json"
    manifest.write_bytes(b"{not json")
    assert any("manifest.json is unreadable" in p for p in store.verify_round(4))
    manifest.unlink()
    assert store.verify_round(4) == [f"{store.round_dir(4)} has no manifest.json"]
    assert store.verify_round(7) == [f"{store.round_dir(7)} does not exist"]


def test_verify_round_of_a_legacy_png_round(tmp_path):
    store = _legacy_png_round(tmp_path)
    assert store.verify_round(4) == []
    np.testing.assert_array_equal(store.read(2), _map(2))
    assert store.has(2) and not store.has(9)
    png = Path(store._path(4, 2))
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])  # truncated
    assert any("bytes" in p for p in store.verify_round(4))
    png.unlink()  # deleted
    assert any("holds 2 label maps, its manifest says 3" in p for p in store.verify_round(4))


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_read_of_a_damaged_map_is_a_mask_file_error(tmp_path, damage):
    from cyborgs.masks.store import MaskFileError

    store = _finished(tmp_path)
    part = _part(store)
    data = part.read_bytes()
    man_files = store.manifest(4)["files"]
    # where image 2's record lies: between image 1's and image 3's (written in that order)
    start, end = data.index(b"CYM1", 1), data.index(b"CYM1", data.index(b"CYM1", 1) + 1)
    if damage == "delete":
        part.unlink()
    elif damage == "truncate":
        part.write_bytes(data[: start + 30])
    else:
        part.write_bytes(data[: start + 30] + b"\x00" * (end - start - 30) + data[end:])
    assert store.manifest(4)["files"] == man_files
    with pytest.raises(MaskFileError, match=r"image_id 2 in round 4") as e:
        store.read(2)
    assert isinstance(e.value, FileNotFoundError)  # what callers caught before
    if damage == "garbage":  # the other maps of the part are intact
        np.testing.assert_array_equal(store.read(3), _map(3))


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage"])
def test_read_of_a_damaged_legacy_png_is_a_mask_file_error(tmp_path, damage):
    from cyborgs.masks.store import MaskFileError

    store = _legacy_png_round(tmp_path)
    png = Path(store._path(4, 2))
    if damage == "delete":
        png.unlink()
    elif damage == "truncate":
        png.write_bytes(png.read_bytes()[:40])
    else:
        png.write_bytes(b"not a png at all")
    with pytest.raises(MaskFileError, match=r"image_id 2 in round 4") as e:
        store.read(2)
    assert isinstance(e.value, FileNotFoundError)
    np.testing.assert_array_equal(store.read(3), _map(3))


def test_a_round_directory_of_someone_elses_files_is_not_wiped(tmp_path):
    """The audit's case: files inside masks/bootstrap/<set>/round_0001/ that the store did not
    write were deleted when a round began there. They survive byte for byte, named in the
    error; a directory holding only the store's own files (maps, temp files, manifest) is
    still replaced."""
    from cyborgs.utils.ownership import NotOwnedError

    store = MaskStore(str(tmp_path))
    d = tmp_path / "round_0001"
    files = {"notes.txt": b"mine", "ab/photo.jpg": b"\xff\xd8 not a map", "cd/x.png": b"png"}
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    with pytest.raises(NotOwnedError, match=r"ab/photo\.jpg, notes\.txt; 2 in all"):
        store.begin_round(1)
    assert {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()} == files
    (d / "notes.txt").unlink()
    (d / "ab" / "photo.jpg").unlink()
    (d / "ab" / ".k.png.abc123.tmp").write_bytes(b"partial")
    (d / "manifest.json").write_text("{}")
    store.begin_round(1)
    assert list(d.iterdir()) == []
