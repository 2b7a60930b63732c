#!/usr/bin/env python
"""Submit pretraining to SLURM through submitit: N nodes x G GPUs, one task per GPU, requeued
with ``--resume`` after a preemption or a time-out.

    tools/submit.py --nodes 8 --gpus-per-node 8 --partition gpu --time 4320 \\
        -- --config-file pretrain_configs/cyborgs_R50_coco_800ep.yaml OUTPUT_DIR out/r50

Everything after ``--`` goes to tools/pretrain_net.py unchanged. Each task joins the job's
process group (rank, world size and the first node as rendezvous come from SLURM, through
``submitit.helpers.TorchDistributedEnvironment``). On SLURM's warning signal (USR2,
``--signal-delay`` seconds before the limit) or SIGTERM, every rank finishes its step, the run
checkpoints and stops (tools/pretrain_net.py's preemption path); then rank 0 hands over to
submitit, which requeues the job with ``--resume`` added. Time-outs requeue up to
``--max-requeues`` times; preemptions always requeue. ``--dry-run`` prints the resources, the
command and the output folder without submitting; ``--local`` runs the job with submitit's
local executor (tests, a workstation).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
# what the tasks get: SLURM's warning (submitit's default, USR2) and SLURM's SIGTERM
JOB_SIGNALS = "USR2,TERM"


class PretrainJob:
    """The callable submitit runs in every task (picklable: only the argument list)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)

    def command(self) -> list[str]:
        return ["--preemption-signals", JOB_SIGNALS, *self.argv]

    def __call__(self) -> int:
        import submitit

        for p in (TOOLS, REPO):
            if p not in sys.path:
                sys.path.insert(0, p)
        import pretrain_net

        from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        usr = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr)  # checkpoint() + requeue, rank 0 only
        status = pretrain_net.cli(self.command())
        if status == PREEMPTED_EXIT_STATUS:
            # the run is checkpointed: submitit's own handler now calls checkpoint() below and
            # requeues (it exits this process); the other ranks just end
            if callable(submitit_handler):
                submitit_handler(int(usr), None)
            raise SystemExit(status)
        if status:
            raise SystemExit(status)
        return status

    def checkpoint(self) -> Any:
        import submitit

        argv = self.argv if "--resume" in self.argv else ["--resume", *self.argv]
        return submitit.helpers.DelayedSubmission(PretrainJob(argv))


class TransferJob:
    """One transfer run (a benchmark, or one of its repeated runs) as a job of one task.

    ``tools/train_net.py`` runs in-process (it spawns its own ``--num-gpus`` workers), stops on
    the job's signals with a checkpoint and is requeued with ``--resume``; the short tools
    (voc07_svm, semi_supervised) run as a subprocess and are simply rerun when requeued. A
    failure leaves ``<output>/job_failed.json`` (the exit status) for ``collect``."""

    def __init__(self, tool: str, argv: list[str], output_dir: str) -> None:
        self.tool, self.argv, self.output_dir = tool, list(argv), output_dir

    def command(self) -> list[str]:
        if self.tool == "train_net.py":
            return ["--preemption-signals", JOB_SIGNALS, *self.argv]
        return list(self.argv)

    def _requeue(self, handler: Any) -> None:
        """Hand over to submitit's own handler (kept from before the tool replaced it): it calls
        :meth:`checkpoint`, requeues and exits this process."""
        import submitit

        from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS

        if callable(handler):
            handler(int(submitit.JobEnvironment._usr_sig()), None)
        raise SystemExit(PREEMPTED_EXIT_STATUS)

    def __call__(self) -> int:
        import subprocess

        import submitit

        from cyborgs.transfer.results import FAILED_FILE, write_metrics
        from cyborgs.utils.preemption import PREEMPTED_EXIT_STATUS as STOPPED

        submitit_handler = signal.getsignal(submitit.JobEnvironment._usr_sig())
        os.makedirs(self.output_dir, exist_ok=True)
        failed = os.path.join(self.output_dir, FAILED_FILE)
        if os.path.exists(failed):  # a rerun: the earlier failure is no longer the state
            os.remove(failed)
        if self.tool == "train_net.py":
            for p in (TOOLS, REPO):
                if p not in sys.path:
                    sys.path.insert(0, p)
            import train_net

            try:
                status = train_net.cli(self.command())
            except BaseException as e:  # noqa: BLE001 - recorded, then raised as it was
                code = e.code if isinstance(e, SystemExit) else 1
                write_metrics(failed, {"exit_status": code, "error": str(e)[-2000:]})
                raise
        else:
            cmd = [sys.executable, os.path.join(TOOLS, self.tool), *self.command()]
            status = subprocess.call(cmd)
            status = STOPPED if status < 0 else status  # killed by the job's signal: rerun
        if status == STOPPED:
            self._requeue(submitit_handler)
        if status:
            write_metrics(failed, {"exit_status": status, "command": [self.tool, *self.argv]})
            raise SystemExit(status)
        return 0

    def checkpoint(self) -> Any:
        import submitit

        argv = self.argv
        if self.tool == "train_net.py" and "--resume" not in argv:
            argv = ["--resume", *argv]
        return submitit.helpers.DelayedSubmission(TransferJob(self.tool, argv, self.output_dir))


def output_dir_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == "OUTPUT_DIR":
            return argv[i + 1]
    return None


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="tools/submit.py [options] -- PRETRAIN_NET_ARGS ...",
    )
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="one task per GPU")
    add_cluster_arguments(p)
    p.add_argument("--job-name", default="cyborgs_pretrain")
    p.add_argument("--wait", action="store_true", help="wait for the job's end (its status)")
    return p


def add_cluster_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The scheduler's options, shared with tools/convert_and_finetune.py --submit."""
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-gb", type=int, default=0, help="per node (0: the partition's default)")
    p.add_argument("--time", type=int, default=60 * 72, help="minutes per job (default 3 days)")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--constraint", default="")
    p.add_argument("--qos", default="")
    p.add_argument(
        "--sbatch", action="append", default=[], metavar="KEY=VALUE",
        help="extra #SBATCH option (repeatable), e.g. --sbatch exclusive=1",
    )  # fmt: skip
    p.add_argument("--max-requeues", type=int, default=10, help="time-outs that requeue")
    p.add_argument("--signal-delay", type=int, default=120, help="seconds of warning")
    p.add_argument("--folder", default="", help="submitit's logs (default OUTPUT_DIR/submitit)")
    p.add_argument("--local", action="store_true", help="submitit's local executor (one node)")
    p.add_argument("--dry-run", action="store_true", help="print, do not submit")
    return p


def executor_parameters(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for kv in args.sbatch:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ValueError(f"--sbatch {kv!r}: expected KEY=VALUE")
        extra[key.lstrip("-").replace("-", "_")] = value
    params: dict[str, Any] = {
        "name": args.job_name,
        "nodes": args.nodes,
        "tasks_per_node": args.gpus_per_node,
        "timeout_min": args.time,
    }
    if args.local:  # submitit's AutoExecutor takes no signal delay for the local executor
        return params
    params.update(
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        slurm_signal_delay_s=args.signal_delay,
    )
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    for key in ("partition", "account", "constraint", "qos"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def make_executor(args: argparse.Namespace, folder: str, params: dict[str, Any]) -> Any:
    import submitit

    kw = {"local_max_num_timeout" if args.local else "slurm_max_num_timeout": args.max_requeues}
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.local else None, **kw)
    executor.update_parameters(**params)
    return executor


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        print("error: give tools/pretrain_net.py's arguments after --", file=sys.stderr)
        return 2
    cut = argv.index("--")
    args = get_parser().parse_args(argv[:cut])
    job_argv = argv[cut + 1 :]
    out = output_dir_of(job_argv)
    if not out:
        print("error: the pretraining arguments must set OUTPUT_DIR (where requeued jobs "
              "resume from)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        params = executor_parameters(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder = args.folder or os.path.join(out, "submitit")
    job = PretrainJob(job_argv)
    if args.dry_run:
        print(json.dumps({
            "executor": "local" if args.local else "slurm",
            "resources": params,
            "max_requeues_on_timeout": args.max_requeues,
            "command": ["tools/pretrain_net.py", *job.command()],
            "output_dir": out,
            "submitit_folder": folder,
        }, indent=2))  # fmt: skip
        return 0
    submitted = make_executor(args, folder, params).submit(job)
    print(f"submitted job {submitted.job_id}: logs in {folder}, run in {out}")
    if args.wait:
        try:
            submitted.results()
        except Exception as e:  # noqa: BLE001 - the job's failure, reported as one line
            print(f"error: job {submitted.job_id} failed: {str(e).strip()[-2000:]}",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
