"""`mirage bench node` on small settings: it runs end to end and writes the documented keys."""
import json
import subprocess
import sys

from rosprobe import ROOT


def test_bench_node_small(tmp_path):
    path = tmp_path / "bench_node.json"
    out = subprocess.run([sys.executable, "-m", "mirage_ros", "bench", "node", "--json", str(path), "--goals", "3",
                          "--rates", "5", "--duration", "1", "--points", "20000", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    r = json.loads(path.read_text())
    for key in ("first_frame_latency_ms", "sustained_input_hz", "pointcloud_1m_ms"):
        assert isinstance(r[key], float) and r[key] >= 0, key
    assert r["latency"]["goals"] == 3 and r["latency"]["all_succeeded"]
    assert r["input"]["sweep"][0]["sets_offered"] == 5 and r["pointcloud"]["points"] == 20000
    assert path.with_suffix(".png").stat().st_size > 0
