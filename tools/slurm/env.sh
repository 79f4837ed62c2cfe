# What the sbatch scripts read from SLURM: nodes, GPUs per node and the first node as rendezvous.
PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
NNODES=${SLURM_NNODES:?run this through sbatch (SLURM_NNODES is not set)}
GPUS=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-1}}
GPUS=${GPUS##*:}  # "h100:8" -> 8
# Read the whole host list: `| head -n 1` under pipefail kills scontrol with SIGPIPE on long lists (exit 141).
HOSTS=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
MASTER_ADDR=${HOSTS%%$'\n'*}
MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export MASTER_ADDR MASTER_PORT
RUN=${DRY_RUN:+echo}
