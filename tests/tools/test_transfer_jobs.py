"""The transfer suite as jobs (tools/convert_and_finetune.py --submit): what a dry run prints,
the table and status lines collect makes from a half-finished results folder, and the demo
benchmark submitted to submitit's local executor, run and collected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import convert_and_finetune as caf  # tools/ (tests/conftest.py)
import pytest
from test_convert_and_finetune import _r18_checkpoint

from cyborgs.transfer.results import FAILED_FILE, JOBS_FILE, METRICS_FILE, collect

ROOT = Path(__file__).resolve().parents[2]


def _json_objects(text: str) -> list[dict]:
    dec, out, i = json.JSONDecoder(), [], 0
    while (i := text.find("{", i)) >= 0:
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def test_dry_run_prints_one_job_per_benchmark_run_and_writes_nothing(
    tiny_data_root, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt, out = tmp_path / "model_final.pth", tmp_path / "out"
    _r18_checkpoint(ckpt)
    argv = [str(ckpt), str(out), "voc07_svm", "voc_det", "--demo", "--runs", "2", "--num-gpus",
            "4", "--submit", "--dry-run", "--partition", "gpu", "--time", "600"]  # fmt: skip
    assert caf.main(argv) == 0
    jobs = _json_objects(capsys.readouterr().out)
    assert [(j["benchmark"], j["run"]) for j in jobs] == [
        ("voc07_svm", None), ("voc_det", 1), ("voc_det", 2)]  # fmt: skip
    assert [j["output_dir"] for j in jobs] == [
        str(out / "voc07_svm"), str(out / "voc_det" / "run1"), str(out / "voc_det" / "run2")]  # fmt: skip
    det = jobs[1]
    assert det["resources"]["tasks_per_node"] == 1  # train_net spawns its own workers
    assert det["resources"]["gpus_per_node"] == 4
    assert det["resources"]["slurm_partition"] == "gpu" and det["resources"]["timeout_min"] == 600
    assert det["command"][:3] == ["train_net.py", "--preemption-signals", "USR2,TERM"]
    assert det["command"][det["command"].index("OUTPUT_DIR") + 1] == det["output_dir"]
    assert det["submitit_folder"] == str(out / "submitit")
    assert not out.exists()  # no conversion, no record, nothing submitted


def _metrics(path: Path, protocol: str, results: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rec = {"protocol": protocol, "results": results, "datasets": {"train": ["voc_2007_trainval"]}}
    (path / METRICS_FILE).write_text(json.dumps(rec))


def test_collect_reports_finished_running_and_failed_jobs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _metrics(
        out / "voc_det" / "run1", "voc_det", {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}}
    )
    _metrics(
        out / "voc_det" / "run2", "voc_det", {"bbox": {"AP": 52.0, "AP50": 82.0, "AP75": 57.0}}
    )
    (out / "coco_inst").mkdir()  # started, no final metrics yet
    (out / "coco_inst" / "metrics.json").write_text('{"iteration": 19}\n')
    (out / "voc07_svm").mkdir()
    (out / "voc07_svm" / FAILED_FILE).write_text(json.dumps({"exit_status": 3}))
    jobs = [{"benchmark": "voc_det", "run": r, "output_dir": f"voc_det/run{r}", "job_id": f"1{r}",
             "log": f"/logs/1{r}_0_log.out"} for r in (1, 2)]  # fmt: skip
    jobs += [{"benchmark": "coco_inst", "run": None, "output_dir": "coco_inst", "job_id": "20",
              "log": "/logs/20_0_log.out"},
             {"benchmark": "voc07_svm", "run": None, "output_dir": "voc07_svm", "job_id": "30",
              "log": "/logs/30_0_log.out"},
             {"benchmark": "in1pct", "run": None, "output_dir": "in1pct", "job_id": "40",
              "log": "/logs/40_0_log.out"}]  # fmt: skip
    (out / JOBS_FILE).write_text(json.dumps(jobs))
    data = collect(str(out))
    md = (out / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| this run"))
    assert "| 51.0 | 81.0 | 56.0 |" in row  # VOC det: mean of the two finished runs
    assert "2 of 5 finished." in md
    assert "- `coco_inst` (job 20): running or not started" in md
    assert "- `voc07_svm` (job 30): failed (exit 3); log: /logs/30_0_log.out" in md
    assert "- `in1pct` (job 40): running or not started" in md  # not started: no folder
    assert "voc_det/run1`" not in md.split("## Jobs")[1]  # finished runs are not listed
    states = {j["output_dir"]: j["state"] for j in data["jobs"]}
    assert states["voc_det/run2"] == "finished" and states["voc07_svm"] == "failed"


def test_collect_without_jobs_file_lists_unfinished_benchmark_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _metrics(out / "voc_det" / "run1", "voc_det", {"bbox": {"AP": 50.0}})
    (out / "voc_det" / "run2").mkdir()
    (out / "coco_inst").mkdir()
    (out / "not_a_benchmark").mkdir()
    md = collect(str(out)) and (out / "results.md").read_text()
    assert "1 of 3 finished." in md
    assert "- `voc_det/run2`: running or not started" in md
    assert "- `coco_inst`: running or not started" in md and "not_a_benchmark" not in md


def test_submission_converts_once_submits_each_run_and_records_the_jobs(
    tiny_data_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import submit

    from cyborgs.transfer.convert import convert_checkpoint

    def fake_run(cmd: list[str]) -> None:
        assert cmd[1].endswith("convert_to_detectron2.py")
        convert_checkpoint(cmd[2], cmd[3])

    submitted: list[tuple[dict, object]] = []

    class FakeJob:
        def __init__(self, n: int) -> None:
            self.job_id, self.paths = str(100 + n), type("P", (), {"stdout": f"/logs/{n}.out"})

        def results(self) -> None:
            return None

    class FakeExecutor:
        def __init__(self, params: dict) -> None:
            self.params = params

        def submit(self, job: object) -> FakeJob:
            submitted.append((self.params, job))
            return FakeJob(len(submitted))

    monkeypatch.setattr(caf, "run", fake_run)
    monkeypatch.setattr(submit, "make_executor", lambda args, folder, params: FakeExecutor(params))
    ckpt, out = tmp_path / "model_final.pth", tmp_path / "out"
    _r18_checkpoint(ckpt)
    argv = [str(ckpt), str(out), "voc07_svm", "voc_det", "--demo", "--runs", "2", "--submit"]
    assert caf.main(argv) == 0
    assert (out / "backbone.pkl").is_file()
    assert [j.tool for _, j in submitted] == ["voc07_svm.py", "train_net.py", "train_net.py"]
    assert [p["name"] for p, _ in submitted] == [
        "cyborgs_voc07_svm", "cyborgs_voc_det_run1", "cyborgs_voc_det_run2"]  # fmt: skip
    assert submitted[1][1].argv[submitted[1][1].argv.index("MODEL.WEIGHTS") + 1] == str(
        out / "backbone.pkl"
    )
    jobs = json.loads((out / JOBS_FILE).read_text())
    assert [(j["output_dir"], j["job_id"], j["log"]) for j in jobs] == [
        ("voc07_svm", "101", "/logs/1.out"), ("voc_det/run1", "102", "/logs/2.out"),
        ("voc_det/run2", "103", "/logs/3.out")]  # fmt: skip
    # A later submission of one benchmark keeps the others listed; --wait collects.
    submitted.clear()
    assert caf.main([str(ckpt), str(out), "voc07_svm", "--demo", "--submit", "--wait"]) == 0
    jobs = json.loads((out / JOBS_FILE).read_text())
    assert [j["output_dir"] for j in jobs] == ["voc_det/run1", "voc_det/run2", "voc07_svm"]
    assert "0 of 3 finished." in (out / "results.md").read_text()


def test_a_failed_job_leaves_its_exit_status_and_a_rerun_clears_it(tmp_path: Path) -> None:
    import submit

    job = submit.TransferJob("no_such_tool.py", [], str(tmp_path / "b"))
    with pytest.raises(SystemExit) as e:
        job()
    assert e.value.code == 2  # python: cannot open the file
    assert json.loads((tmp_path / "b" / FAILED_FILE).read_text())["exit_status"] == 2
    ok = submit.TransferJob("no_such_tool.py", [], str(tmp_path / "b"))
    ok.tool = os.path.relpath(os.devnull, submit.TOOLS)  # an empty script: exit 0
    assert ok() == 0 and not (tmp_path / "b" / FAILED_FILE).exists()
    # requeued: train_net resumes from its checkpoint, the short tools just run again
    assert submit.TransferJob("train_net.py", ["a"], "o").checkpoint().function.argv == [
        "--resume", "a"]  # fmt: skip
    assert submit.TransferJob("voc07_svm.py", ["a"], "o").checkpoint().function.argv == ["a"]


def test_demo_benchmark_submitted_to_the_local_executor_runs_and_is_collected(
    tiny_data_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # the tasks unpickle submit.TransferJob: tools/ and the repository on their path
    path = os.pathsep.join([str(ROOT), str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    ckpt, out = tmp_path / "model_final.pth", tmp_path / "out"
    _r18_checkpoint(ckpt)
    # the cheapest of each kind: a short tool (rerun if requeued) and a train_net run
    argv = [str(ckpt), str(out), "voc07_svm", "coco_stuff_probe", "--demo", "--submit", "--local",
            "--wait"]  # fmt: skip
    assert caf.main(argv) == 0, capsys.readouterr()
    jobs = json.loads((out / JOBS_FILE).read_text())
    assert [(j["benchmark"], j["output_dir"]) for j in jobs] == [
        ("voc07_svm", "voc07_svm"), ("coco_stuff_probe", "coco_stuff_probe")]  # fmt: skip
    assert all(Path(j["log"]).is_file() for j in jobs)
    md = (out / "results.md").read_text()
    rows = [line.split("|") for line in md.splitlines() if line.startswith("| this run")]
    assert rows[0][2].strip() != "–"  # Table 1: the VOC07 SVM column has a number
    assert rows[1][-2].strip() != "–"  # appendix: the COCO-Stuff probe's
    assert "2 of 2 finished." in md
    assert (out / "backbone.pkl").is_file()


def test_a_stopped_train_net_job_is_requeued_and_resumes(
    tiny_data_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submit
    import submitit
    from test_submit import stop_when_running

    from cyborgs.transfer.convert import convert_checkpoint

    path = os.pathsep.join([str(ROOT), str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    ckpt, out = tmp_path / "model_final.pth", tmp_path / "out"
    _r18_checkpoint(ckpt)
    out.mkdir()
    convert_checkpoint(str(ckpt), str(out / "backbone.pkl"))
    args = caf.parse_args([str(ckpt), str(out), "coco_stuff_probe", "--demo"])
    (spec,) = caf.jobs_of(["coco_stuff_probe"], str(out / "backbone.pkl"), str(out), 18, args)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(tasks_per_node=1, timeout_min=20)
    job = executor.submit(submit.TransferJob(spec["tool"], spec["argv"], spec["output_dir"]))
    metrics = out / "coco_stuff_probe" / "metrics.json"
    log = stop_when_running(job, metrics, 300)
    assert "Requeued job" in log
    assert (out / "coco_stuff_probe" / "metrics_final.json").is_file()
    its = [json.loads(x)["iteration"] for x in metrics.read_text().splitlines()]
    # the stop's flush, then the resumed run's periodic writes (19, 39, 49) and its evaluation
    assert its == sorted(set(its)) and {19, 39, 49} <= set(its)
    assert "preempted: stopped on SIGTERM" in log
