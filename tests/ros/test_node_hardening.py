"""mirage_node under adversarial use (issue 8), as its own process, driven by real rclpy peers.

Each test states the defect it guards. No wall-clock limits are asserted: conditions are waited
for with generous timeouts, so a loaded 2-core machine only makes them slower.
"""
import time

import numpy as np
import pytest

from rosprobe import start_node, wait_for

H, W = 64, 112


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(12, H, W)


def _observe(probe, ns, cam, frame, stamp, pred, timeout=30.0, what="the set to be observed"):
    """Publish one set (best effort: again, with the same stamp, until ``pred(stats)`` holds)."""
    t0 = time.monotonic()
    while True:
        probe.publish_set(ns, cam, frame, stamp)
        try:
            return probe.wait_stats(ns, pred, timeout=0.5)
        except TimeoutError:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"timed out waiting for {what}") from None


# -- defect 3: use_sim_time, the simulator restarts (/clock jumps back) -----------------------------

def test_sim_time_restart_keeps_updating_the_memory(tmp_path, probe, scene):
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    from mirage_ros.ros import convert as cv

    ns = "/simtime"
    proc = start_node(tmp_path, ns, {"use_sim_time": True, "viz.stats_period": 0.1})
    probe.watch(ns)
    clock = probe.node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
    cams, frames = scene
    sim_now = [100 * 10**9]
    stop = [False]

    def tick():  # a simulator's /clock at 50 Hz
        while not stop[0]:
            clock.publish(Clock(clock=cv.time_msg(probe.types, sim_now[0])))
            time.sleep(0.02)

    import threading

    th = threading.Thread(target=tick, daemon=True)
    th.start()
    try:
        probe.stats(ns, timeout=90)
        st = _observe(probe, ns, cams[0], frames[0], sim_now[0], lambda s: s.frames_observed >= 1)
        _observe(probe, ns, cams[3], frames[3], sim_now[0] + 10**8, lambda s: s.frames_observed >= 2)
        # the stats are stamped with the simulator's time
        wait_for(lambda: cv.stamp_to_ns(probe.stats(ns).header.stamp) >= 100 * 10**9, 30, what="sim-time stats")
        n = probe.stats(ns).num_points
        sim_now[0] = 2 * 10**9  # the simulator restarts
        wait_for(lambda: cv.stamp_to_ns(probe.stats(ns).header.stamp) < 100 * 10**9, 30,
                 what="stats stamped with the restarted clock")
        after = _observe(probe, ns, cams[7], frames[7], sim_now[0], lambda s: s.frames_observed >= 3,
                         what="an observation after the clock jumped back")
        assert after.num_points > n
        _observe(probe, ns, cams[9], frames[9], sim_now[0] + 10**8, lambda s: s.frames_observed >= 4,
                 what="later observations too")
        wait_for(lambda: "time jumped back" in proc.log(), 10, what="the jump to be logged")
        assert proc.log().count("time jumped back") == 1
        assert proc.alive()
    finally:
        stop[0] = True
        th.join(2)
        probe.node.destroy_publisher(clock)
        rc = proc.stop()
    assert rc == 0, proc.log()[-2000:]
