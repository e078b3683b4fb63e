"""mirage_node with backend spatia and the toy weights in Spatia's key layout (tests/fixtures/spatia_toy): a
real rclpy peer observes one frame and gets the imagined frames of three Spatia rounds; a Spatia file given
to the mirage backend keeps the node unconfigured, with the reason in its log."""
from rosprobe import ROOT, start_node

FX = ROOT / "tests" / "fixtures" / "spatia_toy"
TOY = {"backend": "spatia", "weights_dir": str(FX / "wan"), "mirage.side_branch": str(FX / "spatia"),
       "spatia.resolution": [64, 96], "spatia.rounds": [13, 9, 5], "steps": 1, "viz.stats_period": 0.2}


def test_spatia_backend_through_the_node(tmp_path, probe, room_loop):
    ns = "/spatia"
    proc = start_node(tmp_path, ns, TOY)
    probe.watch(ns)
    try:
        st = probe.stats(ns, timeout=120)
        assert st.backend == "spatia" and st.generative and "layout spatia" in st.description, st.description
        cams, frames = room_loop(20, 64, 128)
        for k in range(50):
            probe.publish_set(ns, cams[0], frames[0], 10**9 + k)
            try:
                probe.wait_stats(ns, lambda s: s.num_points > 0, timeout=0.5)
                break
            except TimeoutError:
                continue
        path = probe.path(cams[1:20], [2 * 10**9 + i * 10**8 for i in range(19)])
        out = probe.imagine(ns, path, expect_frames=19, timeout=600)
        res = out["result"]
        assert res.status == 0 and res.generative and res.backend == "spatia", res.message
        imgs = [probe.cv.image_to_rgb(m, "image") for m in out["images"]]
        assert len(imgs) == 19 and all(i.shape == (64, 128, 3) for i in imgs)
        # rounds of 13, 9, 9 frames
        assert len(out["chunks"]) == 3 and "references" in list(out["chunks"][1].timing_names)
    finally:
        rc = proc.stop()
        print(proc.log()[-3000:])
    assert rc == 0


def test_spatia_file_given_to_the_mirage_backend_is_refused(tmp_path, probe):
    ns = "/wrong_layout"
    proc = start_node(tmp_path, ns, {"backend": "mirage", "weights_dir": str(FX / "wan"),
                                     "mirage.side_branch": str(FX / "spatia" / "vace.safetensors")})
    probe.watch(ns)
    try:
        import pytest

        with pytest.raises(TimeoutError):
            probe.stats(ns, timeout=30)
        log = proc.log()
        assert "configure failed" in log, log[-2000:]
    finally:
        proc.stop()
