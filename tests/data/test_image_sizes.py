"""Image sizes from headers, cached across calls and invalidated by a changed file."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from cyborgs.data import image_io, image_sizes
from cyborgs.data.datasets import load_unlabeled_images
from cyborgs.data.image_sizes import cache_file_for, read_image_sizes


def _image(path, w: int, h: int, fmt: str = "JPEG") -> None:
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path, format=fmt)


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CYBORGS_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "imgs"
    d.mkdir()
    _image(d / "000000000001.jpg", 40, 30)
    _image(d / "000000000002.png", 17, 23, "PNG")
    return d


def _count_opens(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = image_io._open

    def counting_open(path, *a, **k):
        opened.append(os.path.basename(path))
        return real(path, *a, **k)

    monkeypatch.setattr(image_io, "_open", counting_open)
    return opened


def test_sizes_are_read_then_cached(root, monkeypatch) -> None:
    names = ["000000000001.jpg", "000000000002.png"]
    opened = _count_opens(monkeypatch)
    assert read_image_sizes(str(root), names) == [(40, 30), (17, 23)]
    assert sorted(opened) == names
    cache = json.loads(open(cache_file_for(str(root))).read())
    assert cache["root"] == str(root) and set(cache["entries"]) == set(names)

    opened.clear()
    assert read_image_sizes(str(root), names) == [(40, 30), (17, 23)]
    assert opened == []  # every size from the cache

    # a replaced image (new size, new mtime) is re-read; the other stays cached
    _image(root / "000000000002.png", 31, 11, "PNG")
    st = os.stat(root / "000000000002.png")
    os.utime(root / "000000000002.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert read_image_sizes(str(root), names) == [(40, 30), (31, 11)]
    assert opened == ["000000000002.png"]


def test_unreadable_image_is_reported_not_cached(root) -> None:
    (root / "broken.jpg").write_bytes(b"not an image")
    sizes = read_image_sizes(str(root), ["000000000001.jpg", "broken.jpg", "missing.jpg"])
    assert sizes[0] == (40, 30)
    assert isinstance(sizes[1], str) and isinstance(sizes[2], str)
    entries = json.loads(open(cache_file_for(str(root))).read())["entries"]
    assert list(entries) == ["000000000001.jpg"]


def test_corrupt_or_unwritable_cache_only_costs_speed(root, tmp_path, monkeypatch, caplog) -> None:
    cache = cache_file_for(str(root))
    os.makedirs(os.path.dirname(cache))
    with open(cache, "w") as f:
        f.write("{ truncated")
    assert read_image_sizes(str(root), ["000000000001.jpg"]) == [(40, 30)]
    assert "unreadable image-size cache" in caplog.text and cache in caplog.text

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("CYBORGS_CACHE_DIR", str(blocker))  # cache dir cannot be created
    assert read_image_sizes(str(root), ["000000000001.jpg"]) == [(40, 30)]
    assert "Could not write the image-size cache" in caplog.text


def _stat_key(path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


# Malformed cache entries, given the file's [byte size, mtime_ns] (which a valid hit matches).
_MALFORMED = {
    "null width": lambda key: [*key, None, 10],
    "a number": lambda key: 7,
    "null": lambda key: None,
    "a string": lambda key: "abcd",
    "a dict": lambda key: {"0": key[0], "1": key[1], "2": 40, "3": 30},
    "empty": lambda key: [],
    "3 items": lambda key: [*key, 40],
    "5 items": lambda key: [*key, 40, 30, 1],
    "strings": lambda key: [*key, "40", "30"],
    "floats": lambda key: [*key, 40.0, 30.0],
    "bools": lambda key: [*key, True, True],
    "zero width": lambda key: [*key, 0, 30],
    "nested": lambda key: [*key, [40], 30],
}


@pytest.mark.parametrize("kind", list(_MALFORMED))
def test_malformed_cache_entries_are_misses(root, monkeypatch, caplog, kind) -> None:
    # A cache that parses but holds nonsense costs speed, never correctness (nor a crash).
    bad, good = "000000000001.jpg", "000000000002.png"
    cache = cache_file_for(str(root))
    os.makedirs(os.path.dirname(cache))
    entries = {
        bad: _MALFORMED[kind](_stat_key(root / bad)),
        good: [*_stat_key(root / good), 17, 23],
    }
    with open(cache, "w") as f:
        json.dump({"version": image_sizes._CACHE_VERSION, "root": str(root), "entries": entries}, f)
    opened = _count_opens(monkeypatch)
    assert read_image_sizes(str(root), [bad, good]) == [(40, 30), (17, 23)]
    assert opened == [bad]  # the malformed entry is re-read, the valid one still a hit
    assert "1 malformed entries" in caplog.text and cache in caplog.text
    rewritten = json.loads(open(cache).read())["entries"]
    assert rewritten == {bad: [*_stat_key(root / bad), 40, 30], good: entries[good]}


def test_unlabeled_loader_keeps_bad_files_and_names_them_all(root, caplog) -> None:
    dicts = load_unlabeled_images(str(root))
    assert [(d["image_id"], d["width"], d["height"]) for d in dicts] == [(1, 40, 30), (2, 17, 23)]
    # Registration used to stop at the first bad header; now every bad file is named once and
    # kept (size 0) so the loaders skip and count it.
    (root / "000000000003.jpg").write_bytes(b"garbage")
    (root / "000000000004.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        dicts = load_unlabeled_images(str(root))
    assert [(d["image_id"], d["width"], d["height"]) for d in dicts] == [
        (1, 40, 30),
        (2, 17, 23),
        (3, 0, 0),
        (4, 0, 0),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 unreadable" in warnings[0]
    assert "000000000003.jpg" in warnings[0] and "000000000004.jpg" in warnings[0]


def test_bad_file_list_in_the_warning_is_bounded(root, caplog) -> None:
    for i in range(image_sizes.MAX_NAMED + 5):
        (root / f"{100 + i:012d}.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        dicts = load_unlabeled_images(str(root))
    assert len(dicts) == 2 + image_sizes.MAX_NAMED + 5
    msg = caplog.records[-1].getMessage()
    assert f"{image_sizes.MAX_NAMED + 5} unreadable" in msg and "and 5 more" in msg
    assert msg.count(".jpg") == image_sizes.MAX_NAMED


def test_all_bad_is_still_an_error(tmp_path) -> None:
    (tmp_path / "1.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no readable image"):
        load_unlabeled_images(str(tmp_path))


def test_sizes_follow_exif_orientation(root) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW to display: width and height swap
    Image.fromarray(np.zeros((10, 60, 3), np.uint8)).save(
        root / "000000000005.jpg", exif=exif.tobytes()
    )
    assert read_image_sizes(str(root), ["000000000005.jpg"]) == [(10, 60)]
