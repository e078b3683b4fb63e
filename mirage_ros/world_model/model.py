"""``MirageWorldModel``: the pieces one rollout needs, built or loaded in one place.

- ``transformer``: ``MirageTransformer`` = Wan2.2 backbone (+ LoRA) + Mirage side branch;
- ``codec``: any ``Codec``: image mode for the memory, video mode for generation (the Wan2.2 VAE:
  33 RGB frames <-> 9 latents, first frame alone; image codecs such as the shipped small model's
  ``LinearBlockCodec``: one latent per frame);
- ``text``: ``PromptEncoder`` (UMT5, or none: empty / precomputed embeddings);
- ``sampler``: ``FlowUniPCSampler``.

Builders: ``MirageWorldModel.build("tiny" | "small" | "full", ...)`` (random weights, the real
classes), ``MirageWorldModel.from_pretrained(folder, side_branch=..., lora=...)`` (a folder written
by ``save_pretrained``, or Wan2.2-TI2V-5B plus side-branch / LoRA files). bf16 on GPU by default,
``offload=True`` keeps each component on the CPU until its stage runs, ``vae_tiling=True`` decodes
in tiles (smaller GPUs).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from .configs import TINY_VAE_OVERRIDES, text_tokens, transformer_config
from .dtypes import build_random, default_dtype_for
from .frame_roles import FrameRoles
from .sampler import FlowUniPCSampler
from .text import PromptEncoder

__all__ = ["MirageWorldModel", "MODEL_FORMAT", "is_mirage_folder"]

MODEL_FORMAT = "mirage_ros.world_model"  # model_index.json "format" of folders written by save_pretrained
MODEL_VERSION = 1


def is_mirage_folder(folder: Union[str, Path]) -> bool:
    """True when ``folder`` was written by ``MirageWorldModel.save_pretrained`` (not a Wan2.2 folder)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == MODEL_FORMAT
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


class MirageWorldModel:
    """See module docstring. ``layout``: ``paper`` | ``official`` (from the side branch)."""

    def __init__(self, transformer, codec, text: PromptEncoder, sampler: Optional[FlowUniPCSampler] = None,
                 device="cpu", offload: bool = False, description: str = "",
                 resolution: Optional[Tuple[int, int]] = None):
        from .codec import Codec

        if not isinstance(codec, Codec):
            raise TypeError(f"codec: expected a mirage_ros Codec (encode/decode, video mode), got "
                            f"{type(codec).__name__}")
        self.transformer, self.codec, self.text = transformer, codec, text
        self.sampler = sampler or FlowUniPCSampler()
        self.device = torch.device(device)
        self.offload = offload
        self.description = description
        # (H, W) a trained model expects (the backend resizes other requests); None: any
        self.resolution: Optional[Tuple[int, int]] = (None if resolution is None
                                                      else (int(resolution[0]), int(resolution[1])))
        self._score_cache: Dict[Tuple[int, int, int], torch.Tensor] = {}
        bb = transformer.backbone.config
        if text.text_dim != bb.text_dim:
            raise ValueError(f"text encoder: text_dim {text.text_dim} != backbone text_dim {bb.text_dim}")
        if codec.channels != bb.in_channels:
            raise ValueError(f"VAE: {codec.channels} latent channels, the backbone takes {bb.in_channels}")

    # -- description ---------------------------------------------------------------------------
    @property
    def layout(self) -> Optional[str]:
        sb = self.transformer.side_branch
        if sb is None:
            return None
        return "official" if sb.patch_embedding is not None else "paper"

    @property
    def channels(self) -> int:
        return self.codec.channels

    @property
    def stride(self) -> int:
        return self.codec.stride

    @property
    def temporal_stride(self) -> int:
        return self.codec.temporal_stride

    # -- builders ------------------------------------------------------------------------------
    @classmethod
    def build(cls, config: str = "tiny", layout: str = "paper", device="cpu", dtype: Optional[torch.dtype] = None,
              seed: int = 0, side_branch_init: str = "zero", rope_layout: str = "official",
              sampler: Optional[FlowUniPCSampler] = None, offload: bool = False, codec=None,
              refiner_channels: int = 0) -> "MirageWorldModel":
        """Random weights with the real classes. ``config``: ``tiny`` (toy sizes, tiny Wan VAE twin) |
        ``small`` (the shipped model's size; the analytic thumbnail codec unless ``codec`` is given) |
        ``full`` (5B TI2V + the 704.7M-parameter Wan2.2 VAE). ``side_branch_init``: ``zero`` (as trained
        from) | ``random`` (non-zero output projections, so the readout visibly acts) | ``none``."""
        from diffusers import WanTransformer3DModel

        from .codec import ThumbnailCodec, WanVAECodec
        from .side_branch import MirageSideBranch
        from .transformer import MirageTransformer

        dtype = dtype or default_dtype_for(device)
        home = "cpu" if offload else device
        bb_cfg = transformer_config(config)
        backbone = build_random(WanTransformer3DModel, bb_cfg, device=home, dtype=dtype, seed=seed)
        side = None
        if side_branch_init != "none":
            side = MirageSideBranch.from_backbone(backbone, layout)
            if side_branch_init == "random":
                side.randomize_output_projections(seed=seed + 1)
            elif side_branch_init != "zero":
                raise ValueError(f"side_branch_init: expected zero, random or none, got {side_branch_init!r}")
        if codec is None and config == "small":
            codec = ThumbnailCodec()
        elif codec is None:
            vae_overrides = dict(TINY_VAE_OVERRIDES) if config == "tiny" else {}
            vae_dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
            codec = WanVAECodec.random(seed=seed + 2, device=home, dtype=vae_dtype, **vae_overrides)
        text = PromptEncoder(text_dim=bb_cfg["text_dim"], max_length=text_tokens(config), device=home, dtype=dtype)
        refiner = None
        if refiner_channels:
            from .refiner import LatentRefiner

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 7)
                refiner = LatentRefiner(channels=bb_cfg["out_channels"], hidden=int(refiner_channels)).to(home)
        desc = (f"Mirage world model, {config} configuration with RANDOM weights (no trained weights loaded): "
                f"{layout} side branch ({side_branch_init} init), generates noise-like video")
        return cls(MirageTransformer(backbone, side, rope_layout, refiner=refiner), codec, text, sampler, device=device,
                   offload=offload, description=desc)

    @classmethod
    def from_pretrained(cls, weights: Union[str, Path], side_branch: Optional[Union[str, Path]] = None,
                        lora: Optional[Union[str, Path]] = None, layout: str = "paper", device="cuda",
                        dtype: Optional[torch.dtype] = None, offload: bool = False, vae_tiling: bool = False,
                        text_encoder: bool = True, rope_layout: str = "official",
                        sampler: Optional[FlowUniPCSampler] = None) -> "MirageWorldModel":
        """Load a world model from ``weights``:

        - a folder written by ``save_pretrained`` (``model_index.json`` with format
          ``mirage_ros.world_model``: e.g. the shipped small model or a ``mirage train`` run's
          ``model/``); ``side_branch`` / ``lora`` then override its own files;
        - Wan2.2-TI2V-5B (diffusers or original layout, detected), with the side branch from
          ``side_branch`` (ours or official; None = a fresh zero-initialised branch in ``layout``)
          and LoRA from ``lora`` (ours or official).
        """
        from .checkpoints import detect_layout
        from .lora import load_lora
        from .side_branch import MirageSideBranch
        from .transformer import MirageTransformer

        if is_mirage_folder(weights):
            return cls._from_mirage_folder(Path(weights), side_branch=side_branch, lora=lora, device=device,
                                           dtype=dtype,
                                           sampler=sampler)
        dtype = dtype or default_dtype_for(device)
        home = "cpu" if offload else device
        folder = Path(weights)
        kind = detect_layout(folder)
        from .transformer import load_backbone

        backbone = load_backbone(folder / "transformer" if kind == "diffusers" else folder, device=home, dtype=dtype,
                                 layout="diffusers" if kind == "diffusers" else "original")
        codec = _load_vae(folder, kind, home, torch.float32 if torch.device(device).type == "cpu" else dtype,
                          vae_tiling)
        if text_encoder:
            text = PromptEncoder.from_pretrained(folder, device=home, dtype=dtype)
        else:
            text = PromptEncoder(text_dim=backbone.config.text_dim, device=home, dtype=dtype)
        if side_branch is not None:
            side = MirageSideBranch.from_pretrained(side_branch, backbone=backbone, device=home, dtype=dtype)
        else:
            side = MirageSideBranch.from_backbone(backbone, layout)
        if lora is not None:
            load_lora(backbone, lora)
        desc = (f"Mirage world model: Wan2.2-TI2V-5B from {folder} ({kind} layout), side branch "
                f"{side_branch or 'FRESH (zero-initialised, untrained)'}, LoRA {lora or 'none'}")
        return cls(MirageTransformer(backbone, side, rope_layout), codec, text, sampler, device=device,
                   offload=offload, description=desc)

    # -- device placement ----------------------------------------------------------------------
    @contextlib.contextmanager
    def on_device(self, module):
        """With ``offload``, move ``module`` to the device for the duration of a stage."""
        if module is None or not self.offload or self.device.type == "cpu":
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # -- codec in video mode ----------------------------------------------------------------------
    def _codec_module(self):
        return getattr(self.codec, "vae", None)  # the Wan2.2 VAE moves with offloading; analytic codecs hold no module

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, memory_cells: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(T, C, h, w) latents -> (1 + ts(T-1), 3, H, W) RGB in [0, 1] (ts = the codec's temporal stride).
        ``memory_cells`` (T, h, w) bool: cells the memory supplied; a codec with an imagination decoder
        (``RefinedBlockCodec.imagined``) decodes the others with it, any other codec ignores it."""
        with self.on_device(self._codec_module()):
            if memory_cells is not None and getattr(self.codec, "imagined", None) is not None:
                return self.codec.decode_video(latents, memory_cells=memory_cells).float()
            return self.codec.decode_video(latents).float()

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(1 + ts(T-1), 3, H, W) RGB in [0, 1] -> (T, C, h, w) latents."""
        with self.on_device(self._codec_module()):
            return self.codec.encode_video(frames).float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C, h, w): image mode, each frame alone (memory features)."""
        with self.on_device(self._codec_module()):
            return self.codec.encode(images).float()

    def score_latents(self, num_frames: int, height: int, width: int) -> torch.Tensor:
        """(T, C, h, w): the VAE encoding of an all-ones video (official layout's 2nd half of the
        96-channel control), cached per shape."""
        key = (num_frames, height, width)
        if key not in self._score_cache:
            ones = torch.ones(self.codec.video_frames(num_frames), 3, height, width)
            self._score_cache[key] = self.encode_video(ones).cpu()
        return self._score_cache[key]

    # -- one chunk -----------------------------------------------------------------------------
    def control_inputs(self, readouts: torch.Tensor, masks: torch.Tensor, image_size: Tuple[int, int]):
        """Side-branch input for readouts (F_c, C, h, w) and masks (F_c, h, w) -> control
        (1, C_in, F_c, h, w) and mask (1, 1, F_c, h, w) (or None), per the branch's layout."""
        sb = self.transformer.side_branch
        if sb is None:
            return None, None
        z = (readouts.float() * masks[:, None].float()).permute(1, 0, 2, 3)[None]
        m = masks.float()[None, None]
        if sb.config.in_channels == 2 * self.channels:  # official: readout + encoded all-ones score video
            score = self.score_latents(readouts.shape[0], *image_size).to(z.device).permute(1, 0, 2, 3)[None]
            z = torch.cat([z, score.float()], dim=1)
        elif sb.config.in_channels != self.channels:
            raise ValueError(f"side branch: {sb.config.in_channels} input channels fit neither layout "
                             f"({self.channels} or {2 * self.channels})")
        return z, (m if sb.mask_embedding is not None else None)

    @torch.no_grad()
    def denoise(
        self,
        clean_targets: torch.Tensor,
        num_targets: int,
        readouts: torch.Tensor,
        masks: torch.Tensor,
        image_size: Tuple[int, int],
        prompt_embeds: torch.Tensor,
        preceding: Optional[torch.Tensor] = None,
        references: Optional[torch.Tensor] = None,
        negative_embeds: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        progress=None,
    ) -> torch.Tensor:
        """Generate one chunk's target latents (T, C, h, w).

        clean_targets (k, C, h, w): the first k targets, known and clean (t = 0);
        readouts (T+P, C, h, w) / masks (T+P, h, w): memory readouts of targets then preceding;
        preceding (P, C, h, w), references (R, C, h, w): clean context latents.
        Noise is drawn on the CPU from ``generator`` so a seed gives the same frames on any device.
        """
        req = dict(clean_targets=clean_targets, num_targets=num_targets, readouts=readouts, masks=masks,
                   preceding=preceding, references=references, generator=generator)
        return self.denoise_batch([req], image_size, prompt_embeds, negative_embeds, progress)[0]

    @torch.no_grad()
    def denoise_batch(self, requests, image_size: Tuple[int, int], prompt_embeds: torch.Tensor,
                      negative_embeds: Optional[torch.Tensor] = None, progress=None) -> list:
        """Several chunks in one batch (e.g. a planner's candidate trajectories): ``requests`` are dicts
        with ``denoise``'s per-chunk arguments; all must have the same frame roles (targets, clean
        targets, preceding, references). Each request's noise comes from its own generator, so a
        chunk is the same whether it is denoised alone or in a batch (up to float rounding)."""
        if not requests:
            return []
        shapes = [(r["num_targets"], r["clean_targets"].shape[0],
                   0 if r.get("preceding") is None else r["preceding"].shape[0],
                   0 if r.get("references") is None else r["references"].shape[0]) for r in requests]
        if len(set(shapes)) != 1:
            raise ValueError(f"requests: a batch needs one frame-role layout, got {sorted(set(shapes))}")
        T, k, P, R = shapes[0]
        C, h, w = requests[0]["clean_targets"].shape[1:]
        roles = FrameRoles(T, P, R, k)
        for r in requests:
            if r["readouts"].shape[0] != roles.num_conditioned:
                raise ValueError(f"readouts: {r['readouts'].shape[0]} frames, expected targets + preceding = "
                                 f"{roles.num_conditioned}")
        B = len(requests)
        tr = self.transformer
        with self.on_device(tr):
            dev, dt = tr.device, tr.dtype
            ctx = []
            for key in ("preceding", "references"):
                if requests[0].get(key) is not None and requests[0][key].shape[0]:
                    ctx.append(torch.stack([r[key] for r in requests]).permute(0, 2, 1, 3, 4).to(dev, torch.float32))
            parts = [self.control_inputs(r["readouts"].to(dev), r["masks"].to(dev), image_size) for r in requests]
            control = None if parts[0][0] is None else torch.cat([c for c, _ in parts])
            cmask = None if parts[0][1] is None else torch.cat([m for _, m in parts])
            cond = prompt_embeds.to(dev, dt).expand(B, -1, -1)
            negative = negative_embeds if negative_embeds is not None else torch.zeros_like(prompt_embeds)
            uncond = negative.to(dev, dt).expand(B, -1, -1)

            noise = torch.cat([torch.randn((1, C, T, h, w), generator=r.get("generator"), dtype=torch.float32)
                               for r in requests]).to(dev)
            clean = torch.stack([r["clean_targets"] for r in requests]).permute(0, 2, 1, 3, 4).to(dev, torch.float32)
            ctx_t = None  # (B, k + P + R) timesteps of the clean frames: 0, or context_sigma for generated ones
            if self.sampler.context_sigma > 0:
                clean, ctx, ctx_t = self._noise_context(requests, clean, ctx, k, dev)
            clean_ids = roles.clean().nonzero().squeeze(1).to(dev)

            def predict(x, t, conditional: bool):
                seq = torch.cat([x] + ctx, dim=2)
                ft = roles.frame_timesteps(t, device=dev)
                if ctx_t is not None:
                    ft = ft.expand(B, -1).clone()
                    ft[:, clean_ids] = ctx_t
                out = tr(seq, ft, cond if conditional else uncond, roles, control, cmask)
                return out[:, :, :T]

            # The targets' readouts and visibility, for memory pinning (``sampler``).
            known = torch.stack([r["readouts"][:T] for r in requests]).permute(0, 2, 1, 3, 4).to(dev, torch.float32)
            # A request's ``pin_masks`` / ``paste_masks`` (T, h, w) narrow pinning / the paste to
            # those cells (default: every visible target cell).
            def target_masks(key):
                return torch.stack([r[key] if r.get(key) is not None else r["masks"][:T]
                                    for r in requests])[:, None].to(dev, torch.bool)

            known_mask = target_masks("pin_masks")
            paste = target_masks("paste_masks") if any(r.get("paste_masks") is not None for r in requests) else None
            x = self.sampler.sample(predict, noise, clean, progress=progress, known=known, known_mask=known_mask,
                                    paste_mask=paste)
        return [x[i].permute(1, 0, 2, 3).float().cpu() for i in range(B)]

    def _noise_context(self, requests, clean, ctx, k: int, dev):
        """Noise the generated context frames to ``sampler.context_sigma`` (see ``sampler``): the
        clean targets (B, C, k, ...) and the context blocks (preceding, references); a request's
        ``context_observed`` (one bool per clean target, preceding and reference frame, in that
        order; default: all generated) keeps observed frames clean. Returns them and the (B, n)
        timesteps of the clean frames. Noise comes from each request's generator, after its targets'."""
        sig = self.sampler.context_sigma
        frames = torch.cat([clean] + ctx, dim=2)  # (B, C, k + P + R, h, w)
        n = frames.shape[2]
        gen = torch.zeros(len(requests), n, dtype=torch.bool)
        eps = []
        for i, r in enumerate(requests):
            obs = r.get("context_observed")
            gen[i] = True if obs is None else ~torch.as_tensor(list(obs), dtype=torch.bool)
            eps.append(torch.randn(frames.shape[1:], generator=r.get("generator"), dtype=torch.float32))
        gen = gen.to(dev)
        eps = torch.stack(eps).to(dev)
        m = gen[:, None, :, None, None]
        frames = torch.where(m, (1 - sig) * frames + sig * eps, frames)
        ctx_t = torch.where(gen, torch.tensor(sig * 1000.0, device=dev), torch.tensor(0.0, device=dev))
        sizes = [k] + [c.shape[2] for c in ctx]
        parts = list(torch.split(frames, sizes, dim=2))
        return parts[0], parts[1:], ctx_t

    # -- our folders -----------------------------------------------------------------------------
    def save_pretrained(self, folder: Union[str, Path], save_backbone: bool = True,
                        extra: Optional[Dict] = None) -> Path:
        """Write ``folder``: ``model_index.json`` (format, text and sampler settings, ``extra``),
        ``transformer/`` (``MirageTransformer.save_pretrained``) and ``codec/``; ``from_pretrained``
        reads it back exactly."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer", save_backbone=save_backbone)
        self.codec.save_pretrained(folder / "codec")
        index = {
            "_class_name": type(self).__name__, "format": MODEL_FORMAT, "version": MODEL_VERSION,
            "transformer": "transformer", "codec": "codec",
            "text": {"text_dim": self.text.text_dim, "max_length": self.text.max_length, "encoder": None},
            "sampler": self.sampler.config(),
            **(extra or {}),
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return folder

    @classmethod
    def _from_mirage_folder(cls, folder: Path, side_branch=None, lora=None, device="cpu", dtype=None,
                            sampler: Optional[FlowUniPCSampler] = None) -> "MirageWorldModel":
        from .checkpoints import CheckpointError
        from .codec import CodecError, load_codec
        from .lora import load_lora
        from .side_branch import MirageSideBranch
        from .transformer import MirageTransformer

        index_path = folder / "model_index.json"
        try:
            index = json.loads(index_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(index_path, what="Mirage world model", note=f"not valid JSON ({exc})") from None
        from .config_check import check_config
        check_config("model_index", index, index_path)  # every field in range, before anything is built
        if int(index.get("version", -1)) != MODEL_VERSION:
            raise CheckpointError(index_path, what="Mirage world model",
                                  note=f"version {index.get('version')} (this build reads {MODEL_VERSION})")
        dtype = dtype or default_dtype_for(device)
        transformer = MirageTransformer.from_pretrained(folder / index.get("transformer", "transformer"), device=device,
                                                        dtype=dtype)
        if side_branch is not None:
            transformer.side_branch = MirageSideBranch.from_pretrained(side_branch, backbone=transformer.backbone,
                                                                       device=device, dtype=dtype)
        if lora is not None:
            load_lora(transformer.backbone, lora)
        try:
            codec = load_codec(folder / index.get("codec", "codec"), device=device)
        except CodecError as exc:
            raise CheckpointError(folder / index.get("codec", "codec"), what="codec", note=str(exc)) from None
        t = index.get("text", {})
        text = PromptEncoder(text_dim=int(t.get("text_dim", transformer.backbone.config.text_dim)),
                             max_length=int(t.get("max_length", 512)), device=device, dtype=dtype)
        if sampler is None:
            try:
                sampler = FlowUniPCSampler.from_config(index.get("sampler", {}))
            except (TypeError, ValueError) as exc:
                raise CheckpointError(index_path, what="Mirage world model", note=str(exc)) from None
        desc = f"Mirage world model from {folder} ({index.get('name', 'trained with mirage train')})"
        return cls(transformer, codec, text, sampler, device=device, description=desc,
                   resolution=index.get("resolution") or None)

    def summary(self) -> Dict:
        n = self.transformer.num_parameters()
        return {
            "description": self.description,
            "layout": self.layout,
            "side_branch_layers": (list(self.transformer.side_branch.config.layers)
                                   if self.transformer.side_branch is not None else []),
            "parameters": {**n, "codec": _codec_parameters(self.codec)},
            "codec": self.codec.config(),
            "sampler": self.sampler.config(),
            "dtype": str(self.transformer.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


# -- loading helpers -------------------------------------------------------------------------------

def _codec_parameters(codec) -> int:
    vae = getattr(codec, "vae", None)
    if vae is not None:
        return sum(p.numel() for p in vae.parameters())
    basis = getattr(codec, "basis", None)
    return 0 if basis is None else int(basis.numel() + codec.mean.numel())


def _load_vae(folder: Path, kind: str, device, dtype, tiling: bool):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    from .checkpoints import check_state_dict, convert_wan22_vae_to_diffusers, read_state_dict
    from .codec import WanVAECodec

    if kind == "diffusers":
        return WanVAECodec.from_pretrained(folder / "vae", device=device, dtype=dtype, tiling=tiling)
    pth = folder / "Wan2.2_VAE.pth"
    files = [pth] if pth.is_file() else sorted(folder.glob("Wan2.2_VAE*.safetensors"))
    if not files:
        raise FileNotFoundError(f"VAE: {pth} (original Wan2.2 layout) is missing")
    state = convert_wan22_vae_to_diffusers(read_state_dict(files[0]), source=str(files[0]))
    cfg = WanVAECodec.default_config()
    cfg.update(_vae_sizes(state, cfg))
    with init_empty_weights():
        vae = AutoencoderKLWan(**cfg)
    check_state_dict(vae, state, files[0], what="Wan2.2 VAE")
    vae.load_state_dict(state, strict=True, assign=True)
    return WanVAECodec(vae.float(), device=device, dtype=dtype, tiling=tiling)


def _vae_sizes(state, cfg) -> Dict:
    """base_dim, decoder_base_dim and num_res_blocks read off converted VAE weights (the original
    .pth carries no config; the released file gives the Wan2.2 defaults)."""
    out = {}
    if "encoder.conv_in.weight" in state:
        out["base_dim"] = int(state["encoder.conv_in.weight"].shape[0])
    if "decoder.conv_in.weight" in state:
        out["decoder_base_dim"] = int(state["decoder.conv_in.weight"].shape[0]) // int(cfg["dim_mult"][-1])
    res = {k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")}
    if res:
        out["num_res_blocks"] = len(res)
    return out
