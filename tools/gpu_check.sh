#!/usr/bin/env bash
# The GPU check in one call: every owed speed figure and a GPU run of every entry point
# (tools/lib/gpu_check.py says what each stage measures and its target). It runs on the device's
# own Python: the packages that Python lacks travel in SITE, a folder tools/gpu_carry.sh fills
# here, which goes on PYTHONPATH. Each stage writes its record to
# $OUT/gpu_check.jsonl and its line to $OUT/gpu_check.txt as soon as it finishes; the whole output
# goes to $OUT/log.txt. LIMIT seconds stop the run and keep what was measured.
#
#   bash tools/gpu_check.sh                         # every stage: exact fast jpeg large smoke agreement plot
#   bash tools/gpu_check.sh smoke agreement         # some stages
#   OUT=$OUT SITE=.gpu_site OFFICIAL=.official PYTHON=python3 LIMIT=480 bash tools/gpu_check.sh   # on the device
#
# Settings (environment): OUT (runs/gpu_check), PYTHON (.venv/bin/python), SITE (packages to put on
# PYTHONPATH; none by default), OFFICIAL (a copy of the authors' code;
# ../shared/reference/semaim_official), LIMIT (seconds, 480), COMMIT (the suite's commit; git's, if
# there is a .git), CHECK_ARGS (more flags for tools/lib/gpu_check.py: the CPU test shrinks it).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-runs/gpu_check}
OFFICIAL=${OFFICIAL:-../shared/reference/semaim_official}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
read -r -a EXTRA <<< "${CHECK_ARGS:-}"
mkdir -p "$OUT"
if [ -n "${SITE:-}" ]; then
  [ -d "$SITE" ] || { echo "SITE=$SITE is not a folder: run tools/gpu_carry.sh here and carry it" >&2; exit 2; }
  export PYTHONPATH=$(cd "$SITE" && pwd)${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
timeout --signal INT --kill-after 20 "${LIMIT:-480}" "$PY" -m tools.gpu_check "$@" --out "$OUT" \
  --official "$OFFICIAL" --commit "$COMMIT" "${EXTRA[@]}" 2>&1 | tee "$OUT/log.txt"
