"""LatentSpatialMemory(exclude_fraction=...): a cell partly covered by a dynamic object keeps its
static part, placed by the static pixels' depth.

Hand-worked scene: a 4-px-stride camera over a fronto-parallel wall at 2 m; a "dynamic object" at
1 m covers some pixels of three cells. The shares (1/16, 8/16, 12/16) and the depth the kept cell
must take (2.0 m, the static pixels' median; bilinear over the centre 2x2 would give 1.75) are
worked out by hand below.
"""
import numpy as np
import pytest
import torch

from mirage_ros.geometry import Camera, look_at
from mirage_ros.memory import LatentSpatialMemory, MemoryError_

H, W, S, C = 8, 12, 4, 3  # a 2 x 3 latent grid


def scene():
    cam = Camera.from_fov(H, W, 60.0, look_at(np.zeros(3), np.array([1.0, 0.0, 0.0])))
    depth = torch.full((H, W), 2.0)
    ex = torch.zeros((H, W), dtype=torch.bool)
    ex[1, 1] = True                    # cell (0, 0): 1 of 16 pixels, a centre pixel
    ex[0:4, 4:6] = True                # cell (0, 1): 8 of 16
    ex[4:8, 0:3] = True                # cell (1, 0): 12 of 16
    depth[ex] = 1.0                    # the object stands in front of the wall
    latent = torch.arange(C * 2 * 3, dtype=torch.float32).reshape(C, 2, 3)
    return cam, depth, ex, latent


def test_zero_excludes_a_cell_with_any_dynamic_pixel():
    cam, depth, ex, latent = scene()
    assert LatentSpatialMemory(channels=C, stride=S).exclude_fraction == 0.375  # the validated default
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, exclude_fraction=0.0)
    mem.insert(latent, depth, cam, exclude=ex)
    assert mem.read(cam).mask.tolist() == [[False, False, True], [False, True, True]]


@pytest.mark.parametrize("fraction, expected", [
    (0.25, [[True, False, True], [False, True, True]]),   # 1/16 kept; 8/16 and 12/16 excluded
    (0.5, [[True, True, True], [False, True, True]]),     # "more than half" excludes; exactly half is kept
    (0.8, [[True, True, True], [True, True, True]]),
])
def test_cells_are_excluded_only_above_the_share(fraction, expected):
    cam, depth, ex, latent = scene()
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, exclude_fraction=fraction)
    assert mem.admissible(depth, cam, exclude=ex).tolist() == expected
    mem.insert(latent, depth, cam, exclude=ex)
    r = mem.read(cam)
    assert r.mask.tolist() == expected
    # A kept cell is placed on the wall (its static pixels), never on the object in front of it.
    assert torch.allclose(r.depth[r.mask], torch.full((int(r.mask.sum()),), 2.0), atol=1e-5)
    assert torch.equal(r.latent[:, r.mask], latent[:, r.mask])


def test_a_cell_level_mask_is_used_as_given():
    cam, depth, _, latent = scene()
    cells = torch.tensor([[True, False, False], [False, False, True]])
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, exclude_fraction=0.5)
    mem.insert(latent, torch.full((H, W), 2.0), cam, exclude=cells)
    assert mem.read(cam).mask.tolist() == [[False, True, True], [True, True, False]]


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.5", float("nan")])
def test_bad_exclude_fraction_is_refused_by_name(bad):
    with pytest.raises(MemoryError_, match="exclude_fraction"):
        LatentSpatialMemory(channels=C, stride=S, exclude_fraction=bad)
