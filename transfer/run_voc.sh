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
ckpt=$1; out=$2; shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python}
config=${CONFIG:-pascal_voc_R_50_C4_24k.yaml}
gpus=${NUM_GPUS:-$("$py" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
data=${DATA_ROOT:-${DETECTRON2_DATASETS:-datasets}}
resume=(); opts=()
for a in "$@"; do if [ "$a" = "--resume" ]; then resume=(--resume); else opts+=("$a"); fi; done

mkdir -p "$out"
# 1. convert + verify (key coverage and res4/res5 equality); a failed verification stops here
"$py" -m transfer.convert_to_d2 "$ckpt" "$out/pretrained_d2.pkl" --config "$config" --seed "${SEED:-0}"
# 2. fine-tune TRIALS times and evaluate on VOC07 test (AP, AP50, AP75: mean +- std in $out/trials_summary.json)
"$py" -m transfer.train_det --config-file "$config" --data-root "$data" --num-gpus "$gpus" \
    --trials "${TRIALS:-5}" --seed "${SEED:-0}" "${resume[@]}" \
    MODEL.WEIGHTS "$out/pretrained_d2.pkl" OUTPUT_DIR "$out" "${opts[@]}"
