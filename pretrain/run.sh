#!/usr/bin/env bash
# SimSiam pretraining launcher.
#
#   pretrain/run.sh
#       no arguments: generate the embedded data (once) and train the small CPU preset here.
#   pretrain/run.sh [torchrun options] [--config FILE] [key=value ...]
#       runs pretrain.train under torchrun. torchrun options: --nproc_per_node, --nnodes, --node_rank,
#       --rdzv_backend, --rdzv_endpoint, --rdzv_id, --master_addr, --master_port, --max_restarts,
#       --standalone. Example, one node of 8 GPUs:
#       pretrain/run.sh --nproc_per_node 8 --config pretrain/configs/imagenet_100ep.yaml data.train_dir=/data/imagenet/train
#       Two nodes: add --nnodes 2 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id JOB on each.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if [ $# -eq 0 ]; then
    "$PY" -m core.embedded_data --out data/embedded
    exec "$PY" -m pretrain.train --config pretrain/configs/embedded_cpu.yaml
fi

launcher=()
train=()
while [ $# -gt 0 ]; do
    case "$1" in
        --standalone)
            launcher+=("$1"); shift ;;
        --nproc_per_node=*|--nproc-per-node=*|--nnodes=*|--node_rank=*|--node-rank=*|--rdzv_backend=*|--rdzv-backend=*|\
        --rdzv_endpoint=*|--rdzv-endpoint=*|--rdzv_id=*|--rdzv-id=*|--master_addr=*|--master-addr=*|\
        --master_port=*|--master-port=*|--max_restarts=*|--max-restarts=*)
            launcher+=("$1"); shift ;;
        --nproc_per_node|--nproc-per-node|--nnodes|--node_rank|--node-rank|--rdzv_backend|--rdzv-backend|\
        --rdzv_endpoint|--rdzv-endpoint|--rdzv_id|--rdzv-id|--master_addr|--master-addr|\
        --master_port|--master-port|--max_restarts|--max-restarts)
            launcher+=("$1" "$2"); shift 2 ;;
        *)
            train+=("$1"); shift ;;
    esac
done
exec "$PY" -m torch.distributed.run "${launcher[@]}" -m pretrain.train "${train[@]}"
