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
ckpt=$1; out=$2; shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python}
config=${CONFIG:-coco_R_50_C4_1x.yaml}
gpus=${NUM_GPUS:-$("$py" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
data=${DATA_ROOT:-${DETECTRON2_DATASETS:-datasets}}
resume=(); opts=()
for a in "$@"; do if [ "$a" = "--resume" ]; then resume=(--resume); else opts+=("$a"); fi; done

mkdir -p "$out"
# 1. convert + verify (key coverage and res4/res5 equality); a failed verification stops here
"$py" -m transfer.convert_to_d2 "$ckpt" "$out/pretrained_d2.pkl" --config "$config" --seed "${SEED:-0}"
# 2. fine-tune and evaluate on val2017 (box and mask AP, AP50, AP75 in $out/trials_summary.json)
"$py" -m transfer.train_det --config-file "$config" --data-root "$data" --num-gpus "$gpus" \
    --trials "${TRIALS:-1}" --seed "${SEED:-0}" --coco-eval "${COCO_EVAL:-faster}" "${resume[@]}" \
    MODEL.WEIGHTS "$out/pretrained_d2.pkl" OUTPUT_DIR "$out" "${opts[@]}"
