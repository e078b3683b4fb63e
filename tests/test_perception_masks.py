"""Mask providers (none / labels / sam3 with Qwen3-VL or fixed entities), entity parsing, tiny real models."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mirage_ros import sim
from mirage_ros.geometry import project
from mirage_ros.memory import LatentSpatialMemory
from mirage_ros.perception.entities import EntityParseWarning, FixedEntities, QwenEntityLister, parse_entities
from mirage_ros.perception.masks import Sam3MaskProvider, make_mask_provider
from mirage_ros.perception.sam3 import Sam3Segmenter

warnings.filterwarnings("ignore", message=".*token_id must be.*")


# ------------------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("text,expected", [
    ('["Person", "car", "person"]', ["person", "car"]),
    ('```json\n["a dog", "the Bus"]\n```', ["dog", "bus"]),
    ("Sure! Here they are: [\"cyclist\", \"bicycle\"] hope it helps", ["cyclist", "bicycle"]),
    ("['cat', 'dog']", ["cat", "dog"]),
    ('[{"label": "Car"}, {"name": "truck"}, 3]', ["car", "truck"]),
    ("- person\n- Car\n* red bicycle", ["person", "car", "red bicycle"]),
    ("1. Person\n2) car\n3. forklift (yellow)", ["person", "car", "forklift"]),
    ("person, car and dog.", ["person", "car", "dog"]),
    ("Objects: pedestrian; stroller", ["pedestrian", "stroller"]),
    ("<think>hmm, maybe a tree</think>[\"deer\"]", ["deer"]),
])
def test_parse_entities_good_outputs(text, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # well-formed answers must not warn
        assert parse_entities(text) == expected


@pytest.mark.parametrize("text", ["[]", "None", "none.", "```json\n[]\n```", "nothing"])
def test_parse_entities_explicit_empty_is_silent(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_entities(text) == []


@pytest.mark.parametrize("text", ["I cannot see anything in this picture. Sorry about that!", "{{{", "",
                                  "assistant assistant assistant assistant assistant assistant", None, 42,
                                  b"\xff\xfe", "[\"unterminated"])
def test_parse_entities_malformed_warns_and_returns_empty(text):
    with pytest.warns(EntityParseWarning) if text not in ("",) else warnings.catch_warnings():
        out = parse_entities(text)
    assert out == []


def test_parse_entities_truncated_list_keeps_complete_items_and_warns():
    with pytest.warns(EntityParseWarning, match="cut short"):
        assert parse_entities('```json\n["person", "car", "bicy') == ["person", "car"]
    with pytest.warns(EntityParseWarning):
        assert parse_entities("['dog', 'cat',") == ["dog", "cat"]


def test_parse_entities_caps_count_and_length():
    many = json.dumps([f"thing{i}" for i in range(100)] + ["x" * 200])
    out = parse_entities(many)
    assert out == [f"thing{i}" for i in range(16)]
    long = parse_entities('["' + "y" * 200 + '"]')
    assert long == ["y" * 32]
    assert parse_entities(many, max_items=3) == ["thing0", "thing1", "thing2"]


def test_fixed_entities_one_list_per_frame():
    fe = FixedEntities(["Person", "car", "person"])
    out = fe(np.zeros((3, 8, 8, 3), np.uint8))
    assert out == [["person", "car"]] * 3
    out[0].append("x")  # lists are independent copies
    assert fe(np.zeros((1, 8, 8, 3), np.uint8)) == [["person", "car"]]


# ------------------------------------------------------------------------------------------ none / labels

def _outdoor_frames(n=4, h=64, w=96):
    scene = sim.make_scene("outdoor", seed=0, moving_object=True)
    poses = sim.scene_trajectory(scene, "loop", n)
    cams, frames = [], []
    for i, E in enumerate(poses):
        cam = sim.default_camera(h, w, world_to_camera=E)
        cams.append(cam)
        frames.append(sim.render(scene, cam, t=float(i)))
    return scene, cams, frames


def test_none_and_labels_providers():
    _, cams, frames = _outdoor_frames(3)
    rgb = np.stack([f.rgb for f in frames])
    lab = np.stack([f.labels for f in frames])
    none = make_mask_provider("none")
    m = none.masks(rgb, cams)
    assert m.shape == rgb.shape[:3] and m.dtype == bool and not m.any()
    assert none.last_labels == [[], [], []]

    p = make_mask_provider("labels")
    ex = p.masks(rgb, cams, labels=lab)
    assert ex.dtype == bool and ex.shape == lab.shape
    expected = np.stack([(f.labels == sim.SKY) | (f.labels == sim.DYNAMIC) for f in frames])
    np.testing.assert_array_equal(ex, expected)
    # independent check through depth: sky is exactly the infinite-depth pixels
    depth = np.stack([f.depth for f in frames])
    np.testing.assert_array_equal(ex & ~np.isfinite(depth), ~np.isfinite(depth))
    assert (lab == sim.SKY).any() and (lab == sim.DYNAMIC).any()
    for labels_i, l in zip(p.last_labels, lab):
        assert set(labels_i) == {{1: "sky", 2: "dynamic"}[v] for v in np.unique(l) if v != 0}

    with pytest.raises(ValueError, match="labels"):
        p.masks(rgb, cams, labels=None)
    with pytest.raises(ValueError, match="unknown mask provider"):
        make_mask_provider("segment-everything")


@pytest.mark.parametrize("fraction", [0.0, 0.375])
def test_labels_mask_keeps_sky_and_moving_object_out_of_memory(fraction):
    scene, cams, frames = _outdoor_frames(6, 64, 96)
    stride, C = 8, 4
    prov = make_mask_provider("labels")
    masked = LatentSpatialMemory(channels=C, stride=stride, exclude_fraction=fraction)
    unmasked = LatentSpatialMemory(channels=C, stride=stride)
    hits_unmasked = 0
    for i, (cam, f) in enumerate(zip(cams, frames)):
        ex = prov.masks(f.rgb[None], [cam], labels=f.labels[None])[0]
        lat = torch.randn(C, 64 // stride, 96 // stride)
        n0 = masked.num_points
        masked.insert(lat, f.depth, cam, exclude=ex)
        u0 = unmasked.num_points
        unmasked.insert(lat, f.depth, cam)
        box = scene.moving_at(float(i))
        lo, hi = box.lo.float() - 0.05, box.hi.float() + 0.05
        new = masked.points[n0:]
        assert torch.isfinite(new).all()
        assert not ((new >= lo) & (new <= hi)).all(dim=1).any(), f"frame {i}: a point lies on the moving object"
        # every new point comes from a latent cell whose pixels are all static (no sky, no object), or,
        # with a share, at most that share of them not static
        h, w = cam.latent_size(stride)
        u, v, z, ok = project(new, cam.latent_K(stride), cam.world_to_camera, h, w)
        assert ok.all()
        blocks = f.labels.reshape(h, stride, w, stride).transpose(0, 2, 1, 3).reshape(h, w, -1)
        static_share = (blocks[v.numpy(), u.numpy()] == sim.STATIC).mean(axis=1)
        assert (static_share >= 1.0 - fraction).all()
        un = unmasked.points[u0:]
        hits_unmasked += int(((un >= lo) & (un <= hi)).all(dim=1).sum())
    assert masked.num_points > 0
    assert hits_unmasked > 0  # without the mask the moving object does enter the memory (the test can fail)


# ------------------------------------------------------------------------------------------ tiny SAM3 / Qwen3-VL

@pytest.fixture(scope="module")
def tiny_sam3():
    return Sam3Segmenter.tiny(seed=0)


@pytest.fixture(scope="module")
def tiny_qwen():
    return QwenEntityLister.tiny(seed=0)


def _rand_frames(t=3, h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _independent_union(seg, frame, prompt, h, w, score_thr, mask_thr=0.5):
    """Our own preprocessing + the raw Sam3Model, for checking Sam3Segmenter independently."""
    s = seg.model.config.vision_config.backbone_config.image_size
    x = torch.from_numpy(frame).float().permute(2, 0, 1)[None] / 255.0
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
    x = (x - 0.5) / 0.5
    ids = seg.tokenizer([prompt], padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        o = seg.model(pixel_values=x, input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    scores = torch.sigmoid(o.pred_logits[0]) * torch.sigmoid(o.presence_logits[0])
    keep = scores > score_thr
    if not keep.any():
        return np.zeros((h, w), bool), scores
    m = torch.sigmoid(F.interpolate(o.pred_masks[0][keep][None], size=(h, w), mode="bilinear",
                                    align_corners=False)[0]) > mask_thr
    return m.any(0).numpy(), scores


def test_sam3_score_threshold(tiny_sam3):
    frames = _rand_frames(2, 48, 80)
    prompts = [["person", "sky"], ["car"]]
    none = tiny_sam3.segment(frames, prompts, score_threshold=1.01)
    assert none.shape == (2, 48, 80) and none.dtype == bool and not none.any()
    # threshold -1 keeps every query of every prompt: with mask threshold 0 that is every pixel
    allm = tiny_sam3.segment(frames, prompts, score_threshold=-1, mask_threshold=0.0)
    assert allm.all()
    # ... and with the default mask threshold it is the union of all queries' masks, computed independently
    got = tiny_sam3.segment(frames, [["car"], ["car"]], score_threshold=-1)
    for i in range(2):
        exp, _ = _independent_union(tiny_sam3, frames[i], "car", 48, 80, -1.0)
        agree = (got[i] == exp).mean()
        assert agree > 0.99, agree  # resize differences (cv2 vs torch bilinear) only at mask edges
        assert 0 < got[i].sum() < got[i].size and 0 < exp.sum() < exp.size  # a real, partial mask
    # a frame with no prompts excludes nothing; a prompt's scores cut at their median keep only some queries
    assert not tiny_sam3.segment(frames[:1], [[]], score_threshold=-1).any()
    raw = tiny_sam3.raw(frames[:1], [["person"]])[0]["person"]
    assert raw["scores"].shape == (8,) and raw["mask_logits"].shape[0] == 8
    med = float(raw["scores"].median())
    part = tiny_sam3.segment(frames[:1], [["person"]], score_threshold=med)[0]
    full = tiny_sam3.segment(frames[:1], [["person"]], score_threshold=-1)[0]
    assert not (part & ~full).any()  # fewer queries -> a subset


def test_sam3_provider_end_to_end_with_tiny_qwen(tiny_sam3, tiny_qwen):
    frames = _rand_frames(3, 48, 80)
    prov = Sam3MaskProvider(entities=tiny_qwen, segmenter=tiny_sam3, sky=True, score_threshold=-1, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EntityParseWarning)  # random weights babble
        ex = prov.masks(frames, [None] * 3)
    assert ex.shape == (3, 48, 80) and ex.dtype == bool
    assert len(prov.last_labels) == 3 and all(l[-1] == "sky" for l in prov.last_labels)
    assert len(tiny_qwen.last_text) == 3 and all(isinstance(t, str) for t in tiny_qwen.last_text)
    # every frame got at least the sky prompt, with every query kept: the union is the independent one
    for i in range(3):
        exp = np.zeros((48, 80), bool)
        for p in prov.last_labels[i]:
            exp |= _independent_union(tiny_sam3, frames[i], p, 48, 80, -1.0)[0]
        assert (ex[i] == exp).mean() > 0.99
    assert not make_mask_provider("sam3", segmenter=tiny_sam3, score_threshold=1.01).masks(frames).any()


def test_qwen_answer_becomes_sam3_prompt(tiny_sam3, tiny_qwen):
    """Steer the tiny Qwen3-VL to answer "person": the provider must then prompt SAM3 with it (+ sky)."""
    frames = _rand_frames(2, 48, 80, seed=5)
    pid = tiny_qwen.tokenizer.convert_tokens_to_ids("person")

    def boost(_m, _i, out):
        out = out.clone()
        out[..., pid] += 1e4
        return out

    h = tiny_qwen.model.lm_head.register_forward_hook(boost)
    old = tiny_qwen.max_new_tokens
    tiny_qwen.max_new_tokens = 1
    try:
        prov = Sam3MaskProvider(entities=tiny_qwen, segmenter=tiny_sam3, score_threshold=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", EntityParseWarning)
            ex = prov.masks(frames)
    finally:
        h.remove()
        tiny_qwen.max_new_tokens = old
    assert tiny_qwen.last_text == ["person", "person"]
    assert prov.last_labels == [["person", "sky"], ["person", "sky"]]
    for i in range(2):
        exp = _independent_union(tiny_sam3, frames[i], "person", 48, 80, -1.0)[0]
        exp |= _independent_union(tiny_sam3, frames[i], "sky", 48, 80, -1.0)[0]
        assert (ex[i] == exp).mean() > 0.99


def test_sam3_provider_fixed_entities_and_config(tiny_sam3):
    frames = _rand_frames(2, 32, 48, seed=1)
    p = make_mask_provider("sam3", segmenter=tiny_sam3, entities=["Person", "dog"], sky=False, score_threshold=-1,
                           mask_threshold=0.0)
    ex = p.masks(frames)
    assert ex.all() and p.last_labels == [["person", "dog"]] * 2
    p2 = make_mask_provider("sam3", segmenter=tiny_sam3, entities=[], sky=False, score_threshold=-1, mask_threshold=0)
    assert not p2.masks(frames).any() and p2.last_labels == [[], []]
    with pytest.raises(ValueError, match="sam3_dir"):
        make_mask_provider("sam3")
    with pytest.raises(ValueError, match="qwen_dir"):
        make_mask_provider("sam3", segmenter=tiny_sam3, entities="qwen")
    with pytest.raises(ValueError, match="unknown options"):
        make_mask_provider("sam3", segmenter=tiny_sam3, colour="red")


def test_tiny_qwen_generates_and_batches(tiny_qwen):
    frames = _rand_frames(3, 40, 60, seed=2)
    a = tiny_qwen.generate_text(frames)
    tiny_qwen.batch_size = 1
    try:
        b = tiny_qwen.generate_text(frames)
    finally:
        tiny_qwen.batch_size = 4
    assert len(a) == 3 and a == b  # greedy decoding: batching does not change the answers
    assert all(len(t.split()) <= tiny_qwen.max_new_tokens for t in a)


# ------------------------------------------------------------------------------------------ loading

def test_sam3_save_and_load_roundtrip(tiny_sam3, tmp_path):
    tiny_sam3.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_sam3.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                                   "size": {"height": 112, "width": 112}}))
    seg = Sam3Segmenter.from_pretrained(tmp_path)
    assert seg.model is None  # lazy
    frames = _rand_frames(2, 40, 56, seed=3)
    pr = [["person", "sky"], ["car"]]
    a = tiny_sam3.raw(frames, pr)
    b = seg.raw(frames, pr)
    assert seg.model is not None
    for x, y in zip(a, b):
        for k in x:
            torch.testing.assert_close(x[k]["scores"], y[k]["scores"])
            torch.testing.assert_close(x[k]["mask_logits"], y[k]["mask_logits"])
    p = make_mask_provider("sam3", sam3_dir=str(tmp_path), entities=["car"], score_threshold=-1)
    np.testing.assert_array_equal(p.masks(frames), tiny_sam3.segment(frames, [["car", "sky"]] * 2, score_threshold=-1))


def test_qwen_save_and_load_roundtrip(tiny_qwen, tmp_path):
    tiny_qwen.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_qwen.tokenizer.save_pretrained(tmp_path)
    lister = QwenEntityLister(weights_dir=tmp_path, max_pixels=64 * 96, min_pixels=32 * 32, max_new_tokens=8)
    assert lister.model is None
    frames = _rand_frames(2, 40, 60, seed=4)
    assert lister.generate_text(frames) == tiny_qwen.generate_text(frames)


@pytest.mark.parametrize("cls,name", [(Sam3Segmenter, "SAM3"), (QwenEntityLister, "Qwen3-VL")])
def test_missing_or_incomplete_weights_folder(cls, name, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        cls(weights_dir=missing)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"(?s)incomplete.*model\.safetensors"):
        cls(weights_dir=tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001.safetensors"}}))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model-00001.safetensors") as e:
        cls(weights_dir=tmp_path)
    assert str(tmp_path) in str(e.value) and name in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope"):
        make_mask_provider("sam3", sam3_dir=str(missing))
