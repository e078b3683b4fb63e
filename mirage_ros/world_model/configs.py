"""Configurations of the world model: the Wan2.2-TI2V-5B backbone, its tiny twin, side-branch layouts.

Everything is a plain dict of constructor arguments (diffusers style), so a config can be printed,
saved next to weights and rebuilt.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

__all__ = [
    "TI2V_5B_TRANSFORMER", "TINY_TRANSFORMER", "SMALL_TRANSFORMER", "TINY_VAE_OVERRIDES", "TEXT_MAX_LENGTH",
    "SIDE_BRANCH_LAYOUTS", "CONFIGS", "side_branch_config", "transformer_config", "text_tokens",
]

TEXT_MAX_LENGTH = 512  # UMT5 tokens the backbone cross-attends to (paper: "up to 512 text tokens")

# WanTransformer3DModel as Wan2.2-TI2V-5B uses it (paper, "Implementation Details": hidden 3072 = 24 x 128,
# FFN 14336, 30 blocks, RMS-normalised q/k, cross-attention normalisation); 5.0B parameters.
TI2V_5B_TRANSFORMER: Dict = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=24,
    attention_head_dim=128,
    in_channels=48,
    out_channels=48,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=14336,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)

# The same class at toy size: runs a forward pass in milliseconds on a CPU (tests, `--config tiny`).
TINY_TRANSFORMER: Dict = dict(
    TI2V_5B_TRANSFORMER,
    num_attention_heads=2,
    attention_head_dim=12,
    ffn_dim=64,
    num_layers=4,
    text_dim=32,
    rope_max_seq_len=32,
)

# The shipped small model (trained on a 2-core CPU; its MODEL_CARD.md and docs/NOTES.md have the measurements):
# width 256 = 4 heads x 64, FFN 768, 4 blocks -> 4.4M backbone parameters (+1.1M side branch at
# block 0, the paper layout's stride 4); 128x224 frames = 8x14 latents = 4x7 tokens per frame with
# patch (1, 2, 2). One text token: it has no text encoder (an all-zero prompt, which attends exactly
# like 512 zero tokens). About 0.5 s per training step at batch 4 on 2 CPU cores.
SMALL_TRANSFORMER: Dict = dict(
    TI2V_5B_TRANSFORMER,
    num_attention_heads=4,
    attention_head_dim=64,
    ffn_dim=768,
    num_layers=4,
    text_dim=64,
    rope_max_seq_len=64,
)

CONFIGS = ("tiny", "small", "full")

# AutoencoderKLWan overrides for the tiny VAE twin (same strides and 48 latent channels).
TINY_VAE_OVERRIDES: Dict = dict(base_dim=8, decoder_base_dim=8, num_res_blocks=1)

# Side-branch layouts. ``stride``: attach after every stride-th backbone block, starting at block 0.
# - paper: layers {0, 4, ..., 28}, 48-channel input (the readout z_hat_t) through the backbone's own
#   patch embedding ("reuses the same patch embedding"); the visibility mask m_t enters through a
#   zero-initialised mask embedding added to the branch's tokens.
# - official (microsoft/LatentSpatialMemory): VACE blocks on every 2nd layer, 96 channels = readout +
#   the VAE encoding of an all-ones "score" video, through the branch's own patch embedding; no mask.
# - spatia (ZhaoJingjing713/Spatia): the official module on every 4th layer (0, 4, ..., 28), 96 channels =
#   VAE(rendered point cloud) + VAE(hole mask), built by ``spatia.SpatiaWorldModel`` (its own conditioning).
SIDE_BRANCH_LAYOUTS: Dict[str, Dict] = {
    "paper": dict(stride=4, in_channels=48, own_patch_embedding=False, embed_mask=True, score_channels=False),
    "official": dict(stride=2, in_channels=96, own_patch_embedding=True, embed_mask=False, score_channels=True),
    "spatia": dict(stride=4, in_channels=96, own_patch_embedding=True, embed_mask=False, score_channels=False),
}


def transformer_config(name: str) -> Dict:
    """``full`` (TI2V-5B), ``small`` (the shipped model) or ``tiny`` (tests)."""
    table = {"full": TI2V_5B_TRANSFORMER, "small": SMALL_TRANSFORMER, "tiny": TINY_TRANSFORMER}
    if name not in table:
        raise ValueError(f"config: expected one of {CONFIGS}, got {name!r}")
    return dict(table[name])


def text_tokens(name: str) -> int:
    """Prompt length the config's backbone sees: 512 UMT5 tokens, 1 for the text-free small model."""
    return 1 if name == "small" else TEXT_MAX_LENGTH


def side_branch_config(layout: str, backbone_config: Dict, layers: Optional[Sequence[int]] = None) -> Dict:
    """Constructor arguments of ``MirageSideBranch`` mirroring ``backbone_config`` in a named layout."""
    if layout not in SIDE_BRANCH_LAYOUTS:
        raise ValueError(f"layout: expected one of {sorted(SIDE_BRANCH_LAYOUTS)}, got {layout!r}")
    spec = SIDE_BRANCH_LAYOUTS[layout]
    n = int(backbone_config["num_layers"])
    layers: Tuple[int, ...] = tuple(range(0, n, spec["stride"])) if layers is None else tuple(int(i) for i in layers)
    return dict(
        layers=layers,
        num_backbone_layers=n,
        in_channels=spec["in_channels"],
        own_patch_embedding=spec["own_patch_embedding"],
        embed_mask=spec["embed_mask"],
        num_attention_heads=backbone_config["num_attention_heads"],
        attention_head_dim=backbone_config["attention_head_dim"],
        ffn_dim=backbone_config["ffn_dim"],
        patch_size=tuple(backbone_config["patch_size"]),
        cross_attn_norm=backbone_config["cross_attn_norm"],
        qk_norm=backbone_config["qk_norm"],
        eps=backbone_config["eps"],
    )
