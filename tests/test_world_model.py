"""World model pieces on tiny configs of the real classes (random weights, CPU, milliseconds).

References are independent of our code: diffusers' own ``WanTransformer3DModel.forward`` for the
forward pass and the rotary positions, hand-written key names for the official LoRA format,
transformers' ``UMT5EncoderModel`` for the text encoder.
"""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import WanTransformer3DModel

from mirage_ros.world_model.checkpoints import CheckpointError
from mirage_ros.world_model.configs import TINY_TRANSFORMER, side_branch_config
from mirage_ros.world_model.frame_roles import FrameRoles, segment_rotary_embedding
from mirage_ros.world_model.lora import LORA_TARGETS, MirageLoRA, add_lora, load_lora, lora_state_dict, save_lora
from mirage_ros.world_model.sampler import FlowUniPCSampler
from mirage_ros.world_model.side_branch import MirageSideBranch
from mirage_ros.world_model.text import PromptEncoder, load_prompt_embeds, save_prompt_embeds
from mirage_ros.world_model.transformer import MirageTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY_TRANSFORMER).eval()


def inputs(roles, seed=1, h=4, w=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 48, roles.num_frames, h, w, generator=g)
    text = torch.randn(1, 7, TINY_TRANSFORMER["text_dim"], generator=g)
    return x, text


@torch.no_grad()
def test_forward_equals_diffusers_with_per_token_timesteps():
    bb = tiny_backbone()
    roles = FrameRoles(num_targets=3, num_clean_targets=1)
    x, text = inputs(roles)
    ft = roles.frame_timesteps(700.0)
    assert ft.tolist() == [0.0, 700.0, 700.0]  # the clean first frame carries t = 0
    ours = MirageTransformer(bb)(x, ft, text, roles)
    per_token = ft.repeat_interleave(2 * 3)[None]  # (1, seq): a 4x6 latent is 2x3 tokens per frame
    ref = bb(x, per_token, text).sample
    # Two implementations (ours and diffusers' forward, each with its own rotary tables) agree to
    # float32 rounding, not bit for bit on every CPU: budget 64 float32 ulps of the output's scale
    # (a 1-ulp rotary difference grows by far less through two tiny blocks; measured here: equal).
    tol = 64 * 2.0**-24 * ref.abs().max().item()
    assert (ours - ref).abs().max().item() <= tol
    # the per-token path is live: a different timestep on the clean frame changes the output by
    # orders of magnitude more than that budget
    other = MirageTransformer(bb)(x, torch.tensor([300.0, 700.0, 700.0]), text, roles)
    assert (other - ours).abs().max().item() > 1e3 * tol


def test_segment_positions_tell_roles_apart():
    roles = FrameRoles(num_targets=3, num_preceding=2, num_references=2)
    t, h_off = roles.positions("official", grid_h=5)
    assert t.tolist() == [0, 1, 2, 3, 4, -2, -1] and h_off.tolist() == [0] * 5 + [5, 5]
    t2, _ = roles.positions("chronological", grid_h=5)
    assert t2.tolist() == [0, 1, 2, -2, -1, -4, -3]
    assert roles.clean().tolist() == [True, False, False, True, True, True, True]
    cos, sin = segment_rotary_embedding(roles, (5, 3), 12)
    assert cos.shape == (1, 7 * 15, 1, 12)
    per_frame = cos[0, :, 0].view(7, 15, 12)
    # every frame has its own table; the two reference frames differ from every target
    for i in range(7):
        for j in range(i + 1, 7):
            assert not torch.allclose(per_frame[i], per_frame[j])
    # targets alone: exactly diffusers' WanRotaryPosEmbed
    bb = tiny_backbone()
    c_ref, s_ref = bb.rope(torch.zeros(1, 48, 3, 10, 6))
    c, s = segment_rotary_embedding(FrameRoles(3), (5, 3), 12)
    # both are float64 cos/sin rounded to float32; SIMD and scalar float64 cos may differ by an ulp,
    # which moves the float32 result by at most one float32 ulp (2^-24 for values below 1)
    assert c.shape == c_ref.shape and (c - c_ref).abs().max() <= 2.0**-24 and (s - s_ref).abs().max() <= 2.0**-24


@pytest.mark.parametrize("layout,in_ch", [("paper", 48), ("official", 96)])
@torch.no_grad()
def test_zero_side_branch_leaves_backbone_unchanged_and_nonzero_reads_the_readout(layout, in_ch):
    bb = tiny_backbone()
    roles = FrameRoles(num_targets=3, num_preceding=2, num_references=1)
    x, text = inputs(roles)
    ft = roles.frame_timesteps(500.0)
    g = torch.Generator().manual_seed(3)
    control = torch.randn(1, in_ch, roles.num_conditioned, 4, 6, generator=g)
    mask = (torch.rand(1, 1, roles.num_conditioned, 4, 6, generator=g) > 0.3).float()
    plain = MirageTransformer(bb)(x, ft, text, roles)
    branch = MirageSideBranch.from_backbone(bb, layout)
    assert branch.config.layers == tuple(range(0, 4, 4 if layout == "paper" else 2))
    assert all(torch.count_nonzero(b.proj_out.weight) == 0 for b in branch.blocks)
    model = MirageTransformer(bb, branch)
    assert torch.equal(model(x, ft, text, roles, control, mask), plain)
    branch.randomize_output_projections(std=0.2)
    with_hint = model(x, ft, text, roles, control, mask)
    assert not torch.allclose(with_hint, plain, atol=1e-4)
    changed = model(x, ft, text, roles, control.flip(2), mask)
    assert not torch.allclose(changed, with_hint, atol=1e-4)  # the output depends on the readout itself


def test_side_branch_layouts_follow_the_paper_and_the_official_code():
    full = dict(TINY_TRANSFORMER, num_layers=30)
    assert side_branch_config("paper", full)["layers"] == (0, 4, 8, 12, 16, 20, 24, 28)
    assert side_branch_config("paper", full)["in_channels"] == 48
    assert side_branch_config("official", full)["layers"] == tuple(range(0, 30, 2))
    assert side_branch_config("official", full)["in_channels"] == 96


@torch.no_grad()
def test_lora_rank_targets_and_round_trip(tmp_path):
    bb = tiny_backbone()
    roles = FrameRoles(3)
    x, text = inputs(roles)
    ft = roles.frame_timesteps(400.0)
    before = bb(x, ft.repeat_interleave(6)[None], text).sample
    add_lora(bb)
    cfg = bb.peft_config["default"]
    assert cfg.r == 64 and cfg.lora_dropout == 0.05 and set(cfg.target_modules) == set(LORA_TARGETS)
    sd = lora_state_dict(bb)
    assert sd and all(".attn1." in k for k in sd)  # self-attention only, never cross-attention
    assert {k.split(".attn1.")[1].rsplit(".lora_", 1)[0] for k in sd} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert len(sd) == 2 * 4 * TINY_TRANSFORMER["num_layers"]
    assert torch.equal(bb(x, ft.repeat_interleave(6)[None], text).sample, before)  # B = 0 at init
    g = torch.Generator().manual_seed(5)
    for name, p in bb.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    tuned = bb(x, ft.repeat_interleave(6)[None], text).sample
    assert not torch.allclose(tuned, before)
    path = save_lora(bb, tmp_path / "lora.safetensors")
    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert set(saved) == set(sd) and not any("base_layer" in k for k in saved)
    fresh = tiny_backbone()  # same base weights, no adapter
    info = load_lora(fresh, path)
    assert info["rank"] == 64
    assert torch.allclose(fresh(x, ft.repeat_interleave(6)[None], text).sample, tuned, atol=1e-6)
    # the same adapter as a component: from_backbone -> save_pretrained -> from_pretrained -> apply
    lora = MirageLoRA.from_backbone(bb)
    assert lora.config == {"rank": 64, "alpha": 64.0, "dropout": 0.05, "targets": sorted(LORA_TARGETS)}
    file = lora.save_pretrained(tmp_path / "component" / "lora.safetensors")
    again = MirageLoRA.from_pretrained(file)
    assert again.config == lora.config and set(again.state) == set(sd)
    assert all(torch.equal(again.state[k], saved[k]) for k in sd)  # the same bytes as save_lora's file
    other = tiny_backbone()
    assert again.apply(other, scale=0.5)["alpha"] == 32.0  # half the update
    for name, p in fresh.named_parameters():  # the reference: the full adapter with B halved
        if "lora_B" in name:
            p.mul_(0.5)
    half = fresh(x, ft.repeat_interleave(6)[None], text).sample
    assert torch.allclose(other(x, ft.repeat_interleave(6)[None], text).sample, half, atol=1e-6)
    assert not torch.allclose(half, tuned)
    with pytest.raises(CheckpointError, match="LoRA adapter"):
        MirageLoRA({**lora.config}, {k: v for k, v in list(lora.state.items())[1:]}, "short").apply(tiny_backbone())


@torch.no_grad()
def test_lora_in_the_official_layout_loads_onto_the_same_modules(tmp_path):
    from safetensors.torch import save_file

    bb = tiny_backbone()
    add_lora(bb, rank=8)
    g = torch.Generator().manual_seed(6)
    for name, p in bb.named_parameters():
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    roles = FrameRoles(3)
    x, text = inputs(roles)
    ts = roles.frame_timesteps(400.0).repeat_interleave(6)[None]
    tuned = bb(x, ts, text).sample
    # DiffSynth / official names, written from the public layout: self_attn.{q,k,v,o}
    ours_to_official = {"attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
                        "attn1.to_out.0": "self_attn.o"}
    official = {}
    for k, v in lora_state_dict(bb).items():
        block, rest = k.split(".", 2)[1], k.split(".", 2)[2]
        module, ab = rest.rsplit(".lora_", 1)
        official[f"pipe.dit.blocks.{block}.{ours_to_official[module]}.lora_{ab}"] = v.contiguous()
    save_file(official, str(tmp_path / "official_lora.safetensors"))
    fresh = tiny_backbone()
    info = load_lora(fresh, tmp_path / "official_lora.safetensors")
    assert info["rank"] == 8 and info["alpha"] == 8.0  # DiffSynth fuses W + B A (scale 1)
    assert torch.allclose(fresh(x, ts, text).sample, tuned, atol=1e-6)


def test_sampler_steps_cfg_and_clean_frames():
    calls = []

    def predict(x, t, conditional):
        calls.append(conditional)
        return x * 0.1 + (0.0 if conditional else 1.0)

    noise = torch.randn(1, 4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    clean = torch.full((1, 4, 1, 2, 2), 0.5)
    s = FlowUniPCSampler(steps=5, shift=5.0)
    out = s.sample(predict, noise, clean)
    assert calls == [True] * 5 and torch.equal(out[:, :, :1], clean)
    assert torch.equal(s.sample(predict, noise, clean), out)  # deterministic
    calls.clear()
    FlowUniPCSampler(steps=3, guidance_scale=2.0).sample(predict, noise, clean)
    assert calls == [True, False] * 3
    sched = s.scheduler()
    assert sched.config.flow_shift == 5.0 and sched.config.prediction_type == "flow_prediction"
    with pytest.raises(ValueError, match="steps"):
        FlowUniPCSampler(steps=0)


def test_sampler_config_round_trip_and_overrides_replace_one_field_each():
    s = FlowUniPCSampler(steps=10, shift=3.0, pin_until=0.9)
    cfg = s.config()
    assert cfg["_class_name"] == "FlowUniPCSampler"
    assert FlowUniPCSampler.from_config(cfg).config() == cfg
    t = FlowUniPCSampler.from_config(cfg, steps=4, pin_paste=None)
    assert (t.steps, t.shift, t.pin_until, t.pin_paste) == (4, 3.0, 0.9, False)  # steps never moves shift
    assert FlowUniPCSampler.from_config({"steps": 7}).shift == 5.0  # an old folder: the rest are defaults
    with pytest.raises(ValueError, match="stepz"):
        FlowUniPCSampler.from_config(cfg, stepz=3)
    with pytest.raises(ValueError, match="flux"):
        FlowUniPCSampler.from_config({"flux": 1})
    with pytest.raises(ValueError, match="_class_name"):
        FlowUniPCSampler.from_config({"_class_name": "DDIM"})
    for bad in ({"pin_until": 1.5}, {"shift": float("nan")}, {"steps": 10**9}, {"pin_paste": "yes"}):
        with pytest.raises(ValueError, match="sampler\\."):
            FlowUniPCSampler.from_config(bad)


def _per_cell_problem(seed: int):
    """Noise (1, 2, 3, 2, 2), one clean frame at 0.25, a readout of ones, an empty cell mask."""
    noise = torch.randn(1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
    return noise, torch.full((1, 2, 1, 2, 2), 0.25), torch.ones(1, 2, 3, 2, 2), torch.zeros(1, 1, 3, 2, 2,
                                                                                          dtype=torch.bool)


def test_memory_pinning_by_hand():
    """A per-cell model that always flows toward 0 (x0 = 0, so flow = x / sigma), one visible cell
    whose readout is 1: before each pinned step the visible cell is exactly (1 - sigma_i) * 1 +
    sigma_i * eps; invisible cells are untouched by pinning; paste gives the readout exactly; the
    clean frame is never pinned; pin_until = 0 is the plain sampler."""
    seen = []

    def predict(x, t, conditional):
        seen.append(x.clone())
        return x / (t / 1000.0)

    noise, clean, known, mask = _per_cell_problem(1)
    mask[0, 0, 1, 0, 1] = True
    mask[0, 0, 0] = True  # the clean frame's cells: must stay clean
    plain = FlowUniPCSampler(steps=6, shift=3.0).sample(predict, noise, clean)
    seen.clear()
    s = FlowUniPCSampler(steps=6, shift=3.0, pin_until=0.5)
    out = s.sample(predict, noise, clean, known=known, known_mask=mask)
    sig = s.sigmas()
    assert s.num_pinned_steps == 3 and len(seen) == 6
    for i in range(3):
        expect = (1 - sig[i]) * 1.0 + sig[i] * noise[0, :, 1, 0, 1]
        assert torch.allclose(seen[i][0, :, 1, 0, 1], expect, atol=1e-6), i
    vis = mask.expand(1, 2, 3, 2, 2).clone()
    vis[:, :, 0] = False
    assert torch.equal(out[~vis], plain[~vis])  # per-cell model: the rest does not move
    assert torch.equal(out[:, :, :1], clean)
    assert not torch.allclose(out[vis], plain[vis])
    pasted = FlowUniPCSampler(steps=6, shift=3.0, pin_until=1.0, pin_paste=True).sample(
        predict, noise, clean, known=known, known_mask=mask)
    assert torch.equal(pasted[vis], known[vis]) and torch.equal(pasted[:, :, :1], clean)
    off = FlowUniPCSampler(steps=6, shift=3.0, pin_until=0.0).sample(predict, noise, clean, known=known,
                                                                     known_mask=mask)
    assert torch.equal(off, plain)


def test_paste_mask_apart_from_the_pin_mask_by_hand():
    """paste_mask chooses where the readout is copied independently of where it is pinned: a cell
    pinned but not pasted ends as the pinned sampler leaves it, a cell pasted but never pinned is
    the readout exactly, and the clean frame is neither; an empty pin mask still pastes."""
    def predict(x, t, conditional):
        return x / (t / 1000.0)

    noise, clean, known, pin = _per_cell_problem(2)
    paste = torch.zeros_like(pin)
    pin[0, 0, 1, 0, 0] = True    # pinned only
    paste[0, 0, 2, 1, 1] = True  # pasted only
    paste[0, 0, 0] = True        # the clean frame: never pasted
    s = FlowUniPCSampler(steps=6, shift=3.0, pin_until=1.0, pin_paste=True)
    pinned_only = FlowUniPCSampler(steps=6, shift=3.0, pin_until=1.0).sample(predict, noise, clean, known=known,
                                                                             known_mask=pin)
    plain = FlowUniPCSampler(steps=6, shift=3.0).sample(predict, noise, clean)
    out = s.sample(predict, noise, clean, known=known, known_mask=pin, paste_mask=paste)
    assert torch.equal(out[0, :, 1, 0, 0], pinned_only[0, :, 1, 0, 0])
    assert not torch.allclose(out[0, :, 1, 0, 0], known[0, :, 1, 0, 0])
    assert torch.equal(out[0, :, 2, 1, 1], known[0, :, 2, 1, 1])
    assert torch.equal(out[:, :, :1], clean)
    rest = torch.ones_like(out, dtype=torch.bool)
    rest[0, :, 1, 0, 0] = rest[0, :, 2, 1, 1] = False
    assert torch.equal(out[rest], plain[rest])  # per-cell model: nothing else moves
    only_paste = s.sample(predict, noise, clean, known=known, known_mask=torch.zeros_like(pin), paste_mask=paste)
    assert torch.equal(only_paste[0, :, 2, 1, 1], known[0, :, 2, 1, 1])


def test_steps_override_keeps_the_model_folders_shift(tmp_path):
    """The node's ``steps`` parameter (and ``mirage demo --steps``) used to switch the shipped
    model's shift from its own 3.0 to 5.0: now each override changes only its own setting."""
    from mirage_ros.world_model.backend import SHIPPED_MODEL, make_backend

    own = json.loads((SHIPPED_MODEL / "model_index.json").read_text())["sampler"]
    b = make_backend("shipped", steps=3)
    assert b.model.sampler.steps == 3 and b.model.sampler.shift == own["shift"]
    b = make_backend("shipped", shift=2.0)
    assert b.model.sampler.shift == 2.0 and b.model.sampler.steps == own["steps"]
    with pytest.raises(ValueError, match="stepz"):
        make_backend("shipped", stepz=3)
    with pytest.raises(ValueError, match="chunk"):
        make_backend("readout", chunk=3)


def test_prompt_encoder_without_a_model(tmp_path):
    enc = PromptEncoder(text_dim=32)
    e = enc.encode(None)
    assert e.shape == (1, 512, 32) and torch.count_nonzero(e) == 0
    assert torch.equal(enc.encode(""), e)
    with pytest.raises(ValueError, match="no text encoder"):
        enc.encode("a red room")
    emb = torch.randn(1, 512, 32)
    save_prompt_embeds(tmp_path / "p.safetensors", emb)
    assert torch.equal(load_prompt_embeds(tmp_path / "p.safetensors"), emb)


def _tiny_umt5_folder(root):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "room": 5, "with": 6, "window": 7}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    model = UMT5EncoderModel(UMT5Config(vocab_size=8, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                                        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")).eval()
    fast.save_pretrained(str(root / "tokenizer"))
    model.save_pretrained(str(root / "text_encoder"))
    return model, fast


@torch.no_grad()
def test_prompt_encoder_diffusers_and_original_layouts(tmp_path):
    model, fast = _tiny_umt5_folder(tmp_path / "diffusers")
    enc = PromptEncoder.from_pretrained(tmp_path / "diffusers", dtype=torch.float32)
    e = enc.encode("a red  room")
    ids = fast("a red room").input_ids
    assert ids == [3, 4, 5, 1]
    ref = model(torch.tensor([ids])).last_hidden_state
    assert e.shape == (1, 512, 16)
    assert torch.allclose(e[0, :4], ref[0], atol=1e-5) and torch.count_nonzero(e[0, 4:]) == 0
    # original Wan layout: T5Encoder key names written from wan/modules/t5.py
    sd = model.state_dict()
    wan = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for i in range(2):
        p = f"encoder.block.{i}.layer."
        wan[f"blocks.{i}.norm1.weight"] = sd[p + "0.layer_norm.weight"]
        for n in "qkvo":
            wan[f"blocks.{i}.attn.{n}.weight"] = sd[p + f"0.SelfAttention.{n}.weight"]
        wan[f"blocks.{i}.pos_embedding.embedding.weight"] = sd[p + "0.SelfAttention.relative_attention_bias.weight"]
        wan[f"blocks.{i}.norm2.weight"] = sd[p + "1.layer_norm.weight"]
        wan[f"blocks.{i}.ffn.gate.0.weight"] = sd[p + "1.DenseReluDense.wi_0.weight"]
        wan[f"blocks.{i}.ffn.fc1.weight"] = sd[p + "1.DenseReluDense.wi_1.weight"]
        wan[f"blocks.{i}.ffn.fc2.weight"] = sd[p + "1.DenseReluDense.wo.weight"]
    orig = tmp_path / "original"
    (orig / "google").mkdir(parents=True)
    torch.save({k: v.clone() for k, v in wan.items()}, orig / "models_t5_umt5-xxl-enc-bf16.pth")
    fast.save_pretrained(str(orig / "google" / "umt5-xxl"))
    enc2 = PromptEncoder.from_pretrained(orig, dtype=torch.float32)
    assert torch.allclose(enc2.encode("a red room"), e, atol=1e-5)


@pytest.mark.parametrize("layout,in_ch", [("paper", 48), ("official", 96)])
@torch.no_grad()
def test_side_branch_config_round_trips_through_json(layout, in_ch):
    """config -> JSON text -> a rebuilt branch with the same config and, given the same weights,
    the same forward (this used to be a json.dumps with no assert)."""
    cfg = side_branch_config(layout, dict(TINY_TRANSFORMER))
    rebuilt_cfg = json.loads(json.dumps(cfg))  # tuples come back as lists
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()} == rebuilt_cfg
    torch.manual_seed(4)
    branch = MirageSideBranch(**cfg)
    branch.randomize_output_projections(std=0.2)
    rebuilt = MirageSideBranch(**rebuilt_cfg)
    assert json.loads(rebuilt.to_json_string()) == json.loads(branch.to_json_string())  # diffusers' own config
    rebuilt.load_state_dict(branch.state_dict())  # strict: same modules, same shapes
    bb = tiny_backbone()
    roles = FrameRoles(num_targets=2, num_preceding=1)
    x, text = inputs(roles)
    ft = roles.frame_timesteps(400.0)
    g = torch.Generator().manual_seed(5)
    control = torch.randn(1, in_ch, roles.num_conditioned, 4, 6, generator=g)
    mask = (torch.rand(1, 1, roles.num_conditioned, 4, 6, generator=g) > 0.5).float()
    out = MirageTransformer(bb, branch)(x, ft, text, roles, control, mask)
    assert not torch.allclose(out, MirageTransformer(bb)(x, ft, text, roles), atol=1e-4)  # the branch is live
    # same code, same weights
    assert torch.equal(MirageTransformer(bb, rebuilt)(x, ft, text, roles, control, mask), out)


@torch.no_grad()
def test_video_vae_time_stride_and_latent_normalisation():
    from mirage_ros.world_model.model import MirageWorldModel

    m = MirageWorldModel.build("tiny", side_branch_init="none")
    frames = torch.rand(33, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    z = m.encode_video(frames)
    assert z.shape == (9, 48, 2, 3)  # 33 RGB frames <-> 9 latents, the first frame alone
    vae = m.codec.vae
    mu = vae.encode(frames.mul(2).sub(1).permute(1, 0, 2, 3)[None]).latent_dist.mean[0].permute(1, 0, 2, 3)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    assert torch.allclose(z, (mu - mean) / std, atol=1e-5)
    assert m.decode_video(z).shape == (33, 3, 32, 48)
    # image mode for the memory: frame 0 alone is the same latent as the video's first latent
    assert torch.allclose(m.encode_images(frames[:1]), z[:1], atol=1e-4)


def test_context_noise_spares_observed_frames_and_sets_their_timestep():
    """sampler.context_sigma: generated context frames become (1 - s) x + s eps with timestep
    1000 s; frames flagged observed (latent 0, the real I_0) stay exactly clean at t = 0."""
    from mirage_ros.world_model.model import MirageWorldModel

    m = MirageWorldModel.build("tiny", sampler=FlowUniPCSampler(steps=1, context_sigma=0.3))
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(1, 48, 1, 2, 3, generator=g)
    prec = torch.randn(1, 48, 2, 2, 3, generator=g)
    req = {"context_observed": [True, False, False], "generator": torch.Generator().manual_seed(5)}
    c2, ctx2, t = m._noise_context([req], clean, [prec], 1, "cpu")
    assert torch.equal(c2, clean) and t.tolist() == [[0.0, pytest.approx(300.0), pytest.approx(300.0)]]
    eps = torch.randn((48, 3, 2, 3), generator=torch.Generator().manual_seed(5))[None]
    assert torch.allclose(ctx2[0], 0.7 * prec + 0.3 * eps[:, :, 1:], atol=1e-6)
