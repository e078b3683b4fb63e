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
