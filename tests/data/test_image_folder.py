"""Image folders: symlink loops and duplicates are cut and named; unreadable files stay listed so
the loader skips and counts them; FIFOs, images above the pixel cap and outputs of runs are left
out and named; names that are not UTF-8 work."""

from __future__ import annotations

import logging
import os
import signal
import struct
import zlib
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.data.image_folder import (
    IMAGE_FOLDER_DATASET,
    load_image_folder,
    register_image_folder_from_cfg,
)
from cyborgs.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadImageError,
    read_image,
    read_image_size,
    read_image_tensor,
)
from cyborgs.masks.store import MaskStore, image_key
from cyborgs.pretrain_data.pretrain_loader import build_pretrain_train_loader
from cyborgs.pretrain_data.two_view_mapper import TwoViewDatasetMapper


def _png(path, h=24, w=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_is_cut_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "sub" / "b.png", seed=1)
    os.symlink(root, root / "sub" / "loop")  # sub/loop -> the root: an endless walk
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    assert [d["image_id"] for d in dicts] == ["a.png", "sub/b.png"]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "symlink loop" in msg and os.path.join("sub", "loop") in msg


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_duplicates_through_symlinks_are_kept_once_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "real" / "b.png", seed=1)
    os.symlink(root / "real", root / "alias")  # a second way into real/
    os.symlink(root / "a.png", root / "z_link.png")  # a second name of a.png
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    ids = [d["image_id"] for d in dicts]
    assert ids == ["a.png", "alias/b.png"] or ids == ["a.png", "real/b.png"]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "z_link.png (= a.png)" in msg
    assert "alias" in msg or "real" in msg


def test_unreadable_files_stay_listed_and_the_loader_counts_them(tmp_path, caplog):
    root = tmp_path / "imgs"
    for i in range(3):
        _png(root / f"ok{i}.png", seed=i)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    by_id = {d["image_id"]: d for d in dicts}
    assert set(by_id) == {"ok0.png", "ok1.png", "ok2.png", "empty.jpg", "text.png"}
    assert (by_id["empty.jpg"]["height"], by_id["empty.jpg"]["width"]) == (0, 0)
    warn = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warn) == 1 and "empty.jpg" in warn[0] and "text.png" in warn[0]

    # the loader meets them, skips them and reports them for data/num_skipped_images
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.DATA.IMAGE_FOLDER = str(root)
    cfg.DATASETS.TRAIN = (IMAGE_FOLDER_DATASET,)
    cfg.CYBORGS.MASKS.SOURCE = "grid"
    cfg.CYBORGS.AUG.CROP_SIZE = 16
    cfg.SOLVER.IMS_PER_BATCH = 5
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 0
    it = iter(build_pretrain_train_loader(cfg))
    skipped = [f for _ in range(4) for item in next(it) for f in item["skipped_files"]]
    assert skipped
    assert {os.path.basename(f) for f in skipped} <= {"empty.jpg", "text.png"}


class _Alarm:
    """Fail (instead of hanging the suite) if the body blocks for more than ``seconds``."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __enter__(self):
        def fire(signum, frame):
            raise TimeoutError(f"blocked for more than {self.seconds} s")

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def _loader_cfg(root, **data):
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.DATA.IMAGE_FOLDER = str(root)
    for k, v in data.items():
        setattr(cfg.CYBORGS.DATA, k, v)
    cfg.DATASETS.TRAIN = (IMAGE_FOLDER_DATASET,)
    cfg.CYBORGS.MASKS.SOURCE = "grid"
    cfg.CYBORGS.AUG.CROP_SIZE = 16
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 0
    return cfg


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_like_an_image_is_skipped_named_and_never_opened(tmp_path, caplog):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "b.png", seed=1)
    os.mkfifo(root / "x.jpg")  # no writer: an open() for reading blocks forever
    with _Alarm(20), caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
        assert [d["image_id"] for d in dicts] == ["a.png", "b.png"]
        msg = " ".join(r.getMessage() for r in caplog.records)
        assert "x.jpg (a FIFO" in msg and "not regular files" in msg
        # the readers refuse it without opening it (a dict built by hand, or a FIFO swapped in)
        for read in (read_image, read_image_tensor, read_image_size):
            with pytest.raises(BadImageError, match="FIFO.*not a regular file"):
                read(str(root / "x.jpg"))
        # and the loader trains on the rest
        it = iter(build_pretrain_train_loader(_loader_cfg(root)))
        assert {item["image_id"] for _ in range(2) for item in next(it)} == {"a.png", "b.png"}


def test_name_that_is_not_utf8_works_and_is_shown_with_replacement_chars(tmp_path, caplog):
    root = tmp_path / os.fsdecode(b"imgs-\xe9")  # the folder's own name too
    _png(root / "a.png")
    raw = os.path.join(os.fsencode(root), b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    _png(root / "tmp.png", seed=1)
    os.rename(root / "tmp.png", raw)
    (root / "broken\udcff.png").write_bytes(b"not an image")  # same kind of name, unreadable
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    ids = [d["image_id"] for d in dicts]
    name = os.fsdecode(b"caf\xe9-\xff.png")
    assert ids == ["a.png", "broken\udcff.png", name]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "broken\ufffd.png" in msg  # shown with a replacement character ...
    msg.encode("utf-8")  # ... so every message can be written out

    # the mask store keys it by its own bytes, reversibly
    key = image_key(name)
    assert key == "caf%E9-%FF%2Epng" and key != image_key("caf\xe9-\xff.png")
    assert os.fsdecode(unquote_to_bytes(key)) == name
    store = MaskStore(str(tmp_path / "masks"))
    store.begin_round(0)
    for d in dicts:
        store.write(0, d["image_id"], np.full((3, 4), len(d["image_id"]), np.uint8))
    store.finish_round(0)
    assert store.read(name)[0, 0] == len(name)

    # and the loader reads it
    it = iter(build_pretrain_train_loader(_loader_cfg(root)))
    seen = {item["image_id"] for _ in range(3) for item in next(it)}
    assert name in seen


def _bilevel_png(path, width: int, height: int) -> None:
    """A 1-bit all-black PNG built by hand, row by row: no full-size buffer in the test."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_above_the_pixel_cap_is_named_and_never_decoded(tmp_path, caplog, monkeypatch):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "b.png", seed=1)
    _bilevel_png(root / "bomb.png", 12000, 12000)  # 144 MP, 1.8 GB decoded
    assert (root / "bomb.png").stat().st_size < 30_000
    assert 12000 * 12000 > DEFAULT_MAX_IMAGE_PIXELS
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda im: decoded.append(im.size) or real_load(im))
    with caplog.at_level(logging.WARNING):
        dicts = load_image_folder(str(root))
    # listed like an unreadable file (size 0, named once), for the loaders to skip and count
    assert [(d["image_id"], d["width"]) for d in dicts] == [
        ("a.png", 32),
        ("b.png", 32),
        ("bomb.png", 0),
    ]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "bomb.png (12000x12000 = 144000000 pixels exceeds" in msg
    assert "MAX_IMAGE_PIXELS=100000000" in msg
    for read in (read_image, read_image_tensor, read_image_size):
        with pytest.raises(BadImageError, match=r"12000x12000 = 144000000 pixels exceeds"):
            read(str(root / "bomb.png"))
    assert (12000, 12000) not in decoded
    it = iter(build_pretrain_train_loader(_loader_cfg(root)))
    skipped = {f for _ in range(3) for item in next(it) for f in item["skipped_files"]}
    assert {os.path.basename(f) for f in skipped} == {"bomb.png"}
    assert (12000, 12000) not in decoded
    # the key sets the cap (0: none); the readers take it from the loader's config
    assert [d["width"] for d in load_image_folder(str(root), max_pixels=32 * 24)][:2] == [32, 32]
    with pytest.raises(FileNotFoundError, match="no readable image .*MAX_IMAGE_PIXELS=767"):
        load_image_folder(str(root), max_pixels=32 * 24 - 1)
    mapper = TwoViewDatasetMapper(_loader_cfg(root, MAX_IMAGE_PIXELS=100))
    assert mapper({"file_name": str(root / "a.png"), "image_id": "a.png"}) is None


def _run_outputs(run) -> None:
    """What a pretraining run leaves in its OUTPUT_DIR: config, checkpoint, a figure, mask
    rounds."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("CYBORGS: {}\n")
    (run / "last_checkpoint").write_text("model_0000009.pth")
    _png(run / "plots" / "loss.png")
    store = MaskStore(str(run / "masks" / "bootstrap" / "cyborgs_image_folder"))
    store.begin_round(1)
    store.write(1, "a.png", np.zeros((6, 8), np.uint8))
    store.finish_round(1)
    store.begin_round(2)  # a round in progress: no manifest, no pointer to it yet
    store.write(2, "a.png", np.zeros((6, 8), np.uint8))


def test_outputs_inside_the_image_folder_are_never_images(tmp_path, caplog):
    root = tmp_path / "imgs"
    _png(root / "a.png")
    _png(root / "b.png", seed=1)
    _png(root / "round_0001" / "c.png", seed=2)  # a user's folder named like a round: kept
    (root / "run").mkdir()  # this run's OUTPUT_DIR, before its first checkpoint and round
    (root / "run" / "config.yaml").write_text("CYBORGS: {}\n")
    _png(root / "run" / "plots" / "loss.png")
    _run_outputs(root / "old_run")  # another run's, recognised by its files
    _run_outputs(root / "older_run")
    (root / "older_run" / "last_checkpoint").unlink()  # a run before its first checkpoint
    (root / "older_run" / "args.json").write_text("{}")
    _png(root / "store_copy" / "round_0001" / "k.png")  # a mask store, by its pointer alone
    (root / "store_copy" / "current.json").write_text('{"round": 1, "dir": "round_0001"}')
    store_dir = root / "stores"  # CYBORGS.MASKS.STORE_DIR
    _png(store_dir / "bootstrap" / "ds" / "round_0000" / "ab" / "k.png")
    _png(root / "masks_only" / "round_0003" / "0f" / "k.png")  # a partial round elsewhere
    cfg = _loader_cfg(root)
    cfg.OUTPUT_DIR = str(root / "run")
    cfg.CYBORGS.MASKS.STORE_DIR = str(store_dir)
    with caplog.at_level(logging.WARNING):
        assert register_image_folder_from_cfg(cfg) == IMAGE_FOLDER_DATASET
        ids = [d["image_id"] for d in DatasetCatalog.get(IMAGE_FOLDER_DATASET)]
    assert ids == ["a.png", "b.png", "round_0001/c.png"]
    (warning,) = [r.getMessage() for r in caplog.records if "outputs of CYBORGS" in r.getMessage()]
    named = set(warning.rsplit(": ", 1)[1].split(", "))
    assert named == {
        str(root / d)
        for d in ("run", "old_run", "older_run", "store_copy", "stores", "masks_only/round_0003")
    }
    # a resumed run registers the same images although the rounds are there now
    DatasetCatalog.remove(IMAGE_FOLDER_DATASET)
    MetadataCatalog.remove(IMAGE_FOLDER_DATASET)
    register_image_folder_from_cfg(cfg)
    assert [d["image_id"] for d in DatasetCatalog.get(IMAGE_FOLDER_DATASET)] == ids


def test_a_folder_loaded_again_warns_once(tmp_path, caplog):
    # a run loads its data set several times (setup counts it, the loader, the rounds, the
    # plan): each problem is one warning per process, not one per load
    root = tmp_path / "imgs"
    _png(root / "ok.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "out").mkdir()
    (root / "out" / "last_checkpoint").write_text("model_final.pth")  # a run's OUTPUT_DIR
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert [d["image_id"] for d in load_image_folder(str(root))] == ["empty.jpg", "ok.png"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreadable" in m for m in messages) == 1
    assert sum("outputs of CYBORGS" in m for m in messages) == 1
    # another folder with the same problem still warns
    other = tmp_path / "other"
    _png(other / "ok.png")
    (other / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        load_image_folder(str(other))
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 2


def test_a_warning_before_the_log_file_exists_reaches_it_once_it_does(tmp_path):
    # pretrain_net counts the images (a load) before setup_logger attaches OUTPUT_DIR/log.txt:
    # that first warning must not use up the one the log file gets
    root = tmp_path / "imgs"
    _png(root / "ok.png")
    (root / "empty.jpg").write_bytes(b"")
    load_image_folder(str(root))  # before the run's logging: stderr only

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    log_file = Collect()  # what setup_logger(name="cyborgs") attaches
    logging.getLogger("cyborgs").addHandler(log_file)
    try:
        for _ in range(2):  # the loader, the rounds
            load_image_folder(str(root))
    finally:
        logging.getLogger("cyborgs").removeHandler(log_file)
    assert sum("unreadable" in m for m in log_file.messages) == 1
