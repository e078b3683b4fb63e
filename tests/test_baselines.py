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
