"""Checkpoint reading, layout detection and key conversion (safetensors first, never pickle).

Layouts read:
- **diffusers** (``Wan2.2-TI2V-5B-Diffusers``): ``transformer/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/`` folders, each with ``config.json`` and safetensors (sharded with an index).
- **original Wan2.2** (``Wan2.2-TI2V-5B``): ``config.json`` + ``diffusion_pytorch_model*.safetensors``
  (the DiT), ``Wan2.2_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` and ``google/umt5-xxl/``
  (tokenizer). Keys are converted to diffusers names by the ``convert_*`` functions below, which
  were written from the public module layouts (Wan2.2 ``wan/modules``; diffusers ``transformer_wan``
  and ``autoencoder_kl_wan``), key by key.
- **side branch**: the official Mirage VACE weights (``vace_blocks.*``, ``vace_patch_embedding.*``)
  -> ours (``MirageSideBranch.from_pretrained`` reads both).
- **LoRA**: the official / DiffSynth layout -> peft's (``lora.load_lora`` reads both).

A leaf module: it imports no model class. Each model class owns its ``from_pretrained`` /
``save_pretrained`` and calls the readers and converters here.

``.pth`` files are read with ``torch.load(weights_only=True)`` only. Every load checks the key set
and the shapes and raises ``CheckpointError`` naming the file and the missing / unexpected /
mismatched keys.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "CheckpointError", "read_state_dict", "check_state_dict", "detect_layout", "strip_prefixes",
    "convert_wan_transformer_to_diffusers", "convert_wan22_vae_to_diffusers", "convert_wan_t5_to_umt5",
    "convert_official_side_branch", "convert_official_lora", "original_transformer_config",
    "read_metadata", "SIDE_BRANCH_METADATA_KEY",
]

PathLike = Union[str, Path]
SIDE_BRANCH_METADATA_KEY = "mirage_ros.side_branch"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: names the file and the offending keys."""

    def __init__(self, path, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Optional[Mapping[str, Tuple]] = None, what: str = "checkpoint", note: str = ""):
        self.path, self.missing, self.unexpected = str(path), list(missing), list(unexpected)
        self.mismatched = dict(mismatched or {})
        parts = [f"{what}: {path}"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys: {_head(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys: {_head(self.unexpected)}")
        if self.mismatched:
            items = [f"{k} {a} (file) vs {b} (model)" for k, (a, b) in list(self.mismatched.items())[:8]]
            parts.append(f"{len(self.mismatched)} shape mismatches: " + "; ".join(items))
        if note:
            parts.append(note)
        super().__init__("; ".join(parts))


def _head(keys: Sequence[str], n: int = 12) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


# -- reading ---------------------------------------------------------------------------------------

def _safetensor_files(folder: Path) -> List[Path]:
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        data = json.loads(index[0].read_text())
        names = sorted(set(data.get("weight_map", {}).values()))
        files = [folder / n for n in names]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"weights: {index[0]} lists shards that are not there: {', '.join(absent)}")
        return files
    return sorted(folder.glob("*.safetensors"))


def read_state_dict(path: Union[PathLike, Sequence[PathLike]], device: str = "cpu") -> Dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, a sharded folder (index json or all *.safetensors), or a
    .pth/.pt/.bin file (``torch.load(weights_only=True)``; a nested ``state_dict`` is unwrapped)."""
    if isinstance(path, (list, tuple)):
        out: Dict[str, torch.Tensor] = {}
        for p in path:
            out.update(read_state_dict(p, device))
        return out
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        files = _safetensor_files(path)
        if not files:
            raise FileNotFoundError(f"weights: {path} holds no *.safetensors files")
        return read_state_dict(files, device)
    if not path.is_file():
        raise FileNotFoundError(f"weights: {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=device)
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types on corrupt files
            raise CheckpointError(path, note=f"not a readable safetensors file ({exc})") from None
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file's name
            raise CheckpointError(path, what="checkpoint",
                                  note=f"cannot be read with torch.load(weights_only=True) ({exc}); "
                                       "convert it to safetensors") from None
        for key in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not torch.is_tensor(obj.get(key)):
                obj = obj[key]
        if not isinstance(obj, dict):
            raise CheckpointError(path, note=f"expected a dict of tensors, got {type(obj).__name__}")
        return {k: v for k, v in obj.items() if torch.is_tensor(v)}
    raise CheckpointError(path, note="unknown weight file type (expected .safetensors, or .pth read with weights_only)")


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The string metadata of a .safetensors file ({} for other files)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types; one error names the file
        raise CheckpointError(path, note=f"not a readable safetensors file ({exc})") from None


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path, what: str,
                     ignore: Iterable[str] = ()) -> None:
    """Raise ``CheckpointError`` unless ``state`` has exactly ``model``'s keys with its shapes."""
    expected = model.state_dict()
    ignore = tuple(ignore)
    missing = sorted(k for k in expected if k not in state and not k.startswith(ignore))
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(ignore))
    mismatched = {k: (tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)}
    if missing or unexpected or mismatched:
        raise CheckpointError(path, missing, unexpected, mismatched, what=what)


def strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def detect_layout(folder: PathLike) -> str:
    """``diffusers`` (a ``transformer/`` subfolder) or ``original`` (DiT shards at the top level)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"weights folder: {folder} does not exist")
    if (folder / "transformer").is_dir():
        return "diffusers"
    if any(folder.glob("diffusion_pytorch_model*.safetensors")):
        return "original"
    raise FileNotFoundError(
        f"weights folder: {folder} is neither the diffusers layout (transformer/, vae/, text_encoder/, tokenizer/) "
        "nor the original Wan2.2 layout (diffusion_pytorch_model*.safetensors, Wan2.2_VAE.pth)")


# -- DiT: original Wan2.2 -> diffusers -----------------------------------------------------------

_DIT_TOP = [
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("patch_embedding.", "patch_embedding."),
]
_ATTN = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}


def _convert_block_key(rest: str) -> Optional[str]:
    """Key inside one Wan block (original) -> diffusers ``WanTransformerBlock`` key, or None."""
    m = re.match(r"(self_attn|cross_attn)\.(q|k|v|o|norm_q|norm_k)\.(.+)$", rest)
    if m:
        return f"{'attn1' if m.group(1) == 'self_attn' else 'attn2'}.{_ATTN[m.group(2)]}.{m.group(3)}"
    if rest == "modulation":
        return "scale_shift_table"
    if rest.startswith("norm3."):  # original norm3 = cross-attention norm = diffusers norm2
        return "norm2." + rest[len("norm3."):]
    if rest.startswith("ffn.0."):
        return "ffn.net.0.proj." + rest[len("ffn.0."):]
    if rest.startswith("ffn.2."):
        return "ffn.net.2." + rest[len("ffn.2."):]
    return None


def convert_wan_transformer_to_diffusers(state: Mapping[str, torch.Tensor],
                                         source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Original Wan2.2 DiT keys (``blocks.0.self_attn.q.weight``, ``head.modulation`` ...) -> diffusers
    ``WanTransformer3DModel`` keys. Unknown keys raise ``CheckpointError``."""
    out, unknown = {}, []
    for key, value in state.items():
        k = strip_prefixes(key, ("model.diffusion_model.", "module.", "model."))
        new = None
        if k == "head.modulation":
            new = "scale_shift_table"
        else:
            m = re.match(r"blocks\.(\d+)\.(.+)$", k)
            if m:
                sub = _convert_block_key(m.group(2))
                new = None if sub is None else f"blocks.{m.group(1)}.{sub}"
            else:
                for old, rep in _DIT_TOP:
                    if k.startswith(old):
                        new = rep + k[len(old):]
                        break
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(source, unexpected=unknown, what="Wan2.2 DiT (original layout)")
    return out


def original_transformer_config(cfg: Mapping) -> Dict:
    """Original Wan ``config.json`` (dim, num_heads, ffn_dim, in_dim ...) -> WanTransformer3DModel args."""
    from .configs import TI2V_5B_TRANSFORMER

    out = dict(TI2V_5B_TRANSFORMER)
    if "dim" in cfg and "num_heads" in cfg:
        out["num_attention_heads"] = int(cfg["num_heads"])
        out["attention_head_dim"] = int(cfg["dim"]) // int(cfg["num_heads"])
    for src, dst in (("ffn_dim", "ffn_dim"), ("freq_dim", "freq_dim"), ("text_dim", "text_dim"),
                     ("in_dim", "in_channels"), ("out_dim", "out_channels"), ("num_layers", "num_layers"),
                     ("eps", "eps"), ("cross_attn_norm", "cross_attn_norm")):
        if src in cfg:
            out[dst] = cfg[src]
    if "patch_size" in cfg:
        out["patch_size"] = tuple(cfg["patch_size"])
    if cfg.get("qk_norm") is False:
        out["qk_norm"] = None
    return out


# -- VAE: original Wan2.2_VAE.pth -> diffusers AutoencoderKLWan ----------------------------------

_RESIDUAL = [("residual.0.gamma", "norm1.gamma"), ("residual.2.", "conv1."), ("residual.3.gamma", "norm2.gamma"),
             ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut.")]


def _residual(rest: str) -> Optional[str]:
    for old, rep in _RESIDUAL:
        if rest.startswith(old):
            return rep + rest[len(old):]
    return None


def convert_wan22_vae_to_diffusers(state: Mapping[str, torch.Tensor],
                                   source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Original Wan2.2 VAE keys -> diffusers ``AutoencoderKLWan`` (``is_residual=True``) keys.

    encoder/decoder ``conv1`` -> ``conv_in``; ``middle.{0,2}`` -> ``mid_block.resnets.{0,1}``;
    ``middle.1`` -> ``mid_block.attentions.0``; ``head.{0,2}`` -> ``norm_out`` / ``conv_out``;
    ``downsamples.i.downsamples.j`` -> ``down_blocks.i.resnets.j`` (or ``.downsampler`` for the
    resample module), likewise ``upsamples`` -> ``up_blocks``; top-level ``conv1`` / ``conv2`` ->
    ``quant_conv`` / ``post_quant_conv``.
    """
    out, unknown = {}, []
    for key, value in state.items():
        k = strip_prefixes(key, ("module.", "model."))
        new = None
        if k.startswith("conv1."):
            new = "quant_conv." + k[6:]
        elif k.startswith("conv2."):
            new = "post_quant_conv." + k[6:]
        else:
            m = re.match(r"(encoder|decoder)\.(.+)$", k)
            if m:
                side, rest = m.groups()
                if rest.startswith("conv1."):
                    new = f"{side}.conv_in.{rest[6:]}"
                elif rest.startswith("head.0."):
                    new = f"{side}.norm_out.{rest[7:]}"
                elif rest.startswith("head.2."):
                    new = f"{side}.conv_out.{rest[7:]}"
                elif (mm := re.match(r"middle\.(\d)\.(.+)$", rest)):
                    idx, sub = int(mm.group(1)), mm.group(2)
                    if idx == 1:
                        new = f"{side}.mid_block.attentions.0.{sub}"
                    elif (r := _residual(sub)) is not None:
                        new = f"{side}.mid_block.resnets.{idx // 2}.{r}"
                elif (mm := re.match(r"(downsamples|upsamples)\.(\d+)\.(downsamples|upsamples)\.(\d+)\.(.+)$", rest)):
                    blocks = "down_blocks" if mm.group(1) == "downsamples" else "up_blocks"
                    sampler = "downsampler" if blocks == "down_blocks" else "upsampler"
                    i, j, sub = mm.group(2), mm.group(4), mm.group(5)
                    if sub.startswith(("resample.", "time_conv.")):
                        new = f"{side}.{blocks}.{i}.{sampler}.{sub}"
                    elif (r := _residual(sub)) is not None:
                        new = f"{side}.{blocks}.{i}.resnets.{j}.{r}"
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(source, unexpected=unknown, what="Wan2.2 VAE (original layout)")
    return out


# -- text encoder: Wan's T5 (umt5-xxl .pth) -> transformers UMT5EncoderModel -----------------------

def convert_wan_t5_to_umt5(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Wan ``T5Encoder`` keys (``blocks.i.attn.q.weight``, ``blocks.i.ffn.gate.0.weight`` ...) ->
    ``UMT5EncoderModel`` keys. Wan's FFN is ``fc2(fc1(x) * gelu(gate(x)))`` = HF gated-gelu with
    ``wi_0`` = gate, ``wi_1`` = fc1, ``wo`` = fc2."""
    table = [
        (r"token_embedding\.weight$", "shared.weight"),
        (r"norm\.weight$", "encoder.final_layer_norm.weight"),
        (r"blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
        (r"blocks\.(\d+)\.attn\.(q|k|v|o)\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
        (r"blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
         r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
        (r"blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
        (r"blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
        (r"blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
        (r"blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    ]
    out, unknown = {}, []
    for key, value in state.items():
        k = strip_prefixes(key, ("module.", "model.", "encoder."))
        for pat, rep in table:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(source, unexpected=unknown, what="Wan T5 text encoder (original layout)")
    if "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


# -- side branch ------------------------------------------------------------------------------------

def convert_official_side_branch(state: Mapping[str, torch.Tensor],
                                 source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Official Mirage VACE keys (``vace_blocks.k.self_attn.q.weight``, ``before_proj``, ``after_proj``,
    ``vace_patch_embedding``; prefixes ``pipe.vace.`` / ``vace.`` / ``module.`` / ``model.``) -> ours."""
    out, unknown = {}, []
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        k = strip_prefixes(key, ("module.", "model.", "pipe.vace.", "vace.", "generator."))
        new = None
        if k.startswith("vace_patch_embedding."):
            new = "patch_embedding." + k[len("vace_patch_embedding."):]
        else:
            m = re.match(r"vace_blocks\.(\d+)\.(.+)$", k)
            if m:
                i, rest = m.groups()
                if rest.startswith("before_proj."):
                    new = f"blocks.{i}.proj_in.{rest[len('before_proj.'):]}"
                elif rest.startswith("after_proj."):
                    new = f"blocks.{i}.proj_out.{rest[len('after_proj.'):]}"
                else:
                    sub = _convert_block_key(rest)
                    new = None if sub is None else f"blocks.{i}.{sub}"
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(source, unexpected=unknown, what="official Mirage side branch (VACE)")
    if not out:
        raise CheckpointError(source, note="no vace_blocks.* / vace_patch_embedding.* tensors found",
                              what="official Mirage side branch (VACE)")
    return out


# -- LoRA -------------------------------------------------------------------------------------------

def convert_official_lora(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Official / DiffSynth LoRA keys -> peft keys on the diffusers backbone.

    ``blocks.i.self_attn.q.lora_A.weight`` (or ``lora_down``; ``lora_B`` / ``lora_up``; optional
    ``.default``; prefixes ``pipe.dit.``, ``dit.``, ``base_model.model.``, ``module.``, ``model.``)
    -> ``blocks.i.attn1.to_q.lora_A.weight``.
    """
    out, unknown = {}, []
    for key, value in state.items():
        if "lora" not in key:
            continue
        k = strip_prefixes(key, ("module.", "model.", "pipe.dit.", "dit.", "base_model.model.", "base_model.",
                                 "diffusion_model.", "transformer."))
        k = k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        k = k.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B.")
        m = re.match(r"(.+)\.(lora_A|lora_B)\.weight$", k)
        new = None
        if m:
            module, ab = m.groups()
            if module.startswith("blocks.") and (".attn1." in module or ".attn2." in module):
                new = f"{module}.{ab}.weight"  # already diffusers names
            else:
                mm = re.match(r"blocks\.(\d+)\.(.+)$", module)
                if mm:
                    sub = _convert_block_key(mm.group(2) + ".weight")
                    if sub is not None and sub.endswith(".weight"):
                        new = f"blocks.{mm.group(1)}.{sub[:-len('.weight')]}.{ab}.weight"
        if new is None:
            unknown.append(key)
        else:
            if new in out:
                raise CheckpointError(source, what="LoRA adapter", note=f"two tensors map to {new}")
            out[new] = value
    if unknown:
        raise CheckpointError(source, unexpected=unknown, what="LoRA adapter (official layout)")
    if not out:
        raise CheckpointError(source, what="LoRA adapter", note="no LoRA tensors (lora_A / lora_B) found")
    return out
