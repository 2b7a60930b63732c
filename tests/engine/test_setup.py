"""cyborgs.engine.setup: the one way a pretraining config becomes final.

Expectations follow the keys' documented definitions (cyborgs/config.py): iterations per epoch
= ceil(images / global batch), SOLVER.MAX_ITER = round(SOLVER.EPOCHS x that), the mask-id width
= K_max + 1 (METHOD.md §2), and each old key name lands on its new key with a note.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detectron2.config import get_cfg

from cyborgs.config import ConfigError, add_cyborgs_config, mask_id_width
from cyborgs.engine.setup import finalize_pretrain_cfg, setup_pretrain_cfg

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "pretrain_configs" / "demo_R18.yaml")
PAPER = str(REPO / "pretrain_configs" / "cyborgs_R50_coco_800ep.yaml")


def _setup(*opts, config: str = DEMO, num_images: int = 400):
    return setup_pretrain_cfg(config, list(opts), num_images=num_images, world_size=1)


# ---- SOLVER.MAX_ITER: derived from SOLVER.EPOCHS; a different explicit value is refused ----


def test_max_iter_is_derived_from_epochs_and_the_data_set() -> None:
    cfg, _ = _setup()  # demo: 6 epochs, batch 32
    assert cfg.is_frozen()
    assert cfg.CYBORGS.DATA.NUM_IMAGES == 400
    assert cfg.SOLVER.MAX_ITER == 6 * 13  # ceil(400 / 32) = 13
    # COCO train2017 at the paper's batch 64: ceil(118287 / 64) = 1849 iterations per epoch
    cfg, _ = setup_pretrain_cfg(PAPER, [], num_images=118287, world_size=8, schedule=True)
    assert cfg.SOLVER.MAX_ITER == 800 * 1849


def test_an_explicit_max_iter_is_honoured_only_when_it_is_the_derived_value() -> None:
    cfg, _ = _setup("SOLVER.MAX_ITER", 78)  # = 6 x 13: e.g. a dumped config.yaml reused
    assert cfg.SOLVER.MAX_ITER == 78
    with pytest.raises(ConfigError) as e:
        _setup("SOLVER.MAX_ITER", 2)
    msg = str(e.value)
    for piece in ("SOLVER.MAX_ITER = 2", "SOLVER.EPOCHS = 6", "78 iterations", "Remove"):
        assert piece in msg, (piece, msg)


def test_detectron2s_default_max_iter_is_not_silently_replaced() -> None:
    # a config written for detectron2's usual MAX_ITER is refused, not overwritten
    cfg = add_cyborgs_config(get_cfg())
    cfg.merge_from_file(DEMO)
    cfg.SOLVER.MAX_ITER = 40000
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER = 40000"):
        finalize_pretrain_cfg(cfg, num_images=400, world_size=1)


def test_a_dumped_config_round_trips_on_the_same_data_only(tmp_path) -> None:
    cfg, _ = _setup()
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    again, notes = setup_pretrain_cfg(str(dumped), [], num_images=400, world_size=1)
    assert again.SOLVER.MAX_ITER == 78 and not notes
    with pytest.raises(ConfigError, match="CYBORGS.DATA.NUM_IMAGES = 400, but .* 500 images"):
        setup_pretrain_cfg(str(dumped), [], num_images=500, world_size=1)


def test_without_a_schedule_nothing_is_derived_or_counted(monkeypatch) -> None:
    import cyborgs.data.pretrain_loader as loader

    monkeypatch.setattr(loader, "pretrain_dataset_size", lambda cfg: 1 / 0)
    cfg, _ = setup_pretrain_cfg(DEMO, [], world_size=1, schedule=False)
    assert (cfg.SOLVER.MAX_ITER, cfg.CYBORGS.DATA.NUM_IMAGES) == (0, 0)
    with pytest.raises(ValueError, match="unfrozen"):
        finalize_pretrain_cfg(cfg)


# ---- old key names: mapped once, with a note, then gone from the final config ----

# the overrides tools/dev/study_lib.py passes (old names), as (key, value)
_STUDY_FIXED_MASKS = [
    ("CYBORGS.VMF.WARMUP_EPOCHS", 0),
    ("CYBORGS.VMF.PERIOD_EPOCHS", 0),
    ("CYBORGS.VMF.LAMBDA", 0.0),
]
_STUDY_MICRO = [("SOLVER.EPOCHS", 3), ("SOLVER.WARMUP_EPOCHS", 1)]


def test_old_names_of_the_study_overrides_still_work() -> None:
    opts = [x for kv in _STUDY_MICRO + _STUDY_FIXED_MASKS for x in kv]
    cfg, notes = _setup("CYBORGS.MASKS.SOURCE", "grid", *opts)
    assert cfg.SOLVER.LR_WARMUP_EPOCHS == 1
    # the old name wins over the value demo_R18.yaml gives the new key (1)
    assert cfg.CYBORGS.WARMUP_EPOCHS == 0
    # PERIOD_EPOCHS 0 meant "no vMF term after the warm-up": said by LAMBDA 0 now
    assert cfg.CYBORGS.VMF.LAMBDA == 0.0 and cfg.CYBORGS.VMF.PERIOD_EPOCHS == 1
    deprecated = [n for n in notes if "deprecated" in n]
    assert len(deprecated) == 3
    assert any(
        "CYBORGS.VMF.WARMUP_EPOCHS is deprecated: use CYBORGS.WARMUP_EPOCHS" in n
        for n in deprecated
    )
    # the final config (and so OUTPUT_DIR/config.yaml) has the new names only
    assert "WARMUP_EPOCHS" not in cfg.SOLVER and "WARMUP_EPOCHS" not in cfg.CYBORGS.VMF
    assert "MAX_MASK_IDS" not in cfg.CYBORGS and "MAX_MASK_IDS" not in cfg.dump()


def test_old_names_merge_through_plain_yacs_too(tmp_path) -> None:
    # an older YAML merges with detectron2's own merge_from_file (the old keys are still in the
    # tree), and finalizing maps them
    old = tmp_path / "old.yaml"
    old.write_text(
        f'_BASE_: "{DEMO}"\nSOLVER:\n  WARMUP_EPOCHS: 2\nCYBORGS:\n  MAX_MASK_IDS: 257\n'
        '  VMF:\n    WARMUP_EPOCHS: 3\n    FEATURE: "fused"\n'
    )
    cfg = add_cyborgs_config(get_cfg())
    cfg.merge_from_file(str(old))
    notes = finalize_pretrain_cfg(cfg, num_images=400, world_size=1)
    assert (cfg.SOLVER.LR_WARMUP_EPOCHS, cfg.CYBORGS.WARMUP_EPOCHS) == (2, 3)
    assert cfg.CYBORGS.VMF.FEATURE == "FUSION_FEATURES"
    assert sum("deprecated" in n for n in notes) == 4  # 2 renames, MAX_MASK_IDS, FEATURE value


def test_an_old_max_mask_ids_is_ignored_if_wide_enough_and_refused_if_not() -> None:
    # demo: K_MAX 32 -> width 33; 257 counted every id too (same votes), 20 would not
    cfg, notes = _setup("CYBORGS.MAX_MASK_IDS", 257)
    assert any("MAX_MASK_IDS is deprecated and ignored" in n for n in notes)
    with pytest.raises(ConfigError, match="CYBORGS.MAX_MASK_IDS = 20.*K_MAX = 32.*33"):
        _setup("CYBORGS.MAX_MASK_IDS", 20)


def test_mask_id_width_is_k_max_plus_one() -> None:
    cfg = add_cyborgs_config(get_cfg())
    assert mask_id_width(cfg) == 257  # K_MAX 256: ids 0..255 plus one (METHOD.md §2)
    cfg.CYBORGS.BOOTSTRAP.K_MAX = 81
    assert mask_id_width(cfg) == 82  # ids of a round with K <= 81
    cfg.CYBORGS.MASKS.SOURCE = "grid"
    assert mask_id_width(cfg) == 257  # fixed sources may write any uint8 id


def test_the_model_votes_masks_over_the_derived_width() -> None:
    from detectron2.modeling import build_model

    cfg, _ = setup_pretrain_cfg(
        DEMO,
        ["CYBORGS.PROJECTOR_HIDDEN_DIM", 8, "CYBORGS.PROJECTOR_OUT_DIM", 4],
        world_size=1,
        schedule=False,
    )
    assert build_model(cfg).max_mask_ids == 33  # demo K_MAX 32


# ---- "auto"/"on"/"off" switches accept YAML booleans ----


def test_switches_accept_yaml_booleans(tmp_path) -> None:
    y = tmp_path / "switches.yaml"
    y.write_text(
        f'_BASE_: "{DEMO}"\nCYBORGS:\n  GPU:\n    BF16: off\n    CHANNELS_LAST: on\n'
        "  AUG:\n    DEVICE: false\n"
    )
    cfg, _ = setup_pretrain_cfg(str(y), [], world_size=1, schedule=False)
    assert (cfg.CYBORGS.GPU.BF16, cfg.CYBORGS.GPU.CHANNELS_LAST) == ("off", "on")
    assert cfg.CYBORGS.AUG.DEVICE == "off"
    # command-line overrides over those: "True" / "auto" strings, and Python booleans
    cfg, _ = setup_pretrain_cfg(
        str(y),
        [
            "CYBORGS.GPU.BF16",
            "True",
            "CYBORGS.GPU.CHANNELS_LAST",
            "auto",
            "CYBORGS.AUG.DEVICE",
            True,
        ],
        world_size=1,
        schedule=False,
    )
    assert (cfg.CYBORGS.GPU.BF16, cfg.CYBORGS.GPU.CHANNELS_LAST) == ("on", "auto")
    assert cfg.CYBORGS.AUG.DEVICE == "on"
    # detectron2's plain merge of the same file works as well (typeless default)
    plain = add_cyborgs_config(get_cfg())
    plain.merge_from_file(str(y))
    assert plain.CYBORGS.GPU.BF16 is False
    with pytest.raises(ConfigError, match="CYBORGS.GPU.BF16"):
        setup_pretrain_cfg(DEMO, ["CYBORGS.GPU.BF16", "maybe"], world_size=1, schedule=False)


# ---- the usual order (a file over its base, the command line over the file) holds whichever
# name each layer uses ----


def _yaml(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_a_new_name_on_the_command_line_wins_over_an_old_name_in_the_file(tmp_path) -> None:
    old = _yaml(tmp_path, "old.yaml", f'_BASE_: "{DEMO}"\nSOLVER:\n  WARMUP_EPOCHS: 3\n')
    cfg, notes = setup_pretrain_cfg(old, [], num_images=400, world_size=1)
    assert cfg.SOLVER.LR_WARMUP_EPOCHS == 3 and any("old.yaml" in n for n in notes)
    cfg, _ = setup_pretrain_cfg(old, ["SOLVER.LR_WARMUP_EPOCHS", 0], num_images=400, world_size=1)
    assert cfg.SOLVER.LR_WARMUP_EPOCHS == 0


def test_a_file_wins_over_its_base_whichever_names_they_use(tmp_path) -> None:
    _yaml(tmp_path, "base_old.yaml", f'_BASE_: "{DEMO}"\nCYBORGS:\n  VMF:\n    WARMUP_EPOCHS: 3\n')
    child_new = _yaml(
        tmp_path, "child_new.yaml", '_BASE_: "base_old.yaml"\nCYBORGS:\n  WARMUP_EPOCHS: 2\n'
    )
    cfg, _ = setup_pretrain_cfg(child_new, [], num_images=400, world_size=1)
    assert cfg.CYBORGS.WARMUP_EPOCHS == 2
    _yaml(tmp_path, "base_new.yaml", f'_BASE_: "{DEMO}"\nCYBORGS:\n  WARMUP_EPOCHS: 3\n')
    child_old = _yaml(
        tmp_path,
        "child_old.yaml",
        '_BASE_: "base_new.yaml"\nCYBORGS:\n  VMF:\n    WARMUP_EPOCHS: 2\n',
    )
    cfg, _ = setup_pretrain_cfg(child_old, [], num_images=400, world_size=1)
    assert cfg.CYBORGS.WARMUP_EPOCHS == 2
    both = _yaml(
        tmp_path,
        "both.yaml",
        f'_BASE_: "{DEMO}"\nSOLVER:\n  WARMUP_EPOCHS: 3\n  LR_WARMUP_EPOCHS: 1\n',
    )
    with pytest.raises(ConfigError, match="both.yaml: sets both SOLVER.WARMUP_EPOCHS"):
        setup_pretrain_cfg(both, [], num_images=400, world_size=1)


def test_a_dumped_config_with_another_schedule_says_how_to_reuse_it(tmp_path) -> None:
    cfg, _ = _setup()
    dumped = _yaml(tmp_path, "config.yaml", cfg.dump())
    with pytest.raises(ConfigError, match="pass SOLVER.MAX_ITER 0 CYBORGS.DATA.NUM_IMAGES 0"):
        setup_pretrain_cfg(dumped, ["SOLVER.EPOCHS", 12], num_images=400, world_size=1)
    again, _ = setup_pretrain_cfg(
        dumped,
        ["SOLVER.EPOCHS", 12, "SOLVER.MAX_ITER", 0, "CYBORGS.DATA.NUM_IMAGES", 0],
        num_images=500,
        world_size=1,
    )
    assert again.SOLVER.MAX_ITER == 12 * 16  # ceil(500 / 32) = 16
