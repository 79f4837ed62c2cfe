#!/usr/bin/env bash
# SemAIM pretraining. All arguments go to the trainer (python -m semaim_core.pretrain --help).
#
#   tools/pretrain.sh --preset demo --data data/tiny_coco/train2017 --output-dir runs/demo    # CPU demo
#   tools/pretrain.sh --preset base --data /data/imagenet/train --output-dir runs/semaim_b    # one GPU
#   GPUS=8 tools/pretrain.sh --preset base --data ... --output-dir ...                       # torchrun, one node
#   GPUS=8 NNODES=4 NODE_RANK=$i MASTER_ADDR=host0 tools/pretrain.sh --preset base ...       # multi-node
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; echo; ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
GPUS=${GPUS:-1}
NNODES=${NNODES:-1}
if [ "$GPUS" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" -m semaim_core.pretrain "$@"
fi
exec "$PY" -m semaim_core.pretrain "$@"
