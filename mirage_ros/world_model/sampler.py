"""Flow-matching sampler: UniPC (diffusers) as Wan2.2-TI2V uses it, with optional CFG and memory pinning.

A component that carries its own configuration, as diffusers schedulers do: ``config()`` is what
``MirageWorldModel.save_pretrained`` writes under ``model_index.json["sampler"]`` and
``FlowUniPCSampler.from_config(cfg, **overrides)`` rebuilds it, each override replacing one field
only (``steps`` never changes ``shift``). Paper: 40 UniPC steps, shift 5, classifier-free guidance
off (the official code runs 20 steps).

The first ``num_clean`` target frames are held at their clean latents after every step (TI2V
convention: the model sees them at t = 0 and the scheduler's update there is discarded).

**Memory pinning** (replacement sampling, after RePaint): where the memory readout is visible, the
noisy latent of a target frame is set, before each of the first ``pin_until`` fraction of steps, to
the readout noised to that step's sigma with the chunk's own starting noise,
``x = (1 - sigma) z_hat + sigma eps``, which is the point a perfect model would have reached from
the same noise if the readout were the truth. The model then only fills and harmonises what the
memory does not know; the remaining steps let it refine the pinned cells (seams, misaligned
reprojections). ``pin_paste`` additionally copies the readout into the visible cells of the result.
It trusts the memory: a stale or wrong memory (an object that moved in front of a remembered wall)
is reproduced where it is visible; ``pin_until = 0`` turns pinning off.

**Context noise** (``context_sigma``, noise augmentation as in cascaded diffusion and GameNGen): the
model's own earlier output, used as clean context (the overlap frame, preceding and reference
frames), is noised to ``context_sigma`` and given that timestep, so the model treats it as the
approximate thing it is (a model trained with ``mirage train --context-sigma-max``); observed
frames stay clean at t = 0. Applied by ``MirageWorldModel.denoise_batch``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

__all__ = ["FlowUniPCSampler", "sigma_shift", "SAMPLERS", "SIGMA_GRIDS"]

# ``diffusers``: UniPCMultistepScheduler's own flow sigmas (what mirage train's models sample with);
# ``wan``: Wan2.2's (and Spatia's) FlowUniPCMultistepScheduler grid, linspace(1 - 1/N, 0, steps + 1)
# without its last value, then the shift: what the real Wan2.2 weights were sampled with.
SIGMA_GRIDS = ("diffusers", "wan")


def _wan_grid_scheduler():
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    class WanGridUniPC(UniPCMultistepScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
            if sigmas is None:
                n = self.config.num_train_timesteps
                sigmas = np.linspace(1.0 - 1.0 / n, 0.0, num_inference_steps + 1)[:-1]
            return super().set_timesteps(device=device, sigmas=sigmas, mu=mu)

    return WanGridUniPC


def sigma_shift(u, shift: float):
    """The flow schedule's shifted sigma for a uniform ``u`` in [0, 1]: s u / (1 + (s - 1) u) (works on
    floats and tensors); training draws its noise levels through the same formula."""
    return shift * u / (1 + (shift - 1) * u)


class FlowUniPCSampler:
    """``steps`` UniPC steps on flow sigmas with ``shift``; CFG when ``guidance_scale`` > 1; memory
    pinning for the first ``pin_until`` fraction of steps (0 = off), ``pin_paste`` at the end;
    ``context_sigma``: the noise level of generated context frames (0 = clean); ``sigma_grid``:
    ``diffusers`` | ``wan`` (``SIGMA_GRIDS``)."""

    def __init__(self, steps: int = 40, shift: float = 5.0, guidance_scale: float = 1.0,
                 num_train_timesteps: int = 1000,
                 pin_until: float = 0.0, pin_paste: bool = False, context_sigma: float = 0.0,
                 sigma_grid: str = "diffusers"):
        for name, v, lo, hi in (("steps", steps, 1, 1000), ("num_train_timesteps", num_train_timesteps, 1, 100000)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"sampler.{name}: expected an integer in [{lo}, {hi}], got {v!r}")
        for name, v, lo, hi in (("shift", shift, 1e-3, 1e3), ("guidance_scale", guidance_scale, 1.0, 100.0),
                                ("pin_until", pin_until, 0.0, 1.0), ("context_sigma", context_sigma, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= float(v) <= hi:
                raise ValueError(f"sampler.{name}: expected a number in [{lo}, {hi}], got {v!r}")
        if not isinstance(pin_paste, bool):
            raise ValueError(f"sampler.pin_paste: expected true or false, got {pin_paste!r}")
        if sigma_grid not in SIGMA_GRIDS:
            raise ValueError(f"sampler.sigma_grid: expected one of {', '.join(SIGMA_GRIDS)}, got {sigma_grid!r}")
        self.steps, self.shift, self.guidance_scale = int(steps), float(shift), float(guidance_scale)
        self.num_train_timesteps = int(num_train_timesteps)
        self.pin_until, self.pin_paste = float(pin_until), bool(pin_paste)
        self.context_sigma = float(context_sigma)
        self.sigma_grid = sigma_grid

    # -- configuration ------------------------------------------------------------------------------
    def config(self) -> Dict:
        """Everything that rebuilds this sampler (``from_config``), with its class name."""
        return {"_class_name": type(self).__name__, "steps": self.steps, "shift": self.shift,
                "guidance_scale": self.guidance_scale, "num_train_timesteps": self.num_train_timesteps,
                "pin_until": self.pin_until, "pin_paste": self.pin_paste, "context_sigma": self.context_sigma,
                "sigma_grid": self.sigma_grid}

    @classmethod
    def from_config(cls, config: Optional[Dict] = None, **overrides) -> "FlowUniPCSampler":
        """Rebuild from ``config()`` output (older folders: a subset of the fields; the rest take the
        defaults). ``overrides`` replace single fields; a None override keeps the config's value.
        Unknown fields are an error naming them."""
        cfg = dict(config or {})
        name = cfg.pop("_class_name", cls.__name__)
        if name not in SAMPLERS:
            raise ValueError(f"sampler._class_name: unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")
        fields = ("steps", "shift", "guidance_scale", "num_train_timesteps", "pin_until", "pin_paste", "context_sigma",
                  "sigma_grid")
        for source in (cfg, overrides):
            unknown = sorted(set(source) - set(fields))
            if unknown:
                raise ValueError(f"sampler: unknown option(s) {', '.join(unknown)} (known: {', '.join(fields)})")
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return SAMPLERS[name](**cfg)

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def num_pinned_steps(self) -> int:
        """Steps (from the first) at whose start the visible cells are pinned to the noised readout."""
        return int(round(self.pin_until * self.steps))

    def scheduler(self):
        from diffusers import UniPCMultistepScheduler

        cls = UniPCMultistepScheduler if self.sigma_grid == "diffusers" else _wan_grid_scheduler()
        return cls(prediction_type="flow_prediction", use_flow_sigmas=True,
                   num_train_timesteps=self.num_train_timesteps, flow_shift=self.shift)

    def sigmas(self) -> torch.Tensor:
        """(steps + 1,) the sigmas the steps start from, then the final 0."""
        sched = self.scheduler()
        sched.set_timesteps(self.steps)
        return sched.sigmas.clone()

    def sample(
        self,
        predict: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
        noise: torch.Tensor,
        clean: Optional[torch.Tensor] = None,
        progress: Optional[Callable] = None,
        known: Optional[torch.Tensor] = None,
        known_mask: Optional[torch.Tensor] = None,
        paste_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Denoise target latents (B, C, T, h, w) starting from ``noise``.

        predict(latents, t, conditional) -> flow (B, C, T, h, w) for the targets; called once per
        step, twice with CFG (conditional False = negative / empty prompt).
        clean (B, C, k, h, w): the first k target frames, kept fixed.
        known (B, C, T, h, w) / known_mask (B, 1, T, h, w) bool: the memory readout of the targets and
        where it is visible, for pinning (ignored when ``pin_until`` is 0 and ``pin_paste`` off).
        paste_mask (B, 1, T, h, w) bool: where ``pin_paste`` copies the readout (default: known_mask).
        progress: wraps the timestep iterable (e.g. a tqdm factory).
        """
        sched = self.scheduler()
        sched.set_timesteps(self.steps, device=noise.device)
        eps = noise.float()
        x = eps.clone()
        k = 0 if clean is None else clean.shape[2]
        if k:
            x[:, :, :k] = clean.float()
        if paste_mask is None:
            paste_mask = known_mask
        pin = known is not None and known_mask is not None and bool(known_mask.any() or paste_mask.any())
        if pin:
            known = known.float().to(x.device)
            known_mask, paste_mask = known_mask.to(x.device, torch.bool), paste_mask.to(x.device, torch.bool)
            if k:  # clean frames stay clean: never pinned or pasted
                known_mask, paste_mask = known_mask.clone(), paste_mask.clone()
                known_mask[:, :, :k] = False
                paste_mask[:, :, :k] = False
        n_pin = self.num_pinned_steps if pin else 0
        sigmas = sched.sigmas
        steps = sched.timesteps if progress is None else progress(sched.timesteps)
        for i, t in enumerate(steps):
            if i < n_pin:
                s = float(sigmas[i])
                x = torch.where(known_mask, (1 - s) * known + s * eps, x)
            flow = predict(x, t, True).float()
            if self.cfg:
                flow_u = predict(x, t, False).float()
                flow = flow_u + self.guidance_scale * (flow - flow_u)
            x = sched.step(flow, t, x, return_dict=False)[0]
            if k:
                x[:, :, :k] = clean.float()
        if pin and self.pin_paste:
            x = torch.where(paste_mask, known, x)
        return x


SAMPLERS = {"FlowUniPCSampler": FlowUniPCSampler}
