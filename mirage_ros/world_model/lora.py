"""LoRA on the backbone's self-attention (paper, stage 2): rank 64 on q, k, v, o, dropout 0.05.

Adapters live on the diffusers ``WanTransformer3DModel`` through peft and are saved and loaded
*separately* from the base weights: ``save_lora`` writes only the adapter tensors (safetensors,
with the LoRA config in the metadata). We never use ``save_pretrained`` on a model with adapters:
it writes ``base_layer`` keys and a later ``from_pretrained`` silently re-initialises the base
(peft 0.21 with diffusers 0.42; ``tests/test_world_model_checkpoints.py`` checks the round trip).

``MirageLoRA`` is the adapter as a component with the shape of the others:
``MirageLoRA.from_pretrained(file)`` reads one (its config and tensors), ``.save_pretrained(file)``
writes it, ``MirageLoRA.from_backbone(backbone)`` takes it off a backbone, ``.apply(backbone)``
puts it on. ``save_lora`` / ``load_lora`` / ``load_lora_state`` are those steps in one call.

Formats read by ``MirageLoRA.from_pretrained`` (and ``load_lora``):
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

__all__ = ["LORA_TARGETS", "MirageLoRA", "add_lora", "lora_state_dict", "save_lora", "load_lora", "load_lora_state",
           "has_lora"]

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


class MirageLoRA:
    """One LoRA adapter: ``config`` (rank, alpha, dropout, targets) and its tensors (peft's key
    layout, ``state``); ``source`` names it in errors."""

    def __init__(self, config: Dict, state: Dict[str, torch.Tensor], source: str = "LoRA"):
        self.config, self.state, self.source = dict(config), state, source

    @classmethod
    def from_backbone(cls, backbone, adapter_name: str = "default") -> "MirageLoRA":
        """The adapter ``adapter_name`` of ``backbone`` (its tensors detached, on the CPU)."""
        if not has_lora(backbone, adapter_name):
            raise ValueError(f"lora: the backbone has no adapter named {adapter_name!r}")
        cfg = backbone.peft_config[adapter_name]
        targets = sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules
        config = {"rank": int(cfg.r), "alpha": float(cfg.lora_alpha), "dropout": float(cfg.lora_dropout),
                  "targets": targets}
        state = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(backbone, adapter_name).items()}
        return cls(config, state, source=f"adapter {adapter_name!r}")

    @classmethod
    def from_state(cls, sd: Dict[str, torch.Tensor], source: str = "LoRA", metadata: Optional[Dict] = None,
                   dropout: float = 0.05) -> "MirageLoRA":
        """Tensors already read (ours with ``metadata``, or the official layout, converted)."""
        from .checkpoints import convert_official_lora

        meta = metadata or {}
        if METADATA_KEY in meta:
            return cls(json.loads(meta[METADATA_KEY]), sd, source)
        sd = convert_official_lora(sd, source=source)
        a_keys = [k for k in sd if k.endswith("lora_A.weight")]
        rank = int(sd[a_keys[0]].shape[0])
        targets = sorted({k[: -len(".lora_A.weight")] for k in a_keys})
        return cls({"rank": rank, "alpha": float(rank), "dropout": dropout, "targets": targets}, sd, source)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], dropout: float = 0.05) -> "MirageLoRA":
        """A ``.safetensors`` file written by ``save_pretrained``, or the official format (safetensors
        or ``.pth``, read with ``weights_only``); ``dropout`` where the file does not say."""
        from safetensors import safe_open

        from .checkpoints import read_state_dict

        path = Path(path)
        sd = read_state_dict(path)
        meta = {}
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        return cls.from_state(sd, source=str(path), metadata=meta, dropout=dropout)

    def save_pretrained(self, path: Union[str, Path]) -> Path:
        """Write the adapter's tensors to ``path`` (.safetensors), its config in the metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": "pt", METADATA_KEY: json.dumps(self.config)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state.items()}, str(path), metadata=meta)
        return path

    def apply(self, backbone, adapter_name: str = "default", scale: float = 1.0) -> Dict:
        """Put the adapter on ``backbone`` (added first if the backbone has none of that name, with
        this rank and these targets; alpha times ``scale``); returns the config used. Every tensor
        must find its module and every module of the adapter its tensors, at the right shape,
        otherwise ``CheckpointError`` names the source and the keys."""
        from peft.utils import set_peft_model_state_dict

        from .checkpoints import CheckpointError

        info = dict(self.config)
        info["alpha"] = float(info["alpha"]) * float(scale)
        if not has_lora(backbone, adapter_name):
            add_lora(backbone, rank=info["rank"], alpha=info["alpha"], dropout=info["dropout"], targets=info["targets"],
                     adapter_name=adapter_name)
        sd, source = self.state, self.source
        ref = lora_state_dict(backbone, adapter_name)
        missing, unexpected = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if missing or unexpected:
            raise CheckpointError(source, missing=missing, unexpected=unexpected, what="LoRA adapter")
        bad = [k for k in sd if tuple(sd[k].shape) != tuple(ref[k].shape)]
        if bad:
            raise CheckpointError(source, mismatched={k: (tuple(sd[k].shape), tuple(ref[k].shape)) for k in bad},
                                  what="LoRA adapter")
        dtype = next(backbone.parameters()).dtype
        result = set_peft_model_state_dict(backbone, {k: v.to(dtype) for k, v in sd.items()}, adapter_name=adapter_name)
        leftover = [k for k in getattr(result, "unexpected_keys", None) or [] if "lora_" in k]
        if leftover:
            raise CheckpointError(source, unexpected=leftover, what="LoRA adapter")
        return info


def save_lora(backbone, path: Union[str, Path], adapter_name: str = "default") -> Path:
    """Write the adapter (only its tensors) to ``path`` (.safetensors): ``MirageLoRA.save_pretrained``."""
    return MirageLoRA.from_backbone(backbone, adapter_name).save_pretrained(path)


def load_lora(backbone, path: Union[str, Path], adapter_name: str = "default", scale: float = 1.0,
              dropout: float = 0.05) -> Dict:
    """Load an adapter file (ours or the official format) onto ``backbone``; returns its config
    (``MirageLoRA.from_pretrained(path).apply(backbone)``)."""
    return MirageLoRA.from_pretrained(path, dropout=dropout).apply(backbone, adapter_name, scale)


def load_lora_state(backbone, sd: Dict[str, torch.Tensor], source: str = "LoRA", metadata: Optional[Dict] = None,
                    adapter_name: str = "default", scale: float = 1.0, dropout: float = 0.05) -> Dict:
    """``load_lora`` for tensors already read (e.g. a file's subset); ``source`` names them in errors."""
    return MirageLoRA.from_state(sd, source, metadata, dropout).apply(backbone, adapter_name, scale)
