"""LoRA on the backbone's self-attention (paper, stage 2): rank 64 on q, k, v, o, dropout 0.05.

Adapters live on the diffusers ``WanTransformer3DModel`` through peft and are saved and loaded
*separately* from the base weights: ``save_lora`` writes only the adapter tensors (safetensors,
with the LoRA config in the metadata). We never use ``save_pretrained`` on a model with adapters:
it writes ``base_layer`` keys and a later ``from_pretrained`` silently re-initialises the base
(peft 0.21 with diffusers 0.42; ``tests/test_world_model_checkpoints.py`` checks the round trip).

Formats read by ``load_lora``:
- ours: keys ``blocks.{i}.attn1.to_q.lora_A.weight`` ... and a ``mirage_ros.lora`` metadata entry;
- the official Mirage / DiffSynth format: ``blocks.{i}.self_attn.q.lora_A.weight`` (also
  ``lora_down``/``lora_up``, ``.default`` and ``pipe.dit.`` / ``base_model.model.`` prefixes),
  converted by ``checkpoints.convert_official_lora``. DiffSynth fuses ``W + alpha * B @ A``, i.e.
  scale 1 at alpha 1, which peft reproduces with ``lora_alpha = rank``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

__all__ = ["LORA_TARGETS", "add_lora", "lora_state_dict", "save_lora", "load_lora", "load_lora_state", "has_lora"]

LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
METADATA_KEY = "mirage_ros.lora"


def has_lora(backbone, adapter_name: str = "default") -> bool:
    return adapter_name in getattr(backbone, "peft_config", {})


def add_lora(backbone, rank: int = 64, alpha: Optional[float] = None, dropout: float = 0.05,
             targets: Sequence[str] = LORA_TARGETS, adapter_name: str = "default") -> None:
    """Add a LoRA adapter (rank, alpha = rank by default, dropout) to ``targets`` of every block.

    ``targets`` are module-name suffixes; the defaults are the self-attention q, k, v, o only
    (``attn2`` is cross-attention and is left alone).
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"rank: expected >= 1, got {rank}")
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=float(dropout),
                     target_modules=list(targets), init_lora_weights=True)
    was_training = backbone.training
    backbone.add_adapter(cfg, adapter_name=adapter_name)
    backbone.train(was_training)  # new LoRA dropout modules start in training mode: follow the model's mode


def lora_state_dict(backbone, adapter_name: str = "default") -> Dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    if not has_lora(backbone, adapter_name):
        raise ValueError(f"lora: the backbone has no adapter named {adapter_name!r}")
    return get_peft_model_state_dict(backbone, adapter_name=adapter_name)


def save_lora(backbone, path: Union[str, Path], adapter_name: str = "default") -> Path:
    """Write the adapter (only its tensors) to ``path`` (.safetensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    cfg = backbone.peft_config[adapter_name]
    meta = {
        "format": "pt",
        METADATA_KEY: json.dumps({
            "rank": int(cfg.r), "alpha": float(cfg.lora_alpha), "dropout": float(cfg.lora_dropout),
            "targets": sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules,
        }),
    }
    sd = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(backbone, adapter_name).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    return path


def load_lora(backbone, path: Union[str, Path], adapter_name: str = "default", scale: float = 1.0,
              dropout: float = 0.05) -> Dict:
    """Load an adapter file (ours or the official format) onto ``backbone``; returns its config.

    Adds the adapter if the backbone has none of that name (rank and targets from the file);
    every adapter tensor must find its module and every module of the adapter must get its
    tensors, otherwise ``CheckpointError`` names the file and the keys.
    """
    from safetensors import safe_open

    from .checkpoints import read_state_dict

    path = Path(path)
    sd = read_state_dict(path)
    meta = {}
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    return load_lora_state(backbone, sd, source=str(path), metadata=meta, adapter_name=adapter_name, scale=scale,
                           dropout=dropout)


def load_lora_state(backbone, sd: Dict[str, torch.Tensor], source: str = "LoRA", metadata: Optional[Dict] = None,
                    adapter_name: str = "default", scale: float = 1.0, dropout: float = 0.05) -> Dict:
    """``load_lora`` for tensors already read (e.g. a file's subset); ``source`` names them in errors."""
    from peft.utils import set_peft_model_state_dict

    from .checkpoints import CheckpointError, convert_official_lora

    meta = metadata or {}
    if METADATA_KEY in meta:
        info = json.loads(meta[METADATA_KEY])
    else:
        sd = convert_official_lora(sd, source=source)
        a_keys = [k for k in sd if k.endswith("lora_A.weight")]
        rank = int(sd[a_keys[0]].shape[0])
        targets = sorted({k[: -len(".lora_A.weight")] for k in a_keys})
        info = {"rank": rank, "alpha": float(rank), "dropout": dropout, "targets": targets}
    info["alpha"] = float(info["alpha"]) * float(scale)
    if not has_lora(backbone, adapter_name):
        add_lora(backbone, rank=info["rank"], alpha=info["alpha"], dropout=info["dropout"], targets=info["targets"],
                 adapter_name=adapter_name)
    expected = set(lora_state_dict(backbone, adapter_name))
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(source, missing=missing, unexpected=unexpected, what="LoRA adapter")
    ref = lora_state_dict(backbone, adapter_name)
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(ref[k].shape)]
    if bad:
        raise CheckpointError(source, mismatched={k: (tuple(sd[k].shape), tuple(ref[k].shape)) for k in bad}, what="LoRA adapter")
    dtype = next(backbone.parameters()).dtype
    result = set_peft_model_state_dict(backbone, {k: v.to(dtype) for k, v in sd.items()}, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        leftover = [k for k in result.unexpected_keys if "lora_" in k]
        if leftover:
            raise CheckpointError(source, unexpected=leftover, what="LoRA adapter")
    return info
