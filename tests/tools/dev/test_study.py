"""tools/dev/study.py and study_lib.py: variant table, aggregation, claims, resumability, and one
end-to-end micro study (slow: ~80 s idle, ~2 min on 2 loaded cores)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import study_lib as study  # tools/dev/ (tests/conftest.py)
from study_lib import (
    BUDGETS,
    VARIANTS,
    aggregate,
    compare,
    evaluate_claims,
    execute_run,
    fingerprint,
    mean_std,
    plan_runs,
    run_dir,
)

REPO = Path(__file__).resolve().parents[3]

# The intended config of each variant (written out by hand: a typo in the table fails here).
EXPECTED = {
    "random": {"CYBORGS.MASKS.SOURCE": "bootstrap", "CYBORGS.VMF.LAMBDA": 0.1},
    "whole": {
        "CYBORGS.MASKS.SOURCE": "whole",
        "CYBORGS.WARMUP_EPOCHS": 0,
        "CYBORGS.VMF.LAMBDA": 0.0,
    },
    "grid": {
        "CYBORGS.MASKS.SOURCE": "grid",
        "CYBORGS.WARMUP_EPOCHS": 0,
        "CYBORGS.VMF.LAMBDA": 0.0,
    },
    "felzenszwalb": {
        "CYBORGS.MASKS.SOURCE": "felzenszwalb",
        "CYBORGS.WARMUP_EPOCHS": 0,
        "CYBORGS.VMF.LAMBDA": 0.0,
    },
    # demo_R18.yaml's schedule unchanged
    "cyborgs": {
        "CYBORGS.MASKS.SOURCE": "bootstrap",
        "CYBORGS.WARMUP_EPOCHS": 1,
        "CYBORGS.VMF.PERIOD_EPOCHS": 2,
        "CYBORGS.VMF.LAMBDA": 0.1,
        "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS": 3,
        "CYBORGS.BOOTSTRAP.BORDER_PAD": 0,  # the paper's (and the authors') behaviour
    },
    # λ = 0 after the warm-up; the warm-up (initial masks) is kept
    "cyborgs_no_vmf": {
        "CYBORGS.MASKS.SOURCE": "bootstrap",
        "CYBORGS.WARMUP_EPOCHS": 1,
        "CYBORGS.VMF.LAMBDA": 0.0,
    },
    "cyborgs_border_pad": {
        "CYBORGS.MASKS.SOURCE": "bootstrap",
        "CYBORGS.VMF.LAMBDA": 0.1,
        "CYBORGS.BOOTSTRAP.BORDER_PAD": 16,
    },
    # Fig. 5b: 4x the study budget's 12 epochs, rounds at epochs 1, 8, 16, ..., 40
    "cyborgs_long": {
        "CYBORGS.MASKS.SOURCE": "bootstrap",
        "SOLVER.EPOCHS": 48,
        "CYBORGS.BOOTSTRAP.PERIOD_EPOCHS": 8,
        "CYBORGS.VMF.LAMBDA": 0.1,
    },
    "ground_truth": {
        "CYBORGS.MASKS.SOURCE": "ground_truth",
        "DATASETS.TRAIN": ("demo_coco_2017_train",),
        "CYBORGS.WARMUP_EPOCHS": 0,
        "CYBORGS.VMF.LAMBDA": 0.0,
    },
}


def _merged(opts: list[str]):
    from detectron2.config import get_cfg

    from cyborgs.config import add_cyborgs_config, validate_cyborgs_config

    cfg = get_cfg()
    add_cyborgs_config(cfg)
    cfg.merge_from_file(str(REPO / study.PRETRAIN_CONFIG))
    cfg.merge_from_list(opts)  # KeyError on a key that does not exist
    validate_cyborgs_config(cfg, world_size=1)  # the study's old names arrive as valid settings
    return cfg


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_variant_table_maps_to_intended_overrides() -> None:
    assert list(VARIANTS) == list(EXPECTED)
    for name, v in VARIANTS.items():
        for budget in BUDGETS.values():
            cfg = _merged(study.pretrain_opts(budget.pretrain) + study.pretrain_opts(v.overrides))
            own = {k for k, _ in v.overrides}
            for key, want in EXPECTED[name].items():
                if budget.name == "micro" and key not in own:
                    continue  # micro shortens demo_R18's schedule; the variant's keys still win
                got = _get(cfg, key)
                got = tuple(got) if isinstance(got, list | tuple) else got
                assert got == want, (name, budget.name, key, got)
            assert cfg.DATASETS.TRAIN == (
                ("demo_coco_2017_train",) if name == "ground_truth" else
                ("demo_coco_2017_train_unlabeled",)
            )  # fmt: skip
    assert not VARIANTS["random"].pretrain
    assert {n for n, v in VARIANTS.items() if v.bootstrap} == {
        "cyborgs", "cyborgs_no_vmf", "cyborgs_border_pad", "cyborgs_long",
    }  # fmt: skip
    assert [n for n, v in VARIANTS.items() if not v.transfer] == ["cyborgs_long"]


def test_budget_overrides_and_study_schedule() -> None:
    from cyborgs.solver.schedule import due_epochs

    for b in BUDGETS.values():
        _merged(study.pretrain_opts(b.pretrain))
    cfg = _merged(study.pretrain_opts(BUDGETS["study"].pretrain))
    assert cfg.SOLVER.EPOCHS == 12 and cfg.SOLVER.IMS_PER_BATCH == 32
    # rounds documented in the arithmetic: epochs 1, 3, 6, 9
    assert due_epochs(cfg.CYBORGS.WARMUP_EPOCHS, cfg.CYBORGS.BOOTSTRAP.PERIOD_EPOCHS, 12) == [
        1, 3, 6, 9,
    ]  # fmt: skip
    # The transfer variants run by default: 7 x 3 runs ~ 2.1 h on 2 idle cores (STUDY_ARITHMETIC),
    # within the 2.5 h budget
    transfer = [v for v in VARIANTS.values() if v.default and v.transfer]
    assert len(transfer) == 7 and not VARIANTS["cyborgs_border_pad"].default
    total = sum(study.estimate_run_s(v, BUDGETS["study"]) for v in transfer) * 3
    assert 1.9 * 3600 < total < 2.5 * 3600
    # the long run: 4x the pretraining (and its rounds), no evaluation
    long = study.estimate_run_s(VARIANTS["cyborgs_long"], BUDGETS["study"])
    assert long == 4 * (228.0 + 50.0)
    # the sized VOC protocol: 120 iterations, backbone frozen through res4
    voc = dict(BUDGETS["study"].voc)
    assert voc["SOLVER.MAX_ITER"] == 120 and voc["MODEL.BACKBONE.FREEZE_AT"] == 4


def test_mean_std_n() -> None:
    r = mean_std([1.0, 2.0, 3.0])
    assert r["mean"] == pytest.approx(2.0) and r["std"] == pytest.approx(1.0) and r["n"] == 3
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert mean_std([1.0, float("nan"), None])["n"] == 1


def _rec(variant: str, seed: int, probe: float, voc: float, rounds=()) -> dict:
    m = {"probe_miou": probe, "voc_ap": voc, "voc_ap50": voc, "voc_ap75": voc}
    mr = [{"round": r, "iteration": r * 10, "mask_miou": v} for r, v in rounds]
    if mr:
        m["mask_miou_first"], m["mask_miou_last"] = mr[0]["mask_miou"], mr[-1]["mask_miou"]
    return {"variant": variant, "seed": seed, "metrics": m, "mask_rounds": mr}


def _records(cy_probe: list[float], cy_voc: list[float], rounds_last: list[float]) -> list[dict]:
    recs = []
    for s in range(3):
        recs += [
            _rec("whole", s, 10.0 + s * 0.5, 20.0),
            _rec("grid", s, 11.0 + s * 0.5, 20.0),
            _rec("felzenszwalb", s, 12.0 + s * 0.5, 20.0),
            _rec("ground_truth", s, 16.0 + s * 0.5, 24.0),
            _rec("cyborgs", s, cy_probe[s], cy_voc[s], [(1, 0.20 + s * 0.01), (3, rounds_last[s])]),
            _rec("cyborgs_no_vmf", s, 13.0, 21.0 + s, [(1, 0.2), (3, 0.21)]),
        ]
    return recs


def test_aggregate_hand_made() -> None:
    agg = aggregate(_records([15.0, 15.5, 16.0], [30.0, 31.0, 32.0], [0.30, 0.31, 0.32]))
    w = agg["whole"]["metrics"]["probe_miou"]
    assert w["mean"] == pytest.approx(10.5) and w["std"] == pytest.approx(0.5) and w["n"] == 3
    assert agg["whole"]["seeds"] == [0, 1, 2]
    assert agg["whole"]["metrics"]["mask_miou_last"]["n"] == 0
    per_round = agg["cyborgs"]["mask_miou_per_round"]
    assert [p["round"] for p in per_round] == [1, 3]
    assert per_round[1]["mean"] == pytest.approx(0.31) and per_round[1]["n"] == 3


def test_compare_rule() -> None:
    a = {"mean": 2.0, "std": 1.0, "n": 3}
    b = {"mean": 0.5, "std": 1.0, "n": 3}
    assert compare(a, b)["verdict"] == "holds"  # diff 1.5 > pooled 1.0
    assert compare({**a, "mean": 1.4}, b)["verdict"] == "does not hold"  # 0.9 < 1.0
    assert compare(b, a)["verdict"] == "does not hold"
    assert compare(a, None)["verdict"] == "inconclusive"
    one = {"mean": 2.0, "std": 0.0, "n": 1}
    assert compare(one, {**one, "mean": 1.0})["verdict"] == "inconclusive"
    # unequal n: pooled = sqrt((2 * 1 + 0) / 2) = 1
    assert compare(a, {"mean": 0.0, "std": 0.0, "n": 1})["pooled_std"] == pytest.approx(1.0)


def test_claims_hold() -> None:
    agg = aggregate(_records([15.0, 15.5, 16.0], [30.0, 31.0, 32.0], [0.30, 0.31, 0.32]))
    claims = {c["id"]: c for c in evaluate_claims(agg)}
    assert claims[1]["verdict"] == "holds", claims[1]
    assert claims[2]["verdict"] == "holds", claims[2]
    assert claims[3]["verdict"] == "holds", claims[3]
    assert math.isclose(claims[3]["checks"][0]["diff"], 31.0 - 22.0)


def test_claims_do_not_hold() -> None:
    # CYBORGS no better than Felzenszwalb, masks get worse, vMF makes no difference.
    agg = aggregate(_records([12.0, 12.5, 13.0], [21.0, 22.0, 23.0], [0.15, 0.16, 0.17]))
    claims = {c["id"]: c for c in evaluate_claims(agg)}
    assert claims[1]["verdict"] == "does not hold"
    verdicts = {ch["test"].split(" (")[0]: ch["verdict"] for ch in claims[1]["checks"]}
    assert verdicts["cyborgs > whole"] == "holds"
    assert verdicts["cyborgs > felzenszwalb"] == "does not hold"
    assert claims[2]["verdict"] == "does not hold"
    assert claims[3]["verdict"] == "does not hold"
    # missing variants -> inconclusive, never a crash
    few = aggregate([_rec("cyborgs", 0, 1.0, 1.0)])
    assert {c["verdict"] for c in evaluate_claims(few)} == {"inconclusive"}


def test_suite_findings_compare_border_pad_with_cyborgs() -> None:
    recs = _records([15.0, 15.5, 16.0], [30.0, 31.0, 32.0], [0.30, 0.31, 0.32])
    assert study.suite_findings(aggregate(recs)) == []  # variant absent: no section
    recs += [_rec("cyborgs_border_pad", s, 15.5, 31.0, [(1, 0.25), (3, 0.40 + 0.01 * s)])
             for s in range(3)]  # fmt: skip
    found = {f["test"]: f for f in study.suite_findings(aggregate(recs))}
    assert found["cyborgs_border_pad > cyborgs (mask_miou_last)"]["verdict"] == "holds"
    assert found["cyborgs_border_pad > cyborgs (mask_miou_last)"]["diff"] == pytest.approx(0.10)
    assert found["cyborgs_border_pad > cyborgs (probe_miou)"]["verdict"] == "does not hold"


def _fake_complete(root: Path, variant: str, seed: int, budget) -> Path:
    d = run_dir(root, variant, seed)
    d.mkdir(parents=True)
    fp = fingerprint(VARIANTS[variant], budget, seed)
    (d / "run.json").write_text(json.dumps({"fingerprint": fp}))
    rec = _rec(variant, seed, 1.0, 2.0)
    rec["fingerprint"] = fp
    (d / "result.json").write_text(json.dumps(rec))
    return d


def test_planner_resumability(tmp_path: Path) -> None:
    micro = BUDGETS["micro"]
    _fake_complete(tmp_path, "whole", 0, micro)
    # incomplete: run.json and a finished stage, no result.json
    inc = run_dir(tmp_path, "whole", 1)
    (inc / "stages").mkdir(parents=True)
    (inc / "run.json").write_text(json.dumps({"fingerprint": fingerprint(VARIANTS["whole"], micro, 1)}))  # fmt: skip
    # a result with a non-finite metric is not complete
    bad = _fake_complete(tmp_path, "grid", 0, micro)
    rec = json.loads((bad / "result.json").read_text())
    rec["metrics"]["voc_ap"] = None
    (bad / "result.json").write_text(json.dumps(rec))
    # corrupt result.json
    torn = _fake_complete(tmp_path, "grid", 1, micro)
    (torn / "result.json").write_text('{"fingerprint": ')

    runs = {r.key: r.status for r in plan_runs(tmp_path, ["whole", "grid"], [0, 1], micro)}
    assert runs == {"whole/seed0": "done", "whole/seed1": "todo",
                    "grid/seed0": "todo", "grid/seed1": "todo"}  # fmt: skip
    # the same directory planned under another budget: stale (wiped and redone)
    other = {r.key: r.status for r in plan_runs(tmp_path, ["whole"], [0], BUDGETS["study"])}
    assert other == {"whole/seed0": "stale"}
    with pytest.raises(KeyError):
        plan_runs(tmp_path, ["wholee"], [0], micro)


def test_execute_run_skips_finished_stages(tmp_path: Path) -> None:
    """Every stage marked done: no command runs (python is /bin/false), result.json is built
    from the stage outputs."""
    micro = BUDGETS["micro"]
    (run,) = plan_runs(tmp_path, ["cyborgs"], [0], micro)
    d = run.dir
    (d / "stages").mkdir(parents=True)
    for s in ("pretrain", "convert", "coco_stuff_probe", "voc_det"):
        (d / "stages" / f"{s}.done").write_text("1.0\n")
    (d / "transfer/coco_stuff_probe").mkdir(parents=True)
    (d / "transfer/voc_det").mkdir(parents=True)
    (d / "transfer/coco_stuff_probe/metrics_final.json").write_text(
        json.dumps({"results": {"sem_seg": {"mIoU": 7.5}}})
    )
    (d / "transfer/voc_det/metrics_final.json").write_text(
        json.dumps({"results": {"bbox": {"AP": 3.0, "AP50": 6.0, "AP75": 2.0}}})
    )
    (d / "pretrain").mkdir()
    lines = [
        {"iteration": 2, "bootstrap/round": 1, "bootstrap/mask_miou": 0.2},
        {"iteration": 4, "total_loss": 1.0},
        {"iteration": 5, "bootstrap/round": 2, "bootstrap/mask_miou": 0.25},
    ]
    (d / "pretrain/metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rec = execute_run(run, micro, env={}, python="/bin/false", log=lambda s: None)
    assert rec["metrics"]["probe_miou"] == 7.5 and rec["metrics"]["voc_ap75"] == 2.0
    assert [r["mask_miou"] for r in rec["mask_rounds"]] == [0.2, 0.25]
    assert rec["metrics"]["mask_miou_last"] == 0.25
    assert [r.status for r in plan_runs(tmp_path, ["cyborgs"], [0], micro)] == ["done"]

    # a stage that is not done runs its command; a failing one raises and leaves no result
    (d / "result.json").unlink()
    (d / "stages/voc_det.done").unlink()
    (run2,) = plan_runs(tmp_path, ["cyborgs"], [0], micro)
    with pytest.raises(study.StageError):
        execute_run(run2, micro, env={}, python="/bin/false", log=lambda s: None)
    assert not (d / "result.json").exists()
    assert not (d / "transfer/voc_det").exists()  # half-finished fine-tuning is wiped


def test_pretraining_only_variant(tmp_path: Path) -> None:
    """cyborgs_long has no transfer stages: its fingerprint ignores the transfer settings and
    it is complete with its mask mIoU per round alone."""
    micro = BUDGETS["micro"]
    fp = fingerprint(VARIANTS["cyborgs_long"], micro, 0)
    assert "budget_voc" not in fp and "budget_probe" not in fp
    assert "budget_voc" in fingerprint(VARIANTS["cyborgs"], micro, 0)
    (run,) = plan_runs(tmp_path, ["cyborgs_long"], [0], micro)
    d = run.dir
    (d / "stages").mkdir(parents=True)
    (d / "stages/pretrain.done").write_text("1.0\n")
    (d / "pretrain").mkdir()
    lines = [
        {"iteration": 2, "bootstrap/round": 1, "bootstrap/mask_miou": 0.2},
        {"iteration": 9, "bootstrap/round": 8, "bootstrap/mask_miou": 0.3},
    ]
    (d / "pretrain/metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rec = execute_run(run, micro, env={}, python="/bin/false", log=lambda s: None)
    assert rec["metrics"] == {"mask_miou_first": 0.2, "mask_miou_last": 0.3}
    assert sorted(p.name for p in (d / "stages").iterdir()) == ["pretrain.done"]
    assert [r.status for r in plan_runs(tmp_path, ["cyborgs_long"], [0], micro)] == ["done"]
    # Fig. 5b is decided on the long run when the study has one.
    recs = [_rec("cyborgs_long", s, None, None, [(1, 0.2), (40, 0.4 + 0.01 * s)]) for s in range(3)]
    (fig5b,) = [c for c in evaluate_claims(aggregate(recs)) if c["id"] == 2]
    assert fig5b["verdict"] == "holds" and "cyborgs_long" in fig5b["checks"][0]["test"]


@pytest.mark.slow
def test_end_to_end_micro(tiny_data_root, tmp_path: Path) -> None:
    """random init + CYBORGS, one seed, micro budget, tiny data (~80 s idle; ~2 min loaded)."""
    out = tmp_path / "study"
    cmd = [sys.executable, "tools/dev/study.py", "--root", str(out), "--budget", "micro",
           "--seeds", "0", "--variants", "random", "cyborgs", "--data-root", str(tiny_data_root)]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ETA" in p.stdout
    data = json.loads((out / "study.json").read_text())
    assert set(data["results"]) == {"random", "cyborgs"}
    for v in ("random", "cyborgs"):
        m = data["results"][v]["metrics"]
        assert m["probe_miou"]["n"] == 1 and m["voc_ap"]["n"] == 1
    rounds = data["results"]["cyborgs"]["mask_miou_per_round"]
    assert len(rounds) == 2 and all(0.0 <= r["mean"] <= 1.0 for r in rounds)
    assert len(data["claims"]) == 3
    for f in ("study.md", "study_bars.png", "study_mask_miou.png"):
        assert (out / f).stat().st_size > 0
    assert "## Claims" in (out / "study.md").read_text()
    # second invocation: everything is skipped
    p2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0 and "2 already complete, 0 to run" in p2.stdout


def test_bootstrapped_runs_are_redone_when_mask_placement_changes(tmp_path: Path) -> None:
    """Runs finished before masks were centred on the backbone's cells (no "cell_grid" in
    their fingerprint) are stale for the bootstrapped variants only."""
    micro = BUDGETS["micro"]
    for variant in ("cyborgs", "whole"):
        d = _fake_complete(tmp_path, variant, 0, micro)
        for name in ("run.json", "result.json"):
            rec = json.loads((d / name).read_text())
            rec["fingerprint"].pop("cell_grid", None)
            (d / name).write_text(json.dumps(rec))
    assert "cell_grid" in fingerprint(VARIANTS["cyborgs"], micro, 0)
    status = {
        r.variant.name: r.status for r in plan_runs(tmp_path, ["cyborgs", "whole"], [0], micro)
    }
    assert status == {"cyborgs": "stale", "whole": "done"}


def test_a_root_the_study_did_not_write_is_refused(tmp_path: Path, capsys) -> None:
    """--root at a folder of other files: refused in one line before anything is written
    (a stale run is deleted whole, and the report files are overwritten, only under a root the
    study owns). A root of an older study (runs/, study.md, no record) is adopted."""
    import study as study_tool

    from cyborgs.utils.ownership import recorded

    root = tmp_path / "mine"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "notes.txt").write_bytes(b"mine")
    (root / "data.csv").write_bytes(b"1,2")
    assert study_tool.main(["--root", str(root), "--report-only"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --root: {root} is not empty and was not written by this")
    assert "data.csv, runs (2 entries)" in line
    assert sorted(p.name for p in root.rglob("*")) == ["data.csv", "notes.txt", "runs"]

    old = tmp_path / "old_study"
    (old / "runs" / "cyborgs" / "seed0").mkdir(parents=True)
    (old / "runs" / "cyborgs" / "seed0" / "run.json").write_text('{"fingerprint": {}}')
    (old / "study.md").write_text("# old report")
    (old / "notes.txt").write_text("mine")
    study_tool.claim_root(old)
    assert {"runs", "study.md", "study.json"} <= recorded(old)
    assert "notes.txt" not in recorded(old)
