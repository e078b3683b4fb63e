#!/usr/bin/env bash
# Install mirage_ros and everything the tests need into the active Python environment.
# A fresh machine needs only Python 3.11, pip, gcc and cmake. Pins live in requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[ros,rosbuild,test]"
# Packages whose declared requirements would pull torchvision: installed without them.
nodeps=$(grep -E '#\s*nodeps\s*$' requirements.txt | sed 's/\s*#.*//')
[ -z "$nodeps" ] || python -m pip install -q --no-deps $nodeps
# colcon (tests/ros/test_colcon.py builds the package with it) in a venv of its own: colcon-core
# registers a pytest plugin and pins setuptools<80, which would change this environment. Pins:
# requirements.txt group colcon (+ the rosbuild catkin-pkg). A stamp makes re-runs instant;
# MIRAGE_NO_COLCON=1 skips it (the colcon test then skips and says why).
if [ "${MIRAGE_NO_COLCON:-0}" != 1 ]; then
  colcon_venv=${MIRAGE_ROS_BUILD:-.ros_build}/colcon/venv
  colcon_pins=$(grep -E '#\s*colcon\s*$|^catkin-pkg==' requirements.txt | sed 's/\s*#.*//' | tr '\n' ' ')
  colcon_stamp=$(printf '%s %s' "$colcon_pins" "$(python -c 'import sys; print(sys.version)')" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$colcon_venv/mirage_stamp" 2>/dev/null)" != "$colcon_stamp" ] || [ ! -x "$colcon_venv/bin/colcon" ]; then
    rm -rf "$colcon_venv"
    python -m venv "$colcon_venv"
    "$colcon_venv/bin/python" -m pip install -q $colcon_pins
    echo "$colcon_stamp" >"$colcon_venv/mirage_stamp"
  fi
fi
python - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "timm", "xformers") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"install: {bad} are installed and break diffusers/transformers imports here; uninstall them")
PY
