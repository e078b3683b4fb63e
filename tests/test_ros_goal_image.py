"""imagine_candidates with a goal image, without ROS: ``MirageCore.prepare_goal`` and the goal scores
of ``CandidateRun`` driven with rosbags messages (what the node's action runs).

References: the memory observed the goal view, so the candidate ending at that pose must score
(nearly) 1 and win; a goal taken by a wider camera (rendered by the simulator) is recognised only
when its camera_info is given (the warp), not when it is merely resized.
"""
import numpy as np
import pytest

from mirage_ros import sim
from mirage_ros.geometry import Camera
from mirage_ros.planning import GOAL_IMAGINED, GOAL_NONE, GOAL_READOUT
from mirage_ros.ros import convert as cv
from mirage_ros.ros import outputs as out
from mirage_ros.ros.bag import RosbagsTypes
from mirage_ros.ros.core import STATUS_INVALID_GOAL, GoalError, MirageCore

B = RosbagsTypes()
H, W = 128, 224


@pytest.fixture(scope="module")
def scene():
    s = sim.make_scene("room", 0)
    cams = [sim.default_camera(H, W).with_pose(E) for E in sim.scene_trajectory(s, "loop", 24)]
    return s, cams, [sim.render(s, c) for c in cams]


def make_core(scene):
    _, cams, frames = scene
    core = MirageCore({"backend": "readout"})
    core.configure()
    cam, fr, stamp, s = cams[0], frames[0], 10**9, None
    for kind, m in (("camera_info", cv.camera_info_msg(B, cam.K.numpy(), H, W, stamp, "cam")),
                    ("pose", cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), stamp, "map")),
                    ("depth", cv.image_msg(B, fr.depth, stamp, "cam", "32FC1")),
                    ("image", cv.image_msg(B, fr.rgb, stamp, "cam"))):
        s = getattr(core.intake, f"on_{kind}")(m) or s
    assert core.observe(s) > 0
    return core


def paths(cams):
    """Candidate 0 returns to the observed pose (it ends there); 1 and 2 look elsewhere."""
    sets = [[cams[3], cams[2], cams[1], cams[0]], cams[6:10], cams[12:16]]
    return [cv.path_msg(B, np.stack([c.camera_to_world.numpy() for c in cs]), [2 * 10**9 + i * 10**8 for i in range(4)],
                        "map") for cs in sets]


def run_all(core, creq):
    run = core.imagine_candidates(creq)
    for _ in run:
        pass
    return run


@pytest.mark.slow
def test_goal_image_scores_from_the_readout_and_the_imagined_frames(scene):
    _, cams, frames = scene
    core = make_core(scene)
    creq = core.prepare_candidates(paths(cams))
    info = cv.camera_info_msg(B, cams[0].K.numpy(), H, W, 0, "cam")
    creq = core.prepare_goal(creq, cv.image_msg(B, frames[0].rgb, 0, "cam"), info, "")
    assert creq.goal is not None and creq.goal_metric == "latent"
    run = run_all(core, creq)
    readout = [s["goal"] for s in run.scores]
    assert [g["source"] for g in readout] == [GOAL_READOUT] * 3
    assert readout[0]["best_frame"] == 3 and readout[0]["similarity"] > 0.999
    assert max(g["similarity"] for g in readout[1:]) < 0.9
    imagined = [run.goal_result(k) for k in range(3)]
    assert [g["source"] for g in imagined] == [GOAL_IMAGINED] * 3
    assert imagined[0]["best_frame"] == 3 and int(np.argmax([g["similarity"] for g in imagined])) == 0
    assert len(imagined[0]["pixel"]) == 4 and imagined[0]["pixel"][3] > 0.95
    msg = out.candidate_result_msg(B, 0, run.scores[0], creq.requests[0].stamps_ns, (), None, imagined[0])
    assert msg.goal_source == GOAL_IMAGINED and msg.goal_best_frame == 3 and len(msg.goal_pixel_similarity) == 4
    fb = out.candidate_result_msg(B, 1, run.scores[1], creq.requests[1].stamps_ns)  # the SCORES feedback: the readout's
    assert fb.goal_source == GOAL_READOUT and len(fb.goal_latent_similarity) == 4 and len(fb.goal_pixel_similarity) == 0


@pytest.mark.slow
def test_a_wider_goal_camera_is_recognised_through_its_camera_info(scene):
    s, cams, _ = scene
    core = make_core(scene)
    wide = Camera.from_fov(96, 128, 95.0, cams[0].world_to_camera)  # another camera, same pose
    goal = sim.render(s, wide).rgb
    creq = core.prepare_candidates(paths(cams))
    warped = core.prepare_goal(creq, cv.image_msg(B, goal, 0, "cam"),
                               cv.camera_info_msg(B, wide.K.numpy(), 96, 128, 0, "cam"), "pixel")
    run = run_all(core, warped)
    with_info = [run.goal_result(k)["similarity"] for k in range(3)]
    assert int(np.argmax(with_info)) == 0 and with_info[0] > 0.9
    creq = core.prepare_candidates(paths(cams))
    resized = core.prepare_goal(creq, cv.image_msg(B, goal, 0, "cam"), None, "pixel")
    run = run_all(core, resized)
    assert run.goal_result(0)["similarity"] < with_info[0] - 0.1  # a 95-degree view squeezed into 70 degrees


def test_no_goal_image_is_todays_behaviour_and_bad_goals_name_the_field(scene):
    _, cams, frames = scene
    core = make_core(scene)
    creq = core.prepare_candidates(paths(cams))
    assert core.prepare_goal(creq, B.Image(), B.CameraInfo(), "").goal is None
    run = run_all(core, creq)
    assert "goal" not in run.scores[0] and run.goal_result(0) is None
    msg = out.candidate_result_msg(B, 0, run.scores[0], creq.requests[0].stamps_ns)
    assert msg.goal_source == GOAL_NONE and len(msg.goal_latent_similarity) == 0
    img = cv.image_msg(B, frames[0].rgb, 0, "cam")
    cases = [
        (dict(image_msg=img, metric="ssim"), "goal_metric"),
        (dict(image_msg=cv.image_msg(B, frames[0].depth, 0, "cam", "32FC1")), "goal_image.encoding"),
        (dict(image_msg=img, info_msg=cv.camera_info_msg(B, cams[0].K.numpy(), 64, 112, 0, "cam")), "goal_camera_info"),
    ]
    bad_k = cams[0].K.numpy().copy()
    bad_k[0, 0] = -1.0
    cases.append((dict(image_msg=img, info_msg=cv.camera_info_msg(B, bad_k, H, W, 0, "cam")), "goal_camera_info.k[0]"))
    for kw, field in cases:
        with pytest.raises(GoalError) as e:
            core.prepare_goal(core.prepare_candidates(paths(cams)), **kw)
        assert e.value.status == STATUS_INVALID_GOAL and field in e.value.message, e.value.message


def test_scores_only_with_the_pixel_metric_decodes_the_readout(scene):
    _, cams, frames = scene
    core = make_core(scene)
    creq = core.prepare_goal(core.prepare_candidates(paths(cams)), cv.image_msg(B, frames[0].rgb, 0, "cam"), None,
                             "pixel")
    run = core.imagine_candidates(creq)  # not iterated: scores only
    g = run.scores[0]["goal"]
    assert g["source"] == GOAL_READOUT and len(g["pixel"]) == 4 and g["best_frame"] == 3 and g["similarity"] > 0.95
