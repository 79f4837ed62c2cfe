# What the sbatch scripts read from SLURM: nodes, GPUs per node and the first node as rendezvous.
# DRY_RUN=1 prints each command instead of running it; outside an allocation it prints them for
# NODES nodes of GPUS_PER_NODE GPUs (default 2 x 8).
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
RUN=${DRY_RUN:+echo}
if [ -n "${DRY_RUN:-}" ] && [ -z "${SLURM_NNODES:-}" ]; then
  NNODES=${NODES:-2} GPUS=${GPUS_PER_NODE:-8} MASTER_ADDR=${MASTER_ADDR:-FIRST_NODE} MASTER_PORT=${MASTER_PORT:-29500}
  echo "# DRY_RUN outside an allocation: the commands for $NNODES nodes x $GPUS GPUs (NODES, GPUS_PER_NODE);" \
       "SLURM sets \$SLURM_NODEID on each node and FIRST_NODE is the allocation's first host"
else
  NNODES=${SLURM_NNODES:?run this through sbatch (SLURM_NNODES is not set), or print the commands with DRY_RUN=1}
  GPUS=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
  GPUS=${GPUS##*:}  # "h100:8" -> 8
  # Read the whole host list: `| head -n 1` under pipefail kills scontrol with SIGPIPE on long lists (exit 141).
  HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  MASTER_ADDR=${HOSTS%%$'\n'*}
  MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
fi
export MASTER_ADDR MASTER_PORT
