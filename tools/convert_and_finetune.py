#!/usr/bin/env python
"""Convert a CYBORGS checkpoint once, run the chosen transfer benchmarks, collect the table.

    tools/convert_and_finetune.py CKPT OUTDIR [BENCHMARK ...] [--demo] [--num-gpus N] [--runs N]
                                  [--overwrite] [--submit [SCHEDULER OPTIONS] [--wait]]

BENCHMARK: voc07_svm in1pct in10pct voc_det coco_inst (Table 1, the default) and lvis
cityscapes coco_stuff_fcn coco_stuff_probe (appendix); "all" = every one. --demo runs the
demo_* twins (small configs, demo data under $CYBORGS_DEMO_DATASETS). --runs N repeats VOC
detection (every benchmark the table marks repeatable) N times (MoCo reports the mean of 5). The checkpoint and every data set are
checked before anything trains. Results: OUTDIR/results.md and OUTDIR/results.json.
Relative paths (CKPT, OUTDIR, $CYBORGS_DEMO_DATASETS, $DETECTRON2_DATASETS) are relative to the
current directory, as for tools/pretrain_net.py. OUTDIR/source.json records the checkpoint (path
and sha256): more benchmarks of the same checkpoint may be added to an OUTDIR later; results of
another checkpoint are refused (use a new OUTDIR, or --overwrite to delete the old results).
The benchmarks, their configs and data sets: cyborgs.transfer.table.BENCHMARKS.
--submit: convert here, then one requeueable job per benchmark run (tools/submit.py's
scheduler options; --dry-run prints them); tools/collect_results.py OUTDIR collects what
finished and lists what is running or failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from repo_paths import REPO_ROOT, TRANSFER_CONFIGS

from cyborgs.transfer.results import SOURCE_FILE, read_source
from cyborgs.transfer.table import BENCHMARKS, TABLES, Benchmark, config, datasets, names_in
from cyborgs.transfer.verify import depth_opts
from cyborgs.utils import ownership
from cyborgs.utils.atomic import atomic_write_bytes
from cyborgs.utils.progress import format_eta

TOOLS = REPO_ROOT / "tools"
TAG = "[convert_and_finetune]"

# The demo twins of the classification protocols: small images and schedules (the demo data
# has a few hundred images).
DEMO_TOOL_ARGS = {
    "voc07_svm": ["--resize", "128", "--crop", "112"],
    "semi_supervised": [
        "--epochs", "4", "--steps", "2", "3", "--batch-size", "32", "--crop", "64",
        "--resize", "72", "--num-workers", "2",
    ],
}  # fmt: skip


class CommandFailed(RuntimeError):
    def __init__(self, cmd: list[str], returncode: int) -> None:
        super().__init__(f"command failed (exit {returncode}): {' '.join(cmd)}")
        self.returncode = returncode


class OutdirInUse(ValueError):
    """OUTDIR holds results of another checkpoint (or of an unrecorded one)."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CKPT", help="CYBORGS pretraining checkpoint (.pth)")
    p.add_argument("outdir", metavar="OUTDIR", help="output directory")
    p.add_argument(
        "benchmarks",
        metavar="BENCHMARK",
        nargs="*",
        help=f"{', '.join(BENCHMARKS)} or all (default: the Table 1 ones)",
    )
    p.add_argument("--demo", action="store_true", help="run the demo_* twins")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per train_net run")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs of each repeatable benchmark: VOC detection (MoCo: mean of 5)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="if OUTDIR holds another checkpoint's results, delete them (the benchmark folders, "
        "backbone.pkl, results.* this tool recorded writing there) instead of refusing",
    )
    p.add_argument(
        "--submit",
        action="store_true",
        help="convert here, then submit each benchmark run as its own requeueable job "
        "(tools/submit.py's scheduler options below); collect_results.py gathers what finished",
    )
    p.add_argument("--wait", action="store_true", help="with --submit: wait, then collect")
    import submit

    submit.add_cluster_arguments(p.add_argument_group("with --submit (tools/submit.py)"))
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = get_parser()
    args = p.parse_args(argv)
    names: list[str] = []
    for name in args.benchmarks:
        if name == "all":
            names += [n for table in TABLES for n in names_in(table)]
        elif name in BENCHMARKS:
            names.append(name)
        else:
            p.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or all")
    args.benchmarks = names or list(names_in("table1"))
    if args.num_gpus < 1 or args.runs < 1:
        p.error(f"--num-gpus and --runs must be >= 1 (got {args.num_gpus} and {args.runs})")
    return args


def run(cmd: list[str]) -> None:
    """Run a tool, its output going straight to ours."""
    sys.stdout.flush()
    rc = subprocess.call(cmd)
    if rc != 0:
        raise CommandFailed(cmd, rc)


def tool(name: str, *args: str) -> list[str]:
    return [sys.executable, str(TOOLS / name), *args]


def probe_feature(depth: int, feature: str = "res3.2") -> str:
    """``feature`` (``<stage>.<block>``) of a ResNet-``depth``: R18 has two blocks per stage, so
    its block index is capped at 1 (res3.2 -> res3.1, the last block of res3); every other
    depth has at least three per stage (a block it lacks is train_net's error)."""
    stage, block = feature.split(".")
    return f"{stage}.{min(int(block), 1)}" if depth == 18 else feature


def commands(
    b: Benchmark, weights: str, outdir: str, depth: int, demo: bool, num_gpus: int, runs: int
) -> list[list[str]]:
    """The tool invocations that run benchmark ``b`` on ``weights``, output under ``outdir``."""
    out = os.path.join(outdir, b.name)
    sets = datasets(b.name, demo)
    if b.evaluator == "voc07_svm":
        cmd = tool("voc07_svm.py", "--weights", weights, "--output-dir", out)
        cmd += ["--train", sets[0], "--test", sets[1]]
        return [cmd + (DEMO_TOOL_ARGS["voc07_svm"] if demo else [])]
    if b.evaluator == "semi_supervised":
        cmd = tool("semi_supervised.py", "--weights", weights, "--output-dir", out)
        cmd += ["--subset", b.subset] + (["--prefix", "demo_"] if demo else [])
        return [cmd + (DEMO_TOOL_ARGS["semi_supervised"] if demo else [])]
    if b.evaluator != "train_net":
        raise ValueError(f"benchmark {b.name!r}: unknown evaluator {b.evaluator!r}")
    extra: list[str] = []
    if b.probe_feature:
        feature = probe_feature(depth, b.probe_feature)
        extra = ["MODEL.LINEAR_PROBE.FEATURE", feature, "MODEL.SEM_SEG_HEAD.IN_FEATURES"]
        extra.append(f'["{feature}"]')
    dirs = [out]
    if b.repeatable and runs > 1:
        dirs = [os.path.join(out, f"run{r}") for r in range(1, runs + 1)]
    cfg = TRANSFER_CONFIGS / config(b.name, demo)
    # Relative to the working directory where it can be (run from the repository root):
    # metrics_final.json and results.md record the config as given.
    cfg = cfg.relative_to(Path.cwd()) if cfg.is_relative_to(Path.cwd()) else cfg
    return [
        tool("train_net.py", "--config-file", str(cfg), "--num-gpus", str(num_gpus))
        + ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", d, *map(str, depth_opts(depth)), *extra]
        for d in dirs
    ]


def make_paths_absolute(args: argparse.Namespace) -> None:
    """Relative paths mean the caller's working directory (as for tools/pretrain_net.py, which
    reads the same variables): pin CKPT, OUTDIR and the data roots before anything runs, so the
    tools started later, and every message, see absolute paths. An unset data root gets its
    default (relative to the current directory) pinned the same way."""
    from cyborgs.data.datasets import demo_root, real_root

    absolute = lambda p: os.path.abspath(os.path.expanduser(p))  # noqa: E731
    args.checkpoint, args.outdir = absolute(args.checkpoint), absolute(args.outdir)
    for var, root in (("CYBORGS_DEMO_DATASETS", demo_root), ("DETECTRON2_DATASETS", real_root)):
        os.environ[var] = absolute(root())


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# What this tool writes into OUTDIR besides source.json (and a folder per benchmark of the
# table, :func:`outputs`); --overwrite deletes only these, and only where OUTDIR's record
# (cyborgs.utils.ownership) lists them.
FILES = ("backbone.pkl", "results.md", "results.json", "jobs.json", "submitit")
TOOL = "convert_and_finetune"


def outputs() -> tuple[str, ...]:
    """Every entry this tool may write into OUTDIR besides source.json."""
    return (*FILES, *BENCHMARKS)


def claim_outdir(outdir: str, checkpoint: str, overwrite: bool) -> None:
    """Record ``checkpoint`` in OUTDIR/source.json. Another checkpoint's results there (or
    results of an unrecorded one) are refused, or deleted with ``overwrite``: the table's "this
    run" row would otherwise mix two checkpoints' numbers.

    OUTDIR must be new, empty or the suite's (its record, :mod:`cyborgs.utils.ownership`):
    a folder of other files (a data root given by mistake) is refused, and ``overwrite``
    deletes only the entries the record lists. An OUTDIR of an older version of the suite
    (a ``source.json``, no record) is adopted: its ``source.json`` and the outputs named in
    :func:`outputs` become recorded."""
    new = {"checkpoint": checkpoint, "sha256": sha256_of(checkpoint)}
    legacy = None
    if os.path.isdir(outdir) and not ownership.is_claimed(outdir):
        if isinstance(read_source(outdir), dict):
            legacy = [SOURCE_FILE, *outputs()]
    ownership.claim(outdir, TOOL, legacy=legacy, what="the benchmark results (OUTDIR)")
    old = read_source(outdir)
    present = [n for n in outputs() if os.path.lexists(os.path.join(outdir, n))]
    if old is not None and old.get("sha256") != new["sha256"]:
        what = f"checkpoint {old.get('checkpoint')} (sha256 {str(old.get('sha256'))[:12]})"
    elif old is None and present:
        what = f"an unrecorded checkpoint (no {SOURCE_FILE}; found {', '.join(present)})"
    else:
        what = ""
    if what and not overwrite:
        raise OutdirInUse(
            f"{outdir} holds results of {what}, not of {checkpoint} (sha256 "
            f"{new['sha256'][:12]}): choose a new OUTDIR, or pass --overwrite to delete them"
        )
    if what:
        foreign = set(present) - ownership.recorded(outdir)
        if not foreign:
            print(f"{TAG} --overwrite: deleting {', '.join(present)} in {outdir}", flush=True)
        ownership.remove_recorded(outdir, present, why="--overwrite")
    ownership.record(outdir, SOURCE_FILE)
    atomic_write_bytes(os.path.join(outdir, SOURCE_FILE), json.dumps(new, indent=2).encode())


def check_inputs(checkpoint: str, names: list[str], demo: bool) -> None:
    """Before any work: the checkpoint, then every data set of every benchmark."""
    from cyborgs.transfer.preflight import check_datasets

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"checkpoint not found: {checkpoint} (pretrain first: tools/pretrain_net.py)"
        )
    for name in names:
        check_datasets(datasets(name, demo))
    print(f"data sets present for: {' '.join(names)}", flush=True)


def jobs_of(
    names: list[str], weights: str, outdir: str, depth: int, args: argparse.Namespace
) -> list[dict]:
    """One job per benchmark run: its tool, arguments and output folder."""
    jobs = []
    for name in names:
        cmds = commands(
            BENCHMARKS[name], weights, outdir, depth, args.demo, args.num_gpus, args.runs
        )
        for i, cmd in enumerate(cmds, start=1):
            key = "OUTPUT_DIR" if cmd[1].endswith("train_net.py") else "--output-dir"
            out = cmd[cmd.index(key) + 1]
            run = i if len(cmds) > 1 else None
            jobs.append({"benchmark": name, "run": run, "tool": Path(cmd[1]).name,
                         "argv": cmd[2:], "output_dir": out})  # fmt: skip
    return jobs


def submit_jobs(args: argparse.Namespace) -> int:
    """--submit: the conversion once, here; then one job per benchmark run (OUTDIR/jobs.json
    records them for collect_results.py). --dry-run prints the jobs, converts and writes nothing."""
    import submit

    from cyborgs.transfer.results import JOBS_FILE, collect

    args.nodes, args.gpus_per_node = 1, args.num_gpus
    weights = os.path.join(args.outdir, "backbone.pkl")
    folder = args.folder or os.path.join(args.outdir, "submitit")
    if args.dry_run:
        from cyborgs.engine.weights_io import load_weights
        from cyborgs.transfer.convert import extract_backbone_state_dict, infer_depth

        ckpt = load_weights(args.checkpoint, expect="pth", purpose="the converter")
        depth = infer_depth(extract_backbone_state_dict(ckpt, path=args.checkpoint))
    else:
        run(tool("convert_to_detectron2.py", args.checkpoint, weights, "--check", "c4,fpn"))
        from cyborgs.engine.checkpoint import safe_load_pickle
        from cyborgs.transfer.convert import infer_depth

        depth = infer_depth(safe_load_pickle(weights)["model"])
    records, submitted = [], []
    for spec in jobs_of(args.benchmarks, weights, args.outdir, depth, args):
        args.job_name = f"cyborgs_{spec['benchmark']}" + (
            f"_run{spec['run']}" if spec["run"] else ""
        )
        params = submit.executor_parameters(args)
        params["tasks_per_node"] = 1  # train_net.py spawns its --num-gpus workers itself
        job = submit.TransferJob(spec["tool"], spec["argv"], spec["output_dir"])
        if args.dry_run:
            print(json.dumps({"benchmark": spec["benchmark"], "run": spec["run"],
                              "executor": "local" if args.local else "slurm",
                              "resources": params, "command": [spec["tool"], *job.command()],
                              "output_dir": spec["output_dir"], "submitit_folder": folder},
                             indent=2))  # fmt: skip
            continue
        s = submit.make_executor(args, folder, params).submit(job)
        submitted.append(s)
        rel = os.path.relpath(spec["output_dir"], args.outdir)
        records.append({"benchmark": spec["benchmark"], "run": spec["run"], "output_dir": rel,
                        "job_id": str(s.job_id), "log": str(s.paths.stdout)})  # fmt: skip
        print(f"{TAG} submitted {rel} as job {s.job_id}", flush=True)
    if args.dry_run:
        return 0
    path = os.path.join(args.outdir, JOBS_FILE)
    if os.path.isfile(path):  # jobs of earlier submissions for the same checkpoint stay listed
        with open(path) as f:
            old = json.load(f)
        mine = {r["output_dir"] for r in records}
        records = [r for r in old if r.get("output_dir") not in mine] + records
    atomic_write_bytes(path, json.dumps(records, indent=2).encode())
    if not args.wait:
        print(f"{TAG} logs in {folder}; tools/collect_results.py {args.outdir} gathers the "
              "finished ones (and lists the rest)")  # fmt: skip
        return 0
    failed = 0
    for s in submitted:
        try:
            s.results()
        except Exception:  # noqa: BLE001 - recorded in the job's folder, listed by collect
            failed += 1
    collect(args.outdir)
    with open(os.path.join(args.outdir, "results.md")) as f:
        print(f.read())
    return 1 if failed else 0


def refuse(e: Exception) -> int:
    """A refusal before any work (a missing input, an unknown benchmark, an OUTDIR this tool
    did not write): one ``error:`` line, exit status 2, as the other tools."""
    print(f"{TAG} error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    make_paths_absolute(args)
    if args.submit:
        try:
            check_inputs(args.checkpoint, args.benchmarks, args.demo)
            if not args.dry_run:
                claim_outdir(args.outdir, args.checkpoint, args.overwrite)
                ownership.record(args.outdir, *FILES, *args.benchmarks)
        except (FileNotFoundError, KeyError, ValueError) as e:
            return refuse(e)
        try:
            return submit_jobs(args)
        except (FileNotFoundError, KeyError, ValueError) as e:  # after work began: a failure
            print(f"{TAG} {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
            return 1
        except CommandFailed as e:
            print(f"{TAG} {e}", file=sys.stderr)
            return e.returncode
    try:
        check_inputs(args.checkpoint, args.benchmarks, args.demo)
        claim_outdir(args.outdir, args.checkpoint, args.overwrite)
        # Everything this run writes into OUTDIR is recorded before it is written.
        ownership.record(args.outdir, *FILES, *args.benchmarks)
    except (FileNotFoundError, KeyError, ValueError) as e:
        return refuse(e)

    from cyborgs.engine.checkpoint import safe_load_pickle
    from cyborgs.transfer.convert import infer_depth

    weights = os.path.join(args.outdir, "backbone.pkl")
    try:
        run(tool("convert_to_detectron2.py", args.checkpoint, weights, "--check", "c4,fpn"))
        depth = infer_depth(safe_load_pickle(weights)["model"])
        print(
            f"{TAG} ResNet-{depth} backbone -> {weights}; benchmarks: {' '.join(args.benchmarks)}"
        )

        # Progress: "benchmark N of M", elapsed, and an ETA from the mean time of the finished
        # ones (benchmarks differ in length: a rough guide, refined as they finish).
        t0, m = time.time(), len(args.benchmarks)
        for n, name in enumerate(args.benchmarks, start=1):
            elapsed = time.time() - t0
            eta = elapsed / (n - 1) * (m - n + 1) if n > 1 else None
            print(
                f"{TAG} === {name}: benchmark {n} of {m}, elapsed {format_eta(elapsed)}, "
                f"eta: {format_eta(eta)} ===",
                flush=True,
            )
            b = BENCHMARKS[name]
            for cmd in commands(
                b, weights, args.outdir, depth, args.demo, args.num_gpus, args.runs
            ):
                run(cmd)
        print(f"{TAG} {m} benchmark(s) done in {format_eta(time.time() - t0)}")
        run(tool("collect_results.py", args.outdir))
    except CommandFailed as e:
        print(f"{TAG} {e}", file=sys.stderr)
        return e.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
