"""Prompt embeddings for the backbone's cross-attention: Wan's UMT5 encoder, or none at all.

``PromptEncoder.from_pretrained(folder)`` loads the UMT5 encoder and tokenizer from a weights
folder: the diffusers layout (``text_encoder/`` + ``tokenizer/``) or the original Wan2.2 layout
(``models_t5_umt5-xxl-enc-bf16.pth``, converted, + ``google/umt5-xxl/`` tokenizer). Encoding
follows the Wan pipelines: tokenise to 512 tokens, run the encoder, keep the real tokens and pad
the rest with zeros.

Without a text encoder, ``PromptEncoder(text_dim=...)`` still serves: an empty prompt becomes an
all-zero (1, 512, text_dim) embedding (what the backbone sees for a text-dropped sample after the
zero padding, not UMT5's embedding of ""), and a precomputed embedding can be loaded from a
safetensors file (key ``prompt_embeds``, (L, text_dim) or (1, L, text_dim)).
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Optional, Union

import torch

from .configs import TEXT_MAX_LENGTH

__all__ = ["PromptEncoder", "load_prompt_embeds", "save_prompt_embeds", "UMT5_XXL_CONFIG"]

# transformers UMT5Config of Wan's umt5-xxl encoder (wan/modules/t5.py: umt5_xxl).
UMT5_XXL_CONFIG = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                       relative_attention_num_buckets=32, relative_attention_max_distance=128,
                       feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False)


def _clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is pinned
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def load_prompt_embeds(path: Union[str, Path]) -> torch.Tensor:
    """(1, L, D) prompt embedding from a safetensors file (key ``prompt_embeds``)."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    if "prompt_embeds" not in sd:
        raise KeyError(f"prompt embeddings: {path} has no 'prompt_embeds' tensor (keys: {sorted(sd)[:8]})")
    e = sd["prompt_embeds"]
    if e.ndim == 2:
        e = e[None]
    if e.ndim != 3:
        raise ValueError(f"prompt embeddings: {path}: expected (L, D) or (1, L, D), got {tuple(e.shape)}")
    return e


def save_prompt_embeds(path: Union[str, Path], embeds: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({"prompt_embeds": embeds.detach().contiguous().cpu()}, str(path))


def _umt5_config(state) -> dict:
    """UMT5Config arguments read off converted weights (the .pth has no config; umt5-xxl gives the
    ``UMT5_XXL_CONFIG`` values)."""
    cfg = dict(UMT5_XXL_CONFIG)
    emb = state.get("shared.weight")
    if emb is not None:
        cfg["vocab_size"], cfg["d_model"] = int(emb.shape[0]), int(emb.shape[1])
    rel = state.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if rel is not None:
        cfg["relative_attention_num_buckets"], cfg["num_heads"] = int(rel.shape[0]), int(rel.shape[1])
    q = state.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    if q is not None:
        cfg["d_kv"] = int(q.shape[0]) // cfg["num_heads"]
    wi = state.get("encoder.block.0.layer.1.DenseReluDense.wi_1.weight")
    if wi is not None:
        cfg["d_ff"] = int(wi.shape[0])
    cfg["num_layers"] = len({k.split(".")[2] for k in state if k.startswith("encoder.block.")}) or cfg["num_layers"]
    return cfg


class PromptEncoder:
    """Text -> (1, 512, text_dim) embeddings. ``text_encoder``: a transformers ``UMT5EncoderModel``."""

    def __init__(self, text_encoder=None, tokenizer=None, text_dim: int = 4096, max_length: int = TEXT_MAX_LENGTH,
                 device=None, dtype: Optional[torch.dtype] = None):
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("text encoder and tokenizer: give both or neither")
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_dim = int(text_encoder.config.d_model) if text_encoder is not None else int(text_dim)
        self.max_length = int(max_length)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype or (next(text_encoder.parameters()).dtype if text_encoder is not None else torch.float32)
        if text_encoder is not None:
            text_encoder.to(self.device, self.dtype).eval().requires_grad_(False)

    @property
    def has_model(self) -> bool:
        return self.text_encoder is not None

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device=None, dtype=torch.bfloat16) -> "PromptEncoder":
        from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

        from .checkpoints import CheckpointError, check_state_dict, convert_wan_t5_to_umt5, read_state_dict

        folder = Path(folder)
        if (folder / "text_encoder").is_dir():
            enc_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
            if not tok_dir.is_dir():
                raise FileNotFoundError(f"tokenizer: {tok_dir} is missing (diffusers layout)")
            encoder = UMT5EncoderModel.from_pretrained(str(enc_dir), torch_dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            return cls(encoder, tokenizer, device=device, dtype=dtype)
        pth = sorted(folder.glob("models_t5_umt5-xxl-enc*.pth"))
        tok_dir = folder / "google" / "umt5-xxl"
        if not pth:
            raise FileNotFoundError(
                f"text encoder: {folder} has neither text_encoder/ (diffusers layout) nor models_t5_umt5-xxl-enc-*.pth "
                "(original layout); pass a precomputed prompt embedding instead")
        if not tok_dir.is_dir():
            raise FileNotFoundError(f"tokenizer: {tok_dir} is missing (original Wan2.2 layout)")
        state = convert_wan_t5_to_umt5(read_state_dict(pth[0]), source=str(pth[0]))
        with torch.device("meta"):
            encoder = UMT5EncoderModel(UMT5Config(**_umt5_config(state)))
        check_state_dict(encoder, state, pth[0], what="Wan T5 text encoder", ignore=())
        encoder.load_state_dict(state, assign=True, strict=True)
        encoder.tie_weights()
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        if not isinstance(encoder, torch.nn.Module):  # pragma: no cover
            raise CheckpointError(pth[0], note="could not build the encoder")
        return cls(encoder, tokenizer, device=device, dtype=dtype)

    def empty(self, batch: int = 1) -> torch.Tensor:
        """All-zero (B, 512, text_dim) embedding (no text; see module docstring)."""
        return torch.zeros(batch, self.max_length, self.text_dim, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def encode(self, prompt: Optional[str]) -> torch.Tensor:
        """(1, 512, text_dim): real tokens' encoder states, zero-padded (Wan pipelines' convention)."""
        if not self.has_model:
            if prompt:
                raise ValueError("prompt: no text encoder is loaded; give an empty prompt or a precomputed embedding")
            return self.empty()
        tok = self.tokenizer([_clean(prompt or "")], padding="max_length", max_length=self.max_length,
                             truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        states = self.text_encoder(ids, mask).last_hidden_state.to(self.dtype)
        n = int(mask.sum())
        out = torch.zeros_like(states)
        out[:, :n] = states[:, :n]
        return out
