"""Planning with imagined views (mirage_ros.planning, mirage bench plan): paths, goal scores, picks.

Checked against hand-worked geometry (a quarter circle, a wall in front), an independent renderer
(the simulator seen by two cameras with different intrinsics, for the goal warp) and the memory's
own readout (a goal image the memory observed scores 1 at that pose).
"""
import json
import math

import numpy as np
import pytest
import torch

from mirage_ros import sim
from mirage_ros.geometry import Camera, invert_rigid
from mirage_ros.planning import scene_free_space, view_angle
from mirage_ros.planning.goal import GOAL_IMAGINED, GOAL_READOUT, CandidateGoalScores, GoalView, pick, warp_intrinsics
from mirage_ros.planning.paths import Primitive, camera_pose, fan, fan_paths, goto, heading_pitch, primitive_path

# -- paths --------------------------------------------------------------------------------------

def test_camera_pose_is_upright_and_round_trips_heading_and_pitch():
    T = camera_pose([1.0, 2.0, 1.5], math.radians(30), math.radians(-10))
    h, p = heading_pitch(T)
    assert h == pytest.approx(math.radians(30)) and p == pytest.approx(math.radians(-10))
    assert np.allclose(T[:3, 3], [1, 2, 1.5])
    assert abs(T[2, 0]) < 1e-12  # image x (right) is horizontal: no roll
    assert T[2, 1] < 0  # image y (down) points down in the world
    assert np.allclose(T[:3, 2], [math.cos(math.radians(30)) * math.cos(math.radians(10)),
                                  math.sin(math.radians(30)) * math.cos(math.radians(10)), -math.sin(math.radians(10))])


def test_arc_is_a_quarter_circle_and_straight_and_turn_are_what_they_say():
    start = camera_pose([0.0, 0.0, 1.5], 0.0, 0.0)
    arc = primitive_path(start, Primitive("arc", math.pi / 2, math.pi / 2), 6)  # radius 1, centre (0, 1)
    assert np.allclose(arc[-1][:3, 3], [1.0, 1.0, 1.5], atol=1e-12)
    assert heading_pitch(arc[-1])[0] == pytest.approx(math.pi / 2)
    assert np.allclose(np.linalg.norm(arc[:, :2, 3] - [0.0, 1.0], axis=1), 1.0)
    for i, T in enumerate(arc):  # the heading is the tangent of the circle at every pose
        a = (i + 1) / 6 * math.pi / 2
        assert heading_pitch(T)[0] == pytest.approx(a)
        assert np.allclose(T[:2, 3], [math.sin(a), 1 - math.cos(a)])
    straight = primitive_path(start, Primitive("straight", 1.0, 0.7), 4)  # a straight one ignores turn
    assert np.allclose(straight[:, :3, 3], [[0.25, 0, 1.5], [0.5, 0, 1.5], [0.75, 0, 1.5], [1.0, 0, 1.5]])
    turn = primitive_path(start, Primitive("turn", 3.0, -math.pi / 2), 2)  # a turn ignores length
    assert np.allclose(turn[:, :3, 3], [0, 0, 1.5]) and heading_pitch(turn[-1])[0] == pytest.approx(-math.pi / 2)
    with pytest.raises(ValueError, match="kind"):
        Primitive("hop", 1.0, 0.0)
    with pytest.raises(ValueError, match="length"):
        Primitive("arc", -1.0, 0.0)


def test_fan_is_the_documented_set():
    f8 = fan(8, 1.0, math.radians(90), math.radians(120))
    assert [p.kind for p in f8] == ["arc"] * 4 + ["turn"] * 4
    assert [round(math.degrees(p.turn)) for p in f8] == [-90, -30, 30, 90, -60, 60, -120, 120]
    assert [(p.kind, round(math.degrees(p.turn))) for p in fan(3)] == [("arc", -90), ("arc", 90), ("turn", 180)]
    assert [(p.kind, round(math.degrees(p.turn))) for p in fan(5)] == [("arc", -90), ("straight", 0), ("arc", 90),
                                                                     ("turn", -120), ("turn", 120)]
    assert [(p.kind, p.turn) for p in fan(1)] == [("straight", 0.0)]
    assert [(p.kind, round(math.degrees(p.turn))) for p in fan(2)] == [("straight", 0), ("turn", 180)]


def test_fan_paths_avoid_a_wall_by_shortening_then_turning_in_place():
    start = camera_pose([0.0, 0.0, 1.5], 0.0, 0.0)

    def wall(points):  # a wall at x = 0.6 in front of the robot
        return points[:, 0] < 0.6

    paths, used = fan_paths(start, 1, 4, length=1.0, is_free=wall)
    assert used[0] == Primitive("straight", 0.5, 0.0)  # 1 m collides, 0.5 m does not
    assert paths[0][-1][0, 3] == pytest.approx(0.5)
    paths, used = fan_paths(start, 1, 4, length=1.0, is_free=lambda p: p[:, 0] < 0.1)  # 0.5 and 0.25 collide too
    assert used[0].kind == "turn" and np.allclose(paths[0][:, :3, 3], [0, 0, 1.5])
    for p in fan_paths(start, 8, 5, is_free=wall)[0]:
        assert wall(p[:, :3, 3]).all()


def test_goto_ends_exactly_at_the_goal_and_leaves_the_start_out():
    a, b = camera_pose([0, 0, 1.5], 0.0, 0.0), camera_pose([1, 1, 1.5], math.radians(170), math.radians(-5))
    p = goto(a, b, 5)
    assert p.shape == (5, 4, 4) and np.array_equal(p[-1], b)
    assert np.allclose(p[1][:3, 3], [0.4, 0.4, 1.5])
    def rot(x, y):  # the rotation angle between two poses (slerp turns at a constant rate)
        return math.acos(min(1.0, (np.trace(x[:3, :3].T @ y[:3, :3]) - 1) / 2))

    assert rot(a, p[0]) == pytest.approx(rot(a, b) / 5, rel=1e-6)
    assert view_angle(a, b) == pytest.approx(math.acos(math.cos(math.radians(170)) * math.cos(math.radians(5))))


def test_scene_free_space_of_the_room():
    scene = sim.make_scene("room", 0)
    free = scene_free_space(scene, margin=0.3)
    furniture = [b for b in scene.boxes if not b.inside and b.lo[2].item() < 1.0][0]
    inside_box = ((furniture.lo + furniture.hi) / 2).numpy()
    inside_box[2] = 1.5
    pts = np.array([[0, 0, 1.5], [3.9, 0, 1.5], [10, 0, 1.5], inside_box])
    assert free(pts).tolist() == [True, False, False, False]  # centre; 0.1 m from the wall; outside; in a box


# -- goal scores --------------------------------------------------------------------------------

def test_warp_identity_and_a_wider_camera_seen_by_the_simulator():
    scene = sim.make_scene("room", 3)
    E = sim.scene_trajectory(scene, "loop", 12)[4]
    narrow, wide = Camera.from_fov(128, 224, 50.0, E), Camera.from_fov(128, 224, 80.0, E)
    a, b = sim.render(scene, narrow).rgb, sim.render(scene, wide).rgb
    img, valid = warp_intrinsics(a, narrow.K.numpy(), narrow.K.numpy(), 128, 224)
    assert valid.all() and np.array_equal(img, a)
    img, valid = warp_intrinsics(a, narrow.K.numpy(), wide.K.numpy(), 128, 224)
    # the narrow view covers the central tan(25)/tan(40) of the wide one: 0.556 of its width
    frac = math.tan(math.radians(25)) / math.tan(math.radians(40))
    cols = valid[64].nonzero()[0]
    assert abs((cols[-1] - cols[0] + 1) / 224 - frac) < 0.02
    err = np.abs(img[valid].astype(float) - b[valid].astype(float)).mean()
    assert err < 6.0, err  # the same surfaces (the narrow image is finer: only resampling differs)
    shifted = np.roll(b, 6, axis=1)
    assert np.abs(img[valid].astype(float) - shifted[valid].astype(float)).mean() > 2 * err


def test_goal_view_scores_identity_one_and_a_partial_readout_by_its_norm():
    from mirage_ros.world_model.backend import SHIPPED_MODEL
    from mirage_ros.world_model.codec import load_codec

    codec = load_codec(SHIPPED_MODEL / "codec")
    scene = sim.make_scene("room", 1)
    cams = [sim.default_camera(128, 224).with_pose(E) for E in sim.scene_trajectory(scene, "loop", 8)]
    frames = np.stack([sim.render(scene, c).rgb for c in cams])
    g = GoalView(frames[2], codec, (128, 224), cams[2].K.numpy())
    s = g.score_frames(frames)
    assert s["latent"][2] == pytest.approx(1.0, abs=1e-5) and s["pixel"][2] == pytest.approx(1.0, abs=1e-9)
    assert np.argmax(s["latent"]) == 2 and np.argmax(s["pixel"]) == 2
    assert (s["latent"][[0, 4, 6]] < 0.9).all()
    z = g.latent.clone()[None]
    assert g.latent_similarity(3.0 * z)[0] == pytest.approx(1.0, abs=1e-5)  # scale does not matter
    half = z.clone()
    half[..., :, : z.shape[-1] // 2] = 0  # the left half unseen (zero latents)
    expect = float(g.latent[:, :, z.shape[-1] // 2:].norm() / g.latent.norm())
    assert g.latent_similarity(half)[0] == pytest.approx(expect, abs=1e-5)
    assert g.latent_similarity(torch.zeros_like(z))[0] == 0.0
    assert g.pixel_similarity(np.zeros((1, 128, 224, 3), np.uint8))[0] == 0.0  # a black frame: no correlation
    big = np.stack([np.repeat(np.repeat(f, 2, 0), 2, 1) for f in frames[:3]])  # frames at twice the size: resized
    assert g.pixel_similarity(big)[2] > 0.99
    with pytest.raises(ValueError, match="goal_image"):
        GoalView(frames[0][..., 0], codec, (128, 224), cams[0].K.numpy())
    far = cams[0].K.numpy().copy()
    far[0, 2] += 5000  # a goal camera looking somewhere else entirely: nothing overlaps
    with pytest.raises(ValueError, match="goal_image"):
        GoalView(frames[0], codec, (128, 224), cams[0].K.numpy(), goal_K=far)


def test_candidate_goal_scores_and_pick():
    from mirage_ros.world_model.codec import make_codec

    codec = make_codec("thumbnail")
    rng = np.random.default_rng(0)
    goal = rng.integers(0, 255, (64, 112, 3), dtype=np.uint8)
    g = GoalView(goal, codec, (64, 112), Camera.from_fov(64, 112, 70).K.numpy())
    other = rng.integers(0, 255, (3, 64, 112, 3), dtype=np.uint8)
    cs = CandidateGoalScores(g, [3, 2])
    cs.add(0, [2, 0], np.stack([other[0], other[1]]))
    r = cs.result(0, "pixel")
    assert r["source"] == GOAL_IMAGINED and np.isnan(r["latent"][1]) and r["best_frame"] in (0, 2)
    cs.add(0, [1], goal[None])
    r = cs.result(0, "pixel")
    assert r["best_frame"] == 1 and r["similarity"] == pytest.approx(1.0)
    assert cs.result(1)["best_frame"] == -1 and np.isnan(cs.result(1)["similarity"]) and cs.result(1)["pixel"] == []
    with pytest.raises(ValueError, match="goal_metric"):
        cs.result(0, "ssim")
    assert pick([{"goal_similarity": 0.2}, {"goal_similarity": 0.9}, {"goal_similarity": 0.9}]) == 1  # ties: lowest
    assert pick([{"goal_similarity": float("nan")}, {"goal_similarity": -0.5}]) == 1
    assert pick([{"novelty": 0.1}, {"novelty": 0.7}], "explore") == 1
    assert 0 <= pick([{}, {}, {}], "random", np.random.default_rng(1)) < 3
    with pytest.raises(ValueError, match="rule"):
        pick([{"novelty": 1}], "greedy")


def test_readout_scores_of_an_observed_view_and_the_readout_backend_agree():
    """A goal image the memory observed: the readout at that pose is its latent exactly (score 1 on
    the candidate ending there), and the readout backend's imagined result says the same."""
    from mirage_ros.world_model.backend import SHIPPED_MODEL, make_backend

    b = make_backend("readout", codec="linear-block", weights=str(SHIPPED_MODEL / "codec"))
    scene = sim.make_scene("room", 2)
    cams = [sim.default_camera(128, 224).with_pose(E) for E in sim.scene_trajectory(scene, "loop", 16)]
    f = sim.render(scene, cams[0])
    b.observe(f.rgb, f.depth, cams[0])
    goal = GoalView(f.rgb, b.codec, (128, 224), cams[0].K.numpy(), goal_K=cams[0].K.numpy())
    trajs = [[cams[3], cams[2], cams[1], cams[0]], cams[4:8]]
    scores = b.candidate_scores(trajs, goal=goal)
    r0, r1 = scores[0]["goal"], scores[1]["goal"]
    assert r0["source"] == GOAL_READOUT and r0["best_frame"] == 3 and r0["pixel"] == []
    assert r0["similarity"] > 0.999 and r1["similarity"] < r0["latent"][1] < 1
    cs = CandidateGoalScores(goal, [4, 4])
    for k, chunk in b.imagine_candidates(trajs):
        cs.add_chunk(k, chunk, b.generative)
    assert np.allclose(cs.result(0)["latent"], r0["latent"], atol=1e-6)
    assert cs.result(0, "pixel")["best_frame"] == 3
    px = b.candidate_scores(trajs, goal=goal, goal_metric="pixel")[0]["goal"]
    assert np.allclose(px["pixel"], cs.result(0, "pixel")["pixel"], atol=1e-9)  # the same frames as the backend's


# -- the benchmark --------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_plan_tasks_have_one_answer_and_the_json_every_arm(tmp_path, capsys):
    from mirage_ros.bench import plan
    from mirage_ros.cli import main
    from mirage_ros.world_model.backend import SHIPPED_MODEL
    from mirage_ros.world_model.codec import load_codec

    sc = plan.make_scene(800001, 128, 224, 18)
    mem = plan._memory_of(sc, load_codec(SHIPPED_MODEL / "codec"))
    for task in plan.TASKS:
        t = plan.make_task(sc, mem, task, 8, 6, np.random.default_rng([800001, 18, 7]))
        assert t is not None and len(t.paths) == 8 and all(len(p) == 6 for p in t.paths)
        ends = [invert_rigid(p[-1].world_to_camera.numpy()) for p in t.paths]
        assert np.allclose(ends[t.correct], t.goal_T)
        gcam = t.paths[t.correct][-1]
        depth = sim.render(sc.scene, gcam).depth
        for i, p in enumerate(t.paths):
            if i != t.correct:  # no distractor ends at or passes the goal view
                assert max(plan.view_overlap(gcam, depth, c) for c in p) <= plan.MAX_OVERLAP
                assert abs(t.known[i] - t.goal_known) <= plan.KNOWN_TOLERANCE
        if task == "find":
            assert plan.FIND_KNOWN[0] <= t.goal_known <= plan.FIND_KNOWN[1]
        assert set(plan.subset(t, 4)) <= set(range(8)) and t.correct in plan.subset(t, 4)
    out = tmp_path / "plan.json"
    assert main(["bench", "plan", "--validation", "--seeds", "800001-800001", "--tasks", "return", "--arms",
                 "readout,random,rgb",
                 "--rgb-model", str(tmp_path / "no_such_model"), "--json", str(out), "--out", str(tmp_path / "frames"),
                 "--figures", "1", "--bootstrap", "200"]) == 0
    said = capsys.readouterr().out
    assert said.count("arm 'rgb' skipped: no model at") == 1
    d = json.loads(out.read_text())
    assert set(d["arms"]) == {"readout", "random"} and d["block"] == "validation"
    for arm in ("readout", "random"):
        a = d["arms"][arm]
        assert 0 <= a["success_rate"] <= 1 and len(a["ci95"]) == 2 and a["n"] == 2
    assert d["arms"]["readout"]["success_rate"] == 1.0  # the memory holds the goal view: its readout finds it
    assert out.with_suffix(".png").is_file() and (tmp_path / "plan_decisions.png").is_file()


def test_ties_count_as_a_random_pick_and_a_model_without_memory_cannot_tell_paths_apart(one_thread):
    """MirageBackend.readout_scale = 0 (the bench's none arm): the model imagines the same frames along
    every candidate, since the readout is its only view of the camera path; the bench then scores
    a decision 1 / ties, not the lowest index's luck."""
    from mirage_ros.bench import plan
    from mirage_ros.world_model.backend import make_backend

    b = make_backend("mirage", config="tiny", depth="memory", steps=2, side_branch_init="random")
    scene = sim.make_scene("room", 0)
    cams = [sim.default_camera(64, 128).with_pose(E) for E in sim.scene_trajectory(scene, "loop", 12)]
    f = sim.render(scene, cams[0])
    b.observe(f.rgb, f.depth, cams[0])
    trajs = [[cams[1], cams[0]], [cams[0], cams[1]]]  # final frames: the observed view, one beside it

    def finals():
        out = {}
        for k, chunk in b.imagine_candidates(trajs):
            out[k] = chunk.frames[-1]
        return out

    with_memory = finals()
    assert not np.array_equal(with_memory[0], with_memory[1])
    b.readout_scale = 0.0
    without = finals()
    assert np.array_equal(without[0], without[1])
    sims = {i: {"latent_best": 0.5} for i in range(4)}
    choice, tied = plan.decide(sims, [0, 1, 2, 3], "latent_best")
    assert choice == 0 and tied == [0, 1, 2, 3]
    assert plan.success(2, choice, tied) == 0.25 and plan.success(2, 2, [2]) == 1.0 and plan.success(2, 0, [0]) == 0.0
    sims[3]["latent_best"] = 0.9
    assert plan.decide(sims, [0, 1, 2, 3], "latent_best") == (3, [3])
