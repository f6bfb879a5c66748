#!/usr/bin/env bash
# Convert a ResNet-50 checkpoint to detectron2 and fine-tune + evaluate Faster R-CNN R50-C4 on VOC
# (SimSiam Table 5 / MoCo recipe). See transfer/README.md for the paper commands and fewer GPUs.
#
# usage: transfer/run_voc.sh CHECKPOINT OUT_DIR [KEY VALUE ...]   (extra detectron2 config overrides)
#   CHECKPOINT  SimSiam / MoCo / torchvision ResNet-50 file, or `random` (the scratch baseline)
# environment (all optional):
#   DATA_ROOT  folder holding VOCdevkit/       (default: $DETECTRON2_DATASETS, else ./datasets)
#   CONFIG     detectron_configs/ name or path (default: pascal_voc_R_50_C4_24k.yaml = VOC07+12;
#              pascal_voc07_R_50_C4_9k.yaml = VOC07 only; tiny_pascal_voc_R_50_C4.yaml = CPU smoke test)
#   TRIALS     fine-tuning runs with seeds SEED..SEED+TRIALS-1 (default 5: the paper reports a 5-trial mean)
#   SEED       first seed (default 0);  NUM_GPUS  processes (default: visible GPUs, else 1 on CPU)
#   PYTHON     interpreter (default: python)
# Re-running with the same OUT_DIR and --resume among the overrides continues: finished trials are skipped.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '5,14p' "$0" >&2; exit 2; fi
exec bash "$(dirname "$0")/finetune.sh" pascal_voc_R_50_C4_24k.yaml 5 "$@"
