"""Aligned decode (remembered cells drawn where their points project) and the seam filter, against
analytic scenes: a fronto-parallel plane seen after a sideways step (the image shifts by a known
number of pixels) and after a step towards it (it magnifies by a known factor)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mirage_ros.bench.evaluation import blockiness
from mirage_ros.geometry import Camera
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.world_model.aligned_decode import aligned_anchors, aligned_cells, aligned_frame
from mirage_ros.world_model.codec import CodecError, LinearBlockCodec, load_codec
from mirage_ros.world_model.refined_codec import RefinedBlockCodec, deseam

pytestmark = pytest.mark.usefixtures("one_thread")

H, W, Z, F_PX = 64, 96, 4.0, 60.0


def _codec():
    g = torch.Generator().manual_seed(0)
    low = torch.rand(8, 3, 6, 9, generator=g)
    frames = F.interpolate(low, size=(H, W), mode="bicubic", align_corners=False).clamp(0, 1)
    return LinearBlockCodec.fit(frames, channels=48), frames


def _camera(x=0.0, z=0.0):
    K = torch.tensor([[F_PX, 0, W / 2], [0, F_PX, H / 2], [0, 0, 1]], dtype=torch.float64)
    E = torch.eye(4, dtype=torch.float64)
    E[0, 3], E[2, 3] = -x, -z  # camera at (x, 0, z) looking down +z: world -> camera
    return Camera(K, E, H, W)


def _plane_memory(codec, image):
    """The plane z = Z seen by the camera at the origin, its latents exactly the image's (the image
    lies in the codec's span)."""
    z = codec.encode(image[None])[0]
    mem = LatentSpatialMemory(48, 16)
    mem.insert(z, torch.full((H, W), Z), _camera())
    return mem, z


def _held(codec, mem):
    """The image the memory holds (its stored latents, as stored, linearly decoded, unclamped)."""
    return _in_span(codec, None, mem.read(_camera()).latent[None].float())


def _in_span(codec, frames, z=None):
    """A frame's linear decode, unclamped: it encodes to the same latents (the basis is orthonormal)."""
    z = codec.encode(frames[:1]) if z is None else z
    blocks = torch.einsum("tchw,cd->tdhw", z, codec.basis) * codec.scale + codec._mean_img
    return F.pixel_shuffle(blocks, codec.stride)[0]


def test_a_sideways_step_shifts_each_block_to_where_its_point_projects():
    codec, frames = _codec()
    image = _in_span(codec, frames)  # exactly representable: the memory holds it without loss
    mem, _ = _plane_memory(codec, image)
    image = _held(codec, mem)  # what the memory holds (its feature dtype rounds the latents)
    shift = 5  # pixels: f * dx / Z
    cam = _camera(x=shift * Z / F_PX)
    r = mem.read(cam)
    cells = aligned_cells(r, None)
    v, u, x, y, zz, scale = aligned_anchors(mem, r, cam, cells)
    # hand-worked: the point of source cell (j, i) at pixel centre 16 i + 8 lands at 16 i + 3
    assert torch.allclose(x, u.double() * 16 + 3, atol=1e-6) and torch.allclose(y, v.double() * 16 + 8, atol=1e-6)
    assert torch.allclose(zz, torch.full_like(zz, Z)) and torch.allclose(scale, torch.ones_like(scale), atol=1e-6)
    base = codec.decode(r.latent[None])[0]  # the grid decode: every block 5 px off
    out = aligned_frame(codec, r.latent, (v, u, x, y, zz, scale), r, base)
    truth = torch.zeros_like(image)
    truth[..., : W - shift] = image[..., shift:]  # the plane's texture moved 5 px left
    # flat cores (within 4 px of an anchor on both axes): exactly the shifted image
    cols = torch.arange(W).double() + 0.5
    near_x = ((cols[None] - x.unique()[:, None]).abs() <= 4).any(0)
    rows = torch.arange(H).double() + 0.5
    near_y = ((rows[None] - y.unique()[:, None]).abs() <= 4).any(0)
    core = near_y[:, None] & near_x[None] & (torch.arange(W) < W - shift)[None]
    assert core.sum() > 0.2 * H * W
    assert torch.allclose(out[:, core], truth.clamp(0, 1)[:, core], atol=1e-5)
    assert not torch.allclose(base[:, core], truth.clamp(0, 1)[:, core], atol=1e-2)
    valid = (torch.arange(W) < W - shift)[None].expand(H, W)
    err_aligned = ((out - truth.clamp(0, 1))[:, valid] ** 2).mean()
    err_grid = ((base - truth.clamp(0, 1))[:, valid] ** 2).mean()
    assert err_aligned < 0.25 * err_grid


def test_a_step_towards_the_plane_magnifies_the_blocks():
    codec, frames = _codec()
    image = _in_span(codec, frames)
    mem, _ = _plane_memory(codec, image)
    image = _held(codec, mem)
    cam = _camera(z=Z / 2)  # half the distance: everything twice as large about the centre
    r = mem.read(cam)
    v, u, x, y, zz, scale = aligned_anchors(mem, r, cam, aligned_cells(r, None))
    assert v.numel() > 0
    interior = (scale != 1)
    assert interior.float().mean() > 0.5  # row ends and lone cells keep scale 1
    assert torch.allclose(scale[interior], torch.full_like(scale[interior], 2.0), atol=1e-6)
    base = codec.decode(r.latent[None])[0]
    out = aligned_frame(codec, r.latent, (v, u, x, y, zz, scale), r, base)
    flat = aligned_frame(codec, r.latent, (v, u, x, y, zz, scale), r, base, rescale=False)
    # the truth: the source image bilinearly magnified x2 about the principal point
    ys, xs = torch.meshgrid(torch.arange(H).double() + 0.5, torch.arange(W).double() + 0.5, indexing="ij")
    sx, sy = (xs - W / 2) / 2 + W / 2, (ys - H / 2) / 2 + H / 2
    grid = torch.stack([sx / W * 2 - 1, sy / H * 2 - 1], -1)[None].float()
    truth = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)[0].clamp(0, 1)
    # cores of magnified blocks (within 8 px = 4 source px of an anchor): the magnified image
    sel = interior.nonzero().squeeze(1)
    core = torch.zeros(H, W, dtype=torch.bool)
    for k in sel.tolist():
        core |= ((xs - x[k]).abs() <= 7.5) & ((ys - y[k]).abs() <= 7.5)
    assert core.sum() > 100
    assert torch.allclose(out[:, core], truth[:, core], atol=1e-4)
    mse = lambda a: float(((a - truth) ** 2).mean())  # noqa: E731
    assert mse(out) < mse(flat) < mse(base)


def test_blocks_of_another_surface_do_not_blend_in():
    """A near plane's block next to a far plane's: within the depth band only."""
    codec, frames = _codec()
    image = _in_span(codec, frames)
    z = codec.encode(image[None])[0]
    depth = torch.full((H, W), Z)
    depth[:, :48] = Z / 2  # the left three cell columns are a nearer surface
    mem = LatentSpatialMemory(48, 16)
    mem.insert(z, depth, _camera())
    cam = _camera()
    r = mem.read(cam)
    anchors = aligned_anchors(mem, r, cam, aligned_cells(r, None))
    base = torch.zeros(3, H, W)
    out = aligned_frame(codec, r.latent, anchors, r, base, depth_tol=0.4)
    # just right of the depth edge (x = 48..51, 7.5 px from both anchors) only the far block is
    # drawn: its own first columns (rows in the flat cores, where no row neighbour blends in)
    rows = ((torch.arange(H) % 16) >= 4) & ((torch.arange(H) % 16) <= 11)
    far_block = torch.cat(list(codec.cell_patches(r.latent[:, :, 3].T)), 1)  # column 3's cells decoded alone
    edge = out[:, :, 48:52][:, rows]
    weight = torch.tensor([4.5, 5.5, 6.5, 7.5]) / 8  # the far block's window 7.5 .. 4.5 px from its anchor
    assert torch.allclose(edge, weight * far_block[:, :, :4][:, rows].clamp(0, 1), atol=1e-5)
    blended = aligned_frame(codec, r.latent, anchors, r, base, depth_tol=10.0)[:, :, 48:52][:, rows]
    assert not torch.allclose(blended, edge, atol=1e-3)  # with no depth band the near block bleeds in


def test_seam_filter_by_hand_and_in_the_codec(tmp_path):
    g = torch.Generator().manual_seed(1)
    tiles = torch.rand(2, 3, H // 16, W // 16, generator=g)
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    texture = 0.02 * torch.sin(xs * 0.9) * torch.cos(ys * 0.7)  # some energy inside the tiles
    mosaic = (F.interpolate(tiles, scale_factor=16, mode="nearest") * 0.9 + texture).clamp(0, 1)
    out = deseam(mosaic, 16, band=4, sigma=2.0)
    far = torch.ones(H, W, dtype=torch.bool)  # pixels 4 px or more from every border line
    c = torch.arange(W) % 16
    r = torch.arange(H) % 16
    far &= ((r >= 4) & (r <= 11))[:, None] & ((c >= 4) & (c <= 11))[None]
    assert torch.equal(out[..., far], mosaic[..., far])
    to_u8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    assert blockiness(to_u8(out)) < 0.2 * blockiness(to_u8(mosaic))
    ramp = (0.2 + 0.005 * xs + 0.003 * ys).expand(1, 3, H, W).contiguous()
    smooth = deseam(ramp, 16, 4, 2.0)
    inner = (slice(None), slice(None), slice(8, H - 8), slice(8, W - 8))
    assert torch.allclose(smooth[inner], ramp[inner], atol=1e-5)  # a Gaussian leaves a linear field alone
    assert torch.equal(deseam(mosaic, 16, 0, 2.0), mosaic)
    # the codec keeps it in its config and applies it to the imagination decoder's output only
    codec, frames = _codec()
    ref = RefinedBlockCodec.from_linear(codec, hidden=8, blocks=1, fine=4)
    ref = RefinedBlockCodec(ref.basis, ref.mean, ref.scale, ref.stride, ref.deblocker, ref.deblocker,
                            seam_filter={"band": 4, "sigma": 2.0})
    ref.save_pretrained(tmp_path / "c")
    back = load_codec(tmp_path / "c")
    assert back.seam_filter == {"band": 4, "sigma": 2.0}
    z = ref.encode(frames[:2])
    every = torch.ones(2, H // 16, W // 16, dtype=torch.bool)
    assert torch.equal(back.decode(z, memory_cells=every), ref.decode(z))  # memory cells: untouched
    none = torch.zeros_like(every)
    guess = ref.linear_decode(z)  # a fresh (zero-output) imagination decoder adds nothing
    assert torch.allclose(back.decode(z, memory_cells=none), deseam(guess, 16, 4, 2.0).clamp(0, 1),
                          atol=1e-5)
    import json

    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["seam_filter"] = {"band": 0, "sigma": 2.0}
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="seam_filter.band"):
        load_codec(tmp_path / "c")


def test_deseam_cells_filters_only_the_given_cells_and_the_rollout_checks_its_settings():
    from mirage_ros.world_model.aligned_decode import deseam_cells
    from mirage_ros.world_model.rollout import RolloutConfig

    g = torch.Generator().manual_seed(2)
    frame = F.interpolate(torch.rand(1, 3, H // 16, W // 16, generator=g), scale_factor=16, mode="nearest")[0]
    seam = {"band": 4, "sigma": 2.0}
    none = torch.zeros(H // 16, W // 16, dtype=torch.bool)
    assert torch.equal(deseam_cells(frame, none, 16, seam), frame)
    assert torch.equal(deseam_cells(frame, ~none, 16, None), frame)  # a codec without a filter
    every = deseam_cells(frame, ~none, 16, seam)
    assert torch.allclose(every, deseam(frame[None], 16, **seam)[0].clamp(0, 1), atol=1e-6)
    left = none.clone()
    left[:, :2] = True  # the two left cell columns (pixels 0..31)
    out = deseam_cells(frame, left, 16, seam)
    assert torch.allclose(out[..., :24], every[..., :24], atol=1e-6)  # full weight well inside
    assert torch.equal(out[..., 40:], frame[..., 40:])  # untouched beyond the upsampled mask's reach
    assert not torch.allclose(out[..., :24], frame[..., :24])
    with pytest.raises(ValueError, match="aligned_overlap"):
        RolloutConfig(aligned_overlap=1.5)
    with pytest.raises(ValueError, match="aligned_depth_tol"):
        RolloutConfig(aligned_depth_tol=0.0)
