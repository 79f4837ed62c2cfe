#!/usr/bin/env bash
# What tools/gpu_check.sh needs on the device beside the repository, in two git-ignored folders to
# carry: SITE (.gpu_site), the packages the device's Python lacks (detectron2, mmengine/mmcv-lite/
# mmseg, fvcore, pycocotools, torchao, ...) at the suite's pinned versions, unpacked for CPython
# 3.12 on x86-64 (the device's), and OFFICIAL_COPY (.official), a copy of the authors' code for the
# exact stage. Needs the package index, so it runs here, before the device call.
#
#   bash tools/gpu_carry.sh             # -> .gpu_site/ and .official/ (under 45 MB together)
#   SITE=.site PY_VERSION=3.12 OFFICIAL=../shared/reference/semaim_official bash tools/gpu_carry.sh
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
SITE=${SITE:-.gpu_site}
PY_VERSION=${PY_VERSION:-3.12}
OFFICIAL=${OFFICIAL:-../shared/reference/semaim_official}
OFFICIAL_COPY=${OFFICIAL_COPY:-.official}
# pure Python (some are published as sources only: built into wheels here) and compiled ones
PURE=(termcolor yacs omegaconf hydra-core antlr4-python3-runtime fvcore iopath mmengine mmcv-lite mmsegmentation
      addict yapf platformdirs ftfy wcwidth prettytable)
COMPILED=(pycocotools shapely torchao)
PLATFORMS=()
for n in 17 24 27 28 31 34; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
PIP=("$PY" -m pip install -q --no-deps --only-binary=:all: --implementation cp "${PLATFORMS[@]}"
     -c requirements/constraints.txt)
rm -rf "$SITE" && mkdir -p "$SITE"
tmp=$(mktemp -d)
MMCV_WITH_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -c requirements/constraints.txt -w "$tmp/pure" \
  "${PURE[@]}"
"$PY" -m pip install -q --no-deps --target "$SITE" "$tmp"/pure/*.whl
"${PIP[@]}" --python-version "$PY_VERSION" --target "$SITE" "${COMPILED[@]}"
# detectron2 as tools/setup_env.sh installs it: the cp310 wheel's pure-Python package alone
"${PIP[@]}" --python-version 3.10 --target "$tmp" sal-detectron2==0.7.2
rm -f "$tmp"/detectron2/_C*.so
cp -r "$tmp/detectron2" "$SITE/"
rm -rf "$tmp" "$SITE/bin"
# what no stage reads, to fit the device's 64 MiB: tests, mmseg's model configs (the suite's configs
# inherit only from its _base_ files; mmengine finds them through model-index.yml, which reads every
# metafile.yaml), torchao's compiled kernels (built for another torch; FP8 training is Python +
# Triton, and torchao loads without them)
rm -rf "$SITE"/{test,tests,yapftests,pydevd_plugins} "$SITE/mmseg/.mim/tools"
find "$SITE/mmseg/.mim/configs" -mindepth 2 -type f ! -path "*/_base_/*" ! -name metafile.yaml -delete
find "$SITE/torchao" -name "*.so" -delete
find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
if [ -d "$OFFICIAL" ]; then
  rm -rf "$OFFICIAL_COPY" && cp -r "$OFFICIAL" "$OFFICIAL_COPY" && rm -rf "$OFFICIAL_COPY/.git"
else
  echo "no copy of the authors' code: $OFFICIAL does not exist (the exact stage will say so)" >&2
fi
du -sh "$SITE" "$OFFICIAL_COPY" 2>/dev/null || true
