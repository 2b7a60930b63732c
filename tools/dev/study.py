#!/usr/bin/env python
"""Small-scale study: pretrain each mask-source variant on the demo data with the same budget and
seeds, evaluate each checkpoint (demo COCO-Stuff linear probe mIoU, demo VOC detection AP), track
bootstrapped mask mIoU per round, and decide the paper's claims (Fig. 5a, Fig. 5b, Table 2h).

    tools/dev/study.py --root output/study [--seeds 0 1 2] [--variants ...] [--budget study]
        [--data-root datasets/demo]

Resumable: each (variant, seed) run lives in OUT/runs/<variant>/seed<k>/; a run whose
result.json matches its configuration is skipped, an interrupted one continues from its last
finished stage (pretraining resumes from its checkpoint). Writes OUT/study.json, OUT/study.md,
OUT/study_bars.png and OUT/study_mask_miou.png (all atomically). See docs/study.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# tools/ on the path, as Python puts it there for the scripts in it: the tools' modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_lib import (  # noqa: E402
    BUDGETS,
    CLAIM_RULE,
    RESULT_FILE,
    RUN_FILE,
    STUDY_ARITHMETIC,
    VARIANTS,
    StageError,
    estimate_run_s,
    execute_run,
    format_duration,
    plan_runs,
    read_json,
    write_report,
)

from cyborgs.utils import ownership

EPILOG = f"""
Variants: {", ".join(f"{k} ({v.label})" for k, v in VARIANTS.items())}.

Budgets:
  micro  {BUDGETS["micro"].description}
  study  {STUDY_ARITHMETIC}

Claims rule: {CLAIM_RULE}
"""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, help="study output directory (OUT)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variants",
        nargs="+",
        default=[k for k, v in VARIANTS.items() if v.default],
        choices=list(VARIANTS),
        help="default: every variant but the suite additions already measured "
        f"({', '.join(k for k, v in VARIANTS.items() if not v.default)})",
    )
    p.add_argument("--budget", default="study", choices=list(BUDGETS))
    p.add_argument(
        "--data-root",
        default=None,
        help="demo data root (CYBORGS_DEMO_DATASETS; default: that variable, else datasets/demo)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="only rewrite the report from finished runs"
    )
    return p


# What the study writes in its root (runs/ holds every run: a stale one is deleted whole).
STUDY_ENTRIES = ("runs", "oracle", "study.md", "study.json", "study_bars.png",
                 "study_mask_miou.png")  # fmt: skip


def claim_root(root: Path) -> None:
    """The study root must be new, empty or the study's (:mod:`cyborgs.utils.ownership`); a
    root of an older version (no record, but study.json or a run's run.json) has
    :data:`STUDY_ENTRIES` recorded."""
    legacy = None
    if root.is_dir() and not ownership.is_claimed(root):
        runs = root.glob(f"runs/*/seed*/{RUN_FILE}")
        if (root / "study.json").is_file() or next(runs, None) is not None:
            legacy = STUDY_ENTRIES
    ownership.claim(root, "study", legacy=legacy, what="the study (--root)")
    ownership.record(root, *STUDY_ENTRIES)


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    root = Path(args.root).resolve()
    try:
        claim_root(root)
    except ownership.NotOwnedError as e:
        print(f"error: --root: {e}", file=sys.stderr)
        return 2
    budget = BUDGETS[args.budget]
    env = dict(os.environ)
    if args.data_root:
        env["CYBORGS_DEMO_DATASETS"] = str(Path(args.data_root).resolve())
    elif "CYBORGS_DEMO_DATASETS" in env:
        env["CYBORGS_DEMO_DATASETS"] = str(Path(env["CYBORGS_DEMO_DATASETS"]).resolve())
    env.setdefault("PYTHONUNBUFFERED", "1")

    runs = plan_runs(root, args.variants, args.seeds, budget)
    # Seed-major order: if the study is stopped early, every variant has the same seeds done.
    todo = sorted((r for r in runs if r.status != "done"), key=lambda r: r.seed)
    print(
        f"[study] budget {budget.name}, {len(args.variants)} variant(s) x {len(args.seeds)} "
        f"seed(s) = {len(runs)} runs; {len(runs) - len(todo)} already complete, {len(todo)} to "
        f"run -> {root}",
        flush=True,
    )
    if not args.report_only:
        t_start = time.time()
        est_done = 0.0  # estimated seconds of the runs finished in this session
        for i, run in enumerate(todo, start=1):
            remaining_est = sum(estimate_run_s(r.variant, budget) for r in todo[i - 1 :])
            elapsed = time.time() - t_start
            # Scale the estimates by how fast this machine has actually been so far.
            speed = elapsed / est_done if est_done > 0 else 1.0
            print(
                f"[study] run {i}/{len(todo)} {run.key} ({run.status}); elapsed "
                f"{format_duration(elapsed)}, ETA {format_duration(remaining_est * speed)}",
                flush=True,
            )
            try:
                execute_run(run, budget, env, log=lambda s: print(s, flush=True))
            except StageError as e:
                print(f"[study] {run.key} failed: {e}", file=sys.stderr, flush=True)
                print("[study] fix the cause and re-run: finished runs and stages are kept.")
                return 1
            est_done += estimate_run_s(run.variant, budget)
        print(f"[study] all runs done in {format_duration(time.time() - t_start)}", flush=True)

    records = [
        rec
        for r in plan_runs(root, args.variants, args.seeds, budget)
        if r.status == "done" and (rec := read_json(r.dir / RESULT_FILE))
    ]
    data = write_report(root, records, budget, args.seeds)
    for c in data["claims"]:
        print(f"[study] claim {c['id']}: {c['verdict']}: {c['claim']}")
    print(f"[study] wrote {root / 'study.md'}, {root / 'study.json'} and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
