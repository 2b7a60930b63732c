#!/usr/bin/env bash
# Convert a CYBORGS checkpoint once, run the chosen transfer benchmarks, collect the table.
#
#   tools/convert_and_finetune.sh CKPT OUTDIR [BENCHMARK ...] [--demo] [--num-gpus N] [--runs N]
#
# Runs tools/convert_and_finetune.py (its --help lists the benchmarks) in the current directory:
# relative paths are relative to it, as for tools/pretrain_net.py. The interpreter is $PYTHON,
# else the repository's .venv/bin/python, else python.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python
exec "$py" "$repo/tools/convert_and_finetune.py" "$@"
