#!/usr/bin/env bash
# Convert a CYBORGS checkpoint once, run the chosen transfer benchmarks, collect the table.
#
#   tools/convert_and_finetune.sh CKPT OUTDIR [BENCHMARK ...] [--demo] [--num-gpus N] [--runs N]
#
# BENCHMARK: voc07_svm in1pct in10pct voc_det coco_inst (Table 1, the default) and lvis
# cityscapes coco_stuff_fcn coco_stuff_probe (appendix); "all" = every one. --demo runs the
# demo_* twins (small configs, demo data under $CYBORGS_DEMO_DATASETS). --runs N repeats VOC
# detection N times (MoCo reports the mean of 5). The checkpoint and every data set are
# checked before anything trains. Results: OUTDIR/results.md and OUTDIR/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python

usage() { sed -n '2,11p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
ckpt=$1; out=$2; shift 2
demo=0; gpus=1; runs=1; benches=()
while [ $# -gt 0 ]; do
  case $1 in
    --demo) demo=1 ;;
    --num-gpus) gpus=${2:?}; shift ;;
    --runs) runs=${2:?}; shift ;;
    all) benches+=(voc07_svm in1pct in10pct voc_det coco_inst lvis cityscapes coco_stuff_fcn coco_stuff_probe) ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) benches+=("$1") ;;
  esac
  shift
done
[ ${#benches[@]} -gt 0 ] || benches=(voc07_svm in1pct in10pct voc_det coco_inst)
demo_flag=(); [ $demo = 1 ] && demo_flag=(--demo)

# ---- checks before any work: checkpoint, then every data set of every benchmark ----
[ -f "$ckpt" ] || { echo "checkpoint not found: $ckpt (pretrain first: tools/pretrain_net.py)" >&2; exit 1; }
"$py" -m cyborgs.transfer.benchmarks check "${demo_flag[@]}" "${benches[@]}"

mkdir -p "$out"
weights="$out/backbone.pkl"
"$py" tools/convert_to_detectron2.py "$ckpt" "$weights" --check c4,fpn
depth=$("$py" -c "import sys; from cyborgs.engine.checkpoint import safe_load_pickle as l; from cyborgs.transfer.convert import infer_depth as d; print(d(l(sys.argv[1])['model']))" "$weights")
echo "[convert_and_finetune] ResNet-$depth backbone -> $weights; benchmarks: ${benches[*]}"

# Model overrides that follow the converted depth (the configs say R50; demo twins R18).
res2=256; probe=res3.2
if [ "$depth" -lt 50 ]; then res2=64; fi
if [ "$depth" = 18 ]; then probe=res3.1; fi  # R18's res3 has 2 blocks: its last one
depth_opts=(MODEL.RESNETS.DEPTH "$depth" MODEL.RESNETS.RES2_OUT_CHANNELS "$res2")

train_net() {  # name, run-dir
  local cfg
  cfg=$("$py" -m cyborgs.transfer.benchmarks config "${demo_flag[@]}" "$1")
  local extra=()
  case $1 in coco_stuff_probe) extra=(MODEL.LINEAR_PROBE.FEATURE "$probe" MODEL.SEM_SEG_HEAD.IN_FEATURES "[\"$probe\"]") ;; esac
  "$py" tools/train_net.py --config-file "transfer_configs/$cfg" --num-gpus "$gpus" \
    MODEL.WEIGHTS "$weights" OUTPUT_DIR "$2" "${depth_opts[@]}" "${extra[@]}"
}

# Progress: "benchmark N of M", elapsed, and an ETA from the mean time of the finished ones
# (benchmarks differ in length: a rough guide, refined as they finish).
fmt_s() { printf '%d:%02d:%02d' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }
t0=$(date +%s); n=0; m=${#benches[@]}
for b in "${benches[@]}"; do
  n=$((n + 1)); el=$(( $(date +%s) - t0 ))
  eta=unknown; [ $n -gt 1 ] && eta=$(fmt_s $(( el / (n - 1) * (m - n + 1) )))
  echo "[convert_and_finetune] === $b: benchmark $n of $m, elapsed $(fmt_s $el), eta: $eta ==="
  case $b in
    voc07_svm)
      if [ $demo = 1 ]; then
        "$py" tools/voc07_svm.py --weights "$weights" --output-dir "$out/$b" \
          --train demo_voc_2007_cls_trainval --test demo_voc_2007_cls_test --resize 128 --crop 112
      else
        "$py" tools/voc07_svm.py --weights "$weights" --output-dir "$out/$b"
      fi ;;
    in1pct|in10pct)
      subset=1percent; [ $b = in10pct ] && subset=10percent
      if [ $demo = 1 ]; then
        "$py" tools/semi_supervised.py --weights "$weights" --output-dir "$out/$b" --subset $subset \
          --prefix demo_ --epochs 4 --steps 2 3 --batch-size 32 --crop 64 --resize 72 --num-workers 2
      else
        "$py" tools/semi_supervised.py --weights "$weights" --output-dir "$out/$b" --subset $subset
      fi ;;
    voc_det)
      for r in $(seq 1 "$runs"); do
        dir="$out/voc_det"; [ "$runs" -gt 1 ] && dir="$out/voc_det/run$r"
        train_net voc_det "$dir"
      done ;;
    coco_inst|lvis|cityscapes|coco_stuff_fcn|coco_stuff_probe)
      train_net "$b" "$out/$b" ;;
    *) echo "unknown benchmark $b" >&2; exit 2 ;;
  esac
done

echo "[convert_and_finetune] $m benchmark(s) done in $(fmt_s $(( $(date +%s) - t0 )))"
"$py" tools/collect_results.py "$out"
