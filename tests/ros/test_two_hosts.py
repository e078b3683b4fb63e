"""A robot and a networked GPU host, built as two Linux network namespaces (netns) on this machine.

``mirage_ros.bench.network.TwoHosts`` makes ``mirage-robot-<tag>`` (10.77.0.1/24) and
``mirage-gpu-host-<tag>`` (10.77.0.2/24), joined by one veth pair rate-limited with ``tc tbf``
(50 Mbit/s each way). The robot side runs mirage_sim_node and a planner probe (the shared rclpy
probe, in its own process), the GPU side mirage_node; DDS discovery crosses the link through
ROS_STATIC_PEERS with ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET (and, in one test, a Fast DDS discovery
server), with config/fastdds_two_hosts.xml (UDP only). What crossed the link is checked against the
kernel's counters of the veth and the tbf qdisc, not against DDS's own word; no wall-clock limits.
Every namespace is removed at the end, also when a test fails (the fixtures' finalizers).
Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
from rosprobe import ROOT

from mirage_ros.bench import network as net

WHY = net.netns_unavailable()
needs_netns = pytest.mark.skipif(WHY is not None, reason=f"cannot build two hosts here: {WHY}")
RAW_FRAME = 256 * 448 * 3  # bytes of one rgb8 imagined frame
FRAMES = 18


def _strict(text):
    def bad(name):
        raise ValueError(f"non-finite number {name} in the JSON")
    return json.loads(text, parse_constant=bad)


def test_unavailable_says_why(monkeypatch):
    """The skip reason names what is missing (checked without making anything)."""
    monkeypatch.setattr(net.os, "geteuid", lambda: 1000)
    assert "root" in net.netns_unavailable()
    monkeypatch.setattr(net.os, "geteuid", lambda: 0)
    monkeypatch.setattr(net.shutil, "which", lambda name: None)
    assert "`ip`" in net.netns_unavailable()


def _hosts():
    h = net.TwoHosts(50)
    try:
        h.up()
        yield h
    finally:
        problems = h.down()
        assert problems == [] and not h.exists(), f"namespaces left behind: {problems}"


@pytest.fixture
def hosts():
    yield from _hosts()


@needs_netns
def test_a_failed_build_removes_what_it_made(monkeypatch):
    """A step of up() failing after both namespaces and the veth exist (here: tc) leaves nothing."""
    real = net._sh

    def failing_tc(cmd, *a, **kw):
        if "tc" in cmd:
            raise RuntimeError("tc: refused (injected)")
        return real(cmd, *a, **kw)

    monkeypatch.setattr(net, "_sh", failing_tc)
    h = net.TwoHosts(50)
    with pytest.raises(RuntimeError, match="injected"):
        h.up()
    monkeypatch.setattr(net, "_sh", real)
    assert not h.exists()
    assert h.dev["robot"] not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


@needs_netns
def test_the_link(hosts):
    """Both namespaces have their address on their end of the veth, a 50 Mbit/s tbf on it, the
    caller's namespace has neither end, and a UDP datagram crosses (counted by the kernel)."""
    have = net.TwoHosts.namespaces()
    assert hosts.ns["robot"] in have and hosts.ns["gpu"] in have
    for side, ip in (("robot", "10.77.0.1"), ("gpu", "10.77.0.2")):
        out = subprocess.run(["ip", "-n", hosts.ns[side], "-j", "addr", "show", "dev", hosts.dev[side]],
                             capture_output=True, text=True, check=True)
        addrs = [a["local"] for a in json.loads(out.stdout)[0]["addr_info"] if a["family"] == "inet"]
        assert addrs == [ip]
        q = hosts.qdisc(side)
        assert q["kind"] == "tbf" and q["rate_bytes_s"] == 50_000_000 // 8
    root_links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    assert all(link["ifname"] not in hosts.dev.values() for link in json.loads(root_links))

    before = hosts.counters("robot")
    recv = subprocess.Popen(hosts.exec_prefix("gpu") + [sys.executable, "-c",
                            "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.77.0.2', "
                            "47123));"
                            "s.settimeout(20); print(len(s.recvfrom(65535)[0]))"], stdout=subprocess.PIPE, text=True)
    send = ("import socket, time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(40):\n    s.sendto(b'x' * 1000, ('10.77.0.2', 47123)); time.sleep(0.1)")
    try:
        sender = subprocess.Popen(hosts.exec_prefix("robot") + [sys.executable, "-c", send])
        assert recv.communicate(timeout=30)[0].strip() == "1000"
    finally:
        for p in (recv, sender):
            p.kill()
            p.wait()
    after = hosts.counters("robot")
    assert after["tx_bytes"] - before["tx_bytes"] >= 1000 + 28  # payload + UDP/IP headers


GID_SCRIPT = """
import sys
import rclpy
from std_msgs.msg import String
rclpy.init()
n = rclpy.create_node("host_id_check")
topic = "host_id_check_" + sys.argv[1]  # one topic per side: the other side's publisher may be discovered already
n.create_publisher(String, topic, 1)
(info,) = n.get_publishers_info_by_topic(topic)
print(bytes(info.endpoint_gid).hex())
"""


@needs_netns
def test_participants_started_at_once_see_two_hosts(hosts):
    """A DDS participant started the moment ``up()`` returns, one in each namespace, gets a
    host id (GUID prefix bytes 2-3, hashed from the running interfaces' addresses) of its own,
    not Fast DDS's fallback 7f01 for "no interface running": such a participant is never
    matched from the other host (CI: "no memory/stats reached the robot"). Read from rclpy's
    own endpoint gid: fails (3 of 3 here) if up() returns before both ends run."""
    env = dict(os.environ, **net._env(hosts, "robot", "static_peers", 7))
    procs = {side: subprocess.Popen(hosts.exec_prefix(side) + [sys.executable, "-c", GID_SCRIPT, side], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for side in ("robot", "gpu")}
    gids = {}
    for side, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        gids[side] = bytes.fromhex(out.strip().splitlines()[-1])
    host_ids = {side: g[2:4].hex() for side, g in gids.items()}
    assert all(g[:2] == bytes([0x01, 0x0F]) for g in gids.values()), gids  # eProsima's vendor id: Fast DDS made them
    assert "7f01" not in host_ids.values(), host_ids
    assert host_ids["robot"] != host_ids["gpu"], host_ids


@needs_netns
def test_the_node_would_warn_before_the_link_runs(hosts):
    """mirage_ros.ros.dds.network_warning, run inside the GPU namespace: a warning naming the
    veth while its end is down, none once it runs (the kernel's own operstate, not a fake tree)."""
    code = "from mirage_ros.ros.dds import network_warning; print(network_warning() or 'OK')"
    env = dict(os.environ, **net._env(hosts, "gpu", "static_peers", 7))

    def ask():
        return subprocess.run(hosts.exec_prefix("gpu") + [sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True, cwd=str(ROOT)).stdout.strip()

    assert ask() == "OK"
    subprocess.run(["ip", "-n", hosts.ns["gpu"], "link", "set", hosts.dev["gpu"], "down"], check=True)
    try:
        msg = ask()
        assert msg.startswith("no network interface is running") and f"{hosts.dev['gpu']} down" in msg, msg
    finally:
        subprocess.run(["ip", "-n", hosts.ns["gpu"], "link", "set", hosts.dev["gpu"], "up"], check=True)
    hosts.wait_running()
    assert ask() == "OK"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """`mirage bench network` on small settings, raw then compressed over the same two hosts: the
    figures it writes are what the tests below check (against the kernel's counters it read)."""
    path = tmp_path_factory.mktemp("two_hosts") / "two_hosts.json"
    out = subprocess.run([sys.executable, "-m", "mirage_ros", "bench", "network", "--json", str(path), "--goals", "1",
                          "--frames", str(FRAMES), "--transports", "raw,compressed", "--sensor-window", "3",
                          "--cloud-window", "2", "--sim-poses", "3", "--timeout", "240"],
                         capture_output=True, text=True, timeout=1500, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return _strict(path.read_text()), path


@pytest.fixture(scope="module")
def measured(bench):
    return bench[0]["scenarios"]


@needs_netns
def test_sensors_cross_to_the_gpu_host(measured):
    """The node on the GPU host completed sets from the robot's simulator, and the veth carried
    at least their payload (so they went over the link, not through shared memory)."""
    s = measured["raw"]["sensors"]
    assert s["sets_completed"] >= 1 and s["frames_observed"] >= 1
    # the counters and the node's stats are read a moment apart: a set sent just before the window
    # can complete inside it, so one set's bytes may fall outside the window
    assert s["robot_to_gpu_bytes"] >= (s["sets_completed"] - 1) * s["payload_bytes_per_set"]
    assert measured["raw"]["discovery"] == "static_peers"


@needs_netns
def test_imagined_frames_cross_to_the_robot(measured):
    """A planner goal on the robot is answered by the GPU host with every frame, in stamp order,
    and the kernel counted at least those frames' bytes arriving on the robot's end of the veth
    and leaving through the GPU host's tbf."""
    r = measured["raw"]
    (g,) = r["goals"]
    assert g["status"] == 0 and g["frames_imagined"] == FRAMES and g["frames_received"] == FRAMES
    assert g["stamps_in_order"] and g["formats"] == ["rgb8"]
    assert g["payload_bytes"] == FRAMES * RAW_FRAME
    assert g["gpu_to_robot_bytes"] >= g["payload_bytes"]
    assert r["qdisc"]["gpu"]["bytes_sent_during"] >= g["payload_bytes"]
    assert r["qdisc"]["gpu"]["kind"] == "tbf"
    assert g["first_frame_ms"] > 0 and g["last_frame_ms"] >= g["first_frame_ms"]
    assert r["exit_codes"] == {"mirage_node": 0, "mirage_sim_node": 0}  # both stop cleanly on SIGINT
    c = r["cloud"]  # a robot-side viewer of memory/points gets the latched cloud across the link
    assert c["clouds"] >= 1 and c["points_last"] > 0 and c["gpu_to_robot_bytes"] >= c["payload_bytes"] > 0


@needs_netns
def test_compressed_images_are_smaller_on_the_wire(measured):
    if "compressed" not in measured:
        pytest.skip("this build of mirage_node has no compressed image parameters")
    raw, cmp = measured["raw"], measured["compressed"]
    (g,) = cmp["goals"]
    assert g["status"] == 0 and g["frames_received"] == FRAMES and g["stamps_in_order"]
    assert g["formats"] == ["rgb8; jpeg compressed bgr8"]
    assert 0 < g["payload_bytes"] < raw["goals"][0]["payload_bytes"]
    assert g["payload_bytes"] <= g["gpu_to_robot_bytes"] < raw["goals"][0]["gpu_to_robot_bytes"]  # kernel counters
    s = cmp["sensors"]  # image/compressed + depth/compressedDepth from the simulator
    assert s["sets_completed"] >= 1
    # the counters and the node's stats are read a moment apart: a set sent just before the window
    # can complete inside it, so one set's bytes may fall outside the window
    assert s["robot_to_gpu_bytes"] >= (s["sets_completed"] - 1) * s["payload_bytes_per_set"]
    assert s["wire_bytes_per_set"] < raw["sensors"]["wire_bytes_per_set"]


@needs_netns
def test_discovery_server_across_the_link(hosts, tmp_path):
    """The other ROS way: a Fast DDS discovery server on the GPU host, ROS_DISCOVERY_SERVER on both."""
    try:
        net._discovery_server()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    # This once failed in about one run in three ("messages_received 0": the simulator never matched
    # the node) and the test restarted once; the cause was the processes starting before the veth
    # ran (TwoHosts.wait_running): without that wait 0 of 6 runs passed here, with it 12 of 12.
    r = net.run_scenario(hosts, tmp_path, "raw", discovery="server", goals=1, frames=9, warmup=0,
                         sim_rate=2.0, sim_poses=2, sensor_window=1.0, cloud_window=0, timeout=240)
    (g,) = r["goals"]
    assert r["discovery"] == "server"
    assert g["status"] == 0 and g["frames_received"] == 9 and g["gpu_to_robot_bytes"] >= 9 * RAW_FRAME


@needs_netns
def test_bench_network_writes_consistent_strict_json(bench):
    r, path = bench
    assert r["cleanup"] == {"removed": True, "problems": []}
    assert not set(r["link"]["namespaces"].values()) & set(net.TwoHosts.namespaces())  # nothing left behind
    assert r["link"]["rate_mbit"] == 50 and r["profile"] == "config/fastdds_two_hosts.xml"
    for sc in r["scenarios"].values():
        rows, s = sc["goals"], sc["summary"]
        assert len(rows) == 1 == s["goals"] and s["all_succeeded"] and s["frames_delivered_fraction"] == 1.0
        assert s["first_frame_ms_median"] == statistics.median(x["first_frame_ms"] for x in rows)
        assert math.isclose(s["wire_bytes_per_frame"], sum(x["gpu_to_robot_bytes"] for x in rows) / FRAMES)
        assert math.isclose(s["payload_bytes_per_frame"], sum(x["payload_bytes"] for x in rows) / FRAMES)
        assert s["payload_bytes_per_frame"] <= s["wire_bytes_per_frame"]
    assert r["scenarios"]["raw"]["summary"]["payload_bytes_per_frame"] == RAW_FRAME
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
