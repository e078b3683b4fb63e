"""RefinedBlockCodec: the block-PCA encoder with a learned decoder (seams across block borders)."""
import json

import numpy as np
import pytest
import torch

from mirage_ros.bench.evaluation import blockiness, blockiness_ratio
from mirage_ros.world_model.codec import CodecError, LinearBlockCodec, load_codec
from mirage_ros.world_model.refined_codec import RefinedBlockCodec

pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth_frames(n=6, H=64, W=96, seed=0):
    """Smooth random colour fields (no block structure at all)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 6, generator=g)
    return torch.nn.functional.interpolate(low, size=(H, W), mode="bicubic", align_corners=False).clamp(0, 1)


def test_fresh_refined_codec_decodes_exactly_like_the_linear_one_and_round_trips(tmp_path):
    x = _smooth_frames()
    lin = LinearBlockCodec.fit(x, channels=12)
    ref = RefinedBlockCodec.from_linear(lin, hidden=8, blocks=1, fine=4)
    z = lin.encode(x)
    assert torch.equal(ref.encode(x), z)  # the encoder is the linear one
    assert torch.allclose(ref.decode(z), lin.decode(z), atol=1e-6)  # zero-initialised output layers
    with torch.no_grad():  # give it a non-trivial state, then save / load it
        for p in ref.deblocker.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ref.save_pretrained(tmp_path / "c")
    back = load_codec(tmp_path / "c")
    assert isinstance(back, RefinedBlockCodec) and back.config() == ref.config()
    assert torch.equal(back.decode(z), ref.decode(z))
    assert not torch.allclose(back.decode(z), lin.decode(z), atol=1e-4)


def test_corrupt_or_mismatched_deblocker_files_name_the_file(tmp_path):
    lin = LinearBlockCodec.fit(_smooth_frames(), channels=12)
    RefinedBlockCodec.from_linear(lin, hidden=8, blocks=1, fine=4).save_pretrained(tmp_path / "c")
    w = tmp_path / "c" / "deblocker.safetensors"
    good = w.read_bytes()
    w.write_bytes(good[:100])
    with pytest.raises(CodecError, match="deblocker.safetensors"):
        load_codec(tmp_path / "c")
    w.write_bytes(good)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["deblocker"]["hidden"] = 16
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="does not fit"):
        load_codec(tmp_path / "c")
    cfg["deblocker"]["hidden"] = 10**9
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodecError, match="hidden"):
        load_codec(tmp_path / "c")


def test_blockiness_by_hand():
    """A mosaic of flat 16-px tiles: all gradient energy sits on the borders (huge ratio); a smooth
    field: borders are nowhere special (about 1); the ratio to itself is exactly 1."""
    g = np.random.default_rng(0)
    tiles = np.kron(g.integers(0, 255, (1, 4, 6)), np.ones((1, 16, 16))).astype(np.uint8)
    tiles = np.repeat(tiles[..., None], 3, -1) + g.integers(0, 2, (1, 64, 96, 3)).astype(np.uint8)
    smooth = (_smooth_frames(1)[0].permute(1, 2, 0).numpy()[None] * 255).astype(np.uint8)
    assert blockiness(tiles, 16) > 50
    assert 0.5 < blockiness(smooth, 16) < 2
    assert blockiness_ratio(smooth, smooth, 16) == 1.0
    assert blockiness_ratio(tiles, smooth, 16) > 25


def _random_deblocker(seed, **cfg):
    from mirage_ros.world_model.refined_codec import BlockDeblocker

    d = BlockDeblocker(**cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + p.numel())))
    return d.eval()


def test_imagination_decoder_runs_outside_memory_cells_only(tmp_path):
    """With an ``imagined`` deblocker: memory cells everywhere (or no mask) = the clean decode; no
    memory cell = the linear decode + the imagined correction, by hand; a memory block two cells deep
    decodes clean at its inner cell's pixels; saved and loaded with both deblockers; a misshapen mask
    and a corrupt imagined file are named."""
    x = _smooth_frames(n=3, H=64, W=96)
    lin = LinearBlockCodec.fit(_smooth_frames(seed=1), channels=12)
    cfg = dict(channels=12, stride=16, hidden=8, blocks=1, fine=4)
    clean = RefinedBlockCodec(lin.basis, lin.mean, lin.scale, 16, _random_deblocker(1, **cfg))
    imag_net = _random_deblocker(2, **cfg)
    both = clean.with_imagined(RefinedBlockCodec(lin.basis, lin.mean, lin.scale, 16, imag_net))
    z = lin.encode(x)
    ones, zeros = torch.ones(3, 4, 6, dtype=torch.bool), torch.zeros(3, 4, 6, dtype=torch.bool)
    assert torch.equal(both.decode(z), clean.decode(z)) and torch.equal(both.decode(z, ones), clean.decode(z))
    with torch.no_grad():
        xl = clean.linear_decode(z)
        by_hand = (xl + imag_net(xl, z)).clamp(0, 1)
    assert torch.allclose(both.decode(z, zeros), by_hand, atol=1e-6)
    assert not torch.allclose(by_hand, clean.decode(z), atol=1e-3)
    part = zeros.clone()
    part[:, 0:3, 0:3] = True  # a 3x3-cell memory block in the top-left corner
    mixed = both.decode(z, part)
    inner = (slice(None), slice(None), slice(0, 24), slice(0, 24))  # pixels up to the middle cell's centre
    assert torch.allclose(mixed[inner], clean.decode(z)[inner], atol=1e-6)
    far = (slice(None), slice(None), slice(56, 64), slice(56, 96))  # more than half a cell from the block
    assert torch.allclose(mixed[far], by_hand[far], atol=1e-6)
    both.save_pretrained(tmp_path / "c")
    back = load_codec(tmp_path / "c")
    assert back.config() == both.config() and "imagined" in json.loads((tmp_path / "c" / "config.json").read_text())
    assert torch.equal(back.decode(z, part), mixed)
    with pytest.raises(CodecError, match="memory_cells"):
        both.decode(z, ones[:, :3])
    (tmp_path / "c" / "imagined.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CodecError, match="imagined.safetensors"):
        load_codec(tmp_path / "c")
    other = LinearBlockCodec.fit(_smooth_frames(seed=5), channels=12)
    with pytest.raises(CodecError, match="imagined"):
        clean.with_imagined(RefinedBlockCodec.from_linear(other, hidden=8, blocks=1, fine=4))
