"""DESIGN.md's "add a mask source", walked through: a source registered from this module (as a
new file under cyborgs/masks/ would) is accepted by the config check, counted by the run's plan
as the registry says (one precomputed round) and trains a real step of the pretraining loop on
its masks. Nothing else in the suite names it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cyborgs.masks.precompute import cached_mask_source, params_tag
from cyborgs.masks.registry import MASK_SOURCE_REGISTRY, is_precomputed, precomputed

REPO = Path(__file__).resolve().parents[2]
NAME = "recipe_halves"


class _Halves:  # picklable: runs in the precompute's loader workers
    def __call__(self, item: dict) -> np.ndarray:
        h, w = int(item["height"]), int(item["width"])
        mask = np.zeros((h, w), np.uint8)
        mask[:, w // 2 :] = 1  # left half id 0, right half id 1
        return mask


def recipe_halves(cfg, dataset_name: str) -> Callable[[dict, np.ndarray], np.ndarray]:
    from detectron2.data import DatasetCatalog

    return cached_mask_source(
        cfg, dataset_name, NAME, {}, _Halves(), lambda: DatasetCatalog.get(dataset_name)
    )


@pytest.fixture
def registered() -> Iterator[None]:
    """``@MASK_SOURCE_REGISTRY.register()`` + ``@precomputed`` on ``recipe_halves``, undone
    afterwards (detectron2's Registry has no unregister)."""
    MASK_SOURCE_REGISTRY.register()(precomputed(recipe_halves))
    try:
        yield
    finally:
        MASK_SOURCE_REGISTRY._obj_map.pop(NAME)


def _cfg(*opts: str, schedule: bool = False):
    from cyborgs.engine.setup import setup_pretrain_cfg

    demo = str(REPO / "pretrain_configs" / "demo_R18.yaml")
    cfg, _ = setup_pretrain_cfg(demo, list(opts), world_size=1, schedule=schedule)
    return cfg


def test_unregistered_name_is_refused() -> None:
    from cyborgs.config import ConfigError

    with pytest.raises((ConfigError, KeyError), match=NAME):
        _cfg("CYBORGS.MASKS.SOURCE", NAME)
    with pytest.raises(KeyError, match=NAME):
        is_precomputed(NAME)


def test_plan_counts_what_the_registry_says(registered) -> None:
    from cyborgs.engine.plan import build_plan

    plan = build_plan(_cfg("CYBORGS.MASKS.SOURCE", NAME), 400)
    assert plan["mask_source"] == NAME and plan["bootstrap_rounds"] == []
    # one stored round, at image resolution: its size is not estimated
    assert plan["masks"]["rounds_kept"] == 1 and plan["masks"]["bytes"] is None
    # the built-in heuristics say the same through the same mark; "grid" stores nothing
    assert (
        build_plan(_cfg("CYBORGS.MASKS.SOURCE", "felzenszwalb"), 400)["masks"]["rounds_kept"] == 1
    )
    assert build_plan(_cfg("CYBORGS.MASKS.SOURCE", "grid"), 400)["masks"]["rounds_kept"] == 0


def test_one_training_step_on_its_masks(registered, tmp_path: Path) -> None:
    from detectron2.utils.env import seed_all_rng
    from PIL import Image

    from cyborgs.engine.trainer import CyborgsTrainer
    from cyborgs.masks.store import MaskStore, store_root

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / f"{i}.png")
    cfg = _cfg(
        # 4 images in one batch: one epoch = one step
        *("DATASETS.TRAIN", "('cyborgs_image_folder',)", "CYBORGS.DATA.IMAGE_FOLDER", str(images)),
        *("MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4"),
        *("SOLVER.EPOCHS", "1", "SOLVER.LR_WARMUP_EPOCHS", "0"),
        *("SOLVER.CHECKPOINT_PERIOD", "100000", "CYBORGS.PROJECTOR_HIDDEN_DIM", "32"),
        *("CYBORGS.PROJECTOR_OUT_DIM", "16", "CYBORGS.AUG.CROP_SIZE", "32"),
        # no vMF warm-up: the step trains the contrastive loss, which reads the masks
        *("CYBORGS.WARMUP_EPOCHS", "0", "CYBORGS.MASKS.SOURCE", NAME),
        *("OUTPUT_DIR", str(tmp_path / "run"), "SEED", "3"),
        schedule=True,
    )
    seed_all_rng(0)
    trainer = CyborgsTrainer(cfg)
    assert trainer.max_iter == 1
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.histories()
    assert math.isfinite(history["loss_mask_contrastive"].latest())

    # the masks it trained on are the source's: one precomputed round, halves on every image
    from detectron2.data import DatasetCatalog

    (dataset,) = cfg.DATASETS.TRAIN
    store = MaskStore(store_root(cfg, f"{NAME}-{params_tag({})}", dataset))
    assert store.rounds() == [0]
    for d in DatasetCatalog.get(dataset)[:3]:
        assert np.array_equal(store.read(d["image_id"]), _Halves()(d))
