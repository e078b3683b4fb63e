"""mirage_sim_node -> mirage_node -> probe, three real processes; and loopback-only traffic."""
import re
import shutil
import subprocess
import sys

import pytest
from rosprobe import ROOT, start_node, wait_for


def test_sim_node_feeds_the_node_bgr8_16uc1_and_labels(tmp_path, probe):
    """The simulator path with the less common encodings and the label mask provider."""
    from sensor_msgs.msg import Image

    ns = "/simchain"
    sim = start_node(tmp_path, ns, {"height": 64, "width": 112, "rate": 20.0, "num_poses": 12, "moving_object": True,
                                    "image_encoding": "bgr8", "depth_encoding": "16UC1", "plan_horizon": 4,
                                    "plan_period": 0.5}, module="mirage_ros.ros.sim_node")
    node = start_node(tmp_path, ns, {"masks.provider": "labels", "viz.stats_period": 0.1})
    probe.watch(ns)
    probe.listen(f"{ns}/image", Image, keep=3)
    try:
        st = probe.wait_stats(ns, lambda s: s.frames_observed >= 5 and s.num_points > 0, timeout=90,
                              what="the node observing simulated frames")
        assert st.inputs_rejected == 0, st.last_rejection
        img = wait_for(lambda: probe.msgs(f"{ns}/image"), 10, what="a simulated image")[-1]
        assert img.encoding == "bgr8" and (img.height, img.width) == (64, 112)
        # plans from the simulator are imagined in streaming mode
        wait_for(lambda: len(probe.msgs(f"{ns}/imagined/image")) >= 4, 30, what="frames imagined from the sim's plans")
        chunk = wait_for(lambda: probe.msgs(f"{ns}/imagined/chunk"), 10, what="an imagined chunk")[-1]
        assert chunk.backend == "readout" and len(chunk.poses) >= 1 and len(chunk.frames) == 0  # images: imagined/image
    finally:
        rc_node, rc_sim = node.stop(), sim.stop()
    assert rc_node == 0 and rc_sim == 0, node.log()[-2000:] + sim.log()[-2000:]
    assert "synthetic room scene" in sim.log()


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_traffic_stays_on_loopback(tmp_path, probe):
    """Every datagram a ROS process sends (discovery and data) goes to 127.0.0.1."""
    from std_msgs.msg import String

    ns = "/lo_check"
    probe.listen(f"{ns}/chatter", String)
    code = (
        "import time, rclpy\n"
        "from std_msgs.msg import String\n"
        "rclpy.init(); n = rclpy.create_node('lo_talker')\n"
        f"p = n.create_publisher(String, '{ns}/chatter', 10)\n"
        "t0 = time.time()\n"
        "while time.time() - t0 < 4:\n"
        "    p.publish(String(data='hi')); rclpy.spin_once(n, timeout_sec=0.05)\n"
        "n.destroy_node(); rclpy.shutdown()\n"
    )
    trace = tmp_path / "strace.txt"
    out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=sendto,sendmsg,sendmmsg,connect", "-o", str(trace),
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    if out.returncode != 0 and "ptrace" in (out.stderr or ""):
        pytest.skip(f"strace cannot trace here: {out.stderr.strip()[:200]}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert probe.msgs(f"{ns}/chatter"), "the probe heard nothing: the traced talker did not really talk"
    text = trace.read_text()
    addrs = re.findall(r'sin_addr=inet_addr\("([0-9.]+)"\)', text)
    addrs += re.findall(r'sin6_addr=inet_pton\(AF_INET6, "([^"]+)"\)', text)
    assert addrs, "no IP traffic seen in the trace"
    bad = sorted({a for a in addrs if a != "127.0.0.1"})
    assert not bad, f"datagrams to non-loopback addresses: {bad}"
