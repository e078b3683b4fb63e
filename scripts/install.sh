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
python - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "timm", "xformers") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"install: {bad} are installed and break diffusers/transformers imports here; uninstall them")
PY
