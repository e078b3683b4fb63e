"""Which movable things are in a frame: Qwen3-VL lists them, or a fixed list does.

- :func:`parse_entities` turns a vision-language model's answer into a clean list of short noun
  phrases. It never raises: malformed output gives ``[]`` and a ``warnings.warn``.
- :class:`QwenEntityLister` runs transformers' ``Qwen3VLForConditionalGeneration`` on the frames
  (weights from a local folder, loaded lazily on the first call). Image preprocessing is ours /
  ``Qwen2VLImageProcessorPil`` (Qwen3-VL's own processors need torchvision, see the environment notes),
  and the chat prompt is built by hand in Qwen's ChatML format.
- :class:`FixedEntities` is the configurable alternative: the same list for every frame.

Both expose ``__call__(frames (T,H,W,3) uint8) -> list[list[str]]`` (one list per frame).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["parse_entities", "FixedEntities", "QwenEntityLister", "DEFAULT_ENTITIES", "DEFAULT_PROMPT",
           "EntityParseWarning"]

DEFAULT_ENTITIES = ("person", "car", "bicycle", "motorcycle", "bus", "truck", "animal")

DEFAULT_PROMPT = ("List every movable object in this image (people, vehicles, animals, robots, carried items). "
                  "Answer only with a JSON list of short lowercase nouns, e.g. [\"person\", \"car\"]. "
                  "Answer [] if there is none.")

MAX_ITEMS = 16  # entities kept per frame
MAX_CHARS = 32  # characters per entity
MAX_WORDS = 4  # longer "entities" are sentences, not nouns

_NONE_WORDS = {"none", "nothing", "n/a", "na", "no objects", "no movable objects", "null", "empty"}
_ARTICLES = ("a ", "an ", "the ", "some ", "two ", "three ", "several ", "many ")


class EntityParseWarning(UserWarning):
    """The model's answer could not be read as a list of entities."""


def _clean(item) -> Optional[str]:
    if isinstance(item, dict):  # [{"label": "car"}, {"name": "person"}]
        for key in ("label", "name", "object", "entity", "category"):
            if isinstance(item.get(key), str):
                item = item[key]
                break
        else:
            return None
    if not isinstance(item, str):
        return None
    s = item.strip().lower()
    s = re.sub(r"\(.*?\)", " ", s)  # "car (red)" -> "car"
    s = re.sub(r"[^a-z0-9' \-]", " ", s)
    s = re.sub(r"\s+", " ", s).strip(" -'")
    for art in _ARTICLES:
        if s.startswith(art):
            s = s[len(art):]
    s = s.strip()
    if not s or s in _NONE_WORDS or len(s.split()) > MAX_WORDS:
        return None
    return s[:MAX_CHARS].strip()


def _dedup(items: Sequence[Optional[str]], max_items: int) -> List[str]:
    out: List[str] = []
    for s in items:
        if s and s not in out:
            out.append(s)
        if len(out) >= max_items:
            break
    return out


# prose around a list: "I see ...", "There are ...", "The image shows ..." (dropped before splitting)
_LEAD_IN = re.compile(r"^(?:(?:sure|ok|okay|yes)[,!.]?\s+)?(?:i\s+(?:can\s+)?see|there\s+(?:is|are)|"
                      r"(?:the|this)\s+(?:image|picture|frame|photo)\s+(?:shows|contains|has)|"
                      r"(?:the\s+)?movable\s+(?:objects|things)\s+(?:are|is))\s+", re.I)
# a one-sentence answer that there is nothing: "There are no movable objects in this image."
_NEGATIVE = re.compile(r"^\s*(?:there\s+(?:is|are)\s+)?(?:no|not\s+any)\s+(?:movable\s+|moving\s+|dynamic\s+)?"
                       r"(?:objects?|things?|entities|items?)(?:\s+(?:are\s+|is\s+)?(?:visible|present|here|"
                       r"in\s+(?:this|the)\s+(?:image|picture|frame|photo|scene)))?\s*[.!]?\s*$", re.I)

_BULLET = re.compile(r"^\s*(?:[-*\u2022\u2023+]|\d+[.)]|[a-z][.)])\s+(.*)$", re.I)


def parse_entities(text, max_items: int = MAX_ITEMS) -> List[str]:
    """Parse a model answer into ``list[str]``: lowercased, deduplicated, at most ``max_items``
    entities of at most ``MAX_CHARS`` characters / ``MAX_WORDS`` words.

    Accepts a JSON list (also inside a code fence or surrounded by prose, also of objects with a
    ``label``/``name``), bullet or numbered lines, or one comma/semicolon separated line. An explicit
    empty answer (``[]``, "none") gives ``[]`` silently; anything unreadable gives ``[]`` and an
    :class:`EntityParseWarning`. Never raises.
    """
    try:
        return _parse(text, max_items)
    except Exception as e:  # noqa: BLE001 - never crash the perception loop on a model's answer
        warnings.warn(f"could not parse entities from {str(text)[:80]!r}: {e}", EntityParseWarning, stacklevel=2)
        return []


def _parse(text, max_items: int) -> List[str]:
    if not isinstance(text, str):
        warnings.warn(f"entity answer is not text: {type(text).__name__}", EntityParseWarning, stacklevel=3)
        return []
    t = re.sub(r"<think>.*?(</think>|$)", " ", text, flags=re.S | re.I)
    t = re.sub(r"```[a-zA-Z]*", "\n", t).replace("```", "\n").strip()
    if not t or t.lower().strip(" .!") in _NONE_WORDS or _NEGATIVE.match(t):
        return []

    # 1. a JSON list somewhere in the answer
    for m in re.finditer(r"\[.*?\]", t, flags=re.S):
        frag = m.group(0)
        for cand in (frag, frag.replace("'", '"')):
            try:
                val = json.loads(cand)
            except ValueError:
                continue
            if isinstance(val, list):
                if not val:
                    return []
                out = _dedup([_clean(v) for v in val], max_items)
                if out:
                    return out
    # 1a. a JSON list cut short (max_new_tokens): keep its complete quoted items, and say so
    opened = t.rfind("[")
    if opened >= 0 and "]" not in t[opened:]:
        items = re.findall(r"[\"']([^\"'\[\],]+)[\"']\s*,", t[opened:] + ",")
        warnings.warn(f"entity list was cut short: {text[-60:]!r}; kept {len(items)} complete item(s)",
                      EntityParseWarning, stacklevel=3)
        return _dedup([_clean(v) for v in items], max_items)
    # 1b. a JSON object with a list inside ({"objects": [...]}) is covered above; a bare JSON string?
    try:
        val = json.loads(t)
        if isinstance(val, str):
            t = val
    except ValueError:
        pass

    lines = [ln for ln in t.splitlines() if ln.strip()]
    # 2. bullet / numbered lines
    bullets = [m.group(1) for m in (_BULLET.match(ln) for ln in lines) if m]
    if bullets and len(bullets) >= max(1, len(lines) // 2):
        items = []
        for b in bullets:
            items.extend(re.split(r"\s*[,;]\s*", b.split(":")[0]))
        out = _dedup([_clean(b) for b in items], max_items)
        if out:
            return out

    # 3. a comma / semicolon separated list (after an optional "Objects:" lead-in)
    body = " ".join(lines)
    if ":" in body:
        body = body.split(":", 1)[1]
    body = _LEAD_IN.sub("", body.strip())  # "I see a person and a dog." -> "a person and a dog."
    body = re.sub(r"\s+(and|or)\s+", ",", body.strip().rstrip("."))
    parts = [p for p in re.split(r"\s*[,;\n|]\s*", body) if p.strip()]
    if parts and all(len(p.split()) <= MAX_WORDS and not re.search(r"[.!?]\s", p + " ") for p in parts):
        cleaned = [_clean(p) for p in parts]
        if all(c is None for c in cleaned) and all(p.strip().lower() in _NONE_WORDS for p in parts):
            return []
        out = _dedup(cleaned, max_items)
        if out:
            return out
    warnings.warn(f"could not parse entities from model output {text[:120]!r}; using none", EntityParseWarning,
                  stacklevel=3)
    return []


class FixedEntities:
    """The same configurable list of entities for every frame."""

    def __init__(self, entities: Sequence[str] = DEFAULT_ENTITIES):
        if isinstance(entities, str):
            entities = [entities]
        self.entities = _dedup([_clean(e) for e in entities], 10 ** 6)

    def __call__(self, frames) -> List[List[str]]:
        return [list(self.entities) for _ in range(len(frames))]

    def __repr__(self) -> str:
        return f"FixedEntities({self.entities})"


# ----------------------------------------------------------------------------------------------- Qwen3-VL

_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
_V_START, _V_END, _IMG_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def check_weights_dir(folder, what: str, need=(("config.json",), _WEIGHT_FILES)) -> Path:
    """Raise FileNotFoundError naming ``folder`` and what is missing (each tuple: one of these files)."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what} weights folder {str(p)!r} does not exist")
    missing = [" or ".join(alts) for alts in need if not any((p / a).is_file() for a in alts)]
    idx = p / "model.safetensors.index.json"
    if not missing and idx.is_file() and not (p / "model.safetensors").is_file():
        try:
            shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise FileNotFoundError(f"{what} weights folder {str(p)!r}: unreadable {idx.name}: {e}") from e
        missing += [s for s in shards if not (p / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{what} weights folder {str(p)!r} is incomplete: missing {', '.join(missing)}")
    return p


def _tiny_word_tokenizer(words: Sequence[str], specials: Sequence[str]):
    """A word-level fast tokenizer built in code (no download), for tests with tiny random models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for w in list(specials) + ["<unk>"] + list(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": list(specials)})
    return fast


_TINY_WORDS = ["[", "]", ",", '"', "person", "car", "bicycle", "dog", "bus", "truck", "robot", "sky", "tree",
               "the", "a", "list", "every", "movable", "object", "in", "this", "image", "answer", "none", "user",
               "assistant", "\n", "of", "and", "cat", "ball", "box", "chair", "cart"]


class QwenEntityLister:
    """Qwen3-VL lists the movable entities of each frame.

    Either ``weights_dir`` (a local folder: ``config.json``, ``model.safetensors`` [+ shards],
    ``tokenizer.json``, optional ``preprocessor_config.json``), loaded lazily, or ``model`` +
    ``processor`` (a tokenizer) given directly (tests: :meth:`tiny`).
    """

    def __init__(self, weights_dir=None, model=None, processor=None, image_processor=None, device="cpu",
                 dtype: Optional[torch.dtype] = None, max_new_tokens: int = 48, prompt: str = DEFAULT_PROMPT,
                 max_pixels: int = 448 * 448, min_pixels: int = 64 * 64, batch_size: int = 4):
        if model is None and weights_dir is None:
            raise ValueError("QwenEntityLister needs weights_dir (a local Qwen3-VL folder) or model + processor")
        if model is not None and processor is None:
            raise ValueError("QwenEntityLister(model=...) also needs processor= (the tokenizer)")
        self.weights_dir = None if weights_dir is None else check_weights_dir(
            weights_dir, "Qwen3-VL", need=(("config.json",), _WEIGHT_FILES, _TOKENIZER_FILES))
        self.model, self.tokenizer, self.image_processor = model, processor, image_processor
        self.device, self.dtype = torch.device(device), dtype
        self.max_new_tokens, self.prompt, self.batch_size = int(max_new_tokens), prompt, int(batch_size)
        self.max_pixels, self.min_pixels = int(max_pixels), int(min_pixels)
        self.last_text: List[str] = []
        if self.model is not None:
            self._place()

    # -- construction
    @classmethod
    def tiny(cls, seed: int = 0, **kw) -> "QwenEntityLister":
        """The real ``Qwen3VLForConditionalGeneration`` with a tiny random config and a word-level tokenizer."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        specials = ["<|endoftext|>", _IM_START, _IM_END, _V_START, _V_END, _IMG_PAD, "<|video_pad|>"]
        tok = _tiny_word_tokenizer(_TINY_WORDS, specials)
        tok.pad_token, tok.eos_token = "<|endoftext|>", _IM_END
        ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
        cfg = Qwen3VLConfig(
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                               temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32,
                               num_position_embeddings=64, deepstack_visual_indexes=[0]),
            text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                             rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3],
                                                  mrope_interleaved=True),
                             bos_token_id=ids[_IM_START], eos_token_id=ids[_IM_END], pad_token_id=ids["<|endoftext|>"]),
            image_token_id=ids[_IMG_PAD], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids[_V_START], vision_end_token_id=ids[_V_END], tie_word_embeddings=True)
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(cfg).eval()
        kw.setdefault("max_pixels", 64 * 96)
        kw.setdefault("min_pixels", 32 * 32)
        kw.setdefault("max_new_tokens", 8)
        return cls(model=model, processor=tok, **kw)

    def _place(self):
        self.model.to(self.device)
        if self.dtype is not None:
            self.model.to(self.dtype)
        self.model.eval()

    def load(self) -> "QwenEntityLister":
        if self.model is not None:
            return self
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

        folder = str(self.weights_dir)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=self.dtype or torch.float32,
                                                                     use_safetensors=True)
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self._place()
        return self

    def _image_processor(self):
        if self.image_processor is None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            vc = self.model.config.vision_config
            kw = dict(patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size,
                      merge_size=vc.spatial_merge_size, image_mean=[0.5] * 3, image_std=[0.5] * 3)
            pp = None if self.weights_dir is None else self.weights_dir / "preprocessor_config.json"
            if pp is not None and pp.is_file():  # the checkpoint's own mean/std/patching win
                d = json.loads(pp.read_text())
                kw.update({k: d[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean",
                                             "image_std") if k in d})
            self.image_processor = Qwen2VLImageProcessorPil(
                min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}, **kw)
        return self.image_processor

    # -- inference
    def _inputs(self, frames: np.ndarray):
        ip = self._image_processor()
        enc = ip([np.ascontiguousarray(f) for f in frames], return_tensors="pt")
        merge = int(getattr(ip, "merge_size", 2)) ** 2
        cfg = self.model.config
        texts = []
        for thw in enc["image_grid_thw"]:
            n = int(thw.prod()) // merge
            texts.append(f"{_IM_START}user\n{_V_START}{_IMG_PAD * n}{_V_END}{self.prompt}{_IM_END}\n"
                         f"{_IM_START}assistant\n")
        tok = self.tokenizer(texts, return_tensors="pt", padding=True)
        input_ids = tok["input_ids"]
        n_img = (input_ids == cfg.image_token_id).sum(1)
        expect = enc["image_grid_thw"].prod(-1) // merge
        if not torch.equal(n_img, expect):
            raise RuntimeError(f"tokenizer split the image placeholder wrongly: {n_img.tolist()} != {expect.tolist()}")
        mm = (input_ids == cfg.image_token_id).long()  # 1 = image token (transformers 5.x M-RoPE needs this)
        dt = next(self.model.parameters()).dtype
        return dict(input_ids=input_ids.to(self.device), attention_mask=tok["attention_mask"].to(self.device),
                    mm_token_type_ids=mm.to(self.device), image_grid_thw=enc["image_grid_thw"].to(self.device),
                    pixel_values=enc["pixel_values"].to(self.device, dt))

    @torch.no_grad()
    def generate_text(self, frames) -> List[str]:
        """Raw answers, one per frame."""
        self.load()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T,H,W,3) uint8 RGB, got {frames.shape}")
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        eos = [i for i in {tok.convert_tokens_to_ids(_IM_END), tok.eos_token_id} if isinstance(i, int) and i >= 0]
        out: List[str] = []
        for s in range(0, len(frames), self.batch_size):
            inp = self._inputs(frames[s:s + self.batch_size])
            gen = self.model.generate(**inp, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      eos_token_id=eos, pad_token_id=tok.pad_token_id)
            new = gen[:, inp["input_ids"].shape[1]:]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        return out

    def __call__(self, frames) -> List[List[str]]:
        self.last_text = self.generate_text(frames)
        return [parse_entities(t) for t in self.last_text]

    def __repr__(self) -> str:
        src = self.weights_dir if self.weights_dir is not None else "in-memory model"
        return f"QwenEntityLister({src}, device={self.device})"
