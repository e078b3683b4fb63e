"""Flow-matching sampler: UniPC (diffusers) as Wan2.2-TI2V uses it, shift 5.0, optional CFG.

Paper: 40 UniPC steps, classifier-free guidance off (the official code runs 20 steps). The first
``num_clean`` target frames are held at their clean latents after every step (TI2V convention:
the model sees them at t = 0 and the scheduler's update there is discarded).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["FlowUniPCSampler"]


class FlowUniPCSampler:
    """``steps`` UniPC steps on flow sigmas with ``shift``; CFG when ``guidance_scale`` > 1."""

    def __init__(self, steps: int = 40, shift: float = 5.0, guidance_scale: float = 1.0, num_train_timesteps: int = 1000):
        if steps < 1:
            raise ValueError(f"steps: expected >= 1, got {steps}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale: expected >= 1 (1 = off), got {guidance_scale}")
        self.steps, self.shift, self.guidance_scale = int(steps), float(shift), float(guidance_scale)
        self.num_train_timesteps = int(num_train_timesteps)

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def scheduler(self):
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=self.num_train_timesteps, flow_shift=self.shift)

    def sample(
        self,
        predict: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
        noise: torch.Tensor,
        clean: Optional[torch.Tensor] = None,
        progress: Optional[Callable] = None,
    ) -> torch.Tensor:
        """Denoise target latents (B, C, T, h, w) starting from ``noise``.

        predict(latents, t, conditional) -> flow (B, C, T, h, w) for the targets; called once per
        step, twice with CFG (conditional False = negative / empty prompt).
        clean (B, C, k, h, w): the first k target frames, kept fixed.
        progress: wraps the timestep iterable (e.g. a tqdm factory).
        """
        sched = self.scheduler()
        sched.set_timesteps(self.steps, device=noise.device)
        x = noise.float().clone()
        k = 0 if clean is None else clean.shape[2]
        if k:
            x[:, :, :k] = clean.float()
        steps = sched.timesteps if progress is None else progress(sched.timesteps)
        for t in steps:
            flow = predict(x, t, True).float()
            if self.cfg:
                flow_u = predict(x, t, False).float()
                flow = flow_u + self.guidance_scale * (flow - flow_u)
            x = sched.step(flow, t, x, return_dict=False)[0]
            if k:
                x[:, :, :k] = clean.float()
        return x
