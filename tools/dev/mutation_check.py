#!/usr/bin/env python
"""Targeted mutation check of the core modules (not part of CI; see docs/MUTATION.md).

    nice -n 10 .venv/bin/python tools/dev/mutation_check.py [--only ID ...] [--list]
        [--results output/mutation_results.jsonl] [--fresh] [--timeout 600]

Each mutation is one hand-written change (an operator, constant or sign flip at a named place)
that a correct test suite must notice. The checkout's tracked files are copied once into a
temporary directory; each mutation is applied there alone, the test files that cover that
module run against the copy (``-x``: the first failure is enough), and the file is restored.
A mutation is *killed* when pytest reports failing tests (exit 1), *survived* when the tests
pass (exit 0), and *error* / *timeout* otherwise. Results are appended to a JSON-lines file
as they come, so an interrupted run resumes where it stopped: a recorded result is reused
while the mutation, its module and its test files are unchanged (``--fresh`` starts over).
Exit status: 0 when every mutation was killed, 1 when any survived or errored, 2 on bad use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# tools/ on the path, as Python puts it there for the scripts in it: the tools' modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repo_paths import REPO_ROOT as REPO  # noqa: E402


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str  # file, relative to the repository root
    old: str  # exact text, found exactly once in the file
    new: str
    tests: tuple[str, ...]  # test files run against the mutant
    why: str  # the change in words


LOSS_T = ("tests/modeling/test_mask_contrastive.py",)
VMF_T = ("tests/modeling/test_vmf_clustering.py",)
LARS_T = ("tests/solver/test_lars.py",)
SCHED_T = ("tests/solver/test_schedule.py",)
POOL_T = ("tests/modeling/test_mask_pooling.py",)
CORR_T = ("tests/modeling/test_correspondence.py",)
KM_T = ("tests/clustering/test_kmeans.py",)
STORE_T = ("tests/masks/test_store.py",)
AUG_T = ("tests/pretrain_data/test_augment.py",)
ROUND_T = ("tests/bootstrap/test_round.py",)

MC = "cyborgs/modeling/losses/mask_contrastive.py"
VMF = "cyborgs/modeling/losses/vmf_clustering.py"
LARS = "cyborgs/solver/lars.py"
SCHED = "cyborgs/solver/schedule.py"
POOL = "cyborgs/modeling/mask_pooling.py"
CORR = "cyborgs/modeling/correspondence.py"
KM = "cyborgs/clustering/kmeans.py"
STORE = "cyborgs/masks/store.py"
AUG = "cyborgs/pretrain_data/augment.py"
ROUND = "cyborgs/bootstrap/round.py"

MUTATIONS: tuple[Mutation, ...] = (
    # mask-contrastive loss (paper eq. 2, DetCon)
    Mutation("mc-temperature", MC, "logits = (q @ t.T) / self.temperature",
             "logits = (q @ t.T) * self.temperature", LOSS_T, "logits times tau instead of / tau"),
    Mutation("mc-own-view-kept", MC, "positive = same & ~same_view", "positive = same",
             LOSS_T, "the anchor's own-view copy counted as a positive"),
    Mutation("mc-no-exclusion", MC, "logits.masked_fill(excluded, float(\"-inf\"))", "logits",
             LOSS_T, "own-view copies left in the softmax denominator"),
    Mutation("mc-no-area-weight", MC, "weight = (num_pos > 0).to(work) / area.to(work)",
             "weight = (num_pos > 0).to(work)", LOSS_T, "no 1/area weighting of repeated ids"),
    Mutation("mc-mean-over-pos", MC, "ce = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / "
             "num_pos.clamp(min=1)", "ce = -log_prob.masked_fill(~positive, 0.0).sum(dim=1)",
             LOSS_T, "sum instead of mean over positives"),
    # vMF clustering loss (paper eq. 3-4)
    Mutation("vmf-sign", VMF, "torch.log_softmax(kappa * (y @ mu.T), dim=1)",
             "torch.log_softmax(-kappa * (y @ mu.T), dim=1)", VMF_T, "the vMF sign flipped"),
    Mutation("vmf-kappa-dropped", VMF, "torch.log_softmax(kappa * (y @ mu.T), dim=1)",
             "torch.log_softmax(y @ mu.T, dim=1)", VMF_T, "kappa ignored"),
    Mutation("vmf-inter-same-view", VMF, "self._d(_locations(on1), prototypes[1], lab2).mean()",
             "self._d(_locations(on1), prototypes[0], lab1).mean()", VMF_T,
             "inter-view term uses the own view's prototypes"),
    Mutation("vmf-seed-collide", VMF, "seed=seed * 2 + v,", "seed=seed + v,", VMF_T,
             "k-means seeds of consecutive steps overlap"),
    # LARS
    Mutation("lars-wd-in-denominator", LARS, "denom = g_norm + wd * w_norm + group[\"eps\"]",
             "denom = g_norm + group[\"eps\"]", LARS_T, "weight decay left out of the trust ratio"),
    Mutation("lars-trust-inverted", LARS, "group[\"trust_coefficient\"] * w_norm / denom",
             "group[\"trust_coefficient\"] * denom / w_norm.clamp(min=1e-12)", LARS_T,
             "trust ratio inverted"),
    Mutation("lars-momentum-off", LARS, "torch._foreach_mul_(old, momentum)",
             "torch._foreach_mul_(old, 0.0)", LARS_T, "momentum buffer forgotten"),
    Mutation("lars-lr-sign", LARS, "torch._foreach_add_(params, bufs, alpha=-group[\"lr\"])",
             "torch._foreach_add_(params, bufs, alpha=group[\"lr\"])", LARS_T, "gradient ascent"),
    # schedules
    Mutation("sched-warmup-off-by-one", SCHED, "return (k + 1) / self.warmup_iters",
             "return k / self.warmup_iters", SCHED_T, "warm-up starts at 0 instead of 1/W"),
    Mutation("sched-cosine-half", SCHED, "return 0.5 * (1.0 + math.cos(math.pi * t))",
             "return 0.5 * (1.0 + math.cos(0.5 * math.pi * t))", SCHED_T,
             "cosine ends at 0.5, not 0"),
    Mutation("sched-step-boundary", SCHED, "sum(k >= s for s in self.step_iters)",
             "sum(k > s for s in self.step_iters)", SCHED_T, "LR step one iteration late"),
    Mutation("ema-direction", SCHED, "return 1.0 - (1.0 - base) * (math.cos(math.pi * k / total) + "
             "1.0) / 2.0", "return 1.0 - (1.0 - base) * (1.0 - math.cos(math.pi * k / total)) / 2.0",
             SCHED_T, "EMA momentum runs from 1 down to base"),
    # mask pooling
    Mutation("pool-vote-last-id", POOL, "return counts.view(B, h, w, num_ids).argmax(dim=-1)",
             "return (num_ids - 1) - counts.view(B, h, w, num_ids).flip(-1).argmax(dim=-1)",
             POOL_T, "majority ties go to the largest id"),
    Mutation("pool-chunk-ties", POOL, "better = val > best_val", "better = val >= best_val",
             POOL_T, "chunked vote: ties go to the later chunk"),
    Mutation("pool-sum-not-mean", POOL, "return summed / counts", "return summed", POOL_T,
             "masked sum instead of masked mean"),
    Mutation("pool-ids-off-range", POOL, "if lo < 0 or hi >= num_ids:", "if lo < 0 or hi > num_ids:",
             POOL_T, "id == num_ids accepted"),
    # correspondence
    Mutation("corr-flip-ignored", CORR, "return torch.where(flip[:, None, None, None], out.flip(-1), "
             "out)", "return out", CORR_T, "flipped view's grid not mirrored back"),
    Mutation("corr-unaligned", CORR, "start = start - 0.5  # aligned=True",
             "start = start  # aligned=True",
             CORR_T, "RoIAlign without the half-cell offset"),
    Mutation("corr-box-mirror", CORR, "fx0, fx1 = torch.where(flip, w - fx1, fx0), "
             "torch.where(flip, w - fx0, fx1)", "fx0, fx1 = fx0, fx1", CORR_T,
             "box x-range not mirrored for a flipped view"),
    # k-means
    Mutation("km-one-trial", KM, "trials = 2 + int(math.log(k)) if k > 1 else 1", "trials = 1",
             KM_T, "greedy k-means++ reduced to one draw per centre"),
    Mutation("km-keep-worst", KM, "best = dist.sum(dim=1).argmin().view(1)",
             "best = dist.sum(dim=1).argmax().view(1)", KM_T,
             "greedy step keeps the candidate that lowers the potential least"),
    Mutation("km-same-point", KM, "_SAME_POINT = 1e-6", "_SAME_POINT = 0.0", KM_T,
             "float rounding taken for distinct points"),
    # mask store
    Mutation("store-upsample-round", "cyborgs/masks/cell_grid.py",
             "return (k * int(n_cells)) // int(n_pixels)",
             "return (k * int(n_cells) + int(n_pixels) // 2) // int(n_pixels)",
             (*STORE_T, "tests/masks/test_cell_grid.py"),
             "nearest upsampling (maps without a cell centre) rounds instead of floors"),
    Mutation("store-bytes-unchecked", STORE, "if nbytes != want_bytes:", "if False:", STORE_T,
             "label-map byte total not verified"),
    Mutation("store-count-unchecked", STORE, "if n != want_n:", "if False:", STORE_T,
             "label-map count not verified"),
    # augmentation geometry
    Mutation("aug-ratio-not-log", AUG, "aspect = math.exp(rng.uniform(*log_ratio))",
             "aspect = rng.uniform(*ratio)", AUG_T, "aspect ratio uniform, not log-uniform"),
    Mutation("aug-fallback-crop", AUG, "x0 = (width - w) // 2", "x0 = 0", AUG_T,
             "fallback crop not centred"),
    Mutation("aug-mask-nearest", AUG, "m = F.interpolate(m.float(), size=(size, size), "
             "mode=\"nearest-exact\")", "m = F.interpolate(m.float(), size=(size, size), "
             "mode=\"nearest\")", AUG_T, "mask resampled off the image's pixel centres"),
    Mutation("aug-label-map-flip", AUG, "        cols = cols[::-1]\n", "        pass\n", AUG_T,
             "label-map view not flipped"),
    # bootstrap round
    Mutation("round-shard-overlap", ROUND, "return order[rank::world_size]", "return order",
             ROUND_T, "every rank takes every image"),
    Mutation("round-labels-unordered", ROUND, "lut[uniq[np.argsort(first)]] = "
             "np.arange(len(uniq), dtype=np.uint8)", "lut[uniq] = np.arange(len(uniq), "
             "dtype=np.uint8)", ROUND_T, "compacted ids not in raster order"),
    Mutation("round-k-range", ROUND, "rng.integers(s.k_min, s.k_max + 1)",
             "rng.integers(s.k_min, s.k_max)", ROUND_T, "K_MAX never drawn"),
    Mutation("round-time-summed", ROUND, "\"time_s\": max((s[\"time_s\"] for s in rank_stats), "
             "default=0.0)", "\"time_s\": sum(s[\"time_s\"] for s in rank_stats)", ROUND_T,
             "manifest time summed over ranks instead of the slowest rank"),
)  # fmt: skip


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], check=True,
                         capture_output=True).stdout  # fmt: skip
    return [p for p in out.decode().split("\0") if p]


def copy_checkout(repo: Path, dest: Path) -> None:
    """The working tree's tracked files (uncommitted edits included), nothing else."""
    for rel in tracked_files(repo):
        src = repo / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def check_mutations(repo: Path, mutations: tuple[Mutation, ...]) -> list[str]:
    """Problems of the list: each old text must occur exactly once (a refactor that moves it
    makes this loud), each test file must exist, ids must be unique."""
    problems = []
    for m in mutations:
        n = (repo / m.path).read_text().count(m.old)
        if n != 1:
            problems.append(f"{m.id}: {m.path} holds its text {n} times, expected once")
        problems += [f"{m.id}: no test file {t}" for t in m.tests if not (repo / t).is_file()]
    if len({m.id for m in mutations}) != len(mutations):
        problems.append("mutation ids are not unique")
    return problems


def fingerprint(repo: Path, files: tuple[str, ...], *extra: str) -> str:
    """Hash of the files' texts (and ``extra``): a recorded result stands while it is equal."""
    h = hashlib.sha256()
    for part in (*extra, *((repo / f).read_text() for f in files)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, ""
    status = {0: "survived", 1: "killed"}.get(p.returncode, "error")
    tail = (p.stdout + p.stderr).strip().splitlines()
    return status, time.monotonic() - t0, tail[-1] if tail else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="mutation ids to run")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument(
        "--results",
        default=str(REPO / "output" / "mutation_results.jsonl"),
        help="JSON lines, appended (default: output/mutation_results.jsonl)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore earlier results in --results")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation")
    args = p.parse_args(argv)
    problems = check_mutations(REPO, MUTATIONS)
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.list:
        for m in MUTATIONS:
            print(f"{m.id:26s} {m.path}: {m.why}")
        return 0
    chosen = [m for m in MUTATIONS if args.only is None or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in MUTATIONS}
    if unknown:
        print(f"error: unknown mutation ids {sorted(unknown)} (see --list)", file=sys.stderr)
        return 2
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    if results.is_file() and not args.fresh:
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            done[rec["id"]] = rec
    elif args.fresh and results.is_file():
        results.unlink()
    with tempfile.TemporaryDirectory(prefix="cyborgs-mutation-") as tmp:
        copy = Path(tmp)
        copy_checkout(REPO, copy)
        env = dict(os.environ, PYTHONPATH=str(copy))
        where = subprocess.run(
            [sys.executable, "-c", "import cyborgs; print(cyborgs.__file__)"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(copy)):
            print(f"error: the copy imports cyborgs from {where!r}, not {copy}", file=sys.stderr)
            return 2
        # The unmutated tests must pass, or every mutant would count as killed.
        files = tuple(sorted({t for m in chosen for t in m.tests}))
        sources = tuple(sorted({m.path for m in chosen}))
        base_print = fingerprint(REPO, files + sources)
        if done.get("baseline", {}).get("fingerprint") != base_print:
            status, secs, tail = run_tests(copy, files, args.timeout * len(files))
            status = "passed" if status == "survived" else status
            rec = {"id": "baseline", "tests": list(files), "fingerprint": base_print,
                   "status": status,
                   "seconds": round(secs, 1), "pytest": tail}  # fmt: skip
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{'baseline':26s} {status} ({secs:.0f} s) {tail}", flush=True)
            if status != "passed":
                print("error: the unmutated tests do not pass", file=sys.stderr)
                return 2
            done["baseline"] = rec
        for m in chosen:
            mut_print = fingerprint(REPO, (m.path, *m.tests), m.old, m.new)
            if done.get(m.id, {}).get("fingerprint") == mut_print:
                print(f"{m.id:26s} {done[m.id]['status']} (earlier run)")
                continue
            target = copy / m.path
            original = target.read_text()
            mutant = original.replace(m.old, m.new, 1)
            try:
                compile(mutant, m.path, "exec")
            except SyntaxError as e:  # a mistake in the list, not a kill
                print(f"error: mutation {m.id} does not compile: {e}", file=sys.stderr)
                return 2
            target.write_text(mutant)
            try:
                status, secs, tail = run_tests(copy, m.tests, args.timeout)
            finally:
                target.write_text(original)
            rec = {"id": m.id, "path": m.path, "why": m.why, "fingerprint": mut_print,
                   "status": status, "seconds": round(secs, 1), "pytest": tail}  # fmt: skip
            done[m.id] = rec
            with results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{m.id:26s} {status} ({secs:.0f} s) {tail}", flush=True)
    counts: dict[str, int] = {}
    for m in chosen:
        counts[done[m.id]["status"]] = counts.get(done[m.id]["status"], 0) + 1
    print("summary:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if set(counts) <= {"killed"} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
