"""What DDS will make of this process's network, checked before it matters.

Fast DDS (ROS 2's default RMW) reads the running network interfaces once, when a process creates
its first participant: their addresses become the locators it announces and the 16-bit host id
in its GUID. A process started before its network runs (a robot's boot, a container whose link
comes up late) finds none, takes the fallback host id 7f01, and is never matched from another
host for its whole life, even after the link comes up (measured here: two network namespaces,
the GPU end brought up 20 s after the node started: no message crossed in 60 s;
eProsima/Fast-DDS#6524). ``network_warning`` says so at start-up, so the fix (start after the
network, or restart) is one log line away instead of a silent robot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["networked", "running_interfaces", "network_warning"]

FAST_DDS = ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")


def networked(env: Mapping[str, str]) -> bool:
    """True when ROS discovery may leave this host (ROS 2 Jazzy's variables; SUBNET is the default)."""
    if env.get("ROS_LOCALHOST_ONLY", "0").strip() == "1":
        return False
    return env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET").strip().upper() not in ("LOCALHOST", "OFF")


def running_interfaces(sys_class_net: str | os.PathLike = "/sys/class/net") -> Optional[dict]:
    """Non-loopback interfaces and their operstate; None where the kernel does not tell (not Linux)."""
    root = Path(sys_class_net)
    if not root.is_dir():
        return None
    out = {}
    for dev in sorted(root.iterdir()):
        if dev.name == "lo":
            continue
        try:
            out[dev.name] = (dev / "operstate").read_text().strip()
        except OSError:
            continue
    return out


def network_warning(env: Mapping[str, str] = os.environ,
                    sys_class_net: str | os.PathLike = "/sys/class/net") -> Optional[str]:
    """A warning when Fast DDS, networked, starts with no running interface besides loopback; else None.

    "Running" is what Fast DDS asks for (IFF_RUNNING): operstate ``up``, or ``unknown`` for
    drivers that do not report one (tun, some Wi-Fi)."""
    if env.get("RMW_IMPLEMENTATION", "").strip() not in FAST_DDS or not networked(env):
        return None
    ifaces = running_interfaces(sys_class_net)
    if ifaces is None or any(state in ("up", "unknown") for state in ifaces.values()):
        return None
    seen = ", ".join(f"{name} {state}" for name, state in ifaces.items()) or "only loopback"
    return (f"no network interface is running ({seen}): Fast DDS fixes this process's addresses now, so other hosts "
            "will never reach this node, even after the network comes up. Start it after the network "
            "(systemd: After=network-online.target) or restart it; for one host only, set "
            "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST")
