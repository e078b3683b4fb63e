"""Frame roles in one denoising sequence and their segment-aware rotary positions.

One forward pass of the backbone sees three kinds of latent frames (paper, "Implementation
Details"): noisy **targets** (the chunk being generated; its first frame is the clean overlap
frame, or the encoded I_0 in the first chunk), clean **preceding** frames (the previous chunk's
last latents) and clean **reference** frames (earlier output chosen by voxel IoU). Clean frames
carry timestep 0, per token, as in Wan2.2-TI2V.

Sequence order (time axis of the latent tensor): ``[targets | preceding | references]``. Self-
attention is order-free, so only the rotary positions tell the roles apart:

- ``official`` (the only layout with trained weights; the paper names the idea, not the numbers):
  targets at t = 0..T-1, preceding at t = T..T+P-1, references at t = -R..-1 *and* shifted by the
  latent height h' along the height axis, so a reference never shares a position with a target.
- ``chronological``: preceding at t = -P..-1 (before the targets, as they happened), targets at
  0..T-1, references at t = -P-R..-P-1 with the same height shift.

The rotary tables use diffusers' ``get_1d_rotary_pos_embed`` with the head-dimension split of
``WanRotaryPosEmbed`` (t gets the rest, h and w 2*(d//6) each), so the ``official`` layout with no
preceding or reference frames reproduces ``WanTransformer3DModel``'s own positions exactly.
Tokens are ordered frame by frame, each frame row-major over the patch grid (h', w').
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

__all__ = ["FrameRoles", "ROPE_LAYOUTS", "segment_rotary_embedding"]

ROPE_LAYOUTS = ("official", "chronological")


@dataclass(frozen=True)
class FrameRoles:
    """Counts of each role: ``num_targets`` T (the first ``num_clean_targets`` of them clean),
    ``num_preceding`` P and ``num_references`` R. Frames are laid out [targets | preceding | references]."""

    num_targets: int
    num_preceding: int = 0
    num_references: int = 0
    num_clean_targets: int = 1

    def __post_init__(self):
        if self.num_targets < 1:
            raise ValueError(f"num_targets: expected >= 1, got {self.num_targets}")
        if min(self.num_preceding, self.num_references, self.num_clean_targets) < 0:
            raise ValueError("num_preceding / num_references / num_clean_targets: must be >= 0")
        if self.num_clean_targets > self.num_targets:
            raise ValueError(f"num_clean_targets: {self.num_clean_targets} > num_targets {self.num_targets}")

    @property
    def num_frames(self) -> int:
        return self.num_targets + self.num_preceding + self.num_references

    @property
    def num_conditioned(self) -> int:
        """Frames the side branch sees (targets + preceding; references carry no readout)."""
        return self.num_targets + self.num_preceding

    def clean(self) -> torch.Tensor:
        """(F,) bool: True for frames that are clean (timestep 0)."""
        c = torch.ones(self.num_frames, dtype=torch.bool)
        c[self.num_clean_targets : self.num_targets] = False
        return c

    def frame_timesteps(self, t, device=None) -> torch.Tensor:
        """(F,) float32: ``t`` on noisy targets, 0 on clean frames."""
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        return torch.where(self.clean().to(t.device), torch.zeros_like(t), t.expand(self.num_frames))

    def positions(self, layout: str, grid_h: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per frame: temporal position (F,) and height offset (F,), both int64."""
        T, P, R = self.num_targets, self.num_preceding, self.num_references
        if layout == "official":
            t = torch.cat([torch.arange(T + P), torch.arange(-R, 0)])
        elif layout == "chronological":
            t = torch.cat([torch.arange(T), torch.arange(-P, 0), torch.arange(-P - R, -P)])
        else:
            raise ValueError(f"rope layout: expected one of {ROPE_LAYOUTS}, got {layout!r}")
        h_off = torch.cat([torch.zeros(T + P, dtype=torch.int64), torch.full((R,), grid_h, dtype=torch.int64)])
        return t.long(), h_off


def _split(attention_head_dim: int) -> Tuple[int, int, int]:
    h = w = 2 * (attention_head_dim // 6)
    return attention_head_dim - h - w, h, w


def segment_rotary_embedding(
    roles: FrameRoles,
    grid: Tuple[int, int],
    attention_head_dim: int,
    layout: str = "official",
    theta: float = 10000.0,
    device=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotary (cos, sin), each (1, S, 1, attention_head_dim) float32, S = F * h' * w'.

    ``grid`` = (h', w') is the post-patch latent grid of one frame.
    """
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    gh, gw = grid
    t_pos, h_off = roles.positions(layout, gh)
    F = roles.num_frames
    ft = t_pos.view(F, 1, 1).expand(F, gh, gw)
    fh = (h_off.view(F, 1, 1) + torch.arange(gh).view(1, gh, 1)).expand(F, gh, gw)
    fw = torch.arange(gw).view(1, 1, gw).expand(F, gh, gw)
    cos, sin = [], []
    for dim, pos in zip(_split(attention_head_dim), (ft, fh, fw)):
        c, s = get_1d_rotary_pos_embed(dim, pos.reshape(-1).to(torch.float64), theta, use_real=True,
                                       repeat_interleave_real=True, freqs_dtype=torch.float64)
        cos.append(c)
        sin.append(s)
    cos = torch.cat(cos, dim=-1).view(1, F * gh * gw, 1, attention_head_dim)
    sin = torch.cat(sin, dim=-1).view(1, F * gh * gw, 1, attention_head_dim)
    return cos.to(device), sin.to(device)
