#!/usr/bin/env bash
# Convert a ResNet-50 checkpoint to detectron2 and fine-tune + evaluate Mask R-CNN R50-C4 on COCO 2017
# (SimSiam Table 5 / MoCo recipe): python -m transfer.finetune with the coco_1x.yaml preset
# (90k iterations, one trial). See transfer/README.md for the paper commands and fewer GPUs.
#
# usage: transfer/run_coco.sh --checkpoint CKPT --out-dir OUT [--data-root DIR] [--config PRESET] [key=value ...]
#   --config coco_2x.yaml: 2x schedule; tiny_coco.yaml: CPU smoke run. Keys: transfer/configs/defaults.yaml
#   (trials=1 seed=0 num_gpus=0 coco_eval=pycocotools resume=true d2_opts='[SOLVER.BASE_LR, 0.01]' ...).
# Runs the python3 on PATH (activate the project's venv); relative paths are the caller's.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# exec: a preemption signal sent to this script reaches the trainer, which saves and exits 75
exec python3 -m transfer.finetune --config coco_1x.yaml "$@"
