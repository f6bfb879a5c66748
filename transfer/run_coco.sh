#!/usr/bin/env bash
# Convert a ResNet-50 checkpoint to detectron2 and fine-tune + evaluate Mask R-CNN R50-C4 on COCO 2017
# (SimSiam Table 5 / MoCo recipe). See transfer/README.md for the paper commands and fewer GPUs.
#
# usage: transfer/run_coco.sh CHECKPOINT OUT_DIR [KEY VALUE ...]  (extra detectron2 config overrides)
#   CHECKPOINT  SimSiam / MoCo / torchvision ResNet-50 file, or `random` (the scratch baseline)
# environment (all optional):
#   DATA_ROOT  folder holding coco/            (default: $DETECTRON2_DATASETS, else ./datasets)
#   CONFIG     detectron_configs/ name or path (default: coco_R_50_C4_1x.yaml; coco_R_50_C4_2x.yaml;
#              tiny_coco_R_50_C4.yaml = CPU smoke test)
#   TRIALS     fine-tuning runs with seeds SEED..SEED+TRIALS-1 (default 1)
#   SEED       first seed (default 0);  NUM_GPUS  processes (default: visible GPUs, else 1 on CPU)
#   COCO_EVAL  faster (default) or pycocotools: scoring backend, same AP
#   PYTHON     interpreter (default: python)
# Re-running with the same OUT_DIR and --resume among the overrides continues: finished trials are skipped.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '5,15p' "$0" >&2; exit 2; fi
exec bash "$(dirname "$0")/finetune.sh" coco_R_50_C4_1x.yaml 1 "$@"
