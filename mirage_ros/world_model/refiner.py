"""``LatentRefiner``: a small convolution over the latent grid after the transformer's output head.

The backbone predicts each 2x2-latent token (patch (1, 2, 2)) on its own linear head, so neighbouring
tokens are only coupled through attention: a small model leaves seams at every token border (a
mosaic of 32-pixel tiles at stride 16). This residual 3x3 convolution over each frame's latent
grid sees across token borders: ``flow + conv(silu(conv([flow, x_t])))``, its last layer zero-
initialised, so a freshly added refiner leaves the model's output unchanged. Optional (the full
Wan2.2 configuration has none); saved beside the side branch by ``MirageTransformer``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LatentRefiner"]

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"


class LatentRefiner(nn.Module):
    """Residual refinement of the flow prediction (B, C, F, h, w) given the noisy latents."""

    def __init__(self, channels: int = 48, hidden: int = 64, kernel_size: int = 3, layers: int = 2):
        super().__init__()
        for name, v, lo, hi in (("channels", channels, 1, 4096), ("hidden", hidden, 1, 4096),
                                ("kernel_size", kernel_size, 1, 15), ("layers", layers, 1, 16)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"refiner.{name}: expected an integer in [{lo}, {hi}], got {v!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"refiner.kernel_size: expected an odd size, got {kernel_size}")
        self.config = {"channels": channels, "hidden": hidden, "kernel_size": kernel_size, "layers": layers}
        pad = kernel_size // 2
        convs = [nn.Conv2d(2 * channels, hidden, kernel_size, padding=pad)]
        convs += [nn.Conv2d(hidden, hidden, kernel_size, padding=pad) for _ in range(layers - 1)]
        self.body = nn.ModuleList(convs)
        self.out = nn.Conv2d(hidden, channels, kernel_size, padding=pad)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, flow: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """flow, latents (B, C, F, h, w) -> refined flow (B, C, F, h, w)."""
        B, C, Fr, h, w = flow.shape
        dt = self.out.weight.dtype
        flow = flow.to(dt)
        x = torch.cat([flow, latents.to(dt)], 1).permute(0, 2, 1, 3, 4).reshape(B * Fr, 2 * C, h, w)
        for conv in self.body:
            x = F.silu(conv(x))
        delta = self.out(x).view(B, Fr, C, h, w).permute(0, 2, 1, 3, 4)
        return flow + delta

    # -- weights ---------------------------------------------------------------------------------
    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(json.dumps({"_class_name": type(self).__name__, **self.config}, indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / WEIGHTS),
                  metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device="cpu",
                        dtype: Optional[torch.dtype] = None) -> "LatentRefiner":
        """Load what ``save_pretrained`` wrote; errors name the file (``CheckpointError``)."""
        from .checkpoints import CheckpointError, check_state_dict, read_state_dict

        folder = Path(folder)
        cfg_path = folder / CONFIG
        try:
            cfg = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(folder, what="refiner", note=f"{CONFIG} is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(cfg_path, what="refiner", note=f"not valid JSON ({exc})") from None
        if not isinstance(cfg, dict):
            raise CheckpointError(cfg_path, what="refiner", note="must hold a JSON object")
        try:
            model = cls(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(cfg_path, what="refiner", note=str(exc)) from None
        state = read_state_dict(folder)
        check_state_dict(model, state, folder, what="refiner")
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
