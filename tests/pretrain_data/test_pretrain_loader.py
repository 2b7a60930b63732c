"""Image-folder data set and the pretraining loader (batching, skipped files, size)."""

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

from cyborgs.config import add_cyborgs_config
from cyborgs.data.image_folder import IMAGE_FOLDER_DATASET, load_image_folder
from cyborgs.pretrain_data.pretrain_loader import (
    PositionalBatchStream,
    SkippingMapDataset,
    build_pretrain_train_loader,
    epoch_permutation,
    index_at_position,
    pretrain_dataset_size,
)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for rel, (h, w) in {
        "b.png": (30, 50),
        "a.jpg": (40, 40),
        "sub/c.png": (50, 30),
        "sub/deeper/d.JPG": (36, 48),
    }.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            p, format="JPEG" if rel.lower().endswith("jpg") else "PNG"
        )
    (tmp_path / "notes.txt").write_text("not an image")
    # valid header, truncated pixel data: listed, but fails when the loader decodes it
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(tmp_path / "z.png")
    data = (tmp_path / "z.png").read_bytes()
    (tmp_path / "z.png").write_bytes(data[: len(data) // 3])
    return tmp_path


def _cfg(root, workers=0):
    cfg = add_cyborgs_config(get_cfg())
    cfg.CYBORGS.DATA.IMAGE_FOLDER = str(root)
    cfg.DATASETS.TRAIN = (IMAGE_FOLDER_DATASET,)
    cfg.CYBORGS.MASKS.SOURCE = "grid"
    cfg.CYBORGS.MASKS.GRID_SIZE = 3
    cfg.CYBORGS.AUG.CROP_SIZE = 32
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 1
    return cfg


def test_image_folder_dicts(folder):
    dicts = load_image_folder(str(folder))
    assert [d["image_id"] for d in dicts] == [
        "a.jpg",
        "b.png",
        "sub/c.png",
        "sub/deeper/d.JPG",
        "z.png",
    ]
    by_id = {d["image_id"]: d for d in dicts}
    assert (by_id["b.png"]["height"], by_id["b.png"]["width"]) == (30, 50)
    assert by_id["sub/c.png"]["file_name"] == str(folder / "sub" / "c.png")
    with pytest.raises(FileNotFoundError, match="IMAGE_FOLDER"):
        load_image_folder(str(folder / "nope"))


def test_size_and_registration_follow_the_cfg(folder, tmp_path_factory):
    assert pretrain_dataset_size(_cfg(folder)) == 5
    other = tmp_path_factory.mktemp("other")
    Image.new("RGB", (10, 10)).save(other / "x.png")
    assert pretrain_dataset_size(_cfg(other)) == 1  # re-registered for the new root
    assert DatasetCatalog.get(IMAGE_FOLDER_DATASET)[0]["image_id"] == "x.png"
    cfg = _cfg(folder)
    cfg.CYBORGS.DATA.IMAGE_FOLDER = ""
    with pytest.raises(ValueError, match="IMAGE_FOLDER"):
        pretrain_dataset_size(cfg)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_and_reports_skipped_files(folder, workers):
    loader = build_pretrain_train_loader(_cfg(folder, workers))
    seen, skipped = set(), []
    for i, batch in enumerate(loader):
        assert len(batch) == 3
        for item in batch:
            assert len(item["views"]) == 2 and item["views"][0]["image"].shape == (3, 32, 32)
            seen.add(item["image_id"])
            skipped += item["skipped_files"]
        if i == 6:
            break
    assert "z.png" not in seen and seen == {"a.jpg", "b.png", "sub/c.png", "sub/deeper/d.JPG"}
    # 21 items drawn from 5 files, one of them broken: it was hit and reported
    assert skipped and all(s.endswith("z.png") for s in skipped)


def test_skipping_dataset_gives_up_on_an_all_broken_set():
    ds = SkippingMapDataset(
        [{"file_name": f"f{i}"} for i in range(3)], lambda d: None, max_consecutive_failures=5
    )
    with pytest.raises(RuntimeError, match="5 images in a row"):
        ds[0]


def test_stream_positions_shard_the_global_batch_across_ranks():
    # Map each item to (position, index) so the test sees exactly what the stream addressed.
    ds = SkippingMapDataset(
        list(range(5)), lambda d, rng: {"d": d, "u": float(rng.random())}, seed=3
    )
    streams = [
        PositionalBatchStream(ds, seed=3, global_batch=6, rank=r, world_size=3, start_iter=4)
        for r in range(3)
    ]
    # iteration 4 of a global batch of 6 = positions 24..29, rank r holds 24 + 2r, 25 + 2r
    assert [s.positions(4) for s in streams] == [[24, 25], [26, 27], [28, 29]]
    batches = [next(iter(s)) for s in streams]
    got = [item["d"] for b in batches for item in b]
    assert got == [index_at_position(3, p, 5) for p in range(24, 30)]
    # positions 24 (epoch 4, slot 4) and 25.. (epoch 5): each epoch is a full permutation
    assert got[0] == epoch_permutation(3, 4, 5)[4] and got[1:] == list(epoch_permutation(3, 5, 5))
    # each sample's augmentation generator is default_rng([seed, position])
    assert batches[1][0]["u"] == np.random.default_rng([3, 26]).random()
    with pytest.raises(ValueError, match="multiple"):
        PositionalBatchStream(ds, seed=0, global_batch=5, rank=0, world_size=2)


def test_replacement_of_a_broken_image_depends_on_the_position_only():
    broken = {2}
    ds = SkippingMapDataset(list(range(6)), lambda d: None if d in broken else {"d": d}, seed=1)
    a = ds.map_at(40, 2)
    assert a["skipped_files"] == ["index 2"] and a["d"] != 2
    assert ds.map_at(40, 2)["d"] == a["d"]  # again, or in another worker: the same image
