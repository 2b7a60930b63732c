"""tools/pretrain_net.py's command line: mistakes are refused with one ``error:`` line (exit 2)
before anything is written; --resume and --plan-only leave an existing run intact.

In-process (``cli``/``setup``), no training: each case stops before the trainer is built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "pretrain_configs" / "demo_R18.yaml")

_spec = importlib.util.spec_from_file_location("pretrain_net_cli", REPO / "tools/pretrain_net.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must exit 2 with a single ``error:`` line on stderr, which is returned."""
    try:
        rc = tool.cli(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _fake_run(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "model_final.pth").write_bytes(b"x")
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "plan.json").write_text("{}")


def test_rerun_into_a_run_without_resume_is_refused(tiny_data_root, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    _fake_run(out)
    line = _refused(["--config-file", DEMO, "OUTPUT_DIR", str(out)], capsys)
    assert str(out) in line and "last_checkpoint" in line and "--resume" in line
    assert sorted(p.name for p in out.iterdir()) == ["last_checkpoint", "model_final.pth",
                                                     "plan.json"]  # fmt: skip
    # setup() itself (the per-process path main() takes) refuses as well
    args = tool.get_parser().parse_args(["--config-file", DEMO, "OUTPUT_DIR", str(out)])
    with pytest.raises(tool.UsageError, match="already holds a run"):
        tool.setup(args)
    assert not (out / "config.yaml").exists()


def test_plan_only_does_not_overwrite_a_runs_plan(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    _fake_run(out)
    argv = ["--plan-only", "--images", "24", "--config-file", DEMO, "OUTPUT_DIR", str(out)]
    assert tool.cli(argv) == 0
    assert "plan not written" in capsys.readouterr().out
    assert (out / "plan.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--eval-only", "--config-file", DEMO], "no evaluation"),
        (["--config-file", DEMO, "OUTPUT_DIR", "/tmp/x", "--plan-only"], "options go before"),
        (["OUTPUT_DIR", "/tmp/x"], "--config-file is required"),
        (["--config-file", DEMO, "OUTPUT_DIR", ""], "OUTPUT_DIR is empty"),
        (["--config-file", "/nonexistent.yaml"], "/nonexistent.yaml does not exist"),
        (["--config-file", DEMO, "SOLVER.IMS_PER_BACH", "8"], "(from the command line); "
                                                              "did you mean SOLVER.IMS_PER_BATCH?"),
        (["--config-file", DEMO, "SOLVER.IMS_PER_BATCH", "x"], "Type mismatch"),
        (["--config-file", DEMO, "CYBORGS.BOOTSTRAP.K_MIN", "20", "CYBORGS.BOOTSTRAP.K_MAX", "5"],
         "K_MIN = 20"),
        (["--plan-only", "--images", "9", "--config-file", DEMO, "SOLVER.IMS_PER_BACH", "8"],
         "did you mean SOLVER.IMS_PER_BATCH?"),
    ],
)  # fmt: skip
def test_command_line_mistakes_are_one_line(argv, words, tmp_path, capsys) -> None:
    if "OUTPUT_DIR" not in argv:
        argv = [*argv, "OUTPUT_DIR", str(tmp_path / "out")]
    assert words in _refused(argv, capsys)
    assert not (tmp_path / "out").exists()


def test_unknown_key_in_the_config_file_names_the_file(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {DEMO}\nCYBORGS:\n  EMA:\n    BASE_MOMENTUMM: 0.99\n")
    line = _refused(["--config-file", str(bad), "OUTPUT_DIR", str(tmp_path / "o")], capsys)
    assert f"config file {bad}" in line and "did you mean CYBORGS.EMA.BASE_MOMENTUM?" in line


def test_eval_only_is_not_advertised() -> None:
    assert "--eval-only" not in tool.get_parser().format_help()


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path) -> None:
    def _bug(*a, **k):
        raise ValueError("a genuine bug")

    monkeypatch.setattr(tool, "setup_pretrain_cfg", _bug)
    with pytest.raises(ValueError, match="genuine bug"):
        tool.cli(["--config-file", DEMO, "OUTPUT_DIR", str(tmp_path / "o")])


def test_resume_with_nothing_to_resume_warns(tiny_data_root, tmp_path) -> None:
    out = tmp_path / "typo"
    args = tool.get_parser().parse_args(
        ["--resume", "--config-file", DEMO, "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "8"]
    )
    tool.setup(args)
    assert (
        f"--resume: nothing to resume in {out}; starting a new run" in (out / "log.txt").read_text()
    )


def test_resume_with_a_changed_config_keeps_the_old_one(tiny_data_root, tmp_path) -> None:
    from cyborgs.engine.setup import setup_pretrain_cfg

    out = tmp_path / "run"
    old, _ = setup_pretrain_cfg(DEMO, ["OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "8"])
    _fake_run(out)
    (out / "last_checkpoint").write_text("model_0000005.pth")
    (out / "config.yaml").write_text(old.dump())
    new, _ = setup_pretrain_cfg(
        DEMO, ["OUTPUT_DIR", str(out / ".." / "run"), "SOLVER.IMS_PER_BATCH", "8"]
    )
    assert tool.keep_config_if_changed(new) == []  # only OUTPUT_DIR's spelling differs
    assert (out / "config.yaml").is_file()

    new, _ = setup_pretrain_cfg(
        DEMO, ["OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "8", "SOLVER.EPOCHS", "4"]
    )
    (warning,) = tool.keep_config_if_changed(new)
    assert "SOLVER.EPOCHS: 6 -> 4" in warning and "SOLVER.MAX_ITER: 18 -> 12" in warning
    kept = out / "config.before_resume_0000005.yaml"
    assert str(kept) in warning and kept.read_text() == old.dump()
    assert not (out / "config.yaml").exists()  # default_setup writes the new one next
    # a second changed resume from the same checkpoint keeps the first kept config too
    (out / "config.yaml").write_text(new.dump())
    newer, _ = setup_pretrain_cfg(
        DEMO, ["OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "8", "SOLVER.EPOCHS", "5"]
    )
    (warning,) = tool.keep_config_if_changed(newer)
    assert kept.read_text() == old.dump()
    assert (out / "config.before_resume_0000005.1.yaml").read_text() == new.dump()


def test_weights_without_last_checkpoint_are_not_resumed_over(tmp_path, capsys) -> None:
    """--resume follows last_checkpoint only: with weights but no pointer it would start over
    and overwrite them, so it is refused like a rerun without --resume."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0000005.pth").write_bytes(b"x")
    line = _refused(["--resume", "--config-file", DEMO, "OUTPUT_DIR", str(out)], capsys)
    assert "no last_checkpoint" in line and "model_0000005.pth" in line
    assert [p.name for p in out.iterdir()] == ["model_0000005.pth"]


def test_a_mistake_found_in_the_spawned_processes_is_not_buried(tmp_path) -> None:
    """With --num-gpus 2 (gloo on the CPU) a missing data set is found inside the processes:
    their error lines and exit status 2 come through, without the launcher's traceback."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, CYBORGS_DEMO_DATASETS=str(tmp_path / "nowhere"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "tools/pretrain_net.py"), "--config-file", DEMO,
           "--num-gpus", "2", "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: data set 'demo_coco_2017_train_unlabeled'" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: training process")


@pytest.mark.parametrize("plan_only", [False, True])
@pytest.mark.parametrize("where", ["file", "base"])
def test_python_tag_in_a_config_or_its_base_runs_nothing(where, plan_only, tmp_path, capsys):
    """A ``!!python/...`` tag (here: one that would create a marker file) in the config or in
    its ``_BASE_``: one error line naming the file that holds it, nothing run, nothing written."""
    marker = tmp_path / "marker"
    evil = f'SOLVER:\n  BASE_LR: !!python/object/apply:builtins.open ["{marker}", "w"]\n'
    cfg = tmp_path / "cfg.yaml"
    if where == "file":
        cfg.write_text(f"{evil}_BASE_: {DEMO}\n")
        holder = cfg
    else:
        holder = tmp_path / "base.yaml"
        holder.write_text(evil)
        cfg.write_text("_BASE_: base.yaml\n")
    out = tmp_path / "out"
    argv = ["--plan-only"] * plan_only + ["--config-file", str(cfg), "OUTPUT_DIR", str(out)]
    line = _refused(argv, capsys)
    assert line.startswith(f"error: {holder}: line 2, column 12: tag !!python/object/apply:")
    assert not marker.exists() and not out.exists()


def test_base_cycle_and_missing_base_are_one_line(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_BASE_: b.yaml\n")
    b.write_text("_BASE_: a.yaml\n")
    out = tmp_path / "out"
    line = _refused(["--config-file", str(a), "OUTPUT_DIR", str(out)], capsys)
    assert line == f"error: {b}: _BASE_ cycle: {a} -> {b} -> {a}"
    b.write_text("_BASE_: gone.yaml\n")
    line = _refused(["--plan-only", "--config-file", str(a), "OUTPUT_DIR", str(out)], capsys)
    assert line == f"error: {b}: _BASE_ gone.yaml not found (looked for {tmp_path / 'gone.yaml'})"
    assert not out.exists()


def _user_folder(out: Path) -> dict[str, bytes]:
    """A folder of the user's whose names collide with what a run writes (the audit's case)."""
    files = {
        "config.yaml": b"my: config\n",
        "plan.json": b'{"mine": 1}',
        "args.json": b"[]",
        ".notes.txt.abc123.tmp": b"draft",
        "masks/bootstrap/demo/round_0001/ab/x.png": b"my png",
    }
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_that_is_not_a_run_is_refused(tiny_data_root, tmp_path, capsys, resume) -> None:
    out = tmp_path / "mine"
    files = _user_folder(out)
    argv = ["--config-file", DEMO, "OUTPUT_DIR", str(out)]
    line = _refused((["--resume"] if resume else []) + argv, capsys)
    assert f"{out} is not empty and was not written by this suite" in line
    assert ".notes.txt.abc123.tmp, args.json, config.yaml, masks, plan.json (5 entries)" in line
    assert _tree(out) == files
    # setup() (each process's path) refuses too, before default_setup writes config.yaml
    with pytest.raises(tool.UsageError, match="not written by this suite"):
        tool.setup(tool.get_parser().parse_args(argv))
    assert _tree(out) == files
    # --plan-only prints the plan but does not write plan.json there
    assert tool.cli(["--plan-only", "--images", "24", *argv]) == 0
    assert "plan not written: OUTPUT_DIR: " in capsys.readouterr().out
    assert _tree(out) == files


def test_a_claimed_folder_takes_new_runs_and_an_older_run_is_adopted(tmp_path, capsys) -> None:
    from cyborgs.utils.ownership import RECORD, recorded

    out = tmp_path / "planned"
    argv = ["--plan-only", "--images", "24", "--config-file", DEMO, "OUTPUT_DIR", str(out)]
    assert tool.cli(argv) == 0 and "plan written" in capsys.readouterr().out
    assert {"plan.json", "config.yaml", "masks"} <= recorded(out)
    tool.claim_output_dir(str(out))  # a run into the planned folder: accepted
    # A run of the previous version (no record): its files recorded, a note of the user's not.
    old = tmp_path / "old_run"
    _fake_run(old)
    (old / "notes.txt").write_text("mine")
    tool.claim_output_dir(str(old))
    assert recorded(old) >= {"model_final.pth", "last_checkpoint", "plan.json", "config.yaml"}
    assert "notes.txt" not in recorded(old) and (old / RECORD).is_file()


def test_a_run_the_disk_cannot_hold_is_refused_with_numbers(
    tiny_data_root, tmp_path, capsys, monkeypatch
) -> None:
    """The plan's own estimate (kept checkpoints + mask rounds) against the free space at
    OUTPUT_DIR, before anything is written; --force starts anyway."""
    from cyborgs.engine.plan import build_plan, model_counts_from_config
    from cyborgs.engine.setup import setup_pretrain_cfg

    out = tmp_path / "run"
    opts = ["OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "8"]
    cfg, _ = setup_pretrain_cfg(DEMO, opts)
    plan = build_plan(cfg, int(cfg.CYBORGS.DATA.NUM_IMAGES), model_counts_from_config(cfg))
    need = plan["disk_bytes_estimate"]
    assert need > 10_000_000  # R18 checkpoints
    monkeypatch.setattr(tool, "free_bytes", lambda p: need - 1)
    args = tool.get_parser().parse_args(["--config-file", DEMO, *opts])
    with pytest.raises(tool.UsageError) as e:
        tool.setup(args)
    line = str(e.value)
    assert f"not enough disk space at {out}" in line and "--force" in line
    assert f"needs ~{tool.format_bytes(need)} more" in line
    assert f"{tool.format_bytes(need - 1)} free there" in line
    assert not out.exists()  # nothing written
    monkeypatch.setattr(tool, "free_bytes", lambda p: need)
    tool.setup(args)
    assert (out / "config.yaml").is_file()
    # --force skips the check
    monkeypatch.setattr(tool, "free_bytes", lambda p: 0)
    other = tmp_path / "forced"
    opts[1] = str(other)
    tool.setup(tool.get_parser().parse_args(["--force", "--config-file", DEMO, *opts]))
    assert (other / "config.yaml").is_file()


def test_a_full_disk_during_training_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    from cyborgs.utils.atomic import DiskFullError

    class _Trainer:
        def __init__(self, cfg, args=None) -> None:
            self.start_iter, self.max_iter = 0, 10

        def resume_or_load(self, resume) -> None:
            pass

        def train(self) -> None:
            raise DiskFullError(str(tmp_path / "model_0000009.pth"), 45_000_000, 1_000)

    monkeypatch.setattr(tool, "setup", lambda args: tool.CfgNode({"OUTPUT_DIR": str(tmp_path)}))
    monkeypatch.setattr(tool, "CyborgsTrainer", _Trainer)
    with pytest.raises(SystemExit) as e:
        tool.main(tool.get_parser().parse_args(["--config-file", DEMO]))
    assert e.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: no space left on device writing {tmp_path / 'model_0000009.pth'}: it needs "
        "~45.0 MB, 1.0 kB free on that file system; free some space and continue with --resume"
    )


def test_a_refusal_from_a_fresh_process_is_the_error_line_alone(tmp_path) -> None:
    """From the shell, the user sees only the error line: nothing printed before it (detectron2
    and fvcore script classes with the deprecated ``torch.jit.script`` at import, which printed
    FutureWarnings ahead of every tool's output; the detectron2 patch silences them)."""
    import subprocess
    import sys

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("_BASE_: cfg.yaml\n")
    res = subprocess.run(
        [sys.executable, str(REPO / "tools/pretrain_net.py"), "--config-file", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines() == [f"error: {cfg}: _BASE_ cycle: {cfg} -> {cfg}"]
