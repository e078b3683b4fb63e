"""SAM3 text-prompted segmentation through transformers' ``Sam3Model``, with our own preprocessing.

``Sam3ImageProcessor`` needs torchvision (which must not be installed here), so frames are resized
to the model's square input size with OpenCV and normalised with the checkpoint's mean/std
(``preprocessor_config.json`` when the folder has one, else SAM3's 0.5/0.5). Text goes through the
checkpoint's CLIP tokenizer, padded to 32 tokens like ``Sam3Processor`` does.

Vision features are computed once per frame (in batches) and shared by all the frame's prompts.
For each (frame, prompt) the queries whose score ``sigmoid(pred_logits) * sigmoid(presence_logit)``
exceeds ``score_threshold`` are kept, their mask logits resized (bilinear) to the frame size and
thresholded at ``mask_threshold`` (probability), and all kept masks are united.
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .entities import _tiny_word_tokenizer, check_weights_dir

__all__ = ["Sam3Segmenter", "select_vision_embeds"]

_TINY_WORDS = ["sky", "person", "car", "bicycle", "dog", "bus", "truck", "robot", "animal", "motorcycle", "tree",
               "red", "box", "cat", "ball", "chair", "cart", "a", "the"]


def select_vision_embeds(ve, index: torch.Tensor):
    """Pick / repeat batch entries of a ``Sam3VisionEncoderOutput`` (tensors and lists of tensors)."""
    def sel(v):
        if torch.is_tensor(v):
            return v.index_select(0, index.to(v.device))
        if isinstance(v, (list, tuple)):
            return type(v)(sel(x) for x in v)
        return v

    return type(ve)(**{k: sel(v) for k, v in ve.items()})


class Sam3Segmenter:
    """Text-prompted SAM3 masks. ``weights_dir`` (local folder, loaded lazily) or ``model`` + ``tokenizer``."""

    def __init__(self, weights_dir=None, model=None, tokenizer=None, device="cpu", dtype: Optional[torch.dtype] = None,
                 score_threshold: float = 0.5, mask_threshold: float = 0.5, batch_size: int = 4,
                 prompt_batch: int = 16, image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), image_size: Optional[int] = None):
        if model is None and weights_dir is None:
            raise ValueError("Sam3Segmenter needs weights_dir (a local SAM3 folder) or model + tokenizer")
        if model is not None and tokenizer is None:
            raise ValueError("Sam3Segmenter(model=...) also needs tokenizer=")
        self.weights_dir = None if weights_dir is None else check_weights_dir(
            weights_dir, "SAM3", need=(("config.json",), ("model.safetensors", "model.safetensors.index.json"),
                                       ("tokenizer.json", "vocab.json")))
        self.model, self.tokenizer = model, tokenizer
        self.device, self.dtype = torch.device(device), dtype
        self.score_threshold, self.mask_threshold = float(score_threshold), float(mask_threshold)
        self.batch_size, self.prompt_batch = int(batch_size), int(prompt_batch)
        self.image_mean, self.image_std, self.image_size = list(image_mean), list(image_std), image_size
        if self.weights_dir is not None and (self.weights_dir / "preprocessor_config.json").is_file():
            d = json.loads((self.weights_dir / "preprocessor_config.json").read_text())
            self.image_mean = list(d.get("image_mean", self.image_mean))
            self.image_std = list(d.get("image_std", self.image_std))
            size = d.get("size")
            if image_size is None and isinstance(size, dict) and "height" in size:
                self.image_size = int(size["height"])
        if self.model is not None:
            self._place()

    # -- construction
    @classmethod
    def from_pretrained(cls, folder, **kw) -> "Sam3Segmenter":
        """A segmenter for a local SAM3 folder (checked now, loaded on first use)."""
        return cls(weights_dir=folder, **kw)

    @classmethod
    def tiny(cls, seed: int = 0, image_size: int = 112, num_queries: int = 8, **kw) -> "Sam3Segmenter":
        """The real ``Sam3Model`` with a tiny random config and a word-level tokenizer built in code."""
        from transformers import Sam3Config, Sam3Model

        specials = ["<|startoftext|>", "<|endoftext|>"]
        tok = _tiny_word_tokenizer(_TINY_WORDS, specials)
        tok.bos_token, tok.eos_token, tok.pad_token = specials[0], specials[1], specials[1]
        g = image_size // 14
        d = 32
        layer = dict(hidden_size=d, num_attention_heads=2, intermediate_size=64)
        cfg = Sam3Config(
            vision_config=dict(
                backbone_config=dict(model_type="sam3_vit_model", hidden_size=d, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                                     patch_size=14, window_size=max(1, g // 2), global_attn_indexes=[1],
                                     pretrain_image_size=image_size),
                fpn_hidden_size=d, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]]),
            text_config=dict(vocab_size=len(tok), hidden_size=d, intermediate_size=64, projection_dim=d,
                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id),
            geometry_encoder_config=dict(num_layers=1, **layer),
            detr_encoder_config=dict(num_layers=1, **layer),
            detr_decoder_config=dict(num_layers=1, num_queries=num_queries, **layer),
            mask_decoder_config=dict(hidden_size=d, num_attention_heads=2))
        torch.manual_seed(seed)
        return cls(model=Sam3Model(cfg).eval(), tokenizer=tok, **kw)

    def _place(self):
        self.model.to(self.device)
        if self.dtype is not None:
            self.model.to(self.dtype)
        self.model.eval()

    def load(self) -> "Sam3Segmenter":
        if self.model is not None:
            return self
        from transformers import AutoTokenizer, Sam3Model

        folder = str(self.weights_dir)
        self.model = Sam3Model.from_pretrained(folder, dtype=self.dtype or torch.float32, use_safetensors=True)
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self._place()
        return self

    # -- preprocessing (ours: no torchvision)
    @property
    def input_size(self) -> int:
        return int(self.image_size or self.model.config.vision_config.backbone_config.image_size)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(T,H,W,3) uint8 RGB -> (T,3,S,S) normalised pixel values on the model's device/dtype."""
        s = self.input_size
        x = np.stack([cv2.resize(np.ascontiguousarray(f), (s, s), interpolation=cv2.INTER_LINEAR) for f in frames])
        x = torch.from_numpy(x).float().div_(255.0).permute(0, 3, 1, 2)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        dt = next(self.model.parameters()).dtype
        return ((x - mean) / std).to(self.device, dt)

    def tokenize(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        n = int(getattr(self.model.config.text_config, "max_position_embeddings", 32))
        t = self.tokenizer(list(prompts), return_tensors="pt", padding="max_length", max_length=n, truncation=True)
        return {"input_ids": t["input_ids"].to(self.device), "attention_mask": t["attention_mask"].to(self.device)}

    # -- inference
    @torch.no_grad()
    def raw(self, frames, prompts: Sequence[Sequence[str]]) -> List[Dict[str, Dict[str, torch.Tensor]]]:
        """Per frame, per prompt: ``{"scores": (Q,), "mask_logits": (Q,h,w)}`` (CPU float32)."""
        self.load()
        frames = self._frames(frames)
        if len(prompts) != len(frames):
            raise ValueError(f"need one prompt list per frame: {len(prompts)} lists for {len(frames)} frames")
        out: List[Dict[str, Dict[str, torch.Tensor]]] = [dict() for _ in range(len(frames))]
        for s in range(0, len(frames), self.batch_size):
            idx = range(s, min(s + self.batch_size, len(frames)))
            pairs = [(i - s, i, p) for i in idx for p in dict.fromkeys(prompts[i])]
            if not pairs:
                continue
            ve = self.model.get_vision_features(pixel_values=self.preprocess(frames[s:s + self.batch_size]))
            for c in range(0, len(pairs), self.prompt_batch):
                chunk = pairs[c:c + self.prompt_batch]
                sub = select_vision_embeds(ve, torch.tensor([b for b, _, _ in chunk]))
                o = self.model(vision_embeds=sub, **self.tokenize([p for _, _, p in chunk]))
                scores = torch.sigmoid(o.pred_logits.float())
                if o.presence_logits is not None:
                    scores = scores * torch.sigmoid(o.presence_logits.float())
                for k, (_, i, p) in enumerate(chunk):
                    out[i][p] = {"scores": scores[k].cpu(), "mask_logits": o.pred_masks[k].float().cpu()}
        return out

    def segment(self, frames, prompts: Sequence[Sequence[str]], score_threshold: Optional[float] = None,
                mask_threshold: Optional[float] = None) -> np.ndarray:
        """Union of every kept mask of every prompt of each frame: (T,H,W) bool."""
        frames = self._frames(frames)
        st = self.score_threshold if score_threshold is None else float(score_threshold)
        mt = self.mask_threshold if mask_threshold is None else float(mask_threshold)
        t, h, w = frames.shape[:3]
        masks = np.zeros((t, h, w), dtype=bool)
        if mt <= 0.0:
            logit_t = -math.inf
        elif mt >= 1.0:
            logit_t = math.inf
        else:
            logit_t = math.log(mt / (1.0 - mt))
        for i, per in enumerate(self.raw(frames, prompts)):
            for r in per.values():
                keep = r["scores"] > st
                if not bool(keep.any()):
                    continue
                logits = F.interpolate(r["mask_logits"][keep][None], size=(h, w), mode="bilinear",
                                       align_corners=False)[0]
                masks[i] |= (logits > logit_t).any(0).numpy() if logit_t > -math.inf else True
        return masks

    @staticmethod
    def _frames(frames) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T,H,W,3) uint8 RGB, got shape {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}")
        return frames

    def __repr__(self) -> str:
        src = self.weights_dir if self.weights_dir is not None else "in-memory model"
        return f"Sam3Segmenter({src}, device={self.device}, score_threshold={self.score_threshold})"
