"""Backbone + side branch in one forward pass over a sequence of frame roles.

``MirageTransformer`` owns a diffusers ``WanTransformer3DModel`` (the Wan2.2-TI2V-5B backbone,
LoRA goes on it) and an optional ``MirageSideBranch``. Its forward reuses the backbone's own
modules step by step (patch embedding, condition embedder, blocks, output head) and changes only
what Mirage needs: segment-aware rotary positions for targets / preceding / references, one
timestep per token, and the side branch's hints added after the chosen layers to the conditioned
tokens (targets + preceding; references get none, as in the official code).

An optional ``LatentRefiner`` (``refiner``) adds a residual convolution over the latent grid to the
output (small models: it smooths the seams between tokens; zero-initialised).

With no preceding or reference frames, no side branch, no refiner and the ``official`` rope layout,
the output equals ``WanTransformer3DModel.forward`` with per-token timesteps (tested).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .frame_roles import FrameRoles, segment_rotary_embedding

__all__ = ["MirageTransformer", "load_backbone"]


class MirageTransformer(nn.Module):
    """``backbone`` (WanTransformer3DModel) + ``side_branch`` (MirageSideBranch or None).

    ``rope_layout``: ``official`` | ``chronological`` (see ``frame_roles``); ``refiner``: a
    ``LatentRefiner`` or None.
    """

    def __init__(self, backbone, side_branch=None, rope_layout: str = "official", refiner=None):
        super().__init__()
        self.backbone = backbone
        self.side_branch = side_branch
        self.rope_layout = rope_layout
        self.refiner = refiner
        if refiner is not None and refiner.config["channels"] != backbone.config.out_channels:
            raise ValueError(f"refiner: {refiner.config['channels']} channels, the backbone outputs "
                             f"{backbone.config.out_channels}")
        if side_branch is not None:
            n = backbone.config.num_layers
            if side_branch.config.num_backbone_layers != n:
                raise ValueError(f"side branch: built for {side_branch.config.num_backbone_layers} backbone blocks, "
                                 f"the backbone has {n}")
            if side_branch.blocks[0].attn1.inner_dim != backbone.blocks[0].attn1.inner_dim:
                raise ValueError("side branch: hidden size differs from the backbone's")

    @property
    def device(self):
        return self.backbone.device

    @property
    def dtype(self):
        return self.backbone.dtype

    def forward(
        self,
        latents: torch.Tensor,
        frame_timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        roles: FrameRoles,
        control: Optional[torch.Tensor] = None,
        control_mask: Optional[torch.Tensor] = None,
        hint_scale: float = 1.0,
    ) -> torch.Tensor:
        """Flow prediction (B, C, F, h, w) for latents (B, C, F, h, w) laid out by ``roles``.

        frame_timesteps (F,) or (B, F): one timestep per frame, expanded to its tokens.
        encoder_hidden_states (B, L, text_dim) prompt embeddings.
        control (B, C_in, T+P, h, w) / control_mask (B, 1, T+P, h, w): side-branch input for the
        conditioned frames; ignored (no hints) when None or when there is no side branch.
        """
        bb = self.backbone
        B, _, F, h, w = latents.shape
        if F != roles.num_frames:
            raise ValueError(f"latents: {F} frames, roles describe {roles.num_frames}")
        p_t, p_h, p_w = bb.config.patch_size
        gh, gw = h // p_h, w // p_w
        per_frame = gh * gw
        dtype = bb.dtype

        rotary = segment_rotary_embedding(roles, (gh, gw), bb.config.attention_head_dim, self.rope_layout,
                                          device=latents.device)
        x = bb.patch_embedding(latents.to(dtype)).flatten(2).transpose(1, 2).contiguous()  # (B, S, D)
        S = x.shape[1]

        ft = frame_timesteps.to(latents.device, torch.float32)
        if ft.ndim == 1:
            ft = ft.expand(B, F)
        timestep = ft.repeat_interleave(per_frame, dim=1)  # (B, S): one per token
        temb, tproj, text, _ = bb.condition_embedder(timestep.flatten(), encoder_hidden_states.to(dtype), None,
                                                     timestep_seq_len=S)
        tproj = tproj.unflatten(2, (6, -1))  # (B, S, 6, D)

        hints = {}
        sb = self.side_branch
        if sb is not None and control is not None:
            n = roles.num_conditioned * per_frame
            ctrl = sb.embed(control, control_mask, bb.patch_embedding)
            rot_c = (rotary[0][:, :n], rotary[1][:, :n])
            for layer, hint in zip(sb.config.layers, sb(ctrl, x[:, :n], text, tproj[:, :n], rot_c)):
                hints[layer] = hint

        for i, block in enumerate(bb.blocks):
            if torch.is_grad_enabled() and bb.gradient_checkpointing:
                x = bb._gradient_checkpointing_func(block, x, text, tproj, rotary)
            else:
                x = block(x, text, tproj, rotary)
            if i in hints:
                hint = hints[i].to(x.dtype) * hint_scale
                n = hint.shape[1]
                x = x + hint if n == S else torch.cat([x[:, :n] + hint, x[:, n:]], dim=1)

        shift, scale = (bb.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
        x = (bb.norm_out(x.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)
        x = bb.proj_out(x)
        x = x.reshape(B, F // p_t, gh, gw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.refiner is not None:
            out = self.refiner(out, latents)
        return out

    # -- weights ---------------------------------------------------------------------------------
    def save_pretrained(self, folder, save_backbone: bool = True) -> Path:
        """``folder/backbone`` (diffusers ``WanTransformer3DModel``; skipped with ``save_backbone=False``,
        e.g. a frozen pretrained Wan2.2 backbone), ``folder/side_branch``, ``folder/lora.safetensors``
        (when the backbone carries LoRA; saved apart from the base, see ``lora``), ``mirage_transformer.json``."""
        from .lora import has_lora, save_lora

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lora = has_lora(self.backbone)
        if save_backbone:
            if lora:
                raise ValueError("save_backbone: a backbone with LoRA is saved as its base weights + the adapter; "
                                 "save the base before adding LoRA (save_backbone=False saves the adapter only)")
            self.backbone.save_pretrained(str(folder / "backbone"), safe_serialization=True)
        if self.side_branch is not None:
            self.side_branch.save_pretrained(folder / "side_branch")
        if self.refiner is not None:
            self.refiner.save_pretrained(folder / "refiner")
        if lora:
            save_lora(self.backbone, folder / "lora.safetensors")
        info = {"_class_name": type(self).__name__, "rope_layout": self.rope_layout, "backbone": save_backbone,
                "side_branch": self.side_branch is not None, "lora": lora, "refiner": self.refiner is not None}
        (folder / "mirage_transformer.json").write_text(json.dumps(info, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder, backbone=None, device="cpu",
                        dtype: Optional[torch.dtype] = None) -> "MirageTransformer":
        """Load what ``save_pretrained`` wrote. ``backbone``: the backbone to use when the folder holds
        none (a pretrained Wan2.2 loaded by the caller); errors name the file (``CheckpointError``)."""
        from .checkpoints import CheckpointError
        from .dtypes import default_dtype_for
        from .lora import load_lora
        from .side_branch import MirageSideBranch

        folder = Path(folder)
        info_path = folder / "mirage_transformer.json"
        if not info_path.is_file():
            raise CheckpointError(folder, what="Mirage transformer", note="mirage_transformer.json is missing")
        try:
            info = json.loads(info_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(info_path, what="Mirage transformer", note=f"not valid JSON ({exc})") from None
        dtype = dtype or default_dtype_for(device)
        if info.get("backbone"):
            backbone = load_backbone(folder / "backbone", device=device, dtype=dtype)
        elif backbone is None:
            raise CheckpointError(folder, what="Mirage transformer",
                                  note="it holds no backbone (a pretrained one was used): pass backbone=")
        side = None
        if info.get("side_branch"):
            side = MirageSideBranch.from_pretrained(folder / "side_branch", backbone=backbone, device=device,
                                                    dtype=dtype)
        if info.get("lora"):
            load_lora(backbone, folder / "lora.safetensors")
        refiner = None
        if info.get("refiner"):
            from .refiner import LatentRefiner

            refiner = LatentRefiner.from_pretrained(folder / "refiner", device=device, dtype=dtype)
        return cls(backbone, side, info.get("rope_layout", "official"), refiner=refiner)

    def num_parameters(self) -> dict:
        n_bb = sum(p.numel() for p in self.backbone.parameters())
        n_sb = sum(p.numel() for p in self.side_branch.parameters()) if self.side_branch is not None else 0
        n_rf = sum(p.numel() for p in self.refiner.parameters()) if self.refiner is not None else 0
        return {"backbone": n_bb, "side_branch": n_sb, "refiner": n_rf}



def load_backbone(folder, device="cpu", dtype: Optional[torch.dtype] = None, layout: str = "diffusers"):
    """The Wan2.2 ``WanTransformer3DModel`` in ``folder``, frozen, in ``dtype`` (norms kept float32).

    ``layout``: ``diffusers`` (``config.json`` + ``diffusion_pytorch_model*.safetensors``: ours, or
    Wan2.2-TI2V-5B-Diffusers/transformer) | ``original`` (the Wan-AI release: keys converted, config
    from its ``config.json`` or the TI2V-5B defaults). Built on the meta device, every tensor checked
    against the architecture (``CheckpointError`` names the folder and keys) and assigned."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from .checkpoints import (
        CheckpointError,
        check_state_dict,
        convert_wan_transformer_to_diffusers,
        original_transformer_config,
        read_state_dict,
    )
    from .config_check import check_config
    from .dtypes import cast_keep_fp32, default_dtype_for

    folder = Path(folder)
    dtype = dtype or default_dtype_for(device)
    cfg_path = folder / "config.json"
    if layout == "diffusers":
        if not cfg_path.is_file():
            raise CheckpointError(folder, what="backbone", note="config.json is missing")
        try:
            cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if not k.startswith("_")}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(cfg_path, what="backbone", note=f"not valid JSON ({exc})") from None
        check_config("backbone", cfg, cfg_path)  # before the weights are even read
        state = read_state_dict(folder)
    elif layout == "original":
        cfg = original_transformer_config(json.loads(cfg_path.read_text()) if cfg_path.is_file() else {})
        files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
        state = convert_wan_transformer_to_diffusers(read_state_dict(files), source=str(folder))
    else:
        raise ValueError(f"layout: expected 'diffusers' or 'original', got {layout!r}")
    if layout == "original":
        check_config("backbone", cfg, cfg_path)  # every field in range, before anything is built
    try:
        with init_empty_weights():  # parameters on meta, buffers (rotary tables) real
            backbone = WanTransformer3DModel(**cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(cfg_path, what="backbone", note=f"its config does not build the model ({exc})") from None
    check_state_dict(backbone, state, folder, what="Wan2.2 transformer" if layout == "original" else "backbone")
    backbone.load_state_dict(state, assign=True, strict=True)
    return cast_keep_fp32(backbone.to(device), dtype).eval().requires_grad_(False)
