"""mirage_node with its default backend: the shipped world model. A real rclpy peer observes one
frame, asks for a trajectory that turns away from it, and gets generated frames (not the black
of a readout where nothing was seen); a node pointed at corrupt weights refuses to start."""
import shutil

import numpy as np
import pytest
from rosprobe import ROOT

from mirage_ros.ros.probe import start_node as raw_start_node

H, W = 128, 224


def _start(tmp, ns, params):
    return raw_start_node(tmp, ns, params, cwd=str(ROOT))  # no test default: the node's own backend


def test_default_backend_is_the_shipped_model_and_it_imagines_unseen_space(tmp_path, probe, room_loop):
    ns = "/shipped"
    proc = _start(tmp_path, ns, {"viz.stats_period": 0.2})
    probe.watch(ns)
    try:
        st = probe.stats(ns, timeout=120)
        assert st.backend == "shipped" and st.generative and "mirage_small" in st.description, st.description
        cams, frames = room_loop(24, H, W)
        for k in range(50):
            probe.publish_set(ns, cams[0], frames[0], 10**9 + k)
            try:
                probe.wait_stats(ns, lambda s: s.num_points > 0, timeout=0.5)
                break
            except TimeoutError:
                continue
        path = probe.path(cams[1:17], [2 * 10**9 + i * 10**8 for i in range(16)])
        out = probe.imagine(ns, path, expect_frames=16, timeout=600)
        res = out["result"]
        assert res.status == 0 and res.generative and res.backend == "shipped", res.message
        imgs = [probe.cv.image_to_rgb(m, "image") for m in out["images"]]
        assert len(imgs) == 16 and all(i.shape == (H, W, 3) for i in imgs)
        # frames far along the loop look at walls the first frame never saw: a readout would be
        # black there (coverage well below 1), the model paints them
        coverage = [c for ch in out["chunks"] for c in ch.coverage]
        assert min(coverage) < 0.6, coverage
        late = imgs[int(np.argmin(coverage))].astype(np.float64)
        assert late.mean() > 20 and late.std() > 5
    finally:
        rc = proc.stop()
        print(proc.log()[-3000:])
    assert rc == 0


def test_corrupt_shipped_weights_refuse_to_start_no_fallback(tmp_path, probe):
    from mirage_ros.world_model.backend import SHIPPED_MODEL

    bad = tmp_path / "weights"
    shutil.copytree(SHIPPED_MODEL, bad)
    f = bad / "transformer" / "side_branch" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(b"not a safetensors file" * 10)
    ns = "/corrupt"
    proc = _start(tmp_path, ns, {"weights_dir": str(bad)})
    probe.watch(ns)
    try:
        with pytest.raises(TimeoutError):
            probe.stats(ns, timeout=30)  # never active: no stats, no readout fallback
        log = proc.log()
        assert "configure failed" in log and str(f.parent) in log, log[-2000:]
    finally:
        proc.stop()
