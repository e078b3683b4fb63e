#!/usr/bin/env bash
# The prepared GPU check (issue 16): the full-size Mirage (704x1280) and Spatia (704x1248) layouts with random
# bf16 weights, one command well inside 10 minutes: seconds per frame, peak GPU memory, readout / update
# time (mirage_ros/bench/gpu.py says what is timed). Without a CUDA device it says so and exits 0.
#
#   bash scripts/gpu_check.sh                  # -> docs/results/bench_gpu.json + .png ($OUT/ when OUT is set)
#   bash scripts/gpu_check.sh --steps 3        # extra arguments go to `python -m mirage_ros.bench.gpu`
#   bash scripts/gpu_check.sh --fetch-wheels   # where pip works: diffusers (pinned) into .whl/ for a GPU machine
#                                              # that has torch but no diffusers and no network; carry .whl there
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pin=$(grep -E '^diffusers==' requirements.txt | sed 's/[[:space:]].*//')
if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$pin"
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: skipped, no CUDA device here (torch.cuda.is_available() is false or torch is missing)"
  exit 0
fi
if ! "$PY" -c 'import diffusers' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mirage_site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/mirage_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_check: diffusers is not installed (pip install -e . here, or bash scripts/gpu_check.sh --fetch-wheels where pip works)"
    exit 2
  fi
fi
out=${OUT:-docs/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
"$PY" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
timeout 570 "$PY" -m mirage_ros.bench.gpu --json "$out/bench_gpu.json" "$@"
