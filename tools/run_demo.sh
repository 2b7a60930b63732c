#!/usr/bin/env bash
# The main job on the embedded demo data: `make demo` calls this after generating the data.
# Usage: tools/run_demo.sh DEMO_ROOT OUTPUT_DIR
set -euo pipefail
root=${1:?demo data root}
out=${2:?output dir}
py=.venv/bin/python
export CYBORGS_DEMO_DATASETS="$root"
mkdir -p "$out"
echo "[demo] data under $root; outputs under $out"
if [ -f tools/pretrain_net.py ] && [ -f pretrain_configs/demo_R18.yaml ]; then
  "$py" tools/pretrain_net.py --config-file pretrain_configs/demo_R18.yaml OUTPUT_DIR "$out/pretrain"
fi
