"""tools/convert_and_finetune.py (and its .sh wrapper): argument handling, the checks before any
work, the tool invocation of each benchmark (depth overrides, the R18 probe feature, demo
arguments, VOC runs), progress lines and the final collect, with the tools replaced by a
recorder (each tool has its own tests)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import convert_and_finetune as caf  # tools/ (tests/conftest.py)
import pytest
import repo_paths
import torch

ROOT = Path(__file__).resolve().parents[2]


def _opt(cmd: list[str], key: str) -> str:
    return cmd[cmd.index(key) + 1]


def test_arguments() -> None:
    a = caf.parse_args(["c.pth", "out"])
    assert a.benchmarks == ["voc07_svm", "in1pct", "in10pct", "voc_det", "coco_inst"]
    assert (a.demo, a.num_gpus, a.runs, a.overwrite) == (False, 1, 1, False)
    a = caf.parse_args(["c.pth", "out", "all", "--demo", "--num-gpus", "8", "--runs", "5"])
    assert len(a.benchmarks) == 9 and a.benchmarks[-1] == "coco_stuff_probe"
    assert (a.demo, a.num_gpus, a.runs) == (True, 8, 5)
    assert caf.parse_args(["c", "o", "lvis", "voc_det"]).benchmarks == ["lvis", "voc_det"]
    for bad in (["c", "o", "voc"], ["c", "o", "--fast"], ["c"], ["c", "o", "--runs", "0"]):
        with pytest.raises(SystemExit) as e:
            caf.parse_args(bad)
        assert e.value.code == 2, bad


def test_commands_of_each_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    def cmds(name: str, depth: int = 18, demo: bool = True, runs: int = 1) -> list[list[str]]:
        return caf.commands(caf.BENCHMARKS[name], "w.pkl", "out", depth, demo, 2, runs)

    (svm,) = cmds("voc07_svm")
    assert svm[:2] == [sys.executable, str(ROOT / "tools" / "voc07_svm.py")]
    assert _opt(svm, "--train") == "demo_voc_2007_cls_trainval" and _opt(svm, "--crop") == "112"
    assert _opt(svm, "--output-dir") == os.path.join("out", "voc07_svm")
    (svm_full,) = cmds("voc07_svm", demo=False)
    assert _opt(svm_full, "--test") == "voc_2007_cls_test" and "--crop" not in svm_full
    (semi,) = cmds("in10pct")
    assert _opt(semi, "--subset") == "10percent" and _opt(semi, "--prefix") == "demo_"
    assert _opt(semi, "--epochs") == "4"
    (semi_full,) = cmds("in1pct", demo=False)
    assert _opt(semi_full, "--subset") == "1percent" and "--prefix" not in semi_full

    monkeypatch.chdir(ROOT)  # run from the repository root: configs given relative to it
    (det,) = cmds("voc_det")
    assert _opt(det, "--config-file") == "transfer_configs/demo_voc_det_C4.yaml"
    monkeypatch.chdir("/")
    (det,) = cmds("voc_det")
    config = repo_paths.TRANSFER_CONFIGS / "demo_voc_det_C4.yaml"
    assert Path(_opt(det, "--config-file")).resolve() == config
    assert _opt(det, "--num-gpus") == "2" and _opt(det, "MODEL.WEIGHTS") == "w.pkl"
    assert _opt(det, "MODEL.RESNETS.DEPTH") == "18"
    assert _opt(det, "MODEL.RESNETS.RES2_OUT_CHANNELS") == "64"
    assert _opt(det, "OUTPUT_DIR") == os.path.join("out", "voc_det")
    runs = cmds("voc_det", depth=50, demo=False, runs=3)
    assert [_opt(c, "OUTPUT_DIR") for c in runs] == [
        os.path.join("out", "voc_det", f"run{r}") for r in (1, 2, 3)
    ]
    assert _opt(runs[0], "--config-file").endswith("voc_det_R50_C4_24k.yaml")
    assert _opt(runs[0], "MODEL.RESNETS.RES2_OUT_CHANNELS") == "256"
    assert len(cmds("coco_inst", runs=3)) == 1  # --runs repeats VOC detection only
    for cmd in runs + cmds("lvis") + cmds("coco_inst", demo=False):
        assert Path(_opt(cmd, "--config-file")).is_file()

    # The probe reads the last res3 block: res3.1 of R18, res3.2 of R34/R50.
    for depth, feature in ((18, "res3.1"), (34, "res3.2"), (50, "res3.2")):
        (probe,) = cmds("coco_stuff_probe", depth=depth)
        assert _opt(probe, "MODEL.LINEAR_PROBE.FEATURE") == feature
        assert _opt(probe, "MODEL.SEM_SEG_HEAD.IN_FEATURES") == f'["{feature}"]'
    assert "MODEL.LINEAR_PROBE.FEATURE" not in cmds("coco_stuff_fcn")[0]


def _r18_checkpoint(path: Path) -> None:
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 18, 64
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.RESNETS.OUT_FEATURES = "BN", ["res5"]
    state = build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()
    torch.save({"model": {"backbone." + k: v for k, v in state.items()}}, path)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Replaces the tool runs: converts for real (without its load check), records the rest."""
    from cyborgs.transfer.convert import convert_checkpoint

    calls: list[list[str]] = []

    def fake_run(cmd: list[str]) -> None:
        calls.append(cmd)
        if cmd[1].endswith("convert_to_detectron2.py"):
            assert cmd[-2:] == ["--check", "c4,fpn"]
            convert_checkpoint(cmd[2], cmd[3])
        if cmd[1].endswith("semi_supervised.py"):
            raise caf.CommandFailed(cmd, 3)

    monkeypatch.setattr(caf, "run", fake_run)
    return calls


def test_main_converts_once_runs_each_benchmark_then_collects(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    ckpt, out = tmp_path / "model_final.pth", tmp_path / "out"
    _r18_checkpoint(ckpt)
    argv = [str(ckpt), str(out), "voc07_svm", "voc_det", "coco_stuff_probe", "--demo"]
    assert caf.main(argv + ["--runs", "2"]) == 0
    tools = [Path(c[1]).name for c in recorded]
    assert tools == ["convert_to_detectron2.py", "voc07_svm.py", "train_net.py", "train_net.py",
                     "train_net.py", "collect_results.py"]  # fmt: skip
    assert recorded[0][2:4] == [str(ckpt), str(out / "backbone.pkl")]
    assert _opt(recorded[4], "MODEL.LINEAR_PROBE.FEATURE") == "res3.1"  # depth read from weights
    assert recorded[-1][2:] == [str(out)]
    stdout = capsys.readouterr().out
    assert "data sets present for: voc07_svm voc_det coco_stuff_probe" in stdout
    assert "ResNet-18 backbone" in stdout
    assert "=== voc07_svm: benchmark 1 of 3, elapsed 0:00:00, eta: unknown ===" in stdout
    assert "=== coco_stuff_probe: benchmark 3 of 3, elapsed " in stdout
    assert "3 benchmark(s) done in " in stdout

    # A failing tool stops the run with its exit status; nothing after it runs.
    recorded.clear()
    assert caf.main([str(ckpt), str(out), "in1pct", "voc_det", "--demo"]) == 3
    assert [Path(c[1]).name for c in recorded][-1] == "semi_supervised.py"
    assert "command failed (exit 3)" in capsys.readouterr().err


def test_checks_before_any_work(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert caf.main([str(tmp_path / "missing.pth"), str(out), "--demo"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"x")
    # Full-size VOC detection is not on disk here: refused before converting anything.
    assert caf.main([str(ckpt), str(out), "voc_det"]) == 2
    assert "voc_2007_trainval" in capsys.readouterr().err
    assert recorded == [] and not out.exists()


def test_shell_wrapper_forwards_arguments_from_the_callers_directory(tmp_path: Path) -> None:
    # No cd: relative arguments keep meaning the caller's directory (as for pretrain_net.py).
    stub = tmp_path / "py"
    stub.write_text('#!/usr/bin/env bash\necho "cwd=$PWD"; printf "arg=%s\\n" "$@"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    res = subprocess.run(
        ["bash", str(ROOT / "tools" / "convert_and_finetune.sh"), "a b.pth", "out", "--demo"],
        cwd=tmp_path, env=dict(os.environ, PYTHON=str(stub)), capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"cwd={tmp_path}", f"arg={ROOT / 'tools' / 'convert_and_finetune.py'}", "arg=a b.pth",
        "arg=out", "arg=--demo",
    ]  # fmt: skip


def test_relative_paths_mean_the_callers_directory(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """CKPT, OUTDIR and the data roots, given relative, are resolved against the current
    directory (not the repository) and handed on absolute."""
    work = tmp_path / "journey"
    (work / "run2").mkdir(parents=True)
    os.symlink(tiny_data_root, work / "demo")
    _r18_checkpoint(work / "run2" / "model_final.pth")
    monkeypatch.chdir(work)
    monkeypatch.setenv("CYBORGS_DEMO_DATASETS", "demo")
    monkeypatch.setenv("DETECTRON2_DATASETS", "real")
    assert caf.main(["run2/model_final.pth", "tx1", "voc07_svm", "--demo"]) == 0
    assert recorded[0][2:4] == [
        str(work / "run2" / "model_final.pth"),
        str(work / "tx1" / "backbone.pkl"),
    ]
    assert _opt(recorded[1], "--output-dir") == str(work / "tx1" / "voc07_svm")
    assert recorded[-1][2:] == [str(work / "tx1")]
    # The tools started next inherit the data roots absolute.
    assert os.environ["CYBORGS_DEMO_DATASETS"] == str(work / "demo")
    assert os.environ["DETECTRON2_DATASETS"] == str(work / "real")
    assert not (ROOT / "tx1").exists() and (work / "tx1" / "source.json").is_file()
    capsys.readouterr()
    # Errors name the absolute path.
    assert caf.main(["run2/missing.pth", "tx1", "--demo"]) == 2
    assert f"checkpoint not found: {work / 'run2' / 'missing.pth'}" in capsys.readouterr().err


def test_outdir_records_its_checkpoint_and_refuses_another(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    a, b, out = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "out"
    _r18_checkpoint(a)
    b.write_bytes(a.read_bytes() + b"other")  # another file: a different sha256
    assert caf.main([str(a), str(out), "voc07_svm", "--demo"]) == 0
    source = json.loads((out / "source.json").read_text())
    assert source == {"checkpoint": str(a), "sha256": hashlib.sha256(a.read_bytes()).hexdigest()}
    (out / "voc07_svm").mkdir()
    backbone = (out / "backbone.pkl").read_bytes()

    # The same checkpoint adds benchmarks to its OUTDIR.
    recorded.clear()
    assert caf.main([str(a), str(out), "coco_stuff_probe", "--demo"]) == 0
    assert [Path(c[1]).name for c in recorded][0] == "convert_to_detectron2.py"

    # Another checkpoint is refused before converting anything, naming both.
    recorded.clear()
    capsys.readouterr()
    assert caf.main([str(b), str(out), "coco_stuff_probe", "--demo"]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "new OUTDIR" in err and "--overwrite" in err
    assert recorded == [] and (out / "backbone.pkl").read_bytes() == backbone
    assert json.loads((out / "source.json").read_text()) == source

    # --overwrite deletes the old results (only what this tool writes), then runs.
    (out / "notes.txt").write_text("mine")
    assert caf.main([str(b), str(out), "coco_stuff_probe", "--demo", "--overwrite"]) == 0
    assert not (out / "voc07_svm").exists() and (out / "notes.txt").exists()
    assert json.loads((out / "source.json").read_text())["checkpoint"] == str(b)

    # An OUTDIR with results but no record (older runs) is refused too: its checkpoint is unknown.
    (out / "source.json").unlink()
    assert caf.main([str(a), str(out), "voc07_svm", "--demo"]) == 2
    assert "unrecorded checkpoint" in capsys.readouterr().err


def test_results_name_the_checkpoint(tmp_path: Path) -> None:
    from cyborgs.transfer.results import collect

    (tmp_path / "source.json").write_text(
        json.dumps({"checkpoint": "/x/c.pth", "sha256": "ab" * 32})
    )
    data = collect(str(tmp_path))
    assert data["source"] == {"checkpoint": "/x/c.pth", "sha256": "ab" * 32}
    assert "Checkpoint: `/x/c.pth` (sha256 abababababab)" in (tmp_path / "results.md").read_text()
    (tmp_path / "source.json").unlink()
    assert collect(str(tmp_path))["source"] is None


def test_config_names_resolve_against_transfer_configs(tmp_path: Path) -> None:
    """tools/train_net.py accepts a path or a bare name; the library only ever sees paths."""
    from cyborgs.transfer.setup import get_transfer_cfg

    resolve = repo_paths.resolve_transfer_config
    assert resolve("demo_voc_det_C4.yaml") == str(ROOT / "transfer_configs/demo_voc_det_C4.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text("MODEL:\n  DEVICE: cpu\n")
    assert resolve(str(own)) == str(own)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        resolve("nope.yaml")
    with pytest.raises(FileNotFoundError, match="transfer config file not found: demo_voc"):
        get_transfer_cfg("demo_voc_det_C4.yaml")  # a name, not a path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_overwrite_never_deletes_what_the_suite_did_not_write(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]], capsys: pytest.CaptureFixture
) -> None:
    """The audit's case: OUTDIR pointed at a data root (or a folder of the user's own notes in
    folders named like benchmarks) with --overwrite deleted them."""
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    _r18_checkpoint(a)
    b.write_bytes(a.read_bytes() + b"other")
    data = tmp_path / "datasets"
    for rel in ("lvis/lvis_v1_val.json", "cityscapes/gtFine/x.png", "voc_det/notes.txt"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(rel.encode() * 3)
    before = _tree(data)
    for extra in ([], ["--overwrite"]):
        assert caf.main([str(a), str(data), "voc07_svm", "--demo", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{data} is not empty and was not written by this suite" in err
        assert "cityscapes, lvis, voc_det (3 entries)" in err
        assert len(err.strip().splitlines()) == 1 and recorded == []
        assert _tree(data) == before and "deleting" not in capsys.readouterr().out

    # The suite's OUTDIR, then a benchmark-named folder of the user's inside it: --overwrite
    # for another checkpoint refuses naming it and deletes nothing.
    out = tmp_path / "out"
    assert caf.main([str(a), str(out), "voc07_svm", "--demo"]) == 0
    (out / "lvis").mkdir()
    (out / "lvis" / "notes.txt").write_text("mine")
    (out / "backbone.pkl").write_bytes(b"converted")  # the fake converter's stand-in
    before = _tree(out)
    recorded.clear()
    capsys.readouterr()
    assert caf.main([str(b), str(out), "voc07_svm", "--demo", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite: lvis in" in err and "not recorded as written by this suite" in err
    assert "nothing was deleted" in err and recorded == [] and _tree(out) == before
    # Without the user's folder, --overwrite deletes what the record lists and runs.
    (out / "lvis" / "notes.txt").rename(tmp_path / "notes.txt")
    (out / "lvis").rmdir()
    assert caf.main([str(b), str(out), "voc07_svm", "--demo", "--overwrite"]) == 0
    assert f"--overwrite: deleting backbone.pkl in {out}" in capsys.readouterr().out


def test_an_outdir_of_the_older_driver_is_adopted(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]]
) -> None:
    """An OUTDIR written before the record existed (source.json, benchmark folders) keeps
    working: its own outputs become recorded, anything else in it stays untouched."""
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    _r18_checkpoint(a)
    b.write_bytes(a.read_bytes() + b"other")
    out = tmp_path / "out"
    (out / "voc07_svm").mkdir(parents=True)
    (out / "voc07_svm" / "metrics_final.json").write_text("{}")
    (out / "source.json").write_text(json.dumps({"checkpoint": "/old.pth", "sha256": "ab" * 32}))
    (out / "notes.txt").write_text("mine")
    assert caf.main([str(b), str(out), "voc07_svm", "--demo", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "source.json").read_text())["checkpoint"] == str(b)
    from cyborgs.utils.ownership import recorded as recorded_entries

    assert "notes.txt" not in recorded_entries(out)
    assert {"source.json", "voc07_svm", "backbone.pkl"} <= recorded_entries(out)


def test_recipe_add_a_benchmark(
    tiny_data_root, tmp_path: Path, recorded: list[list[str]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """DESIGN.md's "add a benchmark": an entry in the table is all the driver and the results
    summary need (its configs here are existing ones; a real benchmark adds its own two)."""
    from cyborgs.transfer import table
    from cyborgs.transfer.results import collect, write_metrics

    dummy = table.Benchmark(
        "dummy_probe",
        "train_net",
        ("coco_stuff_10k_sem_seg_train", "coco_stuff_10k_sem_seg_test"),
        "table1",
        (table.Column("Dummy mIoU", "sem_seg", "mIoU", 12.5),),
        "a probe of res4 block 2, repeated",
        config="coco_stuff10k_linear_probe.yaml",
        demo_config="demo_coco_stuff10k_linear_probe.yaml",
        probe_feature="res4.2",
        repeatable=True,
    )
    monkeypatch.setitem(table.BENCHMARKS, dummy.name, dummy)

    # The driver's arguments: named, in "all" and in the default (Table 1) set.
    assert caf.parse_args(["c", "o", "dummy_probe"]).benchmarks == ["dummy_probe"]
    assert "dummy_probe" in caf.parse_args(["c", "o"]).benchmarks
    assert "dummy_probe" in caf.parse_args(["c", "o", "all"]).benchmarks
    # Its commands: the table's probe feature (capped for R18), --runs repeats it.
    runs = caf.commands(dummy, "w.pkl", "out", 18, True, 1, 2)
    assert [_opt(c, "OUTPUT_DIR") for c in runs] == [
        os.path.join("out", "dummy_probe", f"run{r}") for r in (1, 2)
    ]
    assert _opt(runs[0], "MODEL.LINEAR_PROBE.FEATURE") == "res4.1"
    (r50,) = caf.commands(dummy, "w.pkl", "out", 50, False, 1, 1)
    assert _opt(r50, "MODEL.SEM_SEG_HEAD.IN_FEATURES") == '["res4.2"]'

    # A whole run: data sets checked, the benchmark run, its folder recorded, so that
    # --overwrite for another checkpoint deletes it.
    a, b, out = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "out"
    _r18_checkpoint(a)
    b.write_bytes(a.read_bytes() + b"other")
    assert caf.main([str(a), str(out), "dummy_probe", "--demo"]) == 0
    assert "data sets present for: dummy_probe" in capsys.readouterr().out
    assert [Path(c[1]).name for c in recorded] == [
        "convert_to_detectron2.py", "train_net.py", "collect_results.py",
    ]  # fmt: skip
    (out / "dummy_probe").mkdir()
    assert caf.main([str(b), str(out), "voc07_svm", "--demo", "--overwrite"]) == 0
    assert not (out / "dummy_probe").exists()

    # The results summary: its column in Table 1, next to its paper value.
    write_metrics(
        str(out / "dummy_probe" / "metrics_final.json"),
        {"protocol": "dummy_probe", "results": {"sem_seg": {"mIoU": 20.0}}},
    )
    cell = next(c for c in collect(str(out))["table1"] if c["column"] == "Dummy mIoU")
    assert (cell["value"], cell["paper"], cell["runs"]) == (20.0, 12.5, 1)
    assert "a probe of res4 block 2, repeated" in (out / "results.md").read_text()
