#!/usr/bin/env bash
# One-command GPU check on an offline CUDA machine with Python + PyTorch preinstalled:
#   tools/dev/gpu_check.sh BUNDLE_DIR RESULTS_DIR
# BUNDLE_DIR comes from `tools/dev/offline_bundle.py --python X.Y --out BUNDLE_DIR` (built where the
# package index is reachable). Installs it into a temporary prefix (no network, no build), runs
# the gpu-marked tests, one NCCL DDP step of the trainer, then the step / bootstrap / data-loader
# benchmarks on CUDA, each with its own timeout, within 8 minutes; writes one JSON per check
# and summary.json into RESULTS_DIR. Exit status: 0 all passed, 1 a check failed, 2 bad usage,
# not a bundle, or no CUDA, 130/143 on SIGINT/SIGTERM (summary.json still written). PYTHON
# selects the interpreter (default: python3). The checks themselves are in tools/dev/gpu_check.py.
set -euo pipefail
usage="usage: tools/dev/gpu_check.sh BUNDLE_DIR RESULTS_DIR"
if [ "$#" -eq 1 ] && { [ "$1" = "-h" ] || [ "$1" = "--help" ]; }; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [ "$#" -ne 2 ]; then
    echo "$usage" >&2
    echo "error: expected 2 arguments, got $#" >&2
    exit 2
fi
if [ ! -d "$1" ]; then
    echo "$usage" >&2
    echo "error: $1: no such bundle folder (build one with tools/dev/offline_bundle.py)" >&2
    exit 2
fi
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: no Python interpreter '$PYTHON' (set PYTHON to the one with PyTorch)" >&2
    exit 2
fi
export PYTHON
exec "$PYTHON" "$(dirname "$0")/gpu_check.py" "$1" "$2"
