#!/usr/bin/env bash
# Create (or bring up to date) the suite's virtual environment in .venv.
#
#   bash tools/setup_env.sh            # mmcv-lite + compatibility layer (default, ~4 min)
#   MMCV=full bash tools/setup_env.sh  # build mmcv 2.1.0 with its compiled ops (~20 min on 2 cores)
#   TORCH_CUDA=cu126 bash tools/setup_env.sh   # torch from PyTorch's own wheel index for CUDA 12.6
#                                              # (cu126 | cu128 | cu130; default: the pinned CUDA 13.0 build)
#   bash tools/setup_env.sh --check-driver     # only report the NVIDIA driver and whether the torch build runs on it
#
# Order matters: torch first (every other package resolves against it), then the pinned
# requirements, then detectron2 (a wheel installed without its dependency resolver, see
# README.md, "Dependencies"), then this project in editable mode. A second run with unchanged
# requirement files only checks the imports and returns in seconds.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
MMCV=${MMCV:-lite}
TORCH_CUDA=${TORCH_CUDA:-}
DETECTRON2_WHEEL=sal-detectron2==0.7.2
SETUPTOOLS='setuptools>=77.0.3,<82'   # torch 2.14 needs >=77.0.3; detectron2 and mmcv need pkg_resources (<82)

step() { printf '\n==> [setup] %s\n' "$*"; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "\n!! [setup] failed during: %s (exit %s)\n" "${CURRENT:-start}" "$rc" >&2' EXIT
run_step() { CURRENT="$1"; step "$1"; shift; "$@"; }

case "$MMCV" in lite|full) ;; *) echo "MMCV must be 'lite' or 'full', got '$MMCV'" >&2; exit 2 ;; esac
case "$TORCH_CUDA" in ""|cu126|cu128|cu130) ;; *) echo "TORCH_CUDA must be cu126, cu128 or cu130, got '$TORCH_CUDA'" >&2; exit 2 ;; esac

# The oldest NVIDIA driver branch each torch build runs on: CUDA 12.x wheels need r525+ (minor-version
# compatibility), CUDA 13.0 (the pinned default) r580+.
min_driver() { case "$1" in cu126|cu128) echo 525 ;; *) echo 580 ;; esac; }
check_driver() {
  local driver need
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
  if [ -z "$driver" ]; then
    echo "[setup] no NVIDIA driver found (nvidia-smi): torch will run on the CPU"
    return 0
  fi
  need=$(min_driver "$TORCH_CUDA")
  echo "[setup] NVIDIA driver $driver; the torch build ${TORCH_CUDA:-cu130 (default)} needs r$need or newer"
  if [ "${driver%%.*}" -lt "$need" ]; then
    echo "!! [setup] driver $driver is older than r$need: install with 'make setup TORCH_CUDA=cu126' (r525+; cu128" \
         "also runs on r525+, r570+ for Blackwell GPUs), or update the driver" >&2
    return 3
  fi
}
if [ "${1:-}" = --check-driver ]; then
  check_driver
  exit $?
fi
check_driver || exit 3

stamp_of() {  # everything that decides what the venv holds
  cat "$ROOT"/requirements/*.txt "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh"
  ls "$ROOT"/*/__init__.py   # the editable install maps each top-level package: a new one needs a re-run
  echo "mmcv=$MMCV detectron2=$DETECTRON2_WHEEL torch_cuda=$TORCH_CUDA"
}
STAMP_FILE=$VENV/.semaim-setup-stamp
want_stamp=$(stamp_of | sha256sum | cut -d' ' -f1)

check_imports() {
  "$VENV/bin/python" -W ignore - <<'EOF'
import importlib, sys
mods = ["torch", "torchvision", "timm", "fvcore", "pycocotools", "detectron2.modeling",
        "mmengine", "mmcv", "semaim_core"]
for m in mods:
    importlib.import_module(m)
import seg  # installs the mmcv-lite compatibility layer before mmseg is imported
import mmseg.models  # noqa: F401
from detectron2.modeling.backbone.vit import ViT  # noqa: F401  (the ViTDet pieces)
import detectron2
if "site-packages" not in detectron2.__file__:
    sys.exit(f"detectron2 resolved to {detectron2.__file__}, expected the venv's site-packages")
EOF
}

if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$want_stamp" ]; then
  run_step "environment is up to date, checking imports" check_imports
  step "done: $VENV (nothing to install)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  run_step "create virtual environment $VENV with $($PYTHON --version)" "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

run_step "packaging tools ($SETUPTOOLS)" "${PIP[@]}" install -q "$SETUPTOOLS" wheel
PIN=(-c "$ROOT/requirements/constraints.txt")   # the whole tested environment, transitive packages too
if [ -n "$TORCH_CUDA" ]; then  # PyTorch's own index for that CUDA (machines that reach it); same versions
  run_step "torch for $TORCH_CUDA (requirements/torch.txt from PyTorch's wheel index)" "${PIP[@]}" install \
    -r "$ROOT/requirements/torch.txt" --index-url "https://download.pytorch.org/whl/$TORCH_CUDA"
else
  run_step "torch (requirements/torch.txt)" "${PIP[@]}" install "${PIN[@]}" -r "$ROOT/requirements/torch.txt"
fi
run_step "pinned requirements (base, detectron2 deps, mmseg, test)" "${PIP[@]}" install "${PIN[@]}" \
  -r "$ROOT/requirements/base.txt" -r "$ROOT/requirements/detectron2.txt" \
  -r "$ROOT/requirements/mmseg.txt" -r "$ROOT/requirements/test.txt"

install_mmcv_full() {
  # mmcv's setup.py appends -std=c++17 after any CXXFLAGS, but torch 2.14 headers need C++20:
  # a compiler wrapper rewrites the flag. --no-build-isolation so it builds against our torch.
  local wrap; wrap=$(mktemp -d)
  cat >"$wrap/g++" <<'WRAP'
#!/bin/sh
for a in "$@"; do shift; [ "$a" = -std=c++17 ] && a=-std=c++20; set -- "$@" "$a"; done
exec g++ "$@"
WRAP
  chmod +x "$wrap/g++"
  "${PIP[@]}" uninstall -y -q mmcv-lite || true
  CXX="$wrap/g++" MMCV_WITH_OPS=1 MAX_JOBS=$(nproc) \
    "${PIP[@]}" install --no-build-isolation --no-binary mmcv mmcv==2.1.0
}
if [ "$MMCV" = full ]; then
  run_step "mmcv 2.1.0 with compiled ops (long build)" install_mmcv_full
fi

install_detectron2() {
  # The wheel is tagged cp310 only but is pure Python apart from detectron2._C, which we do not
  # use (torchvision provides ROIAlign and NMS). Unpack it aside and copy in just the package:
  # the wheel also ships a top-level `tools` package that would shadow this repository's tools/.
  local tmp; tmp=$(mktemp -d)
  "${PIP[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" "$DETECTRON2_WHEEL"
  rm -rf "$SITE/detectron2" "$SITE"/sal_detectron2-*.dist-info
  rm -f "$tmp"/detectron2/_C*.so   # built for CPython 3.10; detectron2 falls back to torchvision ops
  cp -r "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$SITE/"
  rm -rf "$tmp"
}
run_step "detectron2 ($DETECTRON2_WHEEL, without its stray top-level 'tools' package)" install_detectron2
run_step "this project (editable)" "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
run_step "check imports" check_imports

echo "$want_stamp" >"$STAMP_FILE"
step "done: $VENV ($(du -sh "$VENV" | cut -f1)). Activate with: source .venv/bin/activate"
