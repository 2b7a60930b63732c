#!/usr/bin/env bash
# Convert a CYBORGS checkpoint once, run the chosen transfer benchmarks, collect the table.
#
#   tools/convert_and_finetune.sh CKPT OUTDIR [BENCHMARK ...] [--demo] [--num-gpus N] [--runs N]
#
# Runs tools/convert_and_finetune.py (its --help lists the benchmarks) from the repository root,
# so relative paths are relative to it; the interpreter is $PYTHON, else .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python
exec "$py" tools/convert_and_finetune.py "$@"
