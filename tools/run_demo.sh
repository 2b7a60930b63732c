#!/usr/bin/env bash
# The main job on the embedded demo data (`make demo` runs it after generating the data):
# pretrain CYBORGS (vMF warm-up, bootstrap rounds), convert, run every demo benchmark, then
# print the Table 1-layout results and where the plots, mask renders and TensorBoard logs are.
#
#   tools/run_demo.sh DEMO_ROOT OUTPUT_DIR
#
# Quiet: the console gets one line per stage, one progress line per long stage (rewritten in
# place on a terminal; elsewhere at most one a minute) and the summary with stage timings. Each
# stage's full output goes to OUTPUT_DIR/logs/<stage>.log, whose path is printed; a failing
# stage prints the tail of its log. Re-running continues: pretraining resumes from its last
# checkpoint; the transfer folder is the demo's own, so results of an earlier, different
# checkpoint there are replaced (--overwrite; the same checkpoint's are kept). Environment: PYTHON (default .venv/bin/python), DEMO_BENCHMARKS (default "all"),
# DEMO_PRETRAIN_OPTS (extra config options for pretraining, e.g. "SOLVER.EPOCHS 2").
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:?demo data root}
out=${2:?output dir}
py=${PYTHON:-.venv/bin/python}
read -r -a benches <<<"${DEMO_BENCHMARKS:-all}"
read -r -a pretrain_opts <<<"${DEMO_PRETRAIN_OPTS:-}"
export CYBORGS_DEMO_DATASETS="$root"
export PYTHONUNBUFFERED=1
logs="$out/logs"
mkdir -p "$logs"
start=$(date +%s)
timings=()
tty=0; [ -t 1 ] && tty=1
cols=1000  # progress lines are cut to the terminal's width, elsewhere kept whole
[ $tty = 1 ] && cols=$(tput cols 2>/dev/null || echo 100) && [ "$cols" -gt 20 ] || cols=1000

# The newest progress line of a log: detectron2's "eta:" lines, our Progress lines, the transfer
# driver's "benchmark N of M", without the logger's "[date time name]:" (console) or
# "[date time] name LEVEL:" (log.txt) prefix.
progress_line() {
  grep -aE '^\[.*(eta: |benchmark [0-9]+ of [0-9]+)' "$1" 2>/dev/null | tail -n 1 \
    | sed -E 's/^\[[0-9/]+ [0-9:]+( [^]]*)?\]( [^ ]+ [A-Z]+)?:? +//' \
    | cut -c "1-$((cols - 4))" || true
}

# run_stage N NAME DESCRIPTION CMD...: CMD's output to $logs/NAME.log; progress while it runs.
run_stage() {
  local n=$1 name=$2 desc=$3; shift 3
  local log="$logs/$name.log" t0 rc=0 last="" shown=0 now line
  echo "[demo $n/5, $(( $(date +%s) - start ))s elapsed] $desc"
  echo "  log: $log"
  t0=$(date +%s)
  "$@" >"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    line=$(progress_line "$log")
    [ -n "$line" ] && [ "$line" != "$last" ] || continue
    now=$(date +%s)
    if [ $tty = 1 ]; then
      printf '\r\033[K  %s' "$line"
    elif [ $((now - shown)) -ge 60 ]; then
      echo "  $line"; shown=$now
    fi
    last=$line
  done
  wait "$pid" || rc=$?
  [ $tty = 1 ] && [ -n "$last" ] && printf '\r\033[K'
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -ne 0 ]; then
    echo "  FAILED (exit $rc) after ${dt}s: $desc. Last lines of $log:" >&2
    tail -n 40 "$log" | sed 's/^/    /' >&2
    echo "  full log: $log" >&2
    exit $rc
  fi
  echo "  done in ${dt}s"
  timings+=("$(printf '%-10s %6ss' "$name" "$dt")")
}

pre="$out/pretrain"
dataset=demo_coco_2017_train_unlabeled
run_stage 1 pretrain "pretraining CYBORGS R18 on $root (pretrain_configs/demo_R18.yaml) -> $pre" \
  "$py" tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml --resume \
  OUTPUT_DIR "$pre" ${pretrain_opts[@]+"${pretrain_opts[@]}"}
run_stage 2 masks "rendering the bootstrapped masks of each round -> $out/masks" \
  "$py" tools/render_mask_rounds.py --dataset "$dataset" --output "$out/masks" \
  --store "$pre/masks/bootstrap/$dataset"
run_stage 3 plot "plotting loss terms and mask mIoU over training -> $out/training.png" \
  "$py" tools/plot_training.py "$pre/metrics.json" "$out/training.png"
run_stage 4 transfer "converting the checkpoint and running the demo benchmarks (${benches[*]})" \
  bash tools/convert_and_finetune.sh "$pre/model_final.pth" "$out/transfer" "${benches[@]}" --demo --overwrite

echo "[demo 5/5, $(( $(date +%s) - start ))s elapsed] done"
echo
cat "$out/transfer/results.md"
cat <<EOF

Outputs
  results (Table 1 layout): $out/transfer/results.md, $out/transfer/results.json
  masks of each round:      $out/masks/all_rounds.png (and round_XXXX.png)
  training curves:          $out/training.png
  TensorBoard logs:         tensorboard --logdir $out   (losses, phase weights, round masks)
  plan of the run:          $pre/plan.json
  checkpoint:               $pre/model_final.pth
  full log of each stage:   $logs/<stage>.log
Stage timings
EOF
for t in "${timings[@]}"; do echo "  $t"; done
printf '  %-10s %6ss\n' total "$(( $(date +%s) - start ))"
