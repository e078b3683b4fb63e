"""Algorithm 1 on the tiny world model: chunking, overlap, determinism, memory growth and masks.

The scene is a textured wall at x = 5 m seen by a camera sliding sideways; its depth is exact
(z-depth = 5 - camera x), so "simulator depth" is analytic and the world position of every
excluded pixel is known: the test checks in world coordinates that no excluded surface ever
enters the memory.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from mirage_ros.geometry import Camera, backproject, look_at
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.world_model.backend import make_backend
from mirage_ros.world_model.codec import images_to_tensor
from mirage_ros.world_model.model import MirageWorldModel
from mirage_ros.world_model.providers import as_depth_fn, as_mask_fn, make_provider
from mirage_ros.world_model.references import ReferenceSelector, voxel_iou, voxel_keys
from mirage_ros.world_model.rollout import RolloutConfig, latent_chunks, rollout
from mirage_ros.world_model.sampler import FlowUniPCSampler

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 64, 96
WALL_X = 5.0
EXCLUDE_BELOW_Y = 0.5  # the wall's part with world y < 0.5 is "dynamic" (never to be stored)


def cameras(n, step=0.1):
    return [Camera.from_fov(H, W, 70.0, look_at((0.0, step * i, 1.0), (WALL_X, step * i, 1.0))) for i in range(n)]


def wall_depth(cam):
    return torch.full((H, W), WALL_X - float(cam.center[0]))


def sim_depth(frames, cams, memory):
    assert frames.shape == (len(cams), H, W, 3) and frames.dtype == np.uint8
    return torch.stack([wall_depth(c) for c in cams])


def dynamic_mask(frames, cams):
    out = []
    for c in cams:
        pts = backproject(wall_depth(c).double(), c.K, c.world_to_camera)  # (H, W, 3) world points of the pixels
        out.append(pts[..., 1] < EXCLUDE_BELOW_Y)
    return torch.stack(out)


def first_image():
    rng = np.random.default_rng(0)
    return (rng.random((H, W, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return MirageWorldModel.build("tiny", layout="paper", side_branch_init="random", sampler=FlowUniPCSampler(steps=2))


def run(model, n, seed=0, **kw):
    cams = cameras(n)
    mem = LatentSpatialMemory(48, 16)
    res = rollout(model, first_image(), cams, mem, first_depth=wall_depth(cams[0]),
                  first_exclude=dynamic_mask(None, cams[:1])[0],
                  depth_provider=kw.pop("depth_provider", sim_depth),
                  mask_provider=kw.pop("mask_provider", dynamic_mask),
                  config=RolloutConfig(seed=seed, progress=False, **kw))
    return res, mem


def test_latent_chunks_overlap_by_one():
    assert latent_chunks(97) == [(0, 8), (8, 16), (16, 24)]  # 33 + 32 + 32 frames
    assert latent_chunks(70) == [(0, 8), (8, 16), (16, 18)]
    assert latent_chunks(2) == [(0, 1)]
    with pytest.raises(ValueError):
        latent_chunks(1)


def test_three_chunk_rollout_shapes_dtypes_and_no_duplicated_overlap(model):
    n = 1 + 3 * 32
    res, mem = run(model, n)
    assert res.frames.shape == (n, H, W, 3) and res.frames.dtype == np.uint8
    assert res.latents.shape == (25, 48, 4, 6) and res.latents.dtype == torch.float32
    assert res.readouts.shape == (25, 48, 4, 6) and res.masks.shape == (25, 4, 6) and res.masks.dtype == torch.bool
    emitted = [f for c in res.chunks for f in c["frames"]]
    assert emitted == list(range(n))  # every frame once: the overlap frames 32 and 64 are not repeated
    assert [c["latents"] for c in res.chunks] == [list(range(9)), list(range(9, 17)), list(range(17, 25))]
    assert np.array_equal(res.frames[0], first_image())  # O <- {I_0}
    assert len(res.timings) == 3
    for t in res.timings:
        assert set(t) >= {"readout", "denoise", "decode", "depth", "masks", "encode",
                          "update"} and all(v >= 0 for v in t.values())
    assert res.chunks[1]["preceding"] == [6, 7] and res.chunks[2]["preceding"] == [14, 15]
    assert torch.isfinite(res.latents).all()


def test_same_seed_same_frames(model):
    a, _ = run(model, 40, seed=3)
    b, _ = run(model, 40, seed=3)
    c, _ = run(model, 40, seed=4)
    assert np.array_equal(a.frames, b.frames) and torch.equal(a.latents, b.latents)
    assert not np.array_equal(a.frames[1:], c.frames[1:])


def test_default_noise_comes_from_the_observation(model):
    """seed None: the same observation gives the same video bit for bit; another observation gets
    other noise (the seed is a hash of the encoded first frame, observation_seed)."""
    from mirage_ros.world_model.rollout import observation_seed

    a, _ = run(model, 20, seed=None)
    b, _ = run(model, 20, seed=None)
    assert np.array_equal(a.frames, b.frames)
    z0 = a.latents[0]
    assert observation_seed(z0) == observation_seed(z0.clone()) != observation_seed(z0 + 1e-3)
    fixed, _ = run(model, 20, seed=observation_seed(z0))
    assert torch.equal(fixed.latents, a.latents)  # exactly the derived seed


def test_memory_grows_each_chunk_and_excluded_cells_never_enter(model):
    res, mem = run(model, 1 + 3 * 32)
    added = [c["points_added"] for c in res.chunks]
    assert all(a > 0 for a in added), added
    pts = mem.points
    assert pts.shape[0] > 0
    assert float(pts[:, 1].min()) >= EXCLUDE_BELOW_Y  # nothing from the excluded part of the wall
    assert torch.allclose(pts[:, 0], torch.full_like(pts[:, 0], WALL_X), atol=1e-3)  # all on the wall


def test_without_exclusion_the_same_region_does_enter(model):
    _, mem = run(model, 40, mask_provider=None)
    assert float(mem.points[:, 1].min()) < EXCLUDE_BELOW_Y  # the check above is not vacuous


def test_memory_depth_default_adds_no_unseen_surface(model):
    res, mem = run(model, 40, depth_provider=None)
    assert all(c["points_added"] == 0 for c in res.chunks)


def test_official_layout_and_denoised_update(tmp_path):
    m = MirageWorldModel.build("tiny", layout="official", side_branch_init="random", sampler=FlowUniPCSampler(steps=1))
    res, mem = run(m, 9, update_source="denoised")
    assert res.frames.shape == (9, H, W, 3) and m.layout == "official"
    assert m.score_latents(3, H, W).shape == (3, 48, 4, 6)


def test_mirage_backend_yields_chunks_for_the_requested_views_and_restores_memory():
    be = make_backend("mirage", config="tiny", steps=1, side_branch_init="random", depth=sim_depth, masks=dynamic_mask)
    assert be.generative and "RANDOM weights" in be.description
    cams = cameras(41)
    with pytest.raises(RuntimeError, match="observe"):
        next(be.imagine(cams[1:]))
    be.observe(first_image(), wall_depth(cams[0]).numpy(), cams[0])
    n0 = be.memory.num_points
    chunks = list(be.imagine(cams[1:]))
    idx = [i for c in chunks for i in c.frame_indices]
    assert idx == list(range(40))
    for c in chunks:
        k = len(c.frame_indices)
        assert c.frames.shape == (k, H, W, 3) and c.masks.shape == (k, 4, 6) and c.readouts.shape == (k, 48, 4, 6)
        assert c.cameras == [cams[1 + i] for i in c.frame_indices]
    assert be.memory.num_points == n0  # imagined content did not stay


def test_voxel_iou_and_reference_selection():
    a = torch.tensor([[0.05, 0.05, 0.05], [0.15, 0.05, 0.05], [0.25, 0.05, 0.05]])
    b = torch.tensor([[0.15, 0.05, 0.05], [0.25, 0.05, 0.05], [0.35, 0.05, 0.05], [0.45, 0.05, 0.05]])
    assert len(voxel_keys(a, 0.1)) == 3
    assert voxel_iou(voxel_keys(a, 0.1), voxel_keys(b, 0.1)) == pytest.approx(2 / 5)
    sel = ReferenceSelector(max_references=2, iou_threshold=0.3, voxel_size=0.1)
    sel.remember(0, a)
    sel.remember(1, b)
    sel.remember(2, torch.tensor([[9.0, 9.0, 9.0]]))
    assert sel.select(a) == [(0, 1.0), (1, pytest.approx(0.4))]
    assert sel.select(a, exclude=[0]) == [(1, pytest.approx(0.4))]


def test_provider_hooks_accept_perception_objects():
    class Depth:
        name = "fake-da3"

        def estimate(self, frames, cams, memory=None):
            return torch.ones(len(cams), H, W) * 2, torch.ones(len(cams), H, W)

    class Masks:
        def masks(self, frames, cams, labels=None):
            return torch.zeros(len(cams), H, W, dtype=torch.bool)

    cams = cameras(2)
    frames = np.zeros((2, H, W, 3), np.uint8)
    assert as_depth_fn(Depth())(frames, cams, None).shape == (2, H, W)
    assert as_mask_fn(Masks())(frames, cams).dtype == torch.bool
    assert as_mask_fn(None)(frames, cams) is None
    mem = LatentSpatialMemory(48, 16)
    d = as_depth_fn(None)(frames, cams, mem)  # the default: the memory's own depth, invalid (NaN) where empty
    assert d.shape == (2, 4, 6) and torch.isnan(d).all()
    assert make_provider("depth", "memory") is None and make_provider("masks", "none") is None
    assert make_provider("masks", {"name": "labels"}).name == "labels"
    with pytest.raises(ValueError):
        make_provider("depth", {"weights": "x"})
    with pytest.raises(TypeError):
        as_mask_fn(lambda f, c: torch.zeros(2, H, W))(frames, cams)


def test_bench_rollout_tiny_writes_the_documented_schema(tmp_path):
    import json

    from mirage_ros.cli import main

    path = tmp_path / "rollout.json"
    assert main(["bench", "rollout", "--config", "tiny", "--device", "cpu", "--json", str(path),
                 "--resolution", "64x96", "--chunks", "2", "--steps", "2"]) == 0
    r = json.loads(path.read_text())
    assert r["config"] == "tiny" and r["device"] == "cpu" and r["resolution"] == [64, 96]
    assert [c["chunk"] for c in r["chunks"]] == [0, 1] and r["frames"] == 64
    for c in r["chunks"]:
        assert set(c["stages"]) == {"readout", "denoise", "decode", "depth", "masks", "encode", "update"}
        assert c["seconds"] == pytest.approx(sum(c["stages"].values()))
    assert r["seconds_per_frame"] > 0 and r["peak_memory_mib"] > 0
    assert path.with_suffix(".png").stat().st_size > 0


def test_perception_providers_plug_in(model):
    depth_mod = pytest.importorskip("mirage_ros.perception.depth")
    masks_mod = pytest.importorskip("mirage_ros.perception.masks")
    sim = depth_mod.make_depth_provider("simulator", source=lambda cam, i: wall_depth(cam).numpy())
    res, mem = run(model, 65, depth_provider=sim, mask_provider=masks_mod.make_mask_provider("none"))
    assert all(c["points_added"] > 0 for c in res.chunks)
    be = make_backend("mirage", config="tiny", steps=1, depth="memory", masks="none")
    cams = cameras(10)
    be.observe(first_image(), wall_depth(cams[0]).numpy(), cams[0])
    assert [i for c in be.imagine(cams[1:]) for i in c.frame_indices] == list(range(9))


def test_candidates_batch_like_alone_and_never_touch_the_memory():
    """K candidate trajectories from one snapshot: each rolls out as it does alone (same noise, one
    batch per chunk round), the memory is unchanged, and the scores are the memory's coverage."""
    from mirage_ros.world_model.backend import make_backend

    b = make_backend("mirage", config="tiny", steps=2, side_branch_init="random")
    cams = cameras(14)
    img = (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)
    b.observe(img, wall_depth(cams[0]).numpy(), cams[0])
    before = (b.memory.points.clone(), b.memory.features.clone())
    trajs = [cams[1:6], cams[2:14], cams[3:9]]  # different lengths: different chunk schedules
    got = {}
    for k, ch in b.imagine_candidates(trajs):
        got.setdefault(k, []).append(ch)
    assert torch.equal(b.memory.points, before[0]) and torch.equal(b.memory.features, before[1])
    for k, traj in enumerate(trajs):
        alone = list(b.imagine(traj))
        assert [c.frame_indices for c in got[k]] == [c.frame_indices for c in alone]
        for x, y in zip(got[k], alone):
            assert torch.allclose(x.latents, y.latents, atol=1e-4), k  # batched matmuls round differently
    scores = b.candidate_scores(trajs)
    for s, traj in zip(scores, trajs):
        vis = [float(b.memory.read(c).mask.float().mean()) for c in traj]
        assert s["visibility"] == pytest.approx(vis) and s["known"] == pytest.approx(np.mean(vis))
        assert s["novelty"] == pytest.approx(1 - np.mean(vis))
    with pytest.raises(ValueError, match="no candidates"):
        list(b.imagine_candidates([]))


def test_the_wan_path_pins_the_memory_unless_told_not_to():
    """A Wan2.2-sized path without a model folder of its own samples with the paper's grid plus
    pinning and paste (PAPER_SAMPLER); sampler.pin_until 0 / pin_paste off switch each one off alone."""
    from mirage_ros.world_model.backend import make_backend

    s = make_backend("mirage", config="tiny", steps=2, side_branch_init="random").model.sampler
    assert (s.steps, s.shift, s.sigma_grid, s.pin_until, s.pin_paste) == (2, 5.0, "wan", 1.0, True)
    off = make_backend("mirage", config="tiny", steps=2, side_branch_init="random", pin_until=0.0).model.sampler
    assert (off.pin_until, off.pin_paste, off.shift) == (0.0, True, 5.0)


def test_generated_frames_write_the_sky_dome_only_when_told():
    """The wall's upper half is "sky" (+inf) in every frame; the camera turns as it slides, so each
    generated frame shows sky directions the observation did not. By default only the observation
    writes the dome; ``generated_sky=True`` lets the generated frames add theirs."""
    tiny = MirageWorldModel.build("tiny", layout="paper", side_branch_init="random", sampler=FlowUniPCSampler(steps=2))
    cams = [Camera.from_fov(H, W, 70.0, look_at((0.0, 0.1 * i, 1.0), (WALL_X, 0.1 * i + 0.08 * i, 1.0)))
            for i in range(40)]

    def depth_of(c):
        d = wall_depth(c).clone()
        d[: H // 2] = float("inf")
        return d

    def sky_depth(frames, cs, memory):
        return torch.stack([depth_of(c) for c in cs])

    sizes = {}
    for gen in (False, True):
        mem = LatentSpatialMemory(48, 16, sky=True)
        rollout(tiny, first_image(), cams, mem, first_depth=depth_of(cams[0]), depth_provider=sky_depth,
                config=RolloutConfig(seed=0, progress=False, generated_sky=gen))
        sizes[gen] = len(mem.sky)
    first = LatentSpatialMemory(48, 16, sky=True)
    first.insert(torch.zeros(48, H // 16, W // 16), depth_of(cams[0]), cams[0])
    assert sizes[False] == len(first.sky) == 2 * (W // 16)
    assert sizes[True] > sizes[False]


def test_pinning_can_be_kept_to_the_observations():
    """``pin_generated`` / ``paste_generated`` False: the sampler pins / pastes only cells whose
    readout comes from the observation (the memory before the rollout), checked against a second
    memory that holds the first frame alone; the side branch still sees every visible cell."""
    tiny = MirageWorldModel.build("tiny", layout="paper", side_branch_init="random", sampler=FlowUniPCSampler(steps=2))
    cams = cameras(40, step=0.05)
    seen = []
    real = tiny.denoise_batch

    def spy(requests, *a, **kw):
        seen.extend(requests)
        return real(requests, *a, **kw)

    tiny.denoise_batch = spy
    decoded = []
    real_decode = tiny.decode_video

    def decode_spy(z, memory_cells=None):
        decoded.append(memory_cells)
        return real_decode(z, memory_cells=memory_cells)

    tiny.decode_video = decode_spy
    z0 = tiny.encode_images(images_to_tensor(first_image()))[0]
    first = LatentSpatialMemory(48, 16)
    first.insert(z0, wall_depth(cams[0]), cams[0])
    schedule = latent_chunks(len(cams), RolloutConfig().chunk_latents, tiny.temporal_stride)
    targets = [[cams[min(tiny.temporal_stride * j, len(cams) - 1)] for j in range(a, b + 1)] for a, b in schedule]
    observed = [torch.stack([first.read(c).mask for c in tc]) for tc in targets]
    for pin, paste in ((False, True), (True, False), (False, False)):
        seen.clear()
        decoded.clear()
        rollout(tiny, first_image(), cams, LatentSpatialMemory(48, 16), first_depth=wall_depth(cams[0]),
                depth_provider=sim_depth,
                config=RolloutConfig(seed=0, progress=False, pin_generated=pin, paste_generated=paste))
        assert len(seen) == len(decoded) == len(schedule) >= 2
        generated = 0
        for c, (r, obs_cells, cells) in enumerate(zip(seen, observed, decoded)):
            vis = r["masks"][: r["num_targets"]]
            obs = vis & obs_cells
            generated += int((vis & ~obs_cells).sum())
            assert torch.equal(r["pin_masks"], obs if not pin else vis)
            assert torch.equal(r["paste_masks"], obs if not paste else vis)
            # the decoder is told the observed cells (latent 0 of chunk 0 is the observation itself)
            expect = obs.clone()
            if c == 0:
                expect[0] = True
            assert torch.equal(cells, expect)
        assert generated > 0, "the camera must see cells that only generated points fill"
    default = RolloutConfig()
    assert default.pin_generated and not default.paste_generated  # chosen on validation loops
    seen.clear()
    rollout(tiny, first_image(), cams, LatentSpatialMemory(48, 16), first_depth=wall_depth(cams[0]),
            depth_provider=sim_depth, config=RolloutConfig(seed=0, progress=False, paste_generated=True))
    assert all(r.get("pin_masks") is None and r.get("paste_masks") is None for r in seen)  # both on: every cell
    decoded.clear()
    rollout(tiny, first_image(), cams, LatentSpatialMemory(48, 16), first_depth=wall_depth(cams[0]),
            depth_provider=sim_depth, config=RolloutConfig(seed=0, progress=False, decode_imagined=False))
    assert decoded and all(m is None for m in decoded)
