"""mirage_ros.ros.dds: the start-up warning for a Fast DDS process with no running network
(checked on a made-up /sys/class/net here; on a real interface in tests/ros/test_two_hosts.py)."""
import pytest

from mirage_ros.ros.dds import network_warning, networked, running_interfaces

NET = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}


def _sysfs(tmp_path, **states):
    root = tmp_path / "net"
    for name, state in dict(lo="unknown", **states).items():
        (root / name).mkdir(parents=True)
        (root / name / "operstate").write_text(state + "\n")
    return root


@pytest.mark.parametrize("env, expect", [
    ({}, True),  # Jazzy's default range is SUBNET
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "subnet"}, True),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, False),
    ({"ROS_AUTOMATIC_DISCOVERY_RANGE": "OFF"}, False),
    ({"ROS_LOCALHOST_ONLY": "1"}, False),
    ({"ROS_LOCALHOST_ONLY": "0", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT"}, True),
])
def test_networked(env, expect):
    assert networked(env) is expect


def test_warns_when_no_interface_runs(tmp_path):
    root = _sysfs(tmp_path, eth0="down", wlan0="dormant")
    msg = network_warning(NET, root)
    assert msg is not None and "eth0 down" in msg and "wlan0 dormant" in msg and "lo" not in msg.split(":")[0]
    assert "network-online.target" in msg
    only_lo = _sysfs(tmp_path / "b")
    assert "only loopback" in network_warning(NET, only_lo)


@pytest.mark.parametrize("state", ["up", "unknown"])  # unknown: tun and some Wi-Fi drivers (IFF_RUNNING all the same)
def test_quiet_when_an_interface_runs(tmp_path, state):
    root = _sysfs(tmp_path, eth0="down", tun0=state)
    assert running_interfaces(root) == {"eth0": "down", "tun0": state}
    assert network_warning(NET, root) is None


def test_quiet_where_it_does_not_apply(tmp_path):
    root = _sysfs(tmp_path, eth0="down")
    assert network_warning(dict(NET, RMW_IMPLEMENTATION="rmw_cyclonedds_cpp"), root) is None
    assert network_warning(dict(NET, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST"), root) is None
    assert network_warning(NET, tmp_path / "no_such_dir") is None  # not Linux: nothing to say
