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


def test_sky_pixels_may_have_their_own_share():
    """sky_exclude_fraction: excluded pixels at +inf (sky) are held to their own share, dynamic
    ones still to exclude_fraction. Cell (0, 0): 7 of 16 pixels sky, the rest wall (a thin trunk
    against the sky): excluded at the default (7/16 > 0.375), a point on the wall at 2 m with
    0.5. Cell (0, 1): 7 of 16 dynamic at 1 m: excluded either way. Cell (0, 2): 9 of 16 sky:
    above 0.5, excluded either way. The bottom row is plain wall."""
    cam = Camera.from_fov(H, W, 60.0, look_at(np.zeros(3), np.array([1.0, 0.0, 0.0])))
    depth = torch.full((H, W), 2.0)
    ex = torch.zeros((H, W), dtype=torch.bool)
    sky0 = torch.zeros((4, 4), dtype=torch.bool).flatten()
    sky0[:7] = True
    sky0 = sky0.reshape(4, 4)
    ex[0:4, 0:4] = sky0
    depth[0:4, 0:4][sky0] = float("inf")
    dyn = torch.zeros(16, dtype=torch.bool)
    dyn[:7] = True
    dyn = dyn.reshape(4, 4)
    ex[0:4, 4:8] = dyn
    depth[0:4, 4:8][dyn] = 1.0
    sky2 = torch.zeros(16, dtype=torch.bool)
    sky2[:9] = True
    sky2 = sky2.reshape(4, 4)
    ex[0:4, 8:12] = sky2
    depth[0:4, 8:12][sky2] = float("inf")
    latent = torch.arange(C * 2 * 3, dtype=torch.float32).reshape(C, 2, 3)
    default = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32)
    assert default.admissible(depth, cam, exclude=ex).tolist() == [[False, False, False], [True, True, True]]
    mem = LatentSpatialMemory(channels=C, stride=S, feature_dtype=torch.float32, sky_exclude_fraction=0.5)
    assert mem.admissible(depth, cam, exclude=ex).tolist() == [[True, False, False], [True, True, True]]
    mem.insert(latent, depth, cam, exclude=ex)
    r = mem.read(cam)
    assert r.mask.tolist() == [[True, False, False], [True, True, True]]
    assert float(r.depth[0, 0]) == pytest.approx(2.0, abs=1e-5)  # the wall's pixels place it, not the sky
    for bad in (0.25, 1.0, True, "0.5"):
        with pytest.raises(MemoryError_, match="sky_exclude_fraction"):
            LatentSpatialMemory(channels=C, stride=S, sky_exclude_fraction=bad)
