#!/usr/bin/env bash
# `colcon build` of mirage_ros in a workspace outside the source tree, against the PyPI ROS 2
# wheels of the active Python environment (no ROS install): what a user does in ~/ws/src with a
# ROS install. tests/ros/test_colcon.py runs it; by hand, in the project's venv:
#   bash scripts/colcon_build.sh && . .ros_build/colcon/ws/install/setup.bash
#   python -c 'from ament_index_python.packages import get_package_prefix as p; print(p("mirage_ros"))'
# - colcon: $MIRAGE_COLCON, else the tool venv scripts/install.sh makes (.ros_build/colcon/venv:
#   colcon-core registers a pytest plugin and pins setuptools<80, so it is kept out of the test
#   venv), else `colcon` on PATH. Exit 3 (and nothing built) when there is none.
# - The workspace ($MIRAGE_COLCON_WS, default .ros_build/colcon/ws, git-ignored) gets src/mirage_ros,
#   a copy of what a clone has (git ls-files, plus untracked files that are not ignored): CMake
#   refuses to export include folders under the source folder, and the venv usually lives inside
#   the repository. Where the wheels lack tf2_msgs (not on PyPI), src/tf2_msgs is the package
#   scripts/build_interfaces.sh generates (TFMessage only, the same definition).
# - Against the wheels (never with a ROS install) CMake also gets scripts/cmake/wheel_fixup.cmake,
#   as in build_interfaces.sh.
# - Re-runs: a stamp over the copied files, the colcon tool and the Python returns at once when
#   nothing changed; otherwise the copy is synced (unchanged files keep their mtimes) and colcon
#   rebuilds incrementally.
# The last line of stdout is the install space.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$(command -v python || command -v python3)}
OUT=${MIRAGE_ROS_BUILD:-$ROOT/.ros_build}
WS=${MIRAGE_COLCON_WS:-$OUT/colcon/ws}

COLCON=${MIRAGE_COLCON:-}
[ -n "$COLCON" ] || { [ -x "$OUT/colcon/venv/bin/colcon" ] && COLCON=$OUT/colcon/venv/bin/colcon; } || true
[ -n "$COLCON" ] || COLCON=$(command -v colcon || true)
if [ -z "$COLCON" ] || [ ! -x "$COLCON" ]; then
  echo "colcon_build: colcon is not installed (bash scripts/install.sh puts it in $OUT/colcon/venv;" \
       "pins: requirements.txt group colcon)" >&2
  exit 3
fi

read -r PREFIX PYINC NPINC < <("$PY" - <<'PY'
import sys, sysconfig
import numpy
print(sys.prefix, sysconfig.get_paths()["include"], numpy.get_include())
PY
)
for pkg in ament_cmake ament_cmake_python rosidl_default_generators std_msgs geometry_msgs sensor_msgs nav_msgs; do
  [ -f "$PREFIX/share/$pkg/package.xml" ] || { echo "colcon_build: $pkg is missing in $PREFIX: pip install -e \".[ros,rosbuild]\"" >&2; exit 1; }
done
command -v cmake >/dev/null || { echo "colcon_build: cmake is not installed" >&2; exit 1; }

BUILD_TF2=0
if [ ! -f "$PREFIX/share/tf2_msgs/package.xml" ]; then
  BUILD_TF2=1
  [ -f "$OUT/tf2_src/package.xml" ] || bash scripts/build_interfaces.sh >&2
fi

# One build at a time per workspace (two test runs at once would otherwise race in build/).
mkdir -p "$WS/src"
if command -v flock >/dev/null; then
  exec 9>"$WS/.lock"
  flock 9
fi
# Sync the sources into the workspace; print a digest of everything that goes into the build.
DIGEST=$("$PY" - "$WS/src" "$BUILD_TF2" "$OUT/tf2_src" "$COLCON" "$PREFIX" <<'PY'
import hashlib, os, shutil, subprocess, sys

dest_root, build_tf2, tf2_src, colcon, prefix = sys.argv[1:]
try:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], check=True,
                         capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f]
except (OSError, subprocess.CalledProcessError):  # not a git checkout: what CMakeLists.txt installs
    files = []
    for top in ("package.xml", "CMakeLists.txt", "setup.py", "requirements.txt", "msg", "srv", "action",
                "mirage_ros", "nodes", "launch", "config", "resource"):
        if os.path.isfile(top):
            files.append(top)
        for d, dirs, fns in os.walk(top):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            files += [os.path.join(d, f) for f in fns if not f.endswith(".pyc")]
trees = {"mirage_ros": (".", sorted(f for f in files if os.path.isfile(f)))}
if build_tf2 == "1":
    trees["tf2_msgs"] = (tf2_src, sorted(os.path.relpath(os.path.join(d, f), tf2_src)
                                         for d, _, fns in os.walk(tf2_src) for f in fns))
h = hashlib.sha256(f"{colcon} {os.path.realpath(colcon)} {prefix} {sys.version}".encode())
for pkg in sorted(os.listdir(dest_root)):
    if pkg not in trees:
        shutil.rmtree(os.path.join(dest_root, pkg))
for pkg, (src, rels) in trees.items():
    dst = os.path.join(dest_root, pkg)
    want = set(rels)
    for d, _, fns in os.walk(dst, topdown=False):
        for f in fns:
            p = os.path.join(d, f)
            if os.path.relpath(p, dst) not in want:
                os.remove(p)
        if d != dst and not os.listdir(d):
            os.rmdir(d)
    for rel in rels:
        s, t = os.path.join(src, rel), os.path.join(dst, rel)
        data = open(s, "rb").read()
        h.update(f"{pkg}/{rel}\0{len(data)}\0".encode() + data)
        st = os.stat(s)
        try:
            tt = os.stat(t)
            same = tt.st_size == st.st_size and tt.st_mtime_ns == st.st_mtime_ns and open(t, "rb").read() == data
        except FileNotFoundError:
            same = False
        if not same:
            os.makedirs(os.path.dirname(t), exist_ok=True)
            shutil.copy2(s, t)
print(h.hexdigest())
PY
)

INSTALL=$WS/install
if [ -f "$WS/stamp" ] && [ "$(cat "$WS/stamp")" = "$DIGEST" ] && [ -f "$INSTALL/mirage_ros/share/mirage_ros/package.xml" ] \
   && [ -f "$INSTALL/setup.bash" ]; then
  echo "colcon_build: up to date" >&2
  echo "$INSTALL"
  exit 0
fi
rm -f "$WS/stamp"
echo "colcon_build: colcon build in $WS ..." >&2
t0=$(date +%s)
LIBS=$(ls -d "$PREFIX"/lib/python3*/site-packages/ros_*.libs 2>/dev/null | tr '\n' ':' || true)
colcon_build() (
  cd "$WS"
  # The underlay is the venv alone: not the interfaces of build_interfaces.sh (a second mirage_ros)
  # that scripts/ros_env.sh puts on these paths, and no PYTHONPATH into colcon's own venv.
  export AMENT_PREFIX_PATH="$PREFIX" CMAKE_PREFIX_PATH="$PREFIX"
  unset COLCON_PREFIX_PATH PYTHONPATH
  export LD_LIBRARY_PATH="${LIBS}$PREFIX/lib"
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1   # the generators' Python needs no re-exec
  "$COLCON" --log-base "$WS/log" build --base-paths "$WS/src" --build-base "$WS/build" --install-base "$INSTALL" \
    --parallel-workers "${MIRAGE_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}" \
    --cmake-args -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      "-DPython3_EXECUTABLE=$PY" "-DPYTHON_EXECUTABLE=$PY" -DPython3_FIND_VIRTUALENV=ONLY \
      "-DCMAKE_PROJECT_INCLUDE=$ROOT/scripts/cmake/wheel_fixup.cmake" \
      "-DMIRAGE_PYTHON_INCLUDE=$PYINC" "-DMIRAGE_NUMPY_INCLUDE=$NPINC"
)
# An incremental build that fails (e.g. a build folder left half-done by a killed run) is retried
# once from scratch; a failure then is real.
had_build=0; [ -d "$WS/build" ] && had_build=1
if ! colcon_build >"$WS/build.log" 2>&1; then
  if [ "$had_build" = 1 ]; then
    echo "colcon_build: incremental build failed; retrying from a clean build/ and install/" >&2
    mv "$WS/build.log" "$WS/build.incremental.log"
    rm -rf "$WS/build" "$INSTALL"
    colcon_build >"$WS/build.log" 2>&1 \
      || { tail -n 60 "$WS/build.log" >&2; echo "colcon_build: FAILED (log: $WS/build.log, $WS/log)" >&2; exit 1; }
  else
    tail -n 60 "$WS/build.log" >&2; echo "colcon_build: FAILED (log: $WS/build.log, $WS/log)" >&2; exit 1
  fi
fi
echo "$DIGEST" >"$WS/stamp"
echo "colcon_build: built in $(( $(date +%s) - t0 )) s (log: $WS/build.log)" >&2
echo "$INSTALL"
