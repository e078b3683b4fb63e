"""Candidate trajectories for planners, without ROS: ``MirageCore.prepare_candidates`` /
``imagine_candidates`` driven with rosbags messages (what the node's imagine_candidates action runs).

References are independent of the code under test: the memory's own readout at each pose, the
single-trajectory ``imagine`` of the same path, a second core that never saw the later observation.
"""
import numpy as np
import pytest
import torch

from mirage_ros.ros import convert as cv
from mirage_ros.ros.bag import RosbagsTypes
from mirage_ros.ros.core import STATUS_INVALID_GOAL, STATUS_NOT_READY, GoalError, MirageCore
from mirage_ros.ros.goals import candidates_reason
from mirage_ros.ros.params import ParamError, validate

B = RosbagsTypes()
H, W = 64, 112


@pytest.fixture(scope="module")
def scene(room_loop):
    return room_loop(12, H, W)


def feed(core, cam, fr, stamp):
    msgs = {
        "camera_info": cv.camera_info_msg(B, cam.K.numpy(), cam.height, cam.width, stamp, "cam"),
        "pose": cv.pose_stamped_msg(B, cam.camera_to_world.numpy(), stamp, "map"),
        "depth": cv.image_msg(B, fr.depth, stamp, "cam", "32FC1"),
        "image": cv.image_msg(B, fr.rgb, stamp, "cam"),
    }
    s = None
    for kind, m in msgs.items():
        s = getattr(core.intake, f"on_{kind}")(m) or s
    return s


def make_core(scene, **params):
    core = MirageCore({"backend": "readout", **params})
    core.configure()
    cams, frames = scene
    assert core.observe(feed(core, cams[0], frames[0], 10**9)) > 0
    return core


def path_of(cams, t0=2 * 10**9, frame="map"):
    T = np.stack([c.camera_to_world.numpy() for c in cams])
    return cv.path_msg(B, T, [t0 + i * 10**8 for i in range(len(cams))], frame)


def memory_state(core):
    m = core.backend.memory
    return m.num_points, m.points.clone(), m.features.clone()


def assert_memory_is(core, state):
    n, pts, feats = state
    m = core.backend.memory
    assert m.num_points == n and torch.equal(m.points, pts) and torch.equal(m.features, feats)


# -- the size rule ------------------------------------------------------------------------------

def test_candidates_reason_size_rule():
    ok = dict(num_frames=0, max_frames=10, max_candidates=4, max_total=20)
    assert candidates_reason([3, 10, 7], **ok) is None
    assert "no candidates" in candidates_reason([], **ok)
    assert "5 candidates, more than candidates.max_candidates = 4" in candidates_reason([1] * 5, **ok)
    assert "candidates[1]: path has 11 poses, more than imagined.max_frames = 10" in candidates_reason([3, 11], **ok)
    assert "candidates[2]: path has no poses" in candidates_reason([3, 1, 0], **ok)
    assert "21 frames in all (3 candidates)" in candidates_reason([10, 10, 1], **ok)
    # with num_frames every candidate is resampled to it: K x num_frames counts, not the path lengths
    assert candidates_reason([10, 10, 10], **{**ok, "num_frames": 6}) is None
    assert "21 frames in all" in candidates_reason([1, 1, 1], **{**ok, "num_frames": 7})
    assert "num_frames is 11" in candidates_reason([1], **{**ok, "num_frames": 11})


def test_candidate_parameters_are_validated():
    assert validate({})["candidates.max_candidates"] == 16
    with pytest.raises(ParamError, match="candidates.max_candidates: expected 1 .. 64"):
        validate({"candidates.max_candidates": 65})
    with pytest.raises(ParamError, match="candidates.max_total_frames: expected 1 .. 4096"):
        validate({"candidates.max_total_frames": 0})


# -- validation ---------------------------------------------------------------------------------

class _Untouchable(list):
    """A pose list whose length is known but whose poses must not be looked at."""

    def __iter__(self):
        raise AssertionError("per-pose work on a request that its size alone rejects")

    def __getitem__(self, i):
        raise AssertionError("per-pose work on a request that its size alone rejects")


def test_prepare_candidates_rejects_with_the_reason_before_per_pose_work(scene):
    cams, _ = scene
    core = MirageCore({"backend": "readout", "candidates.max_candidates": 4, "candidates.max_total_frames": 30,
                       "imagined.max_frames": 20})
    core.configure()
    with pytest.raises(GoalError) as e:
        core.prepare_candidates([path_of(cams[1:4])])
    assert e.value.status == STATUS_NOT_READY and "no observation yet" in e.value.message
    core.observe(feed(core, cams[0], frames_of(scene)[0], 10**9))
    state = memory_state(core)

    def huge(n):
        p = path_of(cams[1:2])
        p.poses = _Untouchable([None] * n)
        return p

    for paths, nf, needle in [([], 0, "no candidates"),
                              ([path_of(cams[1:3])] * 5, 0, "5 candidates, more than candidates.max_candidates = 4"),
                              ([path_of(cams[1:3]), huge(21)], 0, "candidates[1]: path has 21 poses"),
                              ([huge(15), huge(16)], 0, "31 frames in all"),
                              ([huge(2), huge(2)], 16, "32 frames in all"),
                              ([huge(2)], 21, "num_frames is 21")]:
        with pytest.raises(GoalError) as e:
            core.prepare_candidates(paths, nf)
        assert e.value.status == STATUS_INVALID_GOAL and needle in e.value.message, e.value.message
    # per pose, the rules of a single goal, naming the candidate
    bad = path_of(cams[1:4])
    q = bad.poses[2].pose.orientation
    q.x, q.y, q.z, q.w = 0.0, 0.0, 0.5, 0.5  # non-unit
    with pytest.raises(GoalError) as e:
        core.prepare_candidates([path_of(cams[1:4]), bad, path_of(cams[2:5])])
    assert e.value.status == STATUS_INVALID_GOAL
    assert e.value.message.startswith("candidates[1]: path.poses[2].pose.orientation") and "norm" in e.value.message
    with pytest.raises(GoalError, match=r"candidates\[0\]: .*not the world frame"):
        core.prepare_candidates([path_of(cams[1:3], frame="odom")])
    assert_memory_is(core, state)
    # good: K requests with the same camera, each resampled when asked
    creq = core.prepare_candidates([path_of(cams[1:4]), path_of(cams[3:9])], 5)
    assert [len(r.cameras) for r in creq.requests] == [5, 5] and creq.num_frames == 10
    assert all(r.height == H and r.width == W and np.array_equal(r.K, core.last_camera[0]) for r in creq.requests)


def frames_of(scene):
    return scene[1]


# -- scores, frames and the memory ----------------------------------------------------------------

def test_scores_are_the_memorys_coverage_frames_equal_single_goals_and_memory_is_unchanged(scene):
    cams, _ = scene
    core = make_core(scene, chunk_size=3)
    state = memory_state(core)
    version = core.version
    paths = [path_of(cams[0:5]), path_of(cams[4:11]), path_of(cams[2:4])]
    creq = core.prepare_candidates(paths)
    run = core.imagine_candidates(creq)
    got = {}
    for k, chunk in run:
        got.setdefault(k, []).append(chunk)
    assert_memory_is(core, state)
    assert core.version == version  # nothing for the node to republish
    mem = core.backend.memory
    for k, (sc, r) in enumerate(zip(run.scores, creq.requests)):
        vis = [float(mem.read(c).mask.float().mean()) for c in r.cameras]  # the memory's own readout
        assert sc["visibility"] == pytest.approx(vis) and sc["known"] == pytest.approx(np.mean(vis))
        assert sc["novelty"] == pytest.approx(1 - np.mean(vis))
        alone = list(core.imagine(core.prepare(paths[k])))  # the single-trajectory goal, same path
        assert [c.frame_indices for c in got[k]] == [c.frame_indices for c in alone]
        assert np.array_equal(np.concatenate([c.frames for c in got[k]]), np.concatenate([c.frames for c in alone]))
    # the loop turns away from the observed view: candidates differ, so a planner can rank them
    known = [s["known"] for s in run.scores]
    assert run.scores[0]["visibility"][0] > 0.9 and known[0] > max(known[1:]), known


def test_one_snapshot_for_every_candidate_even_while_observations_arrive(scene):
    """An observation written into the live memory mid-run changes neither the scores nor the
    later candidates' frames: they match a core that never saw that observation."""
    cams, frames = scene
    core = make_core(scene, chunk_size=2)
    ref = make_core(scene, chunk_size=2)
    paths = [path_of(cams[5:9]), path_of(cams[6:10])]
    run = core.imagine_candidates(core.prepare_candidates(paths))
    it = iter(run)
    first = next(it)
    n0 = core.backend.memory.num_points
    assert core.observe(feed(core, cams[7], frames[7], 5 * 10**9)) > 0  # new surface, right where they look
    assert core.backend.memory.num_points > n0
    rest = [first] + list(it)
    for k in range(2):
        mine = np.concatenate([c.frames for kk, c in rest if kk == k])
        theirs = np.concatenate([c.frames for c in ref.imagine(ref.prepare(paths[k]))])
        assert np.array_equal(mine, theirs), k
    ref_scores = ref.imagine_candidates(ref.prepare_candidates(paths)).scores
    for mine, theirs in zip(run.scores, ref_scores):
        assert np.allclose(mine["visibility"], theirs["visibility"])
    # a new request does see the new observation: the snapshot is what kept it out
    after = core.imagine_candidates(core.prepare_candidates(paths)).scores
    assert after[1]["known"] > run.scores[1]["known"] + 0.2
    now = np.concatenate([c.frames for c in core.imagine(core.prepare(paths[1]))])
    assert not np.array_equal(now, np.concatenate([c.frames for kk, c in rest if kk == 1]))


def test_cancel_between_chunks(scene):
    cams, _ = scene
    core = make_core(scene, chunk_size=1)
    stop = []
    seen = []
    for k, chunk in core.imagine_candidates(core.prepare_candidates([path_of(cams[1:6])] * 3),
                                            cancel=lambda: bool(stop)):
        seen.append((k, chunk.frame_indices))
        stop.append(1)
    assert len(seen) == 1


@pytest.mark.slow
def test_generative_candidates_batched_memory_unchanged():
    """The mirage backend (tiny, random weights) through the core: every candidate gets all its
    frames from one batched rollout, scores are the memory's readout at the model's cameras, the
    memory (and the last observed frame the model starts from) is untouched."""
    from mirage_ros import sim

    s = sim.make_scene("room", 0)
    cams = [sim.default_camera(64, 128).with_pose(E) for E in sim.scene_trajectory(s, "loop", 12)]
    fr = sim.render(s, cams[0])
    core = MirageCore({"backend": "mirage", "steps": 1})
    core.configure()
    core.observe(feed(core, cams[0], fr, 10**9))
    state = memory_state(core)
    last = core.backend._last
    paths = [path_of(cams[1:4]), path_of(cams[3:12])]
    run = core.imagine_candidates(core.prepare_candidates(paths))
    got = {}
    for k, chunk in run:
        got.setdefault(k, []).extend(chunk.frame_indices)
        assert chunk.frames.shape[1:] == (64, 128, 3) and "denoise" in chunk.timings
    assert got == {0: [0, 1, 2], 1: list(range(9))}
    assert_memory_is(core, state)
    assert core.backend._last is last
    mem = core.backend.memory
    for sc, p in zip(run.scores, paths):
        req = core.prepare(p)
        vis = [float(mem.read(core.backend._native(c)).mask.float().mean()) for c in req.cameras]
        assert sc["visibility"] == pytest.approx(vis)
