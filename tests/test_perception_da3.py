"""Depth Anything 3 provider: camera handling and metric output as the reference API does them.

Random weights cannot say whether depth is right, but they do pin the geometry around the net:
depth must not depend on where the world origin is, must scale with the world's unit when the
cameras carry it, and a metric preset's output must be focal/300 of the raw net output. Each
assertion here compares against the real ``DepthAnything3Net`` called directly or against an
exact transform of the input; the first version of the provider failed each of them.
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mirage_ros import sim
from mirage_ros.geometry import Camera
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.perception import AlignedDepth, DA3Depth, make_depth_provider
from mirage_ros.perception.depth import IMAGENET_MEAN, IMAGENET_STD, normalize_extrinsics, umeyama_scale


def _build(preset, shrink=False, seed=0):
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    cfg = load_config(MODEL_REGISTRY[preset])
    if shrink:  # the metric preset's structure (DPT head, sky head, no camera encoder) on a ViT-S
        cfg.net.name, cfg.net.out_layers = "vits", [5, 7, 9, 11]
        cfg.head.dim_in, cfg.head.features, cfg.head.out_channels = 384, 64, [48, 96, 192, 384]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_object(cfg).eval()


@pytest.fixture(scope="module")
def views():
    scene = sim.make_scene("room", seed=1)
    cams = [sim.default_camera(48, 80, world_to_camera=E) for E in sim.scene_trajectory(scene, "loop", 6)[:3]]
    return cams, np.stack([sim.render(scene, c).rgb for c in cams])


@pytest.fixture(scope="module")
def small():
    return _build("da3-small")


def _moved(cam, k=1.0, t=(0.0, 0.0, 0.0)):
    """The same camera in a world scaled by ``k`` about the origin and then shifted by ``t``."""
    E = cam.world_to_camera
    En = torch.eye(4, dtype=E.dtype)
    En[:3, :3] = E[:3, :3]
    En[:3, 3] = k * E[:3, 3] - E[:3, :3] @ torch.as_tensor(t, dtype=E.dtype)
    return Camera(cam.K, En, cam.height, cam.width)


def test_normalisation_and_umeyama_helpers():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(5, 3, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    R = q * torch.sign(torch.det(q))
    assert abs(umeyama_scale(src, 2.5 * src @ R.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)) - 2.5) < 1e-9
    cams = [_moved(sim.default_camera(32, 32, world_to_camera=E), 1.0, (3.0, 1.0, -2.0))
            for E in sim.scene_trajectory(sim.make_scene("room", seed=0), "loop", 5)]
    E = torch.stack([c.world_to_camera for c in cams])
    En, unit = normalize_extrinsics(E)
    assert torch.allclose(En[0], torch.eye(4, dtype=En.dtype), atol=1e-12)
    centres = torch.linalg.inv(En)[:, :3, 3]
    assert abs(float(centres.norm(dim=-1).median()) - 1.0) < 1e-9
    # the same rig in another world frame and unit normalises to the same thing
    En2, unit2 = normalize_extrinsics(torch.stack([_moved(c, 4.0, (10.0, 0.0, 5.0)).world_to_camera for c in cams]))
    assert torch.allclose(En, En2, atol=1e-9) and abs(unit2 / unit - 4.0) < 1e-9


@pytest.mark.slow
def test_da3_depth_ignores_the_world_origin_and_follows_the_world_unit(views, small):
    cams, frames = views
    p = DA3Depth(net=small, preset="da3-small", process_res=84)
    d0, _ = p.estimate(frames, cams)
    assert p.last_metric == [True] * 3
    d_shift, _ = p.estimate(frames, [_moved(c, 1.0, (50.0, -20.0, 30.0)) for c in cams])
    torch.testing.assert_close(d_shift, d0, rtol=1e-4, atol=0, equal_nan=True)
    d_x3, _ = p.estimate(frames, [_moved(c, 3.0) for c in cams])  # world in units 3x smaller
    torch.testing.assert_close(d_x3, 3.0 * d0, rtol=1e-4, atol=0, equal_nan=True)
    # one view has no baseline: no metric scale, and an unaligned non-metric frame never gets lifted
    p.estimate(frames[:1], cams[:1])
    assert p.last_metric == [False]
    aligned = AlignedDepth(p, mode="scale")
    with pytest.warns(UserWarning, match="no metric scale"):
        d, _ = aligned.estimate(frames[:1], cams[:1], memory=LatentSpatialMemory(channels=4))
    assert torch.isnan(d).all()


@pytest.mark.slow
def test_da3_metric_preset_takes_no_cameras_scales_by_focal_and_drops_sky(views):
    cams, frames = views
    net = _build("da3metric-large", shrink=True)
    assert net.cam_enc is None
    p = DA3Depth(net=net, preset="da3metric-large", process_res=84)  # use_cameras=True by default
    d, _ = p.estimate(frames, cams)
    assert p.last_metric == [True] * 3
    # the reference: the net on the same normalised 56x84 input, depth * focal / 300
    x = F.interpolate(torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255, size=(56, 84), mode="bilinear",
                      align_corners=False, antialias=True)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = net(x[None])
    focal = 0.5 * (cams[0].K[0, 0] * 84 / 80 + cams[0].K[1, 1] * 56 / 48)
    ref = F.interpolate((out["depth"][0] * focal / 300)[:, None].float(), size=(48, 80), mode="bilinear",
                        align_corners=False)[:, 0]
    assert (out["sky"] < 0.3).all()  # random head: no sky here, so the comparison covers every pixel
    torch.testing.assert_close(d, ref, rtol=1e-4, atol=1e-6)
    # make the sky head fire everywhere: sky pixels become invalid (NaN), not "far"
    with torch.no_grad():
        conv = net.head.scratch.sky_output_conv2[-1]
        conv.weight.zero_()
        conv.bias.fill_(5.0)
    d_sky, _ = p.estimate(frames, cams)
    assert torch.isnan(d_sky).all()


def test_make_depth_provider_devices_and_no_silent_random_weights():
    for name, kw in (("simulator", dict(source=lambda c, i: None)), ("memory", {})):
        p = make_depth_provider(name, device="cpu", **kw)
        assert p.device == torch.device("cpu")
    with pytest.raises(ValueError, match="weights"):
        make_depth_provider("da3", device="cpu")
    p = make_depth_provider("da3", random_weights=True, preset="da3-small")
    assert p._net is None


def test_single_frame_calls_give_single_maps():
    """Callers that handle one frame at a time (the ROS core) get (H, W) back, not (1, H, W)."""
    from mirage_ros.perception import make_mask_provider

    scene = sim.make_scene("outdoor", seed=0, moving_object=True)
    cam = sim.default_camera(64, 112, world_to_camera=sim.scene_trajectory(scene, "loop", 5)[0])
    f = sim.render(scene, cam)
    depth = make_depth_provider("simulator", source=lambda c, i: f.depth)(f.rgb, cam)
    assert depth.shape == (64, 112)
    truth = torch.from_numpy(f.depth)
    ok = torch.isfinite(truth)
    assert torch.equal(depth[ok], truth[ok]) and torch.isnan(depth[~ok]).all()
    batch = make_depth_provider("simulator", source=lambda c, i: f.depth)(f.rgb[None], [cam])
    assert batch.shape == (1, 64, 112)
    ex = make_mask_provider("labels")(f.rgb, cam, labels=f.labels)
    assert ex.shape == (64, 112) and np.array_equal(ex, f.labels != sim.STATIC)
    assert make_mask_provider("none")(f.rgb, cam).shape == (64, 112)
    assert make_mask_provider("labels")(f.rgb[None], [cam], labels=f.labels[None]).shape == (1, 64, 112)
