"""cyborgs.engine.setup: the one way a pretraining config becomes final.

Expectations follow the keys' documented definitions (cyborgs/config/defaults.py): iterations per epoch
= ceil(images / global batch), SOLVER.MAX_ITER = round(SOLVER.EPOCHS x that), the mask-id width
= K_max + 1 (METHOD.md §2); old key names are unknown keys.
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
    import cyborgs.pretrain_data.pretrain_loader as loader

    monkeypatch.setattr(loader, "pretrain_dataset_size", lambda cfg: 1 / 0)
    cfg, _ = setup_pretrain_cfg(DEMO, [], world_size=1, schedule=False)
    assert (cfg.SOLVER.MAX_ITER, cfg.CYBORGS.DATA.NUM_IMAGES) == (0, 0)
    with pytest.raises(ValueError, match="unfrozen"):
        finalize_pretrain_cfg(cfg)


# ---- old key names are unknown keys (no compatibility layer: the project has had no release) ----


@pytest.mark.parametrize(
    "old", ["SOLVER.WARMUP_EPOCHS", "CYBORGS.VMF.WARMUP_EPOCHS", "CYBORGS.MAX_MASK_IDS"]
)
def test_an_old_key_name_is_refused_naming_it(tmp_path, old) -> None:
    # yacs' unknown-key errors (AssertionError from a list, KeyError from a file), which
    # tools/pretrain_net.py turns into "unknown config key ...; did you mean ...?"
    with pytest.raises(AssertionError, match="Non-existent key: " + old.replace(".", r"\.")):
        _setup(old, 1)
    *path, name = old.split(".")
    text = (
        f'_BASE_: "{DEMO}"\n'
        + "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(path))
        + f"{'  ' * len(path)}{name}: 1\n"
    )
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text(text)
    with pytest.raises(KeyError, match="Non-existent config key: " + old.replace(".", r"\.")):
        setup_pretrain_cfg(str(old_yaml), [], num_images=400, world_size=1)


def test_old_vmf_feature_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="CYBORGS.VMF.FEATURE = 'fused'"):
        _setup("CYBORGS.VMF.FEATURE", "fused")
    with pytest.raises(ConfigError, match="CYBORGS.VMF.PERIOD_EPOCHS = 0.*CYBORGS.VMF.LAMBDA 0"):
        _setup("CYBORGS.VMF.PERIOD_EPOCHS", 0)


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


# ---- the usual order: a file over its base, the command line over the file ----


def _yaml(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_the_command_line_wins_over_the_file_and_the_file_over_its_base(tmp_path) -> None:
    _yaml(tmp_path, "base.yaml", f'_BASE_: "{DEMO}"\nCYBORGS:\n  WARMUP_EPOCHS: 3\n')
    child = _yaml(tmp_path, "child.yaml", '_BASE_: "base.yaml"\nCYBORGS:\n  WARMUP_EPOCHS: 2\n')
    cfg, _ = setup_pretrain_cfg(child, [], num_images=400, world_size=1)
    assert cfg.CYBORGS.WARMUP_EPOCHS == 2
    cfg, _ = setup_pretrain_cfg(child, ["CYBORGS.WARMUP_EPOCHS", 0], num_images=400, world_size=1)
    assert cfg.CYBORGS.WARMUP_EPOCHS == 0


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
