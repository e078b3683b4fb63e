"""The Mirage side branch: ControlNet/VACE-style hint blocks that inject the memory readout.

Each hint block is a copy of the backbone's ``WanTransformerBlock`` (diffusers) with a linear
output projection ``proj_out``; the first also has ``proj_in``, which adds the backbone's own
patch-embedded tokens to the control tokens (as VACE does). The blocks run in sequence on the
control tokens; block k's ``proj_out`` output is added to the backbone's hidden states after
backbone layer ``layers[k]``. ``proj_out`` starts at zero, so a fresh branch leaves the backbone's
output unchanged (paper: ControlNet-style; official code: ``initialize_vace_zero_hint``).

Why our own module: diffusers' ``WanVACETransformer3DModel`` takes one timestep per sample, but
the TI2V-5B backbone and the Mirage frame roles need one per token (clean frames at t = 0). Reusing
``WanTransformerBlock`` gives the per-token path for free.

Inputs (layouts): control (B, C_in, F_c, h, w) latents of the conditioned frames (targets +
preceding); mask (B, 1, F_c, h, w) float visibility m_t; tokens (B, S_c, D) the backbone's patch-
embedded tokens of the same frames; temb (B, S_c, 6, D) per-token modulation.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from .dtypes import cast_keep_fp32, default_dtype

__all__ = ["MirageSideBlock", "MirageSideBranch"]


class MirageSideBlock(WanTransformerBlock):
    """A backbone block plus ``proj_in`` (first block only) and a zero-initialised ``proj_out``."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str, cross_attn_norm: bool, eps: float,
                 has_proj_in: bool):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.proj_in = nn.Linear(dim, dim) if has_proj_in else None
        self.proj_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, control, tokens, encoder_hidden_states, temb, rotary_emb):
        """-> (hint (B, S_c, D), control (B, S_c, D)) for the next hint block."""
        if self.proj_in is not None:
            control = self.proj_in(control) + tokens
        control = super().forward(control, encoder_hidden_states, temb, rotary_emb)
        return self.proj_out(control), control


class MirageSideBranch(ModelMixin, ConfigMixin):
    """Hint blocks attached after backbone layers ``layers`` (see ``configs.SIDE_BRANCH_LAYOUTS``).

    Args:
        layers: backbone block indices that receive a hint (must include 0, sorted).
        num_backbone_layers: depth of the backbone it was built for (checked when attached).
        in_channels: channels of the control latents (48 paper, 96 official).
        own_patch_embedding: a patch embedding of its own (official); otherwise the backbone's is
            passed to ``forward`` (paper: "reuses the same patch embedding").
        embed_mask: embed the visibility mask with a zero-initialised patch convolution (paper).
        the rest mirror the backbone's ``WanTransformer3DModel`` arguments.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["MirageSideBlock"]

    @register_to_config
    def __init__(
        self,
        layers: Sequence[int] = tuple(range(0, 30, 4)),
        num_backbone_layers: int = 30,
        in_channels: int = 48,
        own_patch_embedding: bool = False,
        embed_mask: bool = True,
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        ffn_dim: int = 14336,
        patch_size: Tuple[int, int, int] = (1, 2, 2),
        cross_attn_norm: bool = True,
        qk_norm: str = "rms_norm_across_heads",
        eps: float = 1e-6,
    ):
        super().__init__()
        layers = [int(i) for i in layers]
        if not layers or layers[0] != 0 or sorted(set(layers)) != layers:
            raise ValueError(f"layers: expected sorted unique block indices starting at 0, got {layers}")
        if layers[-1] >= num_backbone_layers:
            raise ValueError(f"layers: {layers[-1]} is beyond the backbone's {num_backbone_layers} blocks")
        dim = num_attention_heads * attention_head_dim
        self.blocks = nn.ModuleList(
            [MirageSideBlock(dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps, has_proj_in=(k == 0))
             for k in range(len(layers))]
        )
        self.patch_embedding = (
            nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size) if own_patch_embedding else None
        )
        self.mask_embedding = None
        if embed_mask:
            self.mask_embedding = nn.Conv3d(1, dim, kernel_size=patch_size, stride=patch_size)
            nn.init.zeros_(self.mask_embedding.weight)
            nn.init.zeros_(self.mask_embedding.bias)
        self.gradient_checkpointing = False
        self.layer_to_block = {layer: k for k, layer in enumerate(layers)}

    def embed(self, control: torch.Tensor, mask: Optional[torch.Tensor],
              backbone_patch_embedding: Optional[Callable]) -> torch.Tensor:
        """(B, C_in, F_c, h, w) control [+ (B, 1, F_c, h, w) mask] -> (B, S_c, D) control tokens."""
        if control.shape[1] != self.config.in_channels:
            raise ValueError(f"control: expected {self.config.in_channels} channels, got {control.shape[1]}")
        embed = self.patch_embedding if self.patch_embedding is not None else backbone_patch_embedding
        if embed is None:
            raise ValueError("side branch: it shares the backbone's patch embedding, pass it in")
        weight = embed.weight
        x = embed(control.to(weight.dtype))
        if self.mask_embedding is not None:
            if mask is None:
                raise ValueError("mask: this side branch embeds the visibility mask m_t; pass it")
            x = x + self.mask_embedding(mask.to(self.mask_embedding.weight.dtype))
        return x.flatten(2).transpose(1, 2)

    def forward(self, control_tokens, tokens, encoder_hidden_states, temb, rotary_emb) -> List[torch.Tensor]:
        """Hints, one (B, S_c, D) per attached layer, from control tokens and the backbone's tokens."""
        hints = []
        c = control_tokens
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hint, c = self._gradient_checkpointing_func(block, c, tokens, encoder_hidden_states, temb, rotary_emb)
            else:
                hint, c = block(c, tokens, encoder_hidden_states, temb, rotary_emb)
            hints.append(hint)
        return hints

    @classmethod
    def from_backbone(cls, backbone, layout: str = "paper", layers: Optional[Sequence[int]] = None,
                      copy_weights: bool = True) -> "MirageSideBranch":
        """A branch mirroring ``backbone`` (a ``WanTransformer3DModel``) in a named layout.

        ``copy_weights``: start each hint block from the backbone block it attaches to (ControlNet
        practice); ``proj_out`` stays zero either way, so the backbone's output is unchanged.
        """
        from .configs import side_branch_config

        # built directly in the backbone's dtype and device: 8 full-size blocks in float32 would be 5 GB
        with default_dtype(backbone.dtype), torch.device(backbone.device):
            branch = cls(**side_branch_config(layout, dict(backbone.config), layers))
        cast_keep_fp32(branch, backbone.dtype)
        if copy_weights:
            for layer, block in zip(branch.config.layers, branch.blocks):
                missing, unexpected = block.load_state_dict(backbone.blocks[layer].state_dict(), strict=False)
                only_projections = all(k.startswith(("proj_in", "proj_out")) for k in missing)
                assert not unexpected and only_projections, (missing, unexpected)
            if branch.patch_embedding is not None:
                # own patch embedding: the readout half starts as the backbone's, the rest at zero
                w = torch.zeros_like(branch.patch_embedding.weight)
                c = min(w.shape[1], backbone.patch_embedding.weight.shape[1])
                w[:, :c] = backbone.patch_embedding.weight[:, :c]
                branch.patch_embedding.weight.data.copy_(w)
                branch.patch_embedding.bias.data.copy_(backbone.patch_embedding.bias)
        return branch

    # -- weights ---------------------------------------------------------------------------------
    def save_pretrained(self, path, **kwargs):
        """A folder (diffusers: ``config.json`` + ``diffusion_pytorch_model.safetensors``), or, when
        ``path`` ends in ``.safetensors``, one file with the config in its metadata."""
        from pathlib import Path

        path = Path(path)
        if path.suffix != ".safetensors":
            return super().save_pretrained(str(path), safe_serialization=True, **kwargs)
        import json

        from safetensors.torch import save_file

        from .checkpoints import SIDE_BRANCH_METADATA_KEY

        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k,
               v in dict(self.config).items() if not k.startswith("_")}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path),
                  metadata={"format": "pt", SIDE_BRANCH_METADATA_KEY: json.dumps(cfg)})
        return path

    @classmethod
    def from_pretrained(cls, path, backbone=None, device=None, dtype=None, **_ignored) -> "MirageSideBranch":
        """Load a side branch from ``path`` and check it fits ``backbone`` (when given).

        ``path``: a folder written by ``save_pretrained``; our single ``.safetensors`` file; or the
        official Mirage VACE weights (``vace_blocks.*``: converted; the attached layers are spread
        evenly from 0 over the backbone's depth, as the official ``infer_vace_layers`` does, so the
        backbone is needed). Errors name the file and the keys (``CheckpointError``).
        """
        import json
        from pathlib import Path

        from .checkpoints import (
            SIDE_BRANCH_METADATA_KEY,
            CheckpointError,
            check_state_dict,
            convert_official_side_branch,
            read_metadata,
            read_state_dict,
        )
        from .configs import side_branch_config

        path = Path(path)
        if path.is_dir():
            cfg_path = path / "config.json"
            if not cfg_path.is_file():
                raise CheckpointError(path, what="side branch", note="the folder has no config.json")
            try:
                cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(cfg_path, what="side branch", note=f"not valid JSON ({exc})") from None
            state, what, src = read_state_dict(path), "side branch", path
        else:
            state, meta, src = read_state_dict(path), read_metadata(path), path
            if SIDE_BRANCH_METADATA_KEY in meta:
                cfg, what = json.loads(meta[SIDE_BRANCH_METADATA_KEY]), "side branch"
            else:
                what = "official Mirage side branch (VACE)"
                if backbone is None:
                    raise CheckpointError(path, what=what, note="official weights carry no config: pass the backbone")
                state = convert_official_side_branch(state, source=str(path))
                n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
                n_layers = int(backbone.config.num_layers)
                stride = -(-n_layers // n_blocks)
                layers = list(range(0, n_layers, stride))
                if len(layers) != n_blocks:
                    raise CheckpointError(path, what=what, note=f"{n_blocks} blocks cannot be spread evenly over "
                                                                f"{n_layers} backbone layers")
                if "patch_embedding.weight" not in state:
                    raise CheckpointError(path, missing=["vace_patch_embedding.weight"], what=what)
                cfg = side_branch_config("official", dict(backbone.config), layers)
                cfg["in_channels"] = int(state["patch_embedding.weight"].shape[1])
        from .config_check import check_config

        check_config("side_branch", cfg, cfg_path if path.is_dir() else src)
        cfg = {k: tuple(v) if k in ("layers", "patch_size") else v for k, v in cfg.items()}
        try:
            with torch.device("meta"):
                branch = cls(**cfg)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(src, what=what, note=f"its config does not build a side branch ({exc})") from None
        check_state_dict(branch, state, src, what=what)
        branch.load_state_dict(state, assign=True, strict=True)
        if backbone is not None:
            dim = backbone.config.num_attention_heads * backbone.config.attention_head_dim
            if (branch.blocks[0].attn1.inner_dim != dim
                    or branch.config.num_backbone_layers != backbone.config.num_layers):
                raise CheckpointError(src, what=what, note="its hidden size or depth does not match the backbone")
            device = device if device is not None else backbone.device
            dtype = dtype if dtype is not None else backbone.dtype
        branch.to(device if device is not None else "cpu")
        cast_keep_fp32(branch, dtype if dtype is not None else torch.float32)
        return branch.eval()

    def randomize_output_projections(self, std: float = 0.02, seed: int = 0) -> None:
        """Non-zero ``proj_out`` / mask embedding (tests, benchmarks: a branch that visibly acts)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            extra = [self.mask_embedding] if self.mask_embedding is not None else []
            for m in [b.proj_out for b in self.blocks] + extra:
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * std)
