#!/usr/bin/env bash
# The body shared by run_voc.sh and run_coco.sh (see their headers for usage and environment):
#   finetune.sh DEFAULT_CONFIG DEFAULT_TRIALS CHECKPOINT OUT_DIR [KEY VALUE ... | --resume]
# 1. convert + verify (key coverage and res4/res5 equality); a failed verification stops here;
# 2. fine-tune TRIALS times and evaluate (AP, AP50, AP75 mean +- std in OUT_DIR/trials_summary.json).
set -euo pipefail
default_config=$1; default_trials=$2; ckpt=$3; out=$4; shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python}
config=${CONFIG:-$default_config}
gpus=${NUM_GPUS:-$("$py" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
data=${DATA_ROOT:-${DETECTRON2_DATASETS:-datasets}}
resume=(); opts=()
for a in "$@"; do if [ "$a" = "--resume" ]; then resume=(--resume); else opts+=("$a"); fi; done

mkdir -p "$out"
"$py" -m transfer.convert_to_d2 "$ckpt" "$out/pretrained_d2.pkl" --config "$config" --seed "${SEED:-0}"
# exec: a preemption signal sent to this script reaches the trainer, which saves and exits 75
exec "$py" -m transfer.train_det --config-file "$config" --data-root "$data" --num-gpus "$gpus" \
    --trials "${TRIALS:-$default_trials}" --seed "${SEED:-0}" --coco-eval "${COCO_EVAL:-faster}" "${resume[@]}" \
    MODEL.WEIGHTS "$out/pretrained_d2.pkl" OUTPUT_DIR "$out" "${opts[@]}"
