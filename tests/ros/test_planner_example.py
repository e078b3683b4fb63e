"""Planning by imagination, four real processes: mirage_sim_node -> mirage_node <- mirage_planner_example,
and this probe giving the goal image.

The simulator walks its loop once and stops, so the robot's pose is known (the loop's last pose);
the memory has seen the room all around. The goal image is the simulator's own render of the view at
the end of ONE of the planner's documented candidates (``planning.fan_paths`` from that pose): the
planner must publish exactly that path. Then the same candidates with the goal image, sent directly:
the result's goal fields say which one ends at the goal view, and the SCORES feedback says it first,
from the readout. Last, rule explore: the planner takes the candidate with the most novelty.
"""
import threading
import time

import numpy as np
from rosprobe import start_node, wait_for

from mirage_ros import sim
from mirage_ros.geometry import invert_rigid
from mirage_ros.planning import GOAL_IMAGINED, GOAL_READOUT, fan_paths, scene_free_space
from mirage_ros.ros.probe import action_client, get_result

H, W, N_POSES, K, FRAMES = 128, 224, 24, 4, 4
TARGET = 0  # the candidate whose end view is the goal: the arc turning -90 degrees


def candidates():
    """The planner's candidates from the loop's last pose, as the module documents them, and the goal."""
    scene = sim.make_scene("room", 0)
    poses = sim.scene_trajectory(scene, "loop", N_POSES)
    cam = sim.default_camera(H, W, 70.0)
    start = invert_rigid(poses[-1]).numpy()
    paths, _ = fan_paths(start, K, FRAMES, 1.0, np.radians(90), np.radians(120), scene_free_space(scene))
    goal_cam = cam.with_pose(invert_rigid(paths[TARGET][-1]))
    return scene, cam, paths, sim.render(scene, goal_cam).rgb


def matrices(path_msg):
    from mirage_ros.ros import convert as cv

    return cv.path_to_matrices(path_msg, "path")[1]


def test_planner_example_chooses_the_path_to_the_goal_view(tmp_path, probe):
    from nav_msgs.msg import Path
    from sensor_msgs.msg import CameraInfo, Image

    from mirage_ros.action import ImagineCandidates

    ns = "/planex"
    scene, cam, paths, goal = candidates()
    node = start_node(tmp_path, ns, {"viz.stats_period": 0.2})
    planner = start_node(tmp_path, ns, {"rule": "goal", "k": K, "frames": FRAMES, "period": 0.0, "sim_scene": "room",
                                        "sim_seed": 0}, module="mirage_ros.ros.planner_example")
    probe.watch(ns)
    probe.listen(f"{ns}/plan/chosen", Path)
    sim_node = None
    try:
        probe.stats(ns, timeout=90)  # the node is up before the simulator starts walking
        wait_for(lambda: "planner ready" in planner.log(), 60, what="the planner")
        sim_node = start_node(tmp_path, ns, {"height": H, "width": W, "rate": 5.0, "num_poses": N_POSES, "loop": False},
                              module="mirage_ros.ros.sim_node")
        st = probe.wait_stats(ns, lambda s: s.frames_observed >= N_POSES // 2, timeout=120, what="the loop observed")
        time.sleep(N_POSES / 5.0 + 1.0)  # the walk is over: the newest pose is the loop's last
        st = probe.stats(ns, fresh_after=time.perf_counter())
        assert st.inputs_rejected == 0, st.last_rejection
        info_pub = probe.pub(f"{ns}/goal/camera_info", CameraInfo)
        img_pub = probe.pub(f"{ns}/goal/image", Image)
        probe.wait_matched(info_pub)
        probe.wait_matched(img_pub)
        T = probe.types
        info_pub.publish(probe.cv.camera_info_msg(T, cam.K.numpy(), H, W, 0, "camera_optical_frame"))
        time.sleep(0.5)
        img_pub.publish(probe.cv.image_msg(T, goal, 0, "camera_optical_frame"))
        chosen = wait_for(lambda: probe.msgs(f"{ns}/plan/chosen"), 120, what="a chosen path")[0]
        assert chosen.header.frame_id == "map" and len(chosen.poses) == FRAMES
        ends = [np.linalg.norm(matrices(chosen)[-1] - p[-1]) for p in paths]
        assert int(np.argmin(ends)) == TARGET and ends[TARGET] < 1e-4, (ends, planner.log()[-1500:])
        assert np.allclose(matrices(chosen), paths[TARGET], atol=1e-4)
        assert f"chose candidate {TARGET} of {K}" in planner.log()

        # the same candidates with the goal image, straight to the action: the goal fields
        ac = action_client(probe.node, ImagineCandidates, f"{ns}/imagine_candidates")
        wait_for(ac.server_is_ready, 30, what="the imagine_candidates server")
        fbs, lock = [], threading.Lock()

        def on_fb(f):
            with lock:
                fbs.append(f.feedback)

        goal_msg = ImagineCandidates.Goal(
            candidates=[probe.cv.path_msg(T, p, [10**9 * (i + 1) for i in range(FRAMES)], "map") for p in paths],
            goal_image=probe.cv.image_msg(T, goal, 0, "cam"),
            goal_camera_info=probe.cv.camera_info_msg(T, cam.K.numpy(), H, W, 0, "cam"))
        fut = ac.send_goal_async(goal_msg, feedback_callback=on_fb)
        wait_for(fut.done, 30, what="the goal response")
        res = get_result(fut.result(), 60).result().result
        assert res.status == res.STATUS_SUCCEEDED, res.message
        sims = [c.goal_similarity for c in res.candidates]
        assert int(np.argmax(sims)) == TARGET and f"most similar candidate {TARGET}" in res.message
        best = res.candidates[TARGET]
        assert best.goal_source == GOAL_IMAGINED and best.goal_best_frame == FRAMES - 1
        assert len(best.goal_latent_similarity) == len(best.goal_pixel_similarity) == FRAMES
        assert best.goal_similarity == max(best.goal_latent_similarity)  # latent: the default metric
        with lock:
            scores = [f for f in fbs if f.kind == f.KIND_SCORES]
        assert scores and [s.goal_source for s in scores[0].scores] == [GOAL_READOUT] * K
        assert int(np.argmax([s.goal_similarity for s in scores[0].scores])) == TARGET

        # rule explore: every period, the candidate looking at the most unseen space (scores only)
        assert planner.stop() == 0, planner.log()[-2000:]
        probe.clear(f"{ns}/plan/chosen")
        (tmp_path / "explore").mkdir()
        planner = start_node(tmp_path / "explore", ns, {"rule": "explore", "k": K, "frames": FRAMES, "period": 1.0,
                                                        "sim_scene": "room"}, module="mirage_ros.ros.planner_example")
        from geometry_msgs.msg import PoseStamped

        pose_pub = probe.pub(f"{ns}/pose", PoseStamped)  # the walk is over: tell the new planner where the robot is
        probe.wait_matched(pose_pub, 2)  # the planner and the node
        last = invert_rigid(sim.scene_trajectory(scene, "loop", N_POSES)[-1]).numpy()
        pose_pub.publish(probe.cv.pose_stamped_msg(T, last, 10**9, "map"))
        chosen = wait_for(lambda: probe.msgs(f"{ns}/plan/chosen"), 60, what="an explored path")[0]
        novelty = [c.novelty for c in res.candidates]  # the same candidates, the same memory
        best = paths[int(np.argmax(novelty))]
        assert np.allclose(matrices(chosen), best, atol=1e-4), (novelty, planner.log()[-1000:])
        assert "novelty" in planner.log()
    finally:
        rcs = [p.stop() for p in (planner, node) + ((sim_node,) if sim_node else ())]
    assert rcs == [0] * len(rcs), planner.log()[-2000:] + node.log()[-2000:]
