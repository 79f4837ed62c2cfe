#!/usr/bin/env bash
# Every pretraining figure docs/benchmarks.md owes, measured on one GPU in one or two commands.
# Each stage appends to $OUT/bench.jsonl (one JSON record per variant, with its command line)
# and prints its table; the last stage draws $OUT/bench.png.
#
#   bash tools/benchmark_gpu.sh                     # every stage, in this order:
#     exact      the default exact recipe against the authors' AimViT (eager, same process)
#     fast       exact, fast and fp8 compiled, with a profile of each
#     jpeg       exact compiled, from synthetic tensors and from JPEGs through the pretraining loader
#                (WORKERS processes), in the same run: the JPEG / synthetic ratio
#     large      ViT-L/16: LARGE_BATCH plain, then 2 x LARGE_BATCH with --grad-checkpointing
#     curve      two pretraining runs of CURVE_STEPS steps, bf16 and --float8, on the bundled train
#                images; their loss curves side by side ($OUT/loss.png)
#     agreement  center agreement of the bf16 similarity pass with fp32, on the held-out val images,
#                with the bf16 run's encoder ($OUT/agreement.txt)
#     plot       $OUT/bench.png from $OUT/bench.jsonl
#   bash tools/benchmark_gpu.sh exact fast          # some stages (a 10-minute limit per command: split)
#
# Settings (environment): OUT (runs/gpu_bench), OFFICIAL (a checkout of the authors' code;
# ../shared/reference/semaim_official), MODEL, BATCH (128), STEPS (20), WARMUP (5), WORKERS (14),
# COMPILE (--compile; empty: eager), DEVICE (cuda), LARGE_MODEL, LARGE_BATCH (64), CURVE_STEPS (300),
# BENCH_ARGS and PRETRAIN_ARGS (extra flags; the CPU smoke test shrinks the model with them).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-runs/gpu_bench}
OFFICIAL=${OFFICIAL:-../shared/reference/semaim_official}
MODEL=${MODEL:-semaim_vit_base_patch16}
BATCH=${BATCH:-128}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
WORKERS=${WORKERS:-14}
COMPILE=${COMPILE---compile}
DEVICE=${DEVICE:-cuda}
LARGE_MODEL=${LARGE_MODEL:-semaim_vit_large_patch16}
LARGE_BATCH=${LARGE_BATCH:-64}
CURVE_STEPS=${CURVE_STEPS:-300}
read -r -a BENCH_EXTRA <<< "${BENCH_ARGS:-}"
read -r -a PRETRAIN_EXTRA <<< "${PRETRAIN_ARGS:-}"
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(exact fast jpeg large curve agreement plot)
mkdir -p "$OUT"

bench() {
  "$PY" tools/benchmark_pretrain.py --device "$DEVICE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" \
    --json "$OUT/bench.jsonl" "${BENCH_EXTRA[@]}" "$@"
}

# The pretraining runs need whole batches: the 50 train images, linked as often as 10 batches take.
curve_images() {
  local dir=$OUT/curve_images copies
  copies=$(( (10 * BATCH + 49) / 50 ))
  rm -rf "$dir" && mkdir -p "$dir"
  for ((i = 0; i < copies; i++)); do
    for f in "$ROOT"/data/tiny_coco/train2017/*.jpg; do ln -s "$f" "$dir/$i-$(basename "$f")"; done
  done
  echo "$dir"
}

pretrain() {  # IMAGES NAME FLAGS...: CURVE_STEPS steps, 10 per epoch, a fresh run directory each time
  local data=$1 name=$2
  shift 2
  "$PY" -m semaim_core.pretrain --model "$MODEL" --data "$data" --output-dir "$OUT/$name" --device "$DEVICE" \
    --batch-size "$BATCH" --accum-iter 1 --epochs $(( (CURVE_STEPS + 9) / 10 )) --warmup-epochs 1 \
    --max-steps "$CURVE_STEPS" --similarity-precision autocast --num-workers "$WORKERS" --log-every 1 \
    --save-every "$CURVE_STEPS" --keep 1 --resume none --overwrite $COMPILE "${PRETRAIN_EXTRA[@]}" "$@"
}

for stage in "${STAGES[@]}"; do
  printf '\n==> [gpu bench] %s\n' "$stage"
  case "$stage" in
    exact) bench --model "$MODEL" --variants sorted official --official "$OFFICIAL" ;;
    fast) bench --model "$MODEL" --variants sorted fast fp8 $COMPILE --profile ;;
    jpeg) bench --model "$MODEL" --variants sorted $COMPILE --data data/tiny_coco/train2017 --workers "$WORKERS" \
            --compare-synthetic ;;
    large)
      bench --model "$LARGE_MODEL" --batch "$LARGE_BATCH" --variants sorted $COMPILE
      bench --model "$LARGE_MODEL" --batch $((2 * LARGE_BATCH)) --variants sorted $COMPILE --grad-checkpointing ;;
    curve)
      images=$(curve_images)
      pretrain "$images" curve-bf16
      pretrain "$images" curve-fp8 --float8
      "$PY" tools/compare_loss_curves.py "$OUT/curve-bf16" "$OUT/curve-fp8" --plot "$OUT/loss.png" ;;
    agreement)
      "$PY" tools/benchmark_pretrain.py --agreement-images data/tiny_coco/val2017 --device "$DEVICE" --dtype bf16 \
        --model "$MODEL" --agreement-checkpoint "$OUT/curve-bf16/encoder.pth" | tee "$OUT/agreement.txt" ;;
    plot) "$PY" tools/benchmark_pretrain.py --json "$OUT/bench.jsonl" --plot "$OUT/bench.png" --plot-only ;;
    *) echo "unknown stage '$stage': choose from exact fast jpeg large curve agreement plot" >&2; exit 2 ;;
  esac
done
echo "records: $OUT/bench.jsonl"
