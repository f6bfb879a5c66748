#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): training images/s in fp32 / bf16 / bf16 + channels_last with the
# official and fast data paths, the fast path's device ops against the official views, kNN at ImageNet
# size in float32 and reduced precision, a Faster / Mask R-CNN C4 iteration at the recipe's sizes, and
# 2-GPU NCCL sync BN; about 8 minutes on one GPU, one JSON file and one markdown table.
#
#   bench/gpu_check.sh [--out-dir DIR] [--budget-s 480] [--parts train,knn,...] [--dry-run]
#
# Runs $PYTHON (default: python3 on PATH; activate the project's venv). Relative paths are the caller's:
# the script does not cd, it puts the repository on PYTHONPATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# exec: a SIGTERM sent to this script reaches the check, which then kills its running part
exec "${PYTHON:-python3}" -m bench.gpu_check "$@"
