# Source me (bash/zsh):  . scripts/ros_env.sh
# Confines ROS 2 to loopback and makes the interfaces built by scripts/build_interfaces.sh
# importable. Used by scripts/test.sh before pytest, and by anyone trying the node by hand.
#   - ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (ROS_LOCALHOST_ONLY is unset: deprecated in Jazzy, and it disables the range)
#   - Fast DDS profile config/fastdds_loopback.xml: UDPv4 on 127.0.0.1 only, unicast discovery.
#     MIRAGE_ROS_TRANSPORT=shm selects config/fastdds_local_shm.xml instead (shared memory +
#     UDP on 127.0.0.1): needed for images above ~0.5 MB on BEST_EFFORT topics (the node's
#     sensor inputs), which Fast DDS 2.14 drops over UDP alone when the discovery range is
#     LOCALHOST (measured: 256x448 rgb8 arrives, 352x640 and 1280x704 do not; see the bench)
#   - a random ROS_DOMAIN_ID (1..100) unless MIRAGE_ROS_DOMAIN_ID is set, so concurrent runs on
#     one machine do not see each other
#   - PYTHONPATH: the repository first (so the real mirage_ros/__init__.py merges the generated
#     mirage_ros.msg/.srv/.action), then the built interfaces; LD_LIBRARY_PATH: their libraries
#     and the ROS wheels' libraries (so Python need not re-execute itself)
_mirage_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_mirage_build=${MIRAGE_ROS_BUILD:-$_mirage_root/.ros_build}

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
unset ROS_STATIC_PEERS ROS_LOCALHOST_ONLY
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
case "${MIRAGE_ROS_TRANSPORT:-udp}" in
  shm) export FASTDDS_DEFAULT_PROFILES_FILE="$_mirage_root/config/fastdds_local_shm.xml" ;;
  *) export FASTDDS_DEFAULT_PROFILES_FILE="$_mirage_root/config/fastdds_loopback.xml" ;;
esac
export FASTRTPS_DEFAULT_PROFILES_FILE="$FASTDDS_DEFAULT_PROFILES_FILE"
export ROS_DOMAIN_ID=${MIRAGE_ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}
export RCUTILS_COLORIZED_OUTPUT=0

_mirage_prepend() {  # _mirage_prepend VAR DIR: put DIR first in VAR once
  local var=$1 dir=$2 cur
  eval "cur=\${$var:-}"
  case ":$cur:" in *":$dir:"*) cur=$(printf '%s' ":$cur:" | sed "s#:$dir:#:#g; s#^:##; s#:\$##") ;; esac
  eval "export $var=\"$dir\${cur:+:\$cur}\""
}

_mirage_site=$(ls -d "$_mirage_build"/install/lib/python*/site-packages 2>/dev/null | head -1 || true)
if [ -n "$_mirage_site" ] && [ -d "$_mirage_site/mirage_ros/msg" ]; then
  _mirage_prepend PYTHONPATH "$_mirage_site"
  _mirage_prepend LD_LIBRARY_PATH "$_mirage_build/install/lib"
  _mirage_prepend AMENT_PREFIX_PATH "$_mirage_build/install"
else
  echo "ros_env: no built interfaces in $_mirage_build (run: bash scripts/build_interfaces.sh);" \
       "ROS tests that need them will be skipped" >&2
fi
_mirage_prepend PYTHONPATH "$_mirage_root"

# The ROS wheels' libraries, so their .pth hook need not re-execute every Python start.
_mirage_py=$(command -v python || command -v python3)
_mirage_prefix=$(cd "$(dirname "$_mirage_py")/.." && pwd)
for _d in "$_mirage_prefix"/lib/python3*/site-packages/ros_*.libs "$_mirage_prefix/lib"; do
  [ -d "$_d" ] && _mirage_prepend LD_LIBRARY_PATH "$_d"
done
if [ -d "$_mirage_prefix/share/ament_index" ]; then
  case ":${AMENT_PREFIX_PATH:-}:" in *":$_mirage_prefix:"*) ;; *) export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$_mirage_prefix" ;; esac
fi
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
unset _mirage_root _mirage_build _mirage_site _mirage_py _mirage_prefix _d
unset -f _mirage_prepend
