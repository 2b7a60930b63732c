#!/usr/bin/env bash
# The main job on the embedded demo data (`make demo` runs it after generating the data):
# pretrain CYBORGS (vMF warm-up, bootstrap rounds), convert, run every demo benchmark, then
# print the Table 1-layout results and where the plots, mask renders and TensorBoard logs are.
#
#   tools/run_demo.sh DEMO_ROOT OUTPUT_DIR
#
# Re-running continues: pretraining resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:?demo data root}
out=${2:?output dir}
py=${PYTHON:-.venv/bin/python}
export CYBORGS_DEMO_DATASETS="$root"
start=$(date +%s)
stage() { echo; echo "[demo $1/5, $(( $(date +%s) - start ))s elapsed] $2"; }

pre="$out/pretrain"
stage 1 "pretraining CYBORGS R18 on $root (pretrain_configs/demo_R18.yaml) -> $pre"
"$py" tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml --resume \
  OUTPUT_DIR "$pre"

stage 2 "rendering the bootstrapped masks of each round"
dataset=demo_coco_2017_train_unlabeled
"$py" tools/render_mask_rounds.py --dataset "$dataset" --output "$out/masks" \
  --store "$pre/masks/bootstrap/$dataset"

stage 3 "plotting loss terms and mask mIoU over training"
"$py" tools/plot_training.py "$pre/metrics.json" "$out/training.png"

stage 4 "converting the checkpoint and running every demo benchmark"
bash tools/convert_and_finetune.sh "$pre/model_final.pth" "$out/transfer" all --demo

stage 5 "done"
cat "$out/transfer/results.md"
cat <<EOF

Outputs
  results (Table 1 layout): $out/transfer/results.md, $out/transfer/results.json
  masks of each round:      $out/masks/all_rounds.png (and round_XXXX.png)
  training curves:          $out/training.png
  TensorBoard logs:         tensorboard --logdir $out
  checkpoint:               $pre/model_final.pth
Total time: $(( $(date +%s) - start ))s
EOF
