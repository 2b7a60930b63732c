"""cyborgs.engine.plan and ``pretrain_net.py --plan-only``: the plan follows the config's schedule.

Expected values are worked out from the config keys' definitions (METHOD.md §3-5): epoch e is a vMF
warm-up epoch when e < CYBORGS.WARMUP_EPOCHS, else contrastive, with the vMF term when
e % VMF.PERIOD_EPOCHS == 0; a bootstrap round runs at the start of epoch WARMUP_EPOCHS and of
every later epoch that is a multiple of BOOTSTRAP.PERIOD_EPOCHS, never at the end of training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cyborgs.engine.plan import build_plan, format_plan, model_counts, write_plan
from cyborgs.engine.setup import setup_pretrain_cfg

REPO = Path(__file__).resolve().parents[2]


def _cfg(*opts: str):
    demo = str(REPO / "pretrain_configs" / "demo_R18.yaml")
    cfg, _ = setup_pretrain_cfg(demo, list(opts), world_size=1, schedule=False)
    return cfg


def test_demo_plan_phases_rounds_and_checkpoints(tmp_path: Path) -> None:
    # demo_R18: 6 epochs, batch 32, vMF warm-up 1 epoch, vMF every 2, rounds every 3 epochs,
    # a checkpoint every 13 iterations, 3 kept
    cfg = _cfg()
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.BatchNorm1d(5))
    model[1].weight.requires_grad_(False)
    plan = build_plan(cfg, 400, model_counts(model))

    assert plan["iters_per_epoch"] == 13  # ceil(400 / 32)
    assert plan["max_iter"] == 78
    phases = [e["phase"] for e in plan["per_epoch"]]
    assert phases == [
        "vMF warm-up",
        "contrastive",
        "contrastive + vMF",
        "contrastive",
        "contrastive + vMF",
        "contrastive",
    ]
    assert [e["vmf_weight"] for e in plan["per_epoch"]] == [1.0, 0, 0.1, 0, 0.1, 0]
    assert plan["per_epoch"][3]["iterations"] == [39, 52]
    assert [r["epoch"] for r in plan["bootstrap_rounds"]] == [1, 3]
    assert [r["iteration"] for r in plan["bootstrap_rounds"]] == [13, 39]
    assert [e["masks_of_round"] for e in plan["per_epoch"]] == [None, 1, 1, 3, 3, 3]

    # model_0000012, _25, _38, _51, _64, _77 and model_final; the newest 3 + final stay
    ck = plan["checkpoints"]
    assert (ck["written"], ck["kept"]) == (7, 4)
    # state: 50 + 5 weights + 5 BN weight + 5 bias + 2x5 running stats + 1 count (int64)
    state = 4 * (55 + 5 + 5 + 10) + 8
    momentum = 4 * (55 + 5)  # trainable parameters only
    assert ck["bytes_each"] == state + momentum
    assert plan["masks"]["rounds_kept"] == 2
    assert plan["masks"]["bytes"] == int(plan["masks"]["bytes_per_image_estimate"] * 400 * 2)
    assert plan["disk_bytes_estimate"] == 4 * (state + momentum) + plan["masks"]["bytes"]

    # off the period, the step before each round (12, 38) is checkpointed as well:
    # model_0000019, _39, _59, the two before the rounds, and model_final
    other = build_plan(_cfg("SOLVER.CHECKPOINT_PERIOD", "20"), 400, model_counts(model))
    assert (other["checkpoints"]["written"], other["checkpoints"]["kept"]) == (6, 4)

    text = format_plan(plan)
    assert "epochs 2, 4: contrastive + vMF" in text and "epochs 1, 3" in text
    path = write_plan(plan, str(tmp_path))
    assert json.loads(Path(path).read_text()) == json.loads(json.dumps(plan))


def test_no_warmup_fixed_source_and_paper_schedule() -> None:
    cfg = _cfg("CYBORGS.WARMUP_EPOCHS", "0", "CYBORGS.MASKS.SOURCE", "grid")
    plan = build_plan(cfg, 400)
    assert plan["bootstrap_rounds"] == [] and plan["masks"]["bytes"] == 0
    assert plan["per_epoch"][0]["phase"] == "contrastive + vMF"  # 0 % 2 == 0
    assert plan["checkpoints"]["bytes_each"] is None and plan["disk_bytes_estimate"] is None

    # the paper: 800 epochs, warm-up 5, rounds every 100 epochs -> 5, 100, ..., 700
    cfg = _cfg("SOLVER.EPOCHS", "800", "CYBORGS.WARMUP_EPOCHS", "5",
               "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS", "100", "CYBORGS.VMF.PERIOD_EPOCHS", "5")  # fmt: skip
    plan = build_plan(cfg, 400)
    assert [r["epoch"] for r in plan["bootstrap_rounds"]] == [5, *range(100, 800, 100)]
    vmf = [e["epoch"] for e in plan["per_epoch"] if e["phase"] == "contrastive + vMF"]
    assert vmf == list(range(5, 800, 5))


def test_plan_only_cli_builds_no_model(tiny_data_root, tmp_path, monkeypatch, capsys) -> None:
    import pretrain_net  # tools/ (tests/conftest.py)

    def _no_build(*a, **k):
        raise AssertionError("--plan-only must not build the model")

    monkeypatch.setattr(pretrain_net.CyborgsTrainer, "build_model", _no_build)
    out = tmp_path / "run"
    args = pretrain_net.get_parser().parse_args(
        ["--plan-only", "--config-file", str(REPO / "pretrain_configs" / "demo_R18.yaml"),
         "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "8"]
    )  # fmt: skip
    assert pretrain_net.plan_only(args) == 0
    plan = json.loads((out / "plan.json").read_text())
    n = plan["images"]
    assert n > 0 and plan["iters_per_epoch"] == -(-n // 8)
    assert plan["checkpoints"]["bytes_each"] > 1e6  # a ResNet-18 and its target, counted
    assert "bootstrap rounds at the start of epochs 1, 3" in capsys.readouterr().out

    args = pretrain_net.get_parser().parse_args(
        ["--plan-only", "--images", "1000", "--config-file", "", "OUTPUT_DIR", ""]
    )
    assert pretrain_net.plan_only(args) == 0
    assert "1000 images / batch" in capsys.readouterr().out


def _expand(text: str) -> list[int]:
    """The epochs a list written by the plan names: runs "a-b" and "a, b, ..., z" (step b - a)
    and single epochs, runs joined by ", ", " and " or "; "."""
    out: list[int] = []
    for run in text.replace(" and ", "; ").split("; "):
        items = run.split(", ")
        if "..." in items:
            a, b, z = int(items[0]), int(items[1]), int(items[3])
            out += list(range(a, z + 1, b - a))
            continue
        for item in items:
            lo, _, hi = item.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    return out


def test_round_epochs_are_listed_as_they_are() -> None:
    # warm-up 1 epoch, then a round every 3 epochs, none at the end of 30 epochs
    cfg = _cfg("SOLVER.EPOCHS", "30")
    plan = build_plan(cfg, 400)
    rounds = [r["epoch"] for r in plan["bootstrap_rounds"]]
    assert rounds == [1, *range(3, 30, 3)]
    text = format_plan(plan)
    line = next(x for x in text.splitlines() if "bootstrap rounds" in x)
    assert line == (
        "  bootstrap rounds at the start of epochs 1 and 3, 6, ..., 27 (10 rounds of 400 images)"
    )
    assert "except" not in line


def test_a_single_round_is_named_in_the_singular() -> None:
    cfg = _cfg("SOLVER.EPOCHS", "2")  # warm-up epoch 0, one round at the start of epoch 1
    plan = build_plan(cfg, 400)
    assert [r["epoch"] for r in plan["bootstrap_rounds"]] == [1]
    line = next(x for x in format_plan(plan).splitlines() if "bootstrap round" in x)
    assert line == "  bootstrap round at the start of epoch 1 (1 round of 400 images)"


def test_every_epoch_list_names_exactly_its_epochs() -> None:
    from cyborgs.engine.plan import _epoch_list

    cases = [
        [1, *range(3, 30, 3)],
        [5, *range(100, 800, 100)],
        [0, 1, 2, 3, 10, 20, 30, 40, 50, 51],
        [2, 4, 6, 8, 10, 11, 12, 13, 14, 15, 30],
        [1, 2, 4, 7, 11, 16, 22, 29, 37, 46],  # no run longer than 2
        list(range(0, 40, 4)) + list(range(41, 60, 2)),
    ]
    for epochs in cases:
        assert _expand(_epoch_list(epochs)) == epochs, (epochs, _epoch_list(epochs))
    # the rest of a span, said so only where asked (the phase printed last)
    rest = [e for e in range(6, 800) if e % 5]
    assert _epoch_list(rest, rest_of_span=True) == "6-799 except those above (636 epochs)"
    assert _expand(_epoch_list(rest)) == rest


def test_plan_gives_store_files_bytes_and_data_read_per_epoch() -> None:
    """Packed store: a round is index + manifest + one part per writer (rank), whatever the
    image count; its bytes are the per-map estimate x images; an epoch reads every image and
    its map once."""
    from cyborgs.engine.plan import IMAGE_BYTES_ESTIMATE, estimate_mask_bytes_per_image

    cfg = _cfg()  # demo_R18: bootstrap rounds at epochs 1 and 3
    bpi = estimate_mask_bytes_per_image(cfg)
    for n in (400, 1_281_167):
        plan = build_plan(cfg, n, world_size=8)
        m, r = plan["masks"], plan["data_read_per_epoch"]
        assert m["store_files_per_round"] == 2 + 8 and m["store_files"] == 2 * 10
        assert m["store_bytes_per_round"] == int(bpi * n)
        assert m["bytes"] == int(bpi * n * 2)
        assert r["images_bytes"] == int(IMAGE_BYTES_ESTIMATE * n)
        assert r["masks_bytes"] == int(bpi * n)
        assert r["bytes"] == r["images_bytes"] + r["masks_bytes"]
    text = format_plan(build_plan(cfg, 118287, world_size=8, image_bytes=100_000))
    assert "mask store: 10 files per round" in text and "20 files in all" in text
    assert "images ~11.8 GB at ~100.0 kB each" in text

    # a fixed source precomputed by 2 loader workers on each of 4 ranks: 8 parts, one round
    cfg = _cfg("CYBORGS.MASKS.SOURCE", "felzenszwalb", "DATALOADER.NUM_WORKERS", "2")
    m = build_plan(cfg, 400, world_size=4)["masks"]
    assert (m["store_files_per_round"], m["store_files"]) == (10, 10)
    # nothing stored: no files, no masks read
    plan = build_plan(_cfg("CYBORGS.MASKS.SOURCE", "grid"), 400, world_size=4)
    assert plan["masks"]["store_files"] == 0 and plan["data_read_per_epoch"]["masks_bytes"] == 0
