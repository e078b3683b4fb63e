"""The RGB point-cloud baseline and the sort-then-assign readout, against direct expectations."""
import numpy as np
import torch

from mirage_ros.baselines import RGBPointCloudMemory
from mirage_ros.baselines.sort_readout import sort_assign_readout
from mirage_ros.geometry import Camera, look_at
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.world_model.codec import ThumbnailCodec


def test_rgb_cache_rasterises_the_inserted_frame_exactly_and_encodes_it():
    g = torch.Generator().manual_seed(0)
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    img = (torch.rand(64, 96, 3, generator=g) * 255).to(torch.uint8).numpy()
    depth = torch.rand(64, 96, generator=g) * 3 + 1
    codec = ThumbnailCodec()
    cache = RGBPointCloudMemory(codec)
    assert cache.insert(img, depth, cam) == 64 * 96
    rgb, cov, z = cache.render(cam)
    assert cov.all() and np.array_equal(rgb.numpy(), img)
    assert torch.allclose(z, depth, rtol=1e-5)
    latent, mask = cache.read(cam)
    expected = codec.encode(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0]
    assert mask.all() and torch.equal(latent, expected)
    # honest storage: float32 xyz + uint8 rgb per point (+ the same index the latent memory has)
    assert cache.nbytes - cache.cloud.index.nbytes == 64 * 96 * 15
    # a second identical observation is de-duplicated like the latent memory's
    assert cache.insert(img, depth, cam) == 0


def test_sort_assign_readout_rounds_cell_centres_into_collisions():
    # One point per cell at the cell centre (u+1/2). Flooring returns every cell to itself; the
    # official-style rounding (half to even: 0.5->0, 1.5->2, 2.5->2) folds neighbours together.
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    mem = LatentSpatialMemory(feature_dtype=torch.float32)
    latent = torch.randn(48, 4, 6)
    mem.insert(latent, torch.full((64, 96), 2.0), cam)
    ours, m1 = mem.read(cam)
    theirs, m2 = sort_assign_readout(mem.points, mem.features, cam)
    assert m1.all() and m2.sum() < m1.sum()
    assert torch.equal(ours, latent)


def test_rgb_cache_sky_dome_reads_the_sky_pixels_by_rotation_only():
    """Upper half +inf: with ``sky=True`` a translated camera with the same rotation renders those
    pixels exactly as observed (both rasterisers), the wall's points still in front; without it
    they are uncovered."""
    g = torch.Generator().manual_seed(1)
    img = (torch.rand(64, 96, 3, generator=g) * 255).to(torch.uint8).numpy()
    depth = torch.full((64, 96), 3.0)
    depth[:32] = float("inf")
    cam = Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 0, 0]))
    moved = Camera.from_fov(64, 96, 60, look_at([-7.0, 3.0, 2.0], [-6.0, 3.0, 2.0]))
    for splat in ("pixel", "footprint"):
        plain = RGBPointCloudMemory(ThumbnailCodec(), splat=splat)
        plain.insert(img, depth, cam)
        assert not plain.render(cam)[1][:30].any()  # (the footprint fill dilates the wall's edge by 2 px)
        cache = RGBPointCloudMemory(ThumbnailCodec(), splat=splat, sky=True)
        cache.insert(img, depth, cam)
        assert len(cache.sky) == 32 * 96 and cache.num_points == 32 * 96
        rgb, cov, _ = cache.render(moved)
        assert cov[:32].all() and np.array_equal(rgb[:32].numpy(), img[:32])
        rgb0, cov0, z0 = cache.render(cam)
        assert cov0.all() and np.array_equal(rgb0[:30].numpy(), img[:30]) and torch.isinf(z0[:30]).all()
        if splat == "pixel":  # (footprint squares may shift a wall pixel by one; the pixel splat is exact)
            assert np.array_equal(rgb0.numpy(), img) and torch.isinf(z0[:32]).all()
        # a generated frame (sky=False) adds no directions
        cache.insert(img, depth, Camera.from_fov(64, 96, 60, look_at([0, 0, 0], [1, 1, 0])), sky=False)
        assert len(cache.sky) == 32 * 96
