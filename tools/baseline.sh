#!/usr/bin/env bash
# A baseline through the very same recipes as SemAIM: its checkpoint (MAE, SAIM, the authors'
# SemAIM, timm, or this suite's; tools/convert_checkpoint.py says what it found) is converted to an
# encoder, then fine-tuned for detection (det/configs/vitdet_semaim.py), segmentation
# (seg/configs/upernet_semaim.py; frozen, the linear protocol), depth (frozen, the linear protocol
# on NYU Depth v2) and classification (fine-tuning, linear and attentive probes, k-NN) exactly as
# README.md runs a SemAIM encoder, into OUT/<task>. The tables then mark its row "same harness".
#
#   bash tools/baseline.sh mae checkpoints/mae_pretrain_vit_base.pth      # -> runs/baselines/mae/...
#   TASKS="convert det" GPUS=8 bash tools/baseline.sh saim saim_800ep.pth
#   DRY_RUN=1 bash tools/baseline.sh mae mae.pth                          # print the commands only
#
# Settings (environment): OUT (runs/baselines/NAME), TASKS (convert det seg linseg lindepth ft lin attn knn),
# GPUS (8), IMAGENET (the ImageNet root for ft/lin/attn/knn; required by them), SEED (0: change it
# for another seed of every downstream run), DET_CONFIG, SEG_CONFIG, LINSEG_CONFIG, DEPTH_CONFIG, EVAL_SETS
# (NAME=PATH ... for ft/lin/attn --eval-sets: the robustness sets), PYTHON (.venv/bin/python),
# CONVERT_ARGS (more converter flags, e.g. "--depth 4" for a checkpoint of a standard width whose
# depth is not standard and not recorded), DRY_RUN (1: print).
set -euo pipefail
case "${1:-}" in -h|--help|"") sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; [ -n "${1:-}" ]; exit $? ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NAME=$1
CKPT=${2:?"usage: bash tools/baseline.sh NAME CHECKPOINT (see --help)"}
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-runs/baselines/$NAME}
TASKS=${TASKS:-convert det seg linseg lindepth ft lin attn knn}
GPUS=${GPUS:-8}
SEED=${SEED:-0}
DET_CONFIG=${DET_CONFIG:-det/configs/vitdet_semaim.py}
SEG_CONFIG=${SEG_CONFIG:-seg/configs/upernet_semaim.py}
LINSEG_CONFIG=${LINSEG_CONFIG:-seg/configs/linear_semaim-vit-b16_8xb2-40k_ade20k-512x512.py}
DEPTH_CONFIG=${DEPTH_CONFIG:-seg/configs/lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544.py}
read -r -a EVAL <<< "${EVAL_SETS:+--eval-sets $EVAL_SETS}"
ENC=$OUT/encoder.pth
[ -f "$CKPT" ] || [ "${DRY_RUN:-0}" = 1 ] || { echo "checkpoint $CKPT does not exist" >&2; exit 2; }
run() { printf '+ %s\n' "$*"; [ "${DRY_RUN:-0}" = 1 ] || "$@"; }
imagenet() { [ -n "${IMAGENET:-}" ] || { echo "task $1 needs IMAGENET=<ImageNet root with train/ and val/>" >&2; exit 2; }; }
TORCHRUN=("$PY" -m torch.distributed.run --nproc_per_node "$GPUS")
rows=()
for task in $TASKS; do
  case "$task" in
    # shellcheck disable=SC2086  # CONVERT_ARGS: flags, split on purpose
    convert) run mkdir -p "$OUT" && run "$PY" tools/convert_checkpoint.py "$CKPT" "$ENC" --to encoder ${CONVERT_ARGS:-} ;;
    det) run "$PY" -m det.train_net --config "$DET_CONFIG" --num-gpus "$GPUS" train.init_checkpoint="$ENC" \
           train.output_dir="$OUT/det_s$SEED" train.seed="$SEED"; rows+=("$OUT/det_s$SEED") ;;
    seg) run "${TORCHRUN[@]}" -m seg.tools.train "$SEG_CONFIG" --launcher pytorch --work-dir "$OUT/seg_s$SEED" \
           --cfg-options model.backbone.checkpoint="$ENC" randomness.seed="$SEED"; rows+=("$OUT/seg_s$SEED") ;;
    linseg) run "${TORCHRUN[@]}" -m seg.tools.train "$LINSEG_CONFIG" --launcher pytorch --work-dir "$OUT/linseg_s$SEED" \
              --cfg-options model.backbone.checkpoint="$ENC" randomness.seed="$SEED"; rows+=("$OUT/linseg_s$SEED") ;;
    lindepth) run "${TORCHRUN[@]}" -m seg.tools.train "$DEPTH_CONFIG" --launcher pytorch --work-dir "$OUT/lindepth_s$SEED" \
                --cfg-options model.backbone.checkpoint="$ENC" randomness.seed="$SEED"; rows+=("$OUT/lindepth_s$SEED") ;;
    ft) imagenet ft; run "${TORCHRUN[@]}" -m cls.finetune --data "$IMAGENET" --encoder "$ENC" --seed "$SEED" \
          --output-dir "$OUT/cls_ft_s$SEED" "${EVAL[@]}"; rows+=("$OUT/cls_ft_s$SEED") ;;
    lin) imagenet lin; run "${TORCHRUN[@]}" -m cls.linprobe --data "$IMAGENET" --encoder "$ENC" --seed "$SEED" \
           --output-dir "$OUT/cls_lin_s$SEED" "${EVAL[@]}"; rows+=("$OUT/cls_lin_s$SEED") ;;
    attn) imagenet attn; run "${TORCHRUN[@]}" -m cls.attnprobe --data "$IMAGENET" --encoder "$ENC" --seed "$SEED" \
            --output-dir "$OUT/cls_attn_s$SEED" "${EVAL[@]}"; rows+=("$OUT/cls_attn_s$SEED") ;;
    knn) imagenet knn; run "$PY" -m cls.knn --data "$IMAGENET" --encoder "$ENC" --output-dir "$OUT/cls_knn" ;
         rows+=("$OUT/cls_knn") ;;
    *) echo "unknown task '$task': choose from convert det seg linseg lindepth ft lin attn knn" >&2; exit 2 ;;
  esac
done
printf '\nthe row, beside SemAIM'"'"'s (add the other seeds'"'"' folders to it):\n  %s tools/make_tables.py --row "%s (same harness)" %s\n' \
  "$PY" "$NAME" "${rows[*]}"
