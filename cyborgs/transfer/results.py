"""Per-run metrics files and the Table 1 / appendix summary (METHOD.md §6); the columns come from
:data:`cyborgs.transfer.table.BENCHMARKS`, looked up when a summary is made."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from cyborgs.transfer.table import BENCHMARKS, columns, names_in, paper_value
from cyborgs.utils.atomic import atomic_write_bytes

METRICS_FILE = "metrics_final.json"
# The checkpoint an output directory's benchmarks were run from ({"checkpoint": absolute path,
# "sha256": of the file}), written by tools/convert_and_finetune.py: the table names it.
SOURCE_FILE = "source.json"
# The transfer jobs submitted for an output directory (tools/convert_and_finetune.py --submit):
# [{"benchmark", "run", "output_dir" (relative), "job_id", "log"}]; and the record a job that
# failed leaves in its output folder ({"exit_status": ...}).
JOBS_FILE = "jobs.json"
FAILED_FILE = "job_failed.json"


def _plain(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> float, NaN -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_metrics(path: str, record: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(_plain(record), indent=2, sort_keys=True).encode())


def write_metrics_final(
    cfg, results: Mapping[str, Any], eval_only: bool = False, config_file: str = ""
) -> None:
    """OUTPUT_DIR/metrics_final.json of a train_net run (main process only)."""
    from detectron2.utils import comm

    if not comm.is_main_process():
        return
    # detectron2 nests results by data set when there are several test sets.
    tests = list(cfg.DATASETS.TEST)
    per_dataset = {tests[0]: dict(results)} if len(tests) == 1 else dict(results)
    record = {
        "protocol": cfg.TRANSFER.PROTOCOL,
        "config": config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "eval_only": eval_only,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": tests},
        "results": per_dataset[tests[0]] if tests else {},
        "results_per_dataset": per_dataset,
    }
    write_metrics(os.path.join(cfg.OUTPUT_DIR, METRICS_FILE), record)


def load_runs(outdir: str) -> dict[str, list[dict]]:
    """protocol -> records of every ``*/metrics_final.json`` (one level or two below outdir)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for root, _dirs, files in sorted(os.walk(outdir)):
        if METRICS_FILE not in files or root.count(os.sep) - outdir.count(os.sep) > 2:
            continue
        path = os.path.join(root, METRICS_FILE)
        with open(path) as f:
            try:
                rec = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not rec.get("protocol"):
            raise ValueError(f"{path}: no 'protocol' field")
        rec["_path"] = os.path.relpath(path, outdir)
        runs[rec["protocol"]].append(rec)
    return dict(runs)


def _value(rec: dict, task: str, metric: str) -> float | None:
    res = rec.get("results", {}).get(task, {})
    v = res.get(metric)
    return float(v) if isinstance(v, int | float) else None


def summarize(runs: dict[str, list[dict]], cells: list[tuple[str, str, str, str]]) -> list[dict]:
    """One summary per ``(header, benchmark, task, metric)`` cell: the mean over the runs."""
    out = []
    for header, protocol, task, metric in cells:
        recs = runs.get(protocol, [])
        if "/" in metric:  # composite cell, e.g. LVIS APr/APc/APf
            parts = []
            for m in metric.split("/"):
                vals = [v for r in recs if (v := _value(r, task, m)) is not None]
                parts.append(sum(vals) / len(vals) if vals else None)
            value: Any = parts if any(p is not None for p in parts) else None
        else:
            vals = [v for r in recs if (v := _value(r, task, metric)) is not None]
            value = sum(vals) / len(vals) if vals else None
        out.append(
            {
                "column": header,
                "protocol": protocol,
                "task": task,
                "metric": metric,
                "value": value,
                "runs": len(recs),
                "paper": paper_value(protocol, task, metric),
                "sources": [r["_path"] for r in recs],
                "config": sorted({str(r.get("config", "")) for r in recs if r.get("config")}),
            }
        )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return f"{v:.1f}"


def _markdown_table(title: str, cells: list[dict], with_paper: bool) -> list[str]:
    lines = [f"## {title}", ""]
    lines.append("| | " + " | ".join(c["column"] for c in cells) + " |")
    lines.append("|---" * (len(cells) + 1) + "|")
    lines.append("| this run | " + " | ".join(_fmt(c["value"]) for c in cells) + " |")
    if with_paper:
        lines.append("| CYBORGS (paper) | " + " | ".join(_fmt(c["paper"]) for c in cells) + " |")
    lines.append("")
    seen = set()
    for c in cells:
        if c["protocol"] in seen:
            continue
        seen.add(c["protocol"])
        src = ", ".join(c["sources"]) if c["sources"] else "not run"
        # The reference protocol, then what actually ran (a demo twin is smaller: say so).
        as_run = f"; as run: {', '.join(c['config'])}" if c["config"] else ""
        lines.append(
            f"- `{c['protocol']}`: {BENCHMARKS[c['protocol']].protocol} "
            f"({c['runs']} run(s){as_run}; {src})"
        )
    lines.append("")
    return lines


def read_source(outdir: str) -> dict | None:
    """``outdir``'s :data:`SOURCE_FILE` record, or None where there is none."""
    path = os.path.join(outdir, SOURCE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def job_status(outdir: str) -> list[dict]:
    """Each submitted job of ``outdir`` (its :data:`JOBS_FILE`) with its state: "finished"
    (its :data:`METRICS_FILE` is there), "failed" (its :data:`FAILED_FILE`), else "running or
    not started". Without a jobs file, every benchmark folder without final metrics."""
    path = os.path.join(outdir, JOBS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            try:
                jobs = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
            raise ValueError(f"{path}: expected a list of job records")
    else:
        jobs = [
            {"benchmark": name, "output_dir": name}
            for name in sorted(os.listdir(outdir))
            if name in BENCHMARKS and os.path.isdir(os.path.join(outdir, name))
        ]
    out = []
    for j in jobs:
        folder = os.path.join(outdir, str(j.get("output_dir", "")))
        runs = [folder]
        if (
            "run" not in j
            and os.path.isdir(folder)
            and not os.path.exists(os.path.join(folder, METRICS_FILE))
        ):  # a repeated benchmark's runs, one folder each
            runs = sorted(
                os.path.join(folder, d) for d in os.listdir(folder) if d.startswith("run")
            ) or [folder]
        for run_dir in runs:
            rec = dict(j, output_dir=os.path.relpath(run_dir, outdir))
            failed = os.path.join(run_dir, FAILED_FILE)
            if os.path.isfile(os.path.join(run_dir, METRICS_FILE)):
                rec["state"] = "finished"
            elif os.path.isfile(failed):
                rec["state"] = "failed"
                try:
                    with open(failed) as f:
                        rec["exit_status"] = json.load(f).get("exit_status")
                except (OSError, json.JSONDecodeError, AttributeError):
                    rec["exit_status"] = None
            else:
                rec["state"] = "running or not started"
            out.append(rec)
    return out


def _status_lines(jobs: list[dict]) -> list[str]:
    pending = [j for j in jobs if j["state"] != "finished"]
    lines = ["## Jobs", ""]
    done = len(jobs) - len(pending)
    lines.append(f"{done} of {len(jobs)} finished." if jobs else "No jobs recorded.")
    lines.append("")
    for j in pending:
        what = f"`{j['output_dir']}`" + (f" (job {j['job_id']})" if j.get("job_id") else "")
        if j["state"] == "failed":
            log = f"; log: {j['log']}" if j.get("log") else ""
            lines.append(f"- {what}: failed (exit {j.get('exit_status')}){log}")
        else:
            lines.append(f"- {what}: running or not started")
    lines.append("")
    return lines


def collect(outdir: str) -> dict[str, Any]:
    """Write ``results.md`` and ``results.json`` under ``outdir``; return the JSON content."""
    if not os.path.isdir(outdir):
        raise FileNotFoundError(f"results directory not found: {outdir}")
    runs = load_runs(outdir)
    table1 = summarize(runs, columns(names_in("table1")))
    appendix = summarize(runs, columns(names_in("appendix")))
    source = read_source(outdir)
    md = ["# CYBORGS transfer results", ""]
    if source:
        md += [f"Checkpoint: `{source['checkpoint']}` (sha256 {source['sha256'][:12]})", ""]
    if any(
        str(name).startswith("demo_")
        for recs in runs.values()
        for r in recs
        for name in r.get("datasets", {}).get("train", [])
    ):
        md += [
            "**Demo scale**: synthetic demo data and the small `demo_*` twins of each protocol "
            "(see 'as run' below). These numbers show the pipeline works; they are not "
            "comparable to the paper's row.",
            "",
        ]
    md += _markdown_table("Table 1", table1, with_paper=True)
    md += _markdown_table("Appendix", appendix, with_paper=False)
    jobs = job_status(outdir)
    if jobs:
        md += _status_lines(jobs)
    data = {
        "jobs": jobs,
        "table1": table1,
        "appendix": appendix,
        "outdir": os.path.abspath(outdir),
        "source": source,
    }
    atomic_write_bytes(os.path.join(outdir, "results.md"), "\n".join(md).encode())
    write_metrics(os.path.join(outdir, "results.json"), data)
    return data
