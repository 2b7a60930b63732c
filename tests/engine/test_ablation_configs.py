"""Pretraining configs, above all the paper's ablations (Table 2a-2h, Fig. 5a).

1. Every YAML under ``pretrain_configs/`` merges (get_cfg + add_cyborgs_config +
   merge_from_file) and sets the keys listed for it in ``EXPECTED`` to the listed values; an
   ablation file differs from ``cyborgs_R50_coco_800ep.yaml`` in those keys (and OUTPUT_DIR)
   only, so a typo in a key, a value or a stray override fails here.
2. Each Table 2 row trains a few iterations, in-process through ``CyborgsTrainer`` (the class
   ``tools/pretrain_net.py`` runs). The row's own keys and the epoch schedule (vMF warm-up W = 5,
   N, M, lambda, K, features, distance) are the file's; only the size is scaled down:
   ResNet-18, 48-px crops, BYOL heads 32/16, and the first 4 images of the tiny
   ``demo_coco_2017_train_unlabeled`` at batch 4, so one epoch is ONE iteration and the paper's
   epoch numbers are iteration numbers. R18 has two blocks per stage, so the paper's
   "res2.b2" = ``res3.2`` (R50) becomes ``res3.1``, res3's last block, as in demo_R18.yaml.
   Each run asserts finite losses, the iterations carrying ``loss_vmf`` /
   ``loss_mask_contrastive`` (warm-up, then every M epochs with weight lambda), the bootstrap
   rounds (after the warm-up, then every N epochs) and their manifests (features, K per group,
   mask resolution). Rows whose effect first shows after epoch 11 (N >= 50, M = 50) are slow
   (--run-slow; about 4 minutes together); the rest take about a minute.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import CfgNode, get_cfg

from cyborgs.config import add_cyborgs_config, flat_items
from cyborgs.engine.setup import finalize_pretrain_cfg

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "pretrain_configs"
ABLATIONS = CONFIGS / "ablations"
PAPER = "cyborgs_R50_coco_800ep.yaml"

_BF = "CYBORGS.BOOTSTRAP.FEATURES"
_FF = "CYBORGS.FUSION_FEATURES"
_PAPER_KEYS = {
    "MODEL.META_ARCHITECTURE": "CYBORGS",
    "MODEL.RESNETS.DEPTH": 50,
    "SOLVER.OPTIMIZER": "LARS",
    "SOLVER.IMS_PER_BATCH": 64,
    "SOLVER.BASE_LR": 0.1,
    "SOLVER.WEIGHT_DECAY": 1.5e-6,
    "SOLVER.EPOCHS": 800,
    _FF: ["res3", "res4", "res5"],
    "CYBORGS.MASKS.SOURCE": "bootstrap",
    _BF: ["res3.2"],
    "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS": 100,
    "CYBORGS.BOOTSTRAP.K_MIN": 2,
    "CYBORGS.BOOTSTRAP.K_MAX": 256,
    "CYBORGS.BOOTSTRAP.CRF": False,
    "CYBORGS.WARMUP_EPOCHS": 5,
    "CYBORGS.VMF.WARMUP_K": 8,
    "CYBORGS.VMF.LAMBDA": 0.1,
    "CYBORGS.VMF.PERIOD_EPOCHS": 5,
    "CYBORGS.VMF.DISTANCE": "vmf",
    "CYBORGS.VMF.KAPPA": 10.0,
}
# no vMF warm-up, no vMF term
_FIXED_MASKS = {"CYBORGS.WARMUP_EPOCHS": 0, "CYBORGS.VMF.LAMBDA": 0.0}

# config file (relative to pretrain_configs/) -> the keys it must set and their values
EXPECTED: dict[str, dict[str, object]] = {
    "Base-CYBORGS.yaml": _PAPER_KEYS,
    PAPER: {**_PAPER_KEYS, "OUTPUT_DIR": "output/cyborgs_R50_coco_800ep"},
    "demo_R18.yaml": {
        "MODEL.RESNETS.DEPTH": 18,
        "DATASETS.TRAIN": ["demo_coco_2017_train_unlabeled"],
        _BF: ["res3.1"],
    },
    # Table 2a: bootstrap frequency N (0 = only the round after the vMF warm-up)
    **{
        f"ablations/t2a_bootstrap_every_{n}ep.yaml": {"CYBORGS.BOOTSTRAP.PERIOD_EPOCHS": n}
        for n in (0, 10, 50, 100, 200, 400)
    },
    # Table 2b: CRF refinement of the bootstrapped masks
    "ablations/t2b_crf.yaml": {"CYBORGS.BOOTSTRAP.CRF": True},
    "ablations/t2b_no_crf.yaml": {"CYBORGS.BOOTSTRAP.CRF": False},
    # Table 2c: contrastive fusion (paper "2" = res3, "3" = res4, "4" = res5; METHOD.md §1)
    "ablations/fusion_res3.yaml": {_FF: ["res3"]},
    "ablations/fusion_res4.yaml": {_FF: ["res4"]},
    "ablations/fusion_res5.yaml": {_FF: ["res5"]},
    "ablations/fusion_res3_res5.yaml": {_FF: ["res3", "res5"]},
    "ablations/fusion_res3_res4_res5.yaml": {_FF: ["res3", "res4", "res5"]},
    "ablations/fusion_res4_res5.yaml": {_FF: ["res4", "res5"]},  # extra, not a paper row
    # Table 2d: k-means features (paper "2.b2" = res3.2)
    "ablations/t2d_kmeans_res3b2.yaml": {_BF: ["res3.2"]},
    "ablations/t2d_kmeans_res3_res4.yaml": {_BF: ["res3", "res4"]},
    "ablations/t2d_kmeans_res3_res5.yaml": {_BF: ["res3", "res5"]},
    "ablations/t2d_kmeans_res3_res4_res5.yaml": {_BF: ["res3", "res4", "res5"]},
    # Table 2e: K of the bootstrap k-means
    **{
        f"ablations/t2e_{name}.yaml": {"CYBORGS.BOOTSTRAP.K_MIN": lo, "CYBORGS.BOOTSTRAP.K_MAX": hi}
        for name, lo, hi in [("k2", 2, 2), ("k81", 81, 81), ("k256", 256, 256)]
        + [("k_uniform_2_256", 2, 256)]
    },
    # Table 2f: distance of the clustering loss
    "ablations/t2f_euclidean.yaml": {"CYBORGS.VMF.DISTANCE": "euclidean"},
    "ablations/t2f_vmf.yaml": {"CYBORGS.VMF.DISTANCE": "vmf"},
    # Table 2g: vMF frequency M (M = 0: never after the warm-up, said by lambda 0); Table 2h:
    # vMF weight lambda
    "ablations/t2g_vmf_every_0ep.yaml": {"CYBORGS.VMF.LAMBDA": 0.0},
    **{
        f"ablations/t2g_vmf_every_{m}ep.yaml": {"CYBORGS.VMF.PERIOD_EPOCHS": m}
        for m in (1, 5, 10, 50)
    },
    **{
        f"ablations/t2h_lambda_{s}.yaml": {"CYBORGS.VMF.LAMBDA": float(s)}
        for s in ("0", "0.001", "0.01", "0.1", "1")
    },
    # Fig. 5a: fixed mask sources instead of bootstrapping
    **{
        f"ablations/masks_{s}.yaml": {"CYBORGS.MASKS.SOURCE": s, **_FIXED_MASKS}
        for s in ("whole", "grid", "felzenszwalb", "selective_search")
    },
    "ablations/masks_ground_truth.yaml": {
        "CYBORGS.MASKS.SOURCE": "ground_truth",
        "DATASETS.TRAIN": ["coco_2017_train"],
        **_FIXED_MASKS,
    },
}


def _yaml_files() -> list[str]:
    return sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))


def _load(rel: str) -> CfgNode:
    cfg = get_cfg()
    add_cyborgs_config(cfg)
    cfg.merge_from_file(str(CONFIGS / rel))
    return cfg


def _plain(v: object) -> object:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    return v


def _flat(cfg: CfgNode) -> dict[str, object]:
    return {k: _plain(v) for k, v in flat_items(cfg).items()}


def _get(cfg: CfgNode, key: str) -> object:
    node: object = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return _plain(node)


# ---- 1. every config merges to its intended values ----


def test_every_config_has_expectations() -> None:
    assert set(_yaml_files()) == set(EXPECTED), "add new configs to EXPECTED (and vice versa)"


@pytest.mark.parametrize("rel", _yaml_files())
def test_config_sets_intended_values(rel: str) -> None:
    cfg = _load(rel)
    for key, want in EXPECTED[rel].items():
        got = _get(cfg, key)
        if isinstance(want, float):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key
    if rel.startswith("ablations/"):
        stem = Path(rel).stem
        assert (ABLATIONS / rel.split("/", 1)[1]).read_text().count(f'"../{PAPER}"') == 1
        assert cfg.OUTPUT_DIR == f"output/ablations/{stem}"
        base, this = _flat(_load(PAPER)), _flat(cfg)
        changed = {k for k in this if this[k] != base[k]}
        assert changed <= set(EXPECTED[rel]) | {"OUTPUT_DIR"}, "overrides beyond the row"


def test_table2_configs_name_row_and_paper_number() -> None:
    readme = (ABLATIONS / "README.md").read_text()
    for p in sorted(ABLATIONS.glob("*.yaml")):
        text = p.read_text()
        assert p.name in readme, f"{p.name} missing from ablations/README.md"
        if p.name.startswith("t2") or (
            p.name.startswith("fusion_") and p.stem != "fusion_res4_res5"
        ):
            table = "2c" if p.name.startswith("fusion_") else p.name[1:3]
            assert f"# Table {table} " in text and "<- this file" in text, p.name
            assert "AP_all" in text and "* " in text, p.name  # paper numbers, default marked


# ---- 2. each Table 2 row trains a few iterations (scaled down) ----

_TINY = "demo_coco_2017_train_unlabeled_first4"


@pytest.fixture
def tiny4(tiny_data_root):
    """The first 4 tiny images as a data set: batch 4 -> one iteration per epoch. One torch
    thread: 2 threads on 2 shared cores run ~10x slower here under contention."""
    from detectron2.data import DatasetCatalog

    import cyborgs.data.datasets  # noqa: F401  (registers the demo_* sets)

    if _TINY not in DatasetCatalog.list():
        DatasetCatalog.register(
            _TINY, lambda: DatasetCatalog.get("demo_coco_2017_train_unlabeled")[:4]
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _TINY
    finally:
        torch.set_num_threads(threads)


def _scaled(rel: str, out: Path, epochs: int, dataset: str) -> CfgNode:
    cfg = _load(rel)
    r18 = [f.replace("res3.2", "res3.1") for f in cfg.CYBORGS.BOOTSTRAP.FEATURES]
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.RESNETS.NORM", "BN",
            "MODEL.RESNETS.DEPTH", 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
            "DATASETS.TRAIN", (dataset,),
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.EPOCHS", epochs,
            "SOLVER.LR_WARMUP_EPOCHS", 1,
            "SOLVER.CHECKPOINT_PERIOD", 10**6,
            "CYBORGS.AUG.CROP_SIZE", 48,  # res3 6x6, res5 2x2
            "CYBORGS.PROJECTOR_HIDDEN_DIM", 32,
            "CYBORGS.PROJECTOR_OUT_DIM", 16,
            "CYBORGS.BOOTSTRAP.FEATURES", r18,
            "CYBORGS.BOOTSTRAP.INPUT_SIZE", 64,  # shorter side: >= 64 res3 cells per image
            "CYBORGS.BOOTSTRAP.KMEANS_ITERS", 5,
            "CYBORGS.VMF.KMEANS_ITERS", 3,
            "OUTPUT_DIR", str(out),
            "SEED", 0,
        ]
    )  # fmt: skip
    finalize_pretrain_cfg(cfg, world_size=1)
    return cfg


_STRIDE = {"res3": 8, "res4": 16, "res5": 32}

# (config, SOLVER.EPOCHS = iterations, slow): enough epochs for the warm-up (5), the first
# bootstrap round (epoch 5) and the epochs where the row's key changes what happens.
_TRAIN = [
    ("t2a_bootstrap_every_0ep", 11, False),  # a single round (epoch 5) in 11 epochs
    ("t2a_bootstrap_every_10ep", 11, False),  # rounds at 5 and 10
    ("t2a_bootstrap_every_50ep", 51, True),
    ("t2a_bootstrap_every_100ep", 101, True),
    ("t2a_bootstrap_every_200ep", 201, True),
    ("t2a_bootstrap_every_400ep", 401, True),
    ("t2b_crf", 6, False),
    ("t2b_no_crf", 6, False),
    ("fusion_res3", 6, False),
    ("fusion_res4", 6, False),
    ("fusion_res5", 6, False),
    ("fusion_res3_res5", 6, False),
    ("fusion_res3_res4_res5", 6, False),
    ("fusion_res4_res5", 6, False),
    ("t2d_kmeans_res3b2", 6, False),
    ("t2d_kmeans_res3_res4", 6, False),
    ("t2d_kmeans_res3_res5", 6, False),
    ("t2d_kmeans_res3_res4_res5", 6, False),
    ("t2e_k2", 6, False),
    ("t2e_k81", 6, False),
    ("t2e_k256", 6, False),
    ("t2e_k_uniform_2_256", 6, False),
    ("t2f_euclidean", 6, False),
    ("t2f_vmf", 6, False),
    ("t2g_vmf_every_0ep", 11, False),  # no vMF after the warm-up
    ("t2g_vmf_every_1ep", 8, False),  # vMF in every epoch
    ("t2g_vmf_every_5ep", 11, False),  # epochs 5 and 10, not 6-9
    ("t2g_vmf_every_10ep", 11, False),  # epoch 10 only
    ("t2g_vmf_every_50ep", 51, True),  # epoch 50 only
    ("t2h_lambda_0", 6, False),  # no vMF after the warm-up
    ("t2h_lambda_0.001", 6, False),
    ("t2h_lambda_0.01", 6, False),
    ("t2h_lambda_0.1", 6, False),
    ("t2h_lambda_1", 6, False),
]


def test_every_table2_config_is_trained() -> None:
    trained = {name for name, _, _ in _TRAIN}
    table2 = {p.stem for p in ABLATIONS.glob("*.yaml") if not p.stem.startswith("masks_")}
    assert trained == table2


def _history(storage, key: str) -> dict[int, float]:
    if key not in storage.histories():
        return {}
    return {int(it): float(v) for v, it in storage.history(key).values()}


@pytest.mark.parametrize(
    "name,epochs",
    [pytest.param(n, e, marks=[pytest.mark.slow] if s else [], id=n) for n, e, s in _TRAIN],
)
def test_table2_row_trains(name: str, epochs: int, tiny4: str, tmp_path: Path) -> None:
    from detectron2.data import DatasetCatalog

    from cyborgs.bootstrap import BootstrapHook
    from cyborgs.engine.trainer import CyborgsTrainer
    from cyborgs.masks.store import MaskStore, store_root

    if name == "t2b_crf":
        pytest.importorskip("pydensecrf")
    rel = f"ablations/{name}.yaml"
    cfg = _scaled(rel, tmp_path / "run", epochs, tiny4)
    c = cfg.CYBORGS
    w, m, lam, n = c.WARMUP_EPOCHS, c.VMF.PERIOD_EPOCHS, c.VMF.LAMBDA, c.BOOTSTRAP.PERIOD_EPOCHS
    assert w == 5  # the paper's warm-up, unscaled: epochs are iterations here

    trainer = CyborgsTrainer(cfg)
    assert trainer.iters_per_epoch == 1 and trainer.max_iter == epochs
    trainer.resume_or_load(resume=False)
    trainer.train()
    for p in (tmp_path / "run").glob("model_*.pth"):
        p.unlink()  # ~100 MB each; nothing below reads them

    # losses: finite; the vMF term in the warm-up and then every M epochs with weight lambda
    st = trainer.storage
    losses = {k: _history(st, k) for k in ("total_loss", "loss_vmf", "loss_mask_contrastive")}
    assert sorted(losses["total_loss"]) == list(range(epochs))
    for k, h in losses.items():
        assert all(math.isfinite(v) for v in h.values()), (k, h)
    want_vmf = {e for e in range(epochs) if e < w or (e % m == 0 and lam > 0)}
    assert set(losses["loss_vmf"]) == want_vmf
    assert set(losses["loss_mask_contrastive"]) == set(range(w, epochs))
    vmf_weight = _history(st, "vmf_weight")
    for e in want_vmf - set(range(w)):
        assert vmf_weight[e] == pytest.approx(lam)
    model = trainer.unwrapped_model
    assert model.vmf_loss.distance == c.VMF.DISTANCE
    assert model.fusion_features == list(c.FUSION_FEATURES)
    assert model.bootstrap_features == list(c.BOOTSTRAP.FEATURES)

    # bootstrap rounds: right after the warm-up, then at epochs N, 2N, ... (N = 0: none)
    want_rounds = [w] + [e for e in range(w + 1, epochs) if n > 0 and e % n == 0]
    (hook,) = [h for h in trainer._hooks if isinstance(h, BootstrapHook)]
    assert hook.completed == want_rounds
    assert hook.settings.crf is c.BOOTSTRAP.CRF
    store = MaskStore(store_root(trainer.cfg, "bootstrap", tiny4))
    assert store.rounds() == want_rounds
    stride = _STRIDE[c.BOOTSTRAP.FEATURES[-1].split(".")[0]]
    for r in want_rounds:
        man = store.manifest(r)
        assert man["features"] == list(c.BOOTSTRAP.FEATURES) and man["num_images"] == 4
        maps = [store.read(d["image_id"], round_id=r) for d in DatasetCatalog.get(tiny4)]
        # the masks live on the grid of the last clustered map (shorter side 64 / stride)
        assert all(min(a.shape) == 64 // stride for a in maps), [a.shape for a in maps]
        cells = sum(a.size for a in maps)  # one k-means group: all 4 images
        (k,) = man["k_per_group"]
        assert min(c.BOOTSTRAP.K_MIN, cells) <= k <= min(c.BOOTSTRAP.K_MAX, cells)
        if c.BOOTSTRAP.K_MIN == c.BOOTSTRAP.K_MAX:
            assert k == min(c.BOOTSTRAP.K_MAX, cells)
        assert len(np.unique(np.concatenate([a.ravel() for a in maps]))) <= k
