"""`mirage bench node` on small settings: it runs end to end and writes a JSON whose numbers are
finite and consistent with each other and with what was asked. No wall-clock thresholds: how
fast this machine is decides nothing here (the `targets` flags only have to match the numbers)."""
import json
import math
import statistics
import subprocess
import sys

from rosprobe import ROOT

GOALS, RATE, DURATION, POINTS, REPEATS = 3, 5, 1, 20000, 1


def _strict(text):
    def bad(name):
        raise ValueError(f"non-finite number {name} in the bench JSON")
    return json.loads(text, parse_constant=bad)


def test_bench_node_small(tmp_path):
    path = tmp_path / "bench_node.json"
    out = subprocess.run([sys.executable, "-m", "mirage_ros", "bench", "node", "--json", str(path), "--goals",
                          str(GOALS),
                          "--rates", str(RATE), "--duration", str(DURATION), "--points", str(POINTS),
                          "--repeats", str(REPEATS)],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    r = _strict(path.read_text())  # strict JSON: no NaN / Infinity

    # latency: every timed goal succeeded and delivered its 9 frames (the bench waits for all 9)
    lat = r["latency"]
    assert lat["goals"] == GOALS and lat["frames"] == 9 and lat["all_succeeded"] is True
    s = lat["samples_ms"]
    assert len(s) == GOALS and all(math.isfinite(x) and x > 0 for x in s)
    assert lat["median_ms"] == statistics.median(s) and lat["min_ms"] == min(s) and lat["max_ms"] == max(s)
    assert lat["min_ms"] <= lat["p90_ms"] <= lat["max_ms"]
    # per goal the node's first frame comes no later than its whole goal, so the medians keep that order
    assert 0 < lat["node_side_median_ms"] <= lat["node_total_median_ms"]
    assert r["first_frame_latency_ms"] == lat["median_ms"]

    # input sweep: what was offered, and counts that cannot exceed each other
    (row,) = r["input"]["sweep"]
    assert row["rate_hz"] == RATE and row["sets_offered"] == RATE * DURATION and r["input"]["duration_s"] == DURATION
    assert 0 <= row["frames_observed"] <= row["sets_completed"] <= row["sets_offered"]
    assert row["fraction"] == row["sets_completed"] / row["sets_offered"]
    assert row["messages_received"] >= 4 * row["sets_completed"]  # a complete set is 4 messages
    assert r["input"]["bytes_per_set"] == 704 * 1280 * 3 + 704 * 1280 * 4  # rgb8 + 32FC1
    ok = row["fraction"] >= 0.95 and row["offered_hz"] >= 0.9 * row["rate_hz"]
    assert r["sustained_input_hz"] == r["input"]["sustained_hz"] == (row["offered_hz"] if ok else 0.0)

    # point cloud: the size asked for; each sample's total is its parts; delivery follows the publish call
    pc = r["pointcloud"]
    assert pc["points"] == POINTS and pc["bytes"] == 16 * POINTS and len(pc["samples"]) == REPEATS
    for smp in pc["samples"]:
        assert all(math.isfinite(v) and v >= 0 for v in smp.values())
        assert math.isclose(smp["total_ms"], smp["structured_ms"] + smp["message_ms"] + smp["publish_ms"], rel_tol=1e-9,
                            abs_tol=1e-9)
        assert smp["delivered_ms"] >= smp["structured_ms"] + smp["message_ms"]  # received after publish began
    assert r["pointcloud_1m_ms"] == pc["median_total_ms"]

    # the target flags say what the numbers say (whatever this machine measured)
    assert r["targets"] == {"first_frame_latency_ms<=50": r["first_frame_latency_ms"] <= 50,
                            "pointcloud_1m_ms<=100": r["pointcloud_1m_ms"] <= 100}
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
