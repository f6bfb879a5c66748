#!/usr/bin/env bash
# SimSiam pretraining launcher.
#
#   pretrain/run.sh
#       no arguments: generate the embedded data (once) into ./data/embedded and train the small CPU
#       preset (embedded_cpu.yaml) into its out_dir, ./runs/pretrain_embedded: both under the current folder.
#   pretrain/run.sh [torchrun options] [--config FILE] [--out-dir DIR] [key=value ...]
#       runs pretrain.train under torchrun. torchrun options: --nproc_per_node, --nnodes, --node_rank,
#       --rdzv_backend, --rdzv_endpoint, --rdzv_id, --master_addr, --master_port, --max_restarts,
#       --standalone. Example, one node of 8 GPUs:
#       pretrain/run.sh --nproc_per_node 8 --config imagenet_100ep.yaml data.train_dir=/data/imagenet/train
#       Two nodes: add --nnodes 2 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --rdzv_id JOB on each.
# Relative paths (--config, data dirs, out_dir) mean the caller's folder: the script does not cd; it
# puts the repository on PYTHONPATH so that `-m pretrain.train` resolves from anywhere.
# The config and the inputs are checked once (pretrain.train --check) before torchrun starts: a
# mistake is one `error:` line and exit 2, not one per worker plus torchrun's traceback.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}

for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; echo
                   exec "$PY" -m pretrain.train --help ;;
    esac
done

if [ $# -eq 0 ]; then
    "$PY" -m embedded --out-dir data/embedded
    exec "$PY" -m pretrain.train --config embedded_cpu.yaml
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

# The processes of the whole run, for the check's batch divisibility test (1 when not numeric).
nproc=1; nnodes=1
for ((i = 0; i < ${#launcher[@]}; i++)); do
    case "${launcher[i]}" in
        --nproc_per_node=*|--nproc-per-node=*) nproc=${launcher[i]#*=} ;;
        --nproc_per_node|--nproc-per-node) nproc=${launcher[i + 1]} ;;
        --nnodes=*) nnodes=${launcher[i]#*=} ;;
        --nnodes) nnodes=${launcher[i + 1]} ;;
    esac
done
[[ "$nproc" =~ ^[0-9]+$ ]] || nproc=1
[[ "$nnodes" =~ ^[0-9]+$ ]] || nnodes=1  # an elastic range such as 1:4: divisibility is checked by the workers
status=0
"$PY" -m pretrain.train --check --world-size $((nproc * nnodes)) "${train[@]}" >/dev/null || status=$?
[ "$status" -eq 0 ] || exit "$status"

# Preemption (see README "Reliability"): SIGTERM or SIGUSR1 reaching this script is passed to the
# torchrun agent as SIGTERM; the agent forwards it to the workers, which save checkpoint_last and exit
# 75, and the agent shuts down (a SIGTERM is not a failure it restarts). The agent ignores a direct SIGUSR1 (SLURM
# signals every process of the step): its default action would kill it and orphan the workers.
# torchrun reports any worker exit as 1, so the workers leave a note in $SIMSIAM_PREEMPTED_FILE and
# this script exits 75 when one exists: the code a requeueing launcher checks.
# Restarts (--max_restarts): with the rendezvous store shared with the workers (torch's default),
# restarted workers can read the previous attempt's peer addresses and fail to connect
# (pytorch/pytorch#135712; reproduced here with gloo). A store of their own per attempt avoids it.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
note=$(mktemp "${TMPDIR:-/tmp}/simsiam_preempted.XXXXXX")
rm -f "$note"
export SIMSIAM_PREEMPTED_FILE="$note"
trap '' USR1
"$PY" -m torch.distributed.run "${launcher[@]}" -m pretrain.train "${train[@]}" &
agent=$!
trap 'kill -TERM "$agent" 2>/dev/null || true' TERM INT USR1
status=0
while :; do
    wait "$agent" && status=0 || status=$?
    kill -0 "$agent" 2>/dev/null || break  # wait returns early when a trapped signal arrives
done
preempted=0
if [ -e "$note" ]; then preempted=1; rm -f "$note"; fi
# a worker saved after a signal (and torchrun did not restart it into a run that then finished)
if [ "$preempted" -eq 1 ] && [ "$status" -ne 0 ]; then exit 75; fi
exit "$status"
