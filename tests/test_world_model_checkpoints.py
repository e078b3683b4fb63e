"""Checkpoint layouts: key conversion and loading, on tiny twins of the real classes.

The expected original-layout names are written here by hand from the public module layouts
(Wan2.2 ``wan/modules/model.py`` and ``vae2_2.py``; the official Mirage ``wan_video_vace.py``),
not derived from the converters under test. A conversion is right when the converted state dict
equals the diffusers model's own state dict, key for key and tensor for tensor, and a model loaded
from the converted file computes the same outputs.
"""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file

from mirage_ros.world_model.checkpoints import (
    CheckpointError,
    convert_wan22_vae_to_diffusers,
    convert_wan_transformer_to_diffusers,
    detect_layout,
    read_state_dict,
)
from mirage_ros.world_model.codec import WanVAECodec
from mirage_ros.world_model.configs import TINY_TRANSFORMER, TINY_VAE_OVERRIDES
from mirage_ros.world_model.frame_roles import FrameRoles
from mirage_ros.world_model.model import MirageWorldModel
from mirage_ros.world_model.side_branch import MirageSideBranch
from mirage_ros.world_model.transformer import MirageTransformer

pytestmark = pytest.mark.usefixtures("one_thread")

# -- the original layouts, by hand ------------------------------------------------------------------

DIT_TOP = {  # diffusers prefix -> Wan2.2 WanModel prefix
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
DIT_BLOCK = {  # inside blocks.N: diffusers -> WanAttentionBlock
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",  # WanAttentionBlock.norm3 is the (affine) cross-attention norm
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}


def block_key_to_original(rest):
    if rest == "scale_shift_table":
        return "modulation"
    module, leaf = rest.rsplit(".", 1)
    return f"{DIT_BLOCK[module]}.{leaf}"


def dit_to_original(sd):
    out = {}
    for k, v in sd.items():
        if k == "scale_shift_table":
            out["head.modulation"] = v
        elif k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            out[f"blocks.{i}.{block_key_to_original(rest)}"] = v
        else:
            module, leaf = k.rsplit(".", 1)
            out[f"{DIT_TOP[module]}.{leaf}"] = v
    return out


RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
          "conv2": "residual.6", "conv_shortcut": "shortcut"}


def resnet_to_original(rest):
    for new, old in RESNET.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    raise KeyError(rest)


def vae_to_original(sd, num_res_blocks):
    """diffusers AutoencoderKLWan (Wan2.2, residual) -> WanVAE_ names (Encoder3d / Decoder3d)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "quant_conv":
            new = "conv1." + parts[1]
        elif parts[0] == "post_quant_conv":
            new = "conv2." + parts[1]
        else:
            side, rest = parts[0], ".".join(parts[1:])
            if rest.startswith("conv_in."):
                new = f"{side}.conv1.{rest[8:]}"
            elif rest.startswith("norm_out."):
                new = f"{side}.head.0.{rest[9:]}"
            elif rest.startswith("conv_out."):
                new = f"{side}.head.2.{rest[9:]}"
            elif rest.startswith("mid_block.attentions.0."):
                new = f"{side}.middle.1.{rest[len('mid_block.attentions.0.'):]}"
            elif rest.startswith("mid_block.resnets."):
                j, sub = parts[3], ".".join(parts[4:])
                new = f"{side}.middle.{2 * int(j)}.{resnet_to_original(sub)}"
            else:  # down_blocks.i.resnets.j / down_blocks.i.downsampler, up_blocks likewise
                blocks, i, kind = parts[1], parts[2], parts[3]
                seq = "downsamples" if blocks == "down_blocks" else "upsamples"
                if kind in ("downsampler", "upsampler"):
                    pos = num_res_blocks if seq == "downsamples" else num_res_blocks + 1  # the Resample comes last
                    new = f"{side}.{seq}.{i}.{seq}.{pos}.{'.'.join(parts[4:])}"
                else:
                    new = f"{side}.{seq}.{i}.{seq}.{parts[4]}.{resnet_to_original('.'.join(parts[5:]))}"
        out[new] = v
    return out


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_TRANSFORMER).eval()


def tiny_vae(seed=0):
    cfg = WanVAECodec.default_config()
    cfg.update(TINY_VAE_OVERRIDES)
    torch.manual_seed(seed)
    return AutoencoderKLWan(**cfg).eval()


def distinct(sd):
    """Give every tensor distinct values so a swapped pair of same-shaped keys cannot go unnoticed."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) for k, v in sd.items()}


# -- tests -----------------------------------------------------------------------------------------

def test_dit_original_keys_convert_to_diffusers_exactly():
    sd = distinct(tiny_backbone().state_dict())
    original = dit_to_original(sd)
    assert "blocks.0.self_attn.q.weight" in original and "blocks.0.norm3.weight" in original
    assert "head.modulation" in original and "time_projection.1.weight" in original
    converted = convert_wan_transformer_to_diffusers(original)
    assert set(converted) == set(sd)
    assert all(torch.equal(converted[k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError, match="blocks.0.bogus"):
        convert_wan_transformer_to_diffusers({**original, "blocks.0.bogus.weight": torch.zeros(1)},
                                             source="x.safetensors")


def test_vae_original_keys_convert_to_diffusers_exactly():
    vae = tiny_vae()
    sd = distinct(vae.state_dict())
    original = vae_to_original(sd, num_res_blocks=TINY_VAE_OVERRIDES["num_res_blocks"])
    for key in ("encoder.conv1.weight", "encoder.downsamples.0.downsamples.0.residual.0.gamma",
                "encoder.downsamples.0.downsamples.1.resample.1.weight",
                "encoder.downsamples.1.downsamples.1.time_conv.weight",
                "encoder.middle.1.to_qkv.weight", "decoder.upsamples.0.upsamples.2.time_conv.weight",
                "decoder.head.2.weight", "conv1.weight", "conv2.weight"):
        assert key in original, key
    converted = convert_wan22_vae_to_diffusers(original)
    assert set(converted) == set(sd)
    assert all(torch.equal(converted[k], sd[k]) for k in sd)


def _save_diffusers_folder(root, backbone, vae):
    backbone.save_pretrained(str(root / "transformer"), safe_serialization=True)
    vae.save_pretrained(str(root / "vae"), safe_serialization=True)


@torch.no_grad()
def _same_model(model: MirageWorldModel, backbone, vae):
    roles = FrameRoles(3, 1, 1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 48, roles.num_frames, 4, 6, generator=g)
    text = torch.randn(1, 5, TINY_TRANSFORMER["text_dim"], generator=g)
    ft = roles.frame_timesteps(600.0)
    assert torch.equal(model.transformer(x, ft, text, roles), MirageTransformer(backbone)(x, ft, text, roles))
    z = torch.randn(1, 48, 2, 4, 6, generator=g)
    assert torch.allclose(model.codec.vae.decode(z).sample, vae.decode(z).sample, atol=1e-5)


def test_load_diffusers_layout(tmp_path):
    bb, vae = tiny_backbone(), tiny_vae()
    _save_diffusers_folder(tmp_path, bb, vae)
    assert detect_layout(tmp_path) == "diffusers"
    model = MirageWorldModel.from_pretrained(tmp_path, device="cpu", text_encoder=False)
    _same_model(model, bb, vae)
    assert "FRESH" in model.description and model.layout == "paper"


def test_load_original_layout(tmp_path):
    bb, vae = tiny_backbone(), tiny_vae()
    save_file({k: v.contiguous() for k, v in dit_to_original(bb.state_dict()).items()},
              str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "ti2v", "dim": 24, "num_heads": 2, "ffn_dim": 64, "num_layers": 4, "text_dim": 32,
        "in_dim": 48, "out_dim": 48, "freq_dim": 256, "eps": 1e-6}))
    torch.save(vae_to_original({k: v.clone() for k, v in vae.state_dict().items()},
                               TINY_VAE_OVERRIDES["num_res_blocks"]),
               tmp_path / "Wan2.2_VAE.pth")
    assert detect_layout(tmp_path) == "original"
    model = MirageWorldModel.from_pretrained(tmp_path, device="cpu", text_encoder=False)
    _same_model(model, bb, vae)


def test_missing_and_mismatched_weights_name_the_file_and_keys(tmp_path):
    bb, vae = tiny_backbone(), tiny_vae()
    _save_diffusers_folder(tmp_path, bb, vae)
    f = next((tmp_path / "transformer").glob("*.safetensors"))
    sd = load_file(str(f))
    del sd["blocks.1.attn1.to_k.weight"]
    sd["proj_out.bias"] = torch.zeros(7)
    save_file(sd, str(f))
    with pytest.raises(CheckpointError) as err:
        MirageWorldModel.from_pretrained(tmp_path, device="cpu", text_encoder=False)
    msg = str(err.value)
    assert str(tmp_path / "transformer") in msg and "blocks.1.attn1.to_k.weight" in msg
    assert "proj_out.bias" in msg and "(7,)" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither the diffusers layout"):
        detect_layout(tmp_path / "empty")


class Payload:
    """Any non-tensor class: torch.load(weights_only=True) must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    assert torch.equal(read_state_dict(tmp_path / "ok.pth")["w"], torch.ones(2))


@torch.no_grad()
def _branch_outputs(bb, branch, in_ch):
    roles = FrameRoles(3, 1, 1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 48, roles.num_frames, 4, 6, generator=g)
    text = torch.randn(1, 5, TINY_TRANSFORMER["text_dim"], generator=g)
    control = torch.randn(1, in_ch, roles.num_conditioned, 4, 6, generator=g)
    mask = torch.ones(1, 1, roles.num_conditioned, 4, 6)
    return MirageTransformer(bb, branch)(x, roles.frame_timesteps(500.0), text, roles, control, mask)


def test_official_side_branch_weights_load(tmp_path):
    bb = tiny_backbone()
    branch = MirageSideBranch.from_backbone(bb, "official")
    branch.load_state_dict(distinct(branch.state_dict()))
    official = {}
    for k, v in branch.state_dict().items():  # official VaceWanModel names, by hand
        if k.startswith("patch_embedding."):
            official["vace." + k.replace("patch_embedding.", "vace_patch_embedding.")] = v
            continue
        _, i, rest = k.split(".", 2)
        if rest.startswith("proj_in."):
            rest = "before_proj." + rest[len("proj_in."):]
        elif rest.startswith("proj_out."):
            rest = "after_proj." + rest[len("proj_out."):]
        else:
            rest = block_key_to_original(rest)
        official[f"vace.vace_blocks.{i}.{rest}"] = v.contiguous()
    assert "vace.vace_blocks.0.before_proj.weight" in official and "vace.vace_blocks.1.self_attn.q.weight" in official
    path = tmp_path / "vace.safetensors"
    save_file(official, str(path))
    loaded = MirageSideBranch.from_pretrained(path, backbone=bb)
    assert loaded.config.layers == (0, 2) and loaded.config.in_channels == 96
    assert torch.equal(_branch_outputs(bb, loaded, 96), _branch_outputs(bb, branch, 96))
    del official["vace.vace_blocks.1.after_proj.weight"]
    save_file(official, str(path))
    with pytest.raises(CheckpointError) as err:
        MirageSideBranch.from_pretrained(path, backbone=bb)
    assert str(path) in str(err.value) and "blocks.1.proj_out.weight" in str(err.value)


def test_our_side_branch_format_round_trip(tmp_path):
    bb = tiny_backbone()
    branch = MirageSideBranch.from_backbone(bb, "paper")
    branch.randomize_output_projections(std=0.3)
    path = branch.save_pretrained(tmp_path / "side.safetensors")
    loaded = MirageSideBranch.from_pretrained(path, backbone=bb)
    assert loaded.config.layers == branch.config.layers and loaded.mask_embedding is not None
    assert torch.equal(_branch_outputs(bb, loaded, 48), _branch_outputs(bb, branch, 48))
    other = WanTransformer3DModel(**dict(TINY_TRANSFORMER, num_layers=2)).eval()
    with pytest.raises(CheckpointError):
        MirageSideBranch.from_pretrained(path, backbone=other)
